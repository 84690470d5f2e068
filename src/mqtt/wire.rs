//! Wire types and codecs of the llamabus MQTT protocol: what a request and a response look like
//! as plain text, JSON and postcard. Pure: no I/O, no clocks, no topics (those belong to the rest
//! of `mqtt/`).
//!
//! # Encodings
//! - **Text**: the whole UTF-8 payload is the prompt. A single trailing line ending (`\n` or
//!   `\r\n`) is removed, because `mosquitto_pub -s`, `-l` and `echo … |` append one while `-m`
//!   does not; any other whitespace is kept, since it matters to a raw completion
//!   (`"14 + 16 ="` and `"14 + 16 = "` tokenize differently). Replies are the answer text; an
//!   error is `error: <code>: <message>`.
//! - **JSON**: a [`Request`] object (unknown fields are refused); replies are compact JSON
//!   objects ([`Reply`], [`Chunk`], [`ErrorReply`]).
//! - **postcard**: a versioned envelope, `[WIRE_VERSION] ++ postcard(value)`, where the value is
//!   a [`Request`] or a [`Response`]. postcard writes struct fields in declaration order and enum
//!   variants by index, so **the field order of every type below and the variant order of every
//!   enum are the wire format**: append new variants at the end, and change anything else only
//!   together with [`WIRE_VERSION`]. The golden-byte tests in `tests/wire.rs` pin it.
//!
//! # Reusing this file in an embedded `no_std` client
//! The file is in two sections. Everything above the `std only` banner uses only `core`,
//! `String`/`Vec`/`format!` (from `alloc`), `serde` (derive) and `postcard`, and holds all a
//! microcontroller needs: the types, [`Request::validate`], [`encode_request_postcard`] and
//! [`decode_response_postcard`] (plus the text codec and [`split_utf8`]). To vendor it:
//! 1. copy `src/mqtt/wire.rs` into the client crate and delete everything from the
//!    `std only` banner to the end of the file (the JSON codec and the [`Encoding`]
//!    dispatchers, which use `serde_json`);
//! 2. in the three `use std::…` lines of the shim below, write `alloc` for `std`, and put
//!    `extern crate alloc;` in the client's crate root;
//! 3. depend on `serde = { version = "1", default-features = false, features = ["derive", "alloc"] }`
//!    and `postcard = { version = "1", default-features = false, features = ["alloc"] }`.

// ---- no_std shim: the only paths that differ between std and alloc. ----
use std::format;
use std::string::String;
use std::vec::Vec;

use core::fmt;

use serde::{Deserialize, Serialize};

/// Version byte that starts every postcard payload, in both directions.
pub const WIRE_VERSION: u8 = 1;

/// Longest request `id`, in bytes.
pub const MAX_ID_BYTES: usize = 128;
/// Longest `reply_to` topic, in bytes.
pub const MAX_REPLY_TO_BYTES: usize = 256;
/// Longest `model` name, in bytes.
pub const MAX_MODEL_BYTES: usize = 128;
/// Most `stop` strings in one request.
pub const MAX_STOP_STRINGS: usize = 8;
/// Longest `stop` string, in bytes.
pub const MAX_STOP_BYTES: usize = 256;
/// Most `messages` in one request.
pub const MAX_MESSAGES: usize = 256;

/// A prompt request. Every field is optional on the wire; [`Request::validate`] enforces the
/// rules (exactly one of `prompt`/`messages`, ranges, lengths). Field order is wire format.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Opaque id echoed in every reply, and the payload of a cancel.
    pub id: Option<String>,
    /// Raw completion prompt (no chat template).
    pub prompt: Option<String>,
    /// Chat messages, rendered with the model's chat template.
    pub messages: Option<Vec<Message>>,
    /// Model name; the daemon's default model when absent.
    pub model: Option<String>,
    /// Upper bound on generated tokens (the daemon also applies its own cap).
    pub max_tokens: Option<u32>,
    /// Sampling temperature, `0..=100`; 0 is greedy.
    pub temperature: Option<f32>,
    /// Top-k cut-off; 0 disables it.
    pub top_k: Option<u32>,
    /// Nucleus cut-off, `0..=1`.
    pub top_p: Option<f32>,
    /// Min-p cut-off, `0..=1`.
    pub min_p: Option<f32>,
    /// Repetition penalty, `(0, 100]`; 1 disables it.
    pub repeat_penalty: Option<f32>,
    /// Sampler seed, for reproducible sampling.
    pub seed: Option<u64>,
    /// Strings that end generation when produced (not included in the reply).
    pub stop: Option<Vec<String>>,
    /// Stream [`Chunk`]s as tokens are produced, then a final [`Reply`] with `done: true`.
    pub stream: Option<bool>,
    /// Reply topic for MQTT 3.1.1 clients (MQTT 5 clients use the Response Topic property).
    pub reply_to: Option<String>,
    /// Milliseconds after the daemon receives the request past which it answers `expired`
    /// instead of serving it.
    pub deadline_ms: Option<u64>,
}

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The message text; must not be empty.
    pub content: String,
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// End of sequence or a stop string.
    #[default]
    Stop,
    /// `max_tokens` (or the context) ran out.
    Length,
    /// A cancel arrived.
    Cancelled,
}

/// Token counts of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the (templated) prompt.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
}

/// Where the time of one request went, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct Timings {
    /// Waiting in the queue.
    pub queue_ms: f64,
    /// Evaluating the prompt.
    pub prompt_ms: f64,
    /// Generating the completion.
    pub generate_ms: f64,
    /// Completion tokens per second of `generate_ms`.
    pub tokens_per_s: f64,
}

/// The final answer to a request.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct Reply {
    /// The request's `id`.
    pub id: Option<String>,
    /// The model that answered.
    pub model: String,
    /// The whole answer (for a stream: the concatenation of every chunk's `delta`).
    pub text: String,
    /// Why generation ended.
    pub finish_reason: FinishReason,
    /// Token counts.
    pub usage: Usage,
    /// Time spent.
    pub timings: Timings,
    /// `Some(true)` on the final message of a stream; `None` otherwise (and then absent in JSON).
    pub done: Option<bool>,
}

/// One streamed piece of an answer: always whole UTF-8 characters.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Chunk {
    /// The request's `id`.
    pub id: Option<String>,
    /// 0, 1, 2, … in publish order.
    pub seq: u32,
    /// The new text.
    pub delta: String,
}

/// Error codes, as the issue lists them. Variant order is wire format (append only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The payload could not be decoded or failed validation.
    BadRequest,
    /// Prompt plus `max_tokens` does not fit the limits or the context.
    TooLong,
    /// The queue is full.
    Busy,
    /// No loaded model has the requested name.
    UnknownModel,
    /// `reply_to` / Response Topic outside the allowed prefixes, a wildcard or a `$` topic.
    ReplyTopicDenied,
    /// The request's deadline or MQTT message expiry passed before it was served.
    Expired,
    /// The request was cancelled before it started.
    Cancelled,
    /// A bug or an engine failure.
    Internal,
}

impl ErrorCode {
    /// Every code, in wire order.
    pub const ALL: [ErrorCode; 8] = [
        ErrorCode::BadRequest,
        ErrorCode::TooLong,
        ErrorCode::Busy,
        ErrorCode::UnknownModel,
        ErrorCode::ReplyTopicDenied,
        ErrorCode::Expired,
        ErrorCode::Cancelled,
        ErrorCode::Internal,
    ];

    /// The name used in JSON and text replies, e.g. `"bad_request"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::TooLong => "too_long",
            ErrorCode::Busy => "busy",
            ErrorCode::UnknownModel => "unknown_model",
            ErrorCode::ReplyTopicDenied => "reply_topic_denied",
            ErrorCode::Expired => "expired",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::Internal => "internal",
        }
    }

    /// The code named `name` (as [`ErrorCode::as_str`] spells it).
    pub fn from_name(name: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FinishReason {
    /// The name used in JSON, e.g. `"stop"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

/// The `error` object of an [`ErrorReply`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable explanation naming the problem.
    pub message: String,
}

/// An error answer to a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// The request's `id`, when it could be read.
    pub id: Option<String>,
    /// What went wrong.
    pub error: ErrorBody,
}

/// Any message the daemon sends back.
///
/// The derived serde form is the postcard one (variant index, then the body). JSON replies are
/// not externally tagged: use [`encode_response`], which writes the bare object of each variant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// A final answer.
    Reply(Reply),
    /// A streamed piece.
    Chunk(Chunk),
    /// An error.
    Error(ErrorReply),
}

/// A payload encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// Plain UTF-8 text.
    Text,
    /// JSON objects.
    Json,
    /// `[WIRE_VERSION] ++ postcard`.
    Postcard,
}

impl Encoding {
    /// The MQTT 5 content type to put on payloads of this encoding.
    pub const fn content_type(self) -> &'static str {
        match self {
            Encoding::Text => "text/plain; charset=utf-8",
            Encoding::Json => "application/json",
            Encoding::Postcard => "application/postcard",
        }
    }
}

/// A request or response that could not be decoded or validated. For requests the code is
/// always [`ErrorCode::BadRequest`] and the message names the field or byte at fault.
#[derive(Debug, Clone, PartialEq)]
pub struct WireError {
    /// The code to reply with.
    pub code: ErrorCode,
    /// What is wrong, naming the field.
    pub message: String,
}

impl WireError {
    /// An error with `code`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> WireError {
        WireError {
            code,
            message: message.into(),
        }
    }

    /// A `bad_request` error.
    pub fn bad_request(message: impl Into<String>) -> WireError {
        WireError::new(ErrorCode::BadRequest, message)
    }

    /// The reply to send for this error to the request with `id`.
    pub fn to_reply(&self, id: Option<String>) -> ErrorReply {
        ErrorReply {
            id,
            error: ErrorBody {
                code: self.code,
                message: self.message.clone(),
            },
        }
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl core::error::Error for WireError {}

// ---- Validation ----

impl Request {
    /// A request holding only `prompt`.
    pub fn from_prompt(prompt: impl Into<String>) -> Request {
        Request {
            prompt: Some(prompt.into()),
            ..Request::default()
        }
    }

    /// Checks the field rules that the type system does not: exactly one of `prompt` and
    /// `messages`, nothing empty, roles known, floats finite and in range, lengths and counts
    /// capped. The first violation is returned as `bad_request`, naming the field.
    pub fn validate(&self) -> Result<(), WireError> {
        check_len("id", self.id.as_deref(), MAX_ID_BYTES)?;
        match (&self.prompt, &self.messages) {
            (Some(_), Some(_)) => {
                return Err(WireError::bad_request(
                    "`prompt` and `messages` are mutually exclusive: send one of them",
                ))
            }
            (None, None) => {
                return Err(WireError::bad_request(
                    "request has neither `prompt` nor `messages`",
                ))
            }
            (Some(prompt), None) => {
                if prompt.trim().is_empty() {
                    return Err(WireError::bad_request(
                        "`prompt` is empty (or only whitespace)",
                    ));
                }
            }
            (None, Some(messages)) => validate_messages(messages)?,
        }
        if let Some(model) = &self.model {
            if model.is_empty() {
                return Err(WireError::bad_request("`model` is empty"));
            }
            check_len("model", Some(model), MAX_MODEL_BYTES)?;
        }
        if self.max_tokens == Some(0) {
            return Err(WireError::bad_request("`max_tokens` must be at least 1"));
        }
        check_float("temperature", self.temperature, 0.0, 100.0, false)?;
        check_float("top_p", self.top_p, 0.0, 1.0, false)?;
        check_float("min_p", self.min_p, 0.0, 1.0, false)?;
        check_float("repeat_penalty", self.repeat_penalty, 0.0, 100.0, true)?;
        if let Some(stop) = &self.stop {
            if stop.len() > MAX_STOP_STRINGS {
                return Err(WireError::bad_request(format!(
                    "`stop` has {} strings; at most {MAX_STOP_STRINGS} are allowed",
                    stop.len()
                )));
            }
            for (i, s) in stop.iter().enumerate() {
                if s.is_empty() {
                    return Err(WireError::bad_request(format!("`stop[{i}]` is empty")));
                }
                if s.len() > MAX_STOP_BYTES {
                    return Err(WireError::bad_request(format!(
                        "`stop[{i}]` is {} bytes long; at most {MAX_STOP_BYTES} are allowed",
                        s.len()
                    )));
                }
            }
        }
        if let Some(reply_to) = &self.reply_to {
            if reply_to.is_empty() {
                return Err(WireError::bad_request("`reply_to` is empty"));
            }
            check_len("reply_to", Some(reply_to), MAX_REPLY_TO_BYTES)?;
        }
        Ok(())
    }
}

fn validate_messages(messages: &[Message]) -> Result<(), WireError> {
    if messages.is_empty() {
        return Err(WireError::bad_request("`messages` is empty"));
    }
    if messages.len() > MAX_MESSAGES {
        return Err(WireError::bad_request(format!(
            "`messages` has {} entries; at most {MAX_MESSAGES} are allowed",
            messages.len()
        )));
    }
    for (i, m) in messages.iter().enumerate() {
        if !matches!(m.role.as_str(), "system" | "user" | "assistant") {
            return Err(WireError::bad_request(format!(
                "`messages[{i}].role` is {:?}; expected \"system\", \"user\" or \"assistant\"",
                truncate_for_message(&m.role)
            )));
        }
        if m.content.is_empty() {
            return Err(WireError::bad_request(format!(
                "`messages[{i}].content` is empty"
            )));
        }
    }
    Ok(())
}

fn check_len(field: &str, value: Option<&str>, max: usize) -> Result<(), WireError> {
    match value {
        Some(v) if v.len() > max => Err(WireError::bad_request(format!(
            "`{field}` is {} bytes long; at most {max} are allowed",
            v.len()
        ))),
        _ => Ok(()),
    }
}

/// `value` must be finite and within `min..=max` (`min` itself excluded when `exclusive_min`).
fn check_float(
    field: &str,
    value: Option<f32>,
    min: f32,
    max: f32,
    exclusive_min: bool,
) -> Result<(), WireError> {
    let Some(v) = value else { return Ok(()) };
    let above_min = if exclusive_min { v > min } else { v >= min };
    if v.is_finite() && above_min && v <= max {
        return Ok(());
    }
    let range = if exclusive_min {
        format!("greater than {min} and at most {max}")
    } else {
        format!("in {min}..={max}")
    };
    let why = if v.is_infinite() {
        " (out of range for a 32-bit float)"
    } else {
        ""
    };
    Err(WireError::bad_request(format!(
        "`{field}` must be a finite number {range}, got {v}{why}"
    )))
}

/// A user-supplied string cut to a length fit for an error message.
fn truncate_for_message(s: &str) -> &str {
    split_utf8(s, 64).next().unwrap_or("")
}

// ---- Text codec ----

/// Decodes a plain-text request: the payload, less one trailing `\n` or `\r\n`, is the prompt.
/// The result is validated.
pub fn decode_request_text(payload: &[u8]) -> Result<Request, WireError> {
    let text = utf8(payload)?;
    let text = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(text);
    if text.trim().is_empty() {
        return Err(WireError::bad_request(
            "prompt is empty (or only whitespace)",
        ));
    }
    Ok(Request::from_prompt(text))
}

/// Encodes a response as text: a reply is its text, a chunk its delta, an error
/// `error: <code>: <message>`.
pub fn encode_response_text(r: &Response) -> Vec<u8> {
    match r {
        Response::Reply(reply) => reply.text.as_bytes().to_vec(),
        Response::Chunk(chunk) => chunk.delta.as_bytes().to_vec(),
        Response::Error(e) => format!("error: {}: {}", e.error.code, e.error.message).into_bytes(),
    }
}

/// Decodes a text response. `error: <code>: <message>` with a known code is an error; anything
/// else is a [`Reply`] whose `text` is the payload and whose other fields are defaults (a text
/// reply carries nothing else).
pub fn decode_response_text(payload: &[u8]) -> Result<Response, WireError> {
    let text = utf8(payload)?;
    if let Some(rest) = text.strip_prefix("error: ") {
        let (name, message) = rest.split_once(": ").unwrap_or((rest, ""));
        if let Some(code) = ErrorCode::from_name(name) {
            return Ok(Response::Error(ErrorReply {
                id: None,
                error: ErrorBody {
                    code,
                    message: String::from(message),
                },
            }));
        }
    }
    Ok(Response::Reply(Reply {
        text: String::from(text),
        ..Reply::default()
    }))
}

fn utf8(payload: &[u8]) -> Result<&str, WireError> {
    core::str::from_utf8(payload).map_err(|e| {
        WireError::bad_request(format!(
            "payload is not valid UTF-8 at byte {}",
            e.valid_up_to()
        ))
    })
}

// ---- postcard codec ----

/// Encodes a request as `[WIRE_VERSION] ++ postcard(request)`.
pub fn encode_request_postcard(r: &Request) -> Vec<u8> {
    postcard_envelope(r)
}

/// Decodes and validates a postcard request envelope.
pub fn decode_request_postcard(payload: &[u8]) -> Result<Request, WireError> {
    let req: Request = postcard_open(payload, "request")?;
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

// ---- Splitting text to fit packets ----

/// Splits `s` into pieces of at most `max_bytes` bytes, never inside a UTF-8 character; the
/// pieces concatenate to `s`, and an empty `s` yields nothing.
///
/// A character longer than `max_bytes` (possible only when `max_bytes < 4`) is yielded alone,
/// the only way to make progress: pass at least 4 to keep every piece within the limit.
pub fn split_utf8(s: &str, max_bytes: usize) -> SplitUtf8<'_> {
    SplitUtf8 { rest: s, max_bytes }
}

/// Iterator returned by [`split_utf8`].
#[derive(Clone, Debug)]
pub struct SplitUtf8<'a> {
    rest: &'a str,
    max_bytes: usize,
}

impl<'a> Iterator for SplitUtf8<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        if self.rest.is_empty() {
            return None;
        }
        let mut end = self.max_bytes.min(self.rest.len());
        while !self.rest.is_char_boundary(end) {
            end -= 1;
        }
        if end == 0 {
            // The first character alone is longer than max_bytes.
            end = self.rest.chars().next().map_or(0, char::len_utf8);
        }
        let (piece, rest) = self.rest.split_at(end);
        self.rest = rest;
        Some(piece)
    }
}

/// Worst-case growth of text written into a JSON string: a control character becomes `\u00XX`.
pub const JSON_WORST_CASE_EXPANSION: usize = 6;

/// Bytes that `c` takes inside a JSON string as `serde_json` writes it: `"` `\` and the short
/// control escapes take 2, other control characters 6 (`\u00XX`), anything else its UTF-8 length
/// (non-ASCII is not escaped).
pub const fn json_escaped_char_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\u{8}' | '\u{c}' | '\n' | '\r' | '\t' => 2,
        '\u{0}'..='\u{1f}' => 6,
        _ => c.len_utf8(),
    }
}

/// Bytes that `s` takes inside a JSON string (without the quotes).
pub fn json_escaped_len(s: &str) -> usize {
    s.chars().map(json_escaped_char_len).sum()
}

/// Length of a postcard varint holding `n`.
const fn varint_len(mut n: u64) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

fn decimal_len(mut n: u64) -> usize {
    let mut len = 1;
    while n >= 10 {
        n /= 10;
        len += 1;
    }
    len
}

/// Bytes of the chunk `{id, seq, delta: ""}` in `enc`, less the delta's own bytes and (postcard)
/// its length prefix.
fn chunk_fixed_len(id: Option<&str>, seq: u32, enc: Encoding) -> usize {
    match enc {
        Encoding::Text => 0,
        // {"id":…,"seq":…,"delta":""}
        Encoding::Json => {
            let id_len = id.map_or(4, |id| json_escaped_len(id) + 2);
            r#"{"id":,"seq":,"delta":""}"#.len() + id_len + decimal_len(seq.into())
        }
        // version, variant index, Option tag, [id len, id], seq
        Encoding::Postcard => {
            let id_len = id.map_or(0, |id| varint_len(id.len() as u64) + id.len());
            1 + 1 + 1 + id_len + varint_len(seq.into())
        }
    }
}

/// Exact size of `encode_response(&Response::Chunk(Chunk { id, seq, delta }), enc)`, without
/// encoding it.
pub fn chunk_encoded_len(id: Option<&str>, seq: u32, delta: &str, enc: Encoding) -> usize {
    let fixed = chunk_fixed_len(id, seq, enc);
    match enc {
        Encoding::Text => delta.len(),
        Encoding::Json => fixed + json_escaped_len(delta),
        Encoding::Postcard => fixed + varint_len(delta.len() as u64) + delta.len(),
    }
}

/// Conservative: how many raw bytes of delta always fit into one chunk of at most `max_payload`
/// bytes, whatever the text and whatever the `seq` (the largest seq is assumed). For JSON this
/// assumes every byte is a control character ([`JSON_WORST_CASE_EXPANSION`]), so it is 1/6 of
/// the room; [`split_chunk_delta`] is exact and packs ordinary text six times denser. Pair this
/// with [`split_utf8`]; a result below 4 cannot guarantee progress and should be treated as
/// "does not fit". `max_payload` is the MQTT packet limit less the packet's own overhead (fixed
/// header, topic, properties), which the MQTT layer knows.
pub fn chunk_delta_budget(max_payload: usize, id: Option<&str>, enc: Encoding) -> usize {
    let room = max_payload.saturating_sub(chunk_fixed_len(id, u32::MAX, enc));
    match enc {
        Encoding::Text => room,
        Encoding::Json => room / JSON_WORST_CASE_EXPANSION,
        // n + varint_len(n) <= room, since varint_len(n) <= varint_len(room).
        Encoding::Postcard => room.saturating_sub(varint_len(room as u64)),
    }
}

/// Exact: splits `delta` into the fewest greedy pieces (whole characters) such that each one, as
/// a [`Chunk`] with this `id` and any `seq`, encodes to at most `max_payload` bytes in `enc`.
/// An empty `delta` gives no pieces; `None` means not even one character fits.
pub fn split_chunk_delta<'a>(
    delta: &'a str,
    id: Option<&str>,
    max_payload: usize,
    enc: Encoding,
) -> Option<Vec<&'a str>> {
    let fixed = chunk_fixed_len(id, u32::MAX, enc);
    let fits = |cost: usize| -> bool {
        let prefix = match enc {
            Encoding::Postcard => varint_len(cost as u64),
            Encoding::Text | Encoding::Json => 0,
        };
        fixed + prefix + cost <= max_payload
    };
    let mut pieces = Vec::new();
    let (mut start, mut cost) = (0, 0);
    for (i, c) in delta.char_indices() {
        let c_cost = match enc {
            Encoding::Json => json_escaped_char_len(c),
            Encoding::Text | Encoding::Postcard => c.len_utf8(),
        };
        if !fits(cost + c_cost) {
            if cost == 0 || !fits(c_cost) {
                return None;
            }
            pieces.push(&delta[start..i]);
            (start, cost) = (i, 0);
        }
        cost += c_cost;
    }
    if start < delta.len() {
        pieces.push(&delta[start..]);
    }
    Some(pieces)
}

/// The encoding of a payload: by MQTT 5 content type when it names one of ours
/// (`application/json`, `application/postcard`, `text/plain`; parameters such as `; charset=utf-8`
/// and letter case are ignored), otherwise JSON when the first non-whitespace byte is `{`, else
/// text. postcard is never guessed: it needs the content type (or the postcard topic, which the
/// MQTT layer maps to [`Encoding::Postcard`] itself). A text prompt that starts with `{` must
/// therefore be sent with content type `text/plain`.
pub fn sniff(payload: &[u8], content_type: Option<&str>) -> Encoding {
    if let Some(ct) = content_type {
        let media = ct.split(';').next().unwrap_or("").trim();
        if media.eq_ignore_ascii_case("application/json") {
            return Encoding::Json;
        }
        if media.eq_ignore_ascii_case("application/postcard") {
            return Encoding::Postcard;
        }
        if media.eq_ignore_ascii_case("text/plain") {
            return Encoding::Text;
        }
    }
    match first_non_json_ws(payload) {
        Some(b'{') => Encoding::Json,
        _ => Encoding::Text,
    }
}

fn first_non_json_ws(payload: &[u8]) -> Option<u8> {
    payload
        .iter()
        .copied()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
}

// ==================================================================================================
// ---- std only: the JSON codec and the Encoding dispatchers. A no_std client deletes from here
// ---- to the end of the file (see the module doc).
// ==================================================================================================

/// Decodes and validates a request in `enc`. Every failure is `bad_request` with a message naming
/// the field (JSON paths such as `messages[1].role`) or the byte at fault.
pub fn decode_request(payload: &[u8], enc: Encoding) -> Result<Request, WireError> {
    match enc {
        Encoding::Text => decode_request_text(payload),
        Encoding::Json => json::decode_request(payload),
        Encoding::Postcard => decode_request_postcard(payload),
    }
}

/// Encodes a request in `enc` (the client side). JSON leaves out absent fields. Text carries only
/// a prompt, so a request with anything else set is refused.
pub fn encode_request(r: &Request, enc: Encoding) -> Result<Vec<u8>, WireError> {
    match enc {
        Encoding::Text => match &r.prompt {
            Some(prompt) if *r == Request::from_prompt(prompt.clone()) => {
                Ok(prompt.as_bytes().to_vec())
            }
            _ => Err(WireError::bad_request(
                "a text request carries only `prompt`; use JSON or postcard for other fields",
            )),
        },
        Encoding::Json => Ok(json::encode_request(r)),
        Encoding::Postcard => Ok(encode_request_postcard(r)),
    }
}

/// Encodes a response in `enc`. JSON: the bare object of the variant (`{id, model, text,
/// finish_reason, usage, timings}` plus `"done"` only when set; `{id, seq, delta}`;
/// `{id, error: {code, message}}`), compact, with `"id": null` when the request had none.
pub fn encode_response(r: &Response, enc: Encoding) -> Vec<u8> {
    match enc {
        Encoding::Text => encode_response_text(r),
        Encoding::Json => json::encode_response(r),
        Encoding::Postcard => encode_response_postcard(r),
    }
}

/// Decodes a response in `enc` (the client side). A JSON object with `error` is an error, one
/// with `seq` a chunk, anything else a reply; unknown fields are ignored for forward
/// compatibility.
pub fn decode_response(payload: &[u8], enc: Encoding) -> Result<Response, WireError> {
    match enc {
        Encoding::Text => decode_response_text(payload),
        Encoding::Json => json::decode_response(payload),
        Encoding::Postcard => decode_response_postcard(payload),
    }
}

/// The `id` of a request that failed to decode, when it can still be read, so the error reply can
/// echo it. Always `None` for text, and for ids over [`MAX_ID_BYTES`].
pub fn salvage_id(payload: &[u8], enc: Encoding) -> Option<String> {
    match enc {
        Encoding::Text => None,
        Encoding::Json => json::salvage_id(payload),
        Encoding::Postcard => salvage_id_postcard(payload),
    }
}

mod json {
    //! JSON codec (uses `serde_json`, which needs std here).

    use super::*;
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
            m.end()
        }
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
        let bad =
            |e: serde_json::Error| WireError::bad_request(format!("invalid JSON response: {e}"));
        if object.contains_key("error") {
            serde_json::from_value(value)
                .map(Response::Error)
                .map_err(bad)
        } else if object.contains_key("seq") {
            serde_json::from_value(value)
                .map(Response::Chunk)
                .map_err(bad)
        } else {
            serde_json::from_value(value)
                .map(Response::Reply)
                .map_err(bad)
        }
    }
}
