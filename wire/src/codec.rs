//! One entry point per direction for every [`Encoding`] (`std`: JSON needs it).

use std::string::String;
use std::vec::Vec;

use crate::json;
use crate::types::{Encoding, Request, Response, WireError};
use crate::*;

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
