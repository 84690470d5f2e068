//! The plain-text codec.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::types::{ErrorBody, ErrorCode, ErrorReply, Reply, Request, Response, WireError};

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

pub(crate) fn utf8(payload: &[u8]) -> Result<&str, WireError> {
    core::str::from_utf8(payload).map_err(|e| {
        WireError::bad_request(format!(
            "payload is not valid UTF-8 at byte {}",
            e.valid_up_to()
        ))
    })
}
