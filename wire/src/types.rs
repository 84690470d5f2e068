//! The request and response types, the error codes and the encodings.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use serde::{Deserialize, Serialize};

use crate::format::FormatRef;

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
    /// The reply must follow this format. Added after version 1 as the last field: a
    /// version-1 postcard request (which ends before it) still decodes, with `None`, and a
    /// request without a format encodes to the same bytes as in version 1.
    pub format: Option<FormatRef>,
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
    /// JSON formats that completed: the reply parsed, as compact JSON text; JSON replies carry
    /// it as the value `json` (equal to `text`). Not in postcard, whose `text` is that JSON.
    #[serde(skip)]
    pub json: Option<String>,
    /// Why a formatted reply is not a valid answer (e.g. `max_tokens` ran out first); JSON only.
    #[serde(skip)]
    pub message: Option<String>,
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
    /// The request's `format` does not compile, is over a limit, uses an unsupported JSON
    /// Schema keyword, or names a format the configuration does not define.
    BadFormat,
}

impl ErrorCode {
    /// Every code, in wire order.
    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::BadRequest,
        ErrorCode::TooLong,
        ErrorCode::Busy,
        ErrorCode::UnknownModel,
        ErrorCode::ReplyTopicDenied,
        ErrorCode::Expired,
        ErrorCode::Cancelled,
        ErrorCode::Internal,
        ErrorCode::BadFormat,
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
            ErrorCode::BadFormat => "bad_format",
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
