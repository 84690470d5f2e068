//! The postcard codec: `[WIRE_VERSION] ++ postcard(value)`.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::types::{Request, Response, WireError};
use crate::{MAX_ID_BYTES, WIRE_VERSION};

/// Encodes a request as `[WIRE_VERSION] ++ postcard(request)`. Without a `format` the bytes are
/// version 1's exactly (the trailing `None` of the newer field is left out).
pub fn encode_request_postcard(r: &Request) -> Vec<u8> {
    let mut out = postcard_envelope(r);
    if r.format.is_none() {
        // postcard writes `None` as one 0 byte, last.
        out.pop();
    }
    out
}

/// Decodes and validates a postcard request envelope. A request that ends where version 1's
/// did (before `format`) decodes with `format: None`.
pub fn decode_request_postcard(payload: &[u8]) -> Result<Request, WireError> {
    let req: Request = match postcard_open(payload, "request") {
        Ok(r) => r,
        Err(e) => {
            // Version 1's layout: retry with the absent `format` as `None`.
            let mut v1 = payload.to_vec();
            v1.push(0);
            postcard_open(&v1, "request").map_err(|_| e)?
        }
    };
    req.validate()?;
    Ok(req)
}

/// Encodes a response as `[WIRE_VERSION] ++ postcard(response)`.
pub fn encode_response_postcard(r: &Response) -> Vec<u8> {
    postcard_envelope(r)
}

/// Decodes a postcard response envelope.
pub fn decode_response_postcard(payload: &[u8]) -> Result<Response, WireError> {
    postcard_open(payload, "response")
}

/// The `id` of a postcard request that may fail to decode further on, so that an error reply can
/// still echo it. `None` unless the id itself is readable and within [`MAX_ID_BYTES`].
pub fn salvage_id_postcard(payload: &[u8]) -> Option<String> {
    match payload.split_first() {
        Some((&WIRE_VERSION, body)) => postcard::take_from_bytes::<Option<String>>(body)
            .ok()
            .and_then(|(id, _)| id)
            .filter(|id| id.len() <= MAX_ID_BYTES),
        _ => None,
    }
}

fn postcard_envelope<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(WIRE_VERSION);
    // Serializing into a Vec cannot fail for these types: every sequence has a known length and
    // nothing else in postcard's serializer is fallible with a growable output.
    postcard::to_extend(value, out).expect("postcard serialization of wire types cannot fail")
}

fn postcard_open<'de, T: Deserialize<'de>>(payload: &'de [u8], what: &str) -> Result<T, WireError> {
    let (&version, body) = payload.split_first().ok_or_else(|| {
        WireError::bad_request(format!(
            "postcard {what} is empty: expected the wire version byte"
        ))
    })?;
    if version != WIRE_VERSION {
        return Err(WireError::bad_request(format!(
            "unsupported wire version {version} (this end speaks {WIRE_VERSION})"
        )));
    }
    let (value, rest) = postcard::take_from_bytes::<T>(body)
        .map_err(|e| WireError::bad_request(format!("malformed postcard {what}: {e}")))?;
    if !rest.is_empty() {
        return Err(WireError::bad_request(format!(
            "malformed postcard {what}: {} trailing bytes after the {what}",
            rest.len()
        )));
    }
    Ok(value)
}
