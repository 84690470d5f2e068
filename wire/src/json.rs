//! The JSON codec (`serde_json`).

use std::format;
use std::string::String;
use std::string::ToString;
use std::vec::Vec;

use serde::Serialize;

use crate::split::first_non_json_ws;
use crate::text::utf8;
use crate::types::*;
use crate::*;
use serde::ser::{SerializeMap, Serializer};

pub(super) fn decode_request(payload: &[u8]) -> Result<Request, WireError> {
    let text = utf8(payload)?;
    match first_non_json_ws(payload) {
        None => return Err(WireError::bad_request("JSON request is empty")),
        Some(b'{') => {}
        Some(b) => {
            let found = match b {
                b'[' => "an array",
                b'"' => "a string",
                b'-' | b'0'..=b'9' => "a number",
                b't' | b'f' => "a boolean",
                b'n' => "null",
                _ => "something else",
            };
            // Syntax errors in "something else" read better from serde_json itself.
            if found != "something else" {
                return Err(WireError::bad_request(format!(
                    "JSON request must be an object, found {found}"
                )));
            }
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let req: Request = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        // serde_path_to_error writes `.` for the root and `?` for a segment it could not
        // name (e.g. inside a syntax error); neither helps the reader.
        let path = e.path().to_string();
        let path = path.trim_end_matches('?').trim_end_matches('.');
        let inner = e.into_inner();
        if path.is_empty() {
            WireError::bad_request(format!("invalid JSON request: {inner}"))
        } else {
            WireError::bad_request(format!("invalid JSON request: field `{path}`: {inner}"))
        }
    })?;
    de.end()
        .map_err(|e| WireError::bad_request(format!("invalid JSON request: {e}")))?;
    req.validate()?;
    Ok(req)
}

pub(super) fn salvage_id(payload: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    match value.get("id")? {
        serde_json::Value::String(id) if id.len() <= MAX_ID_BYTES => Some(id.clone()),
        _ => None,
    }
}

/// Serializes a request leaving out `None` fields, in declaration order.
struct RequestJson<'a>(&'a Request);

impl Serialize for RequestJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        fn put<M: SerializeMap, T: Serialize>(
            m: &mut M,
            key: &str,
            v: &Option<T>,
        ) -> Result<(), M::Error> {
            match v {
                Some(v) => m.serialize_entry(key, v),
                None => Ok(()),
            }
        }
        let r = self.0;
        let mut m = s.serialize_map(None)?;
        put(&mut m, "id", &r.id)?;
        put(&mut m, "prompt", &r.prompt)?;
        put(&mut m, "messages", &r.messages)?;
        put(&mut m, "model", &r.model)?;
        put(&mut m, "max_tokens", &r.max_tokens)?;
        put(&mut m, "temperature", &r.temperature)?;
        put(&mut m, "top_k", &r.top_k)?;
        put(&mut m, "top_p", &r.top_p)?;
        put(&mut m, "min_p", &r.min_p)?;
        put(&mut m, "repeat_penalty", &r.repeat_penalty)?;
        put(&mut m, "seed", &r.seed)?;
        put(&mut m, "stop", &r.stop)?;
        put(&mut m, "stream", &r.stream)?;
        put(&mut m, "reply_to", &r.reply_to)?;
        put(&mut m, "deadline_ms", &r.deadline_ms)?;
        match &r.format {
            None => {}
            Some(FormatRef::Named(name)) => m.serialize_entry("format", name)?,
            // The object itself, as a JSON request states it.
            Some(FormatRef::Inline(text)) => m.serialize_entry("format", &json_value(text))?,
        }
        m.end()
    }
}

/// Serializes a reply with `done` only when it is set.
struct ReplyJson<'a>(&'a Reply);

impl Serialize for ReplyJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.0;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("id", &r.id)?;
        m.serialize_entry("model", &r.model)?;
        m.serialize_entry("text", &r.text)?;
        m.serialize_entry("finish_reason", &r.finish_reason)?;
        m.serialize_entry("usage", &r.usage)?;
        m.serialize_entry("timings", &r.timings)?;
        if let Some(done) = r.done {
            m.serialize_entry("done", &done)?;
        }
        if let Some(text) = &r.json {
            m.serialize_entry("json", &json_value(text))?;
        }
        if let Some(message) = &r.message {
            m.serialize_entry("message", message)?;
        }
        m.end()
    }
}

/// JSON text held as a string (inline formats, a reply's `json`) as the value it states.
fn json_value(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or(serde_json::Value::Null)
}

pub(super) fn encode_request(r: &Request) -> Vec<u8> {
    to_vec(&RequestJson(r))
}

pub(super) fn encode_response(r: &Response) -> Vec<u8> {
    match r {
        Response::Reply(reply) => to_vec(&ReplyJson(reply)),
        Response::Chunk(chunk) => to_vec(chunk),
        Response::Error(error) => to_vec(error),
    }
}

fn to_vec<T: Serialize>(value: &T) -> Vec<u8> {
    // Writing to a Vec fails only for non-string map keys and non-finite floats, and
    // serde_json writes non-finite floats as `null` rather than failing.
    serde_json::to_vec(value).expect("JSON serialization of wire types cannot fail")
}

pub(super) fn decode_response(payload: &[u8]) -> Result<Response, WireError> {
    let text = utf8(payload)?;
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| WireError::bad_request(format!("invalid JSON response: {e}")))?;
    let Some(object) = value.as_object() else {
        return Err(WireError::bad_request("JSON response must be an object"));
    };
    let bad = |e: serde_json::Error| WireError::bad_request(format!("invalid JSON response: {e}"));
    if object.contains_key("error") {
        serde_json::from_value(value)
            .map(Response::Error)
            .map_err(bad)
    } else if object.contains_key("seq") {
        serde_json::from_value(value)
            .map(Response::Chunk)
            .map_err(bad)
    } else {
        // `json` and `message` are not serde fields (postcard has no room for them).
        let json = object.get("json").map(|v| v.to_string());
        let message = object
            .get("message")
            .and_then(|m| m.as_str())
            .map(String::from);
        serde_json::from_value(value)
            .map(|r| Response::Reply(Reply { json, message, ..r }))
            .map_err(bad)
    }
}
