//! The llamabus MQTT protocol: what a request and a response look like as plain text, JSON
//! and postcard. Shared by the daemon and by device firmware: `no_std` with `alloc`; the JSON
//! codec and the [`Encoding`] dispatchers need the `std` feature (on by default). Pure: no I/O,
//! no clocks, no topics.
//!
//! # Encodings
//! - **Text**: the whole UTF-8 payload is the prompt. A single trailing line ending (`\n` or
//!   `\r\n`) is removed, because `mosquitto_pub -s`, `-l` and `echo … |` append one while `-m`
//!   does not; any other whitespace is kept, since it matters to a raw completion
//!   (`"14 + 16 ="` and `"14 + 16 = "` tokenize differently). Replies are the answer text; an
//!   error is `error: <code>: <message>`.
//! - **JSON** (`std`): a [`Request`] object (unknown fields are refused); replies are compact
//!   JSON objects ([`Reply`], [`Chunk`], [`ErrorReply`]).
//! - **postcard**: a versioned envelope, `[WIRE_VERSION] ++ postcard(value)`, where the value is
//!   a [`Request`] or a [`Response`]. postcard writes struct fields in declaration order and enum
//!   variants by index, so **the field order of every type and the variant order of every enum
//!   are the wire format**: append new variants at the end, and change anything else only
//!   together with [`WIRE_VERSION`]. The daemon's golden-byte tests (`tests/wire.rs`) pin it.
//!
//! # On a microcontroller
//! Depend on `llamabus-wire` with `default-features = false`: the types, [`Request::validate`],
//! [`encode_request_postcard`], [`decode_response_postcard`], the text codec and
//! [`split_utf8`] remain, over `core` and `alloc`. `examples/firmware.rs` builds a request and
//! decodes a reply the way firmware does; CI builds the crate for `thumbv7em-none-eabihf`.

#![no_std]
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

#[cfg(feature = "std")]
mod codec;
mod envelope;
mod format;
#[cfg(feature = "std")]
mod json;
mod split;
mod text;
mod types;
mod validate;

#[cfg(feature = "std")]
pub use codec::{decode_request, decode_response, encode_request, encode_response, salvage_id};
pub use envelope::{
    decode_request_postcard, decode_response_postcard, encode_request_postcard,
    encode_response_postcard, salvage_id_postcard,
};
pub use format::FormatRef;
pub use split::{
    chunk_delta_budget, chunk_encoded_len, json_escaped_char_len, json_escaped_len, sniff,
    split_chunk_delta, split_utf8, SplitUtf8, JSON_WORST_CASE_EXPANSION,
};
pub use text::{decode_request_text, decode_response_text, encode_response_text};
pub use types::{
    Chunk, Encoding, ErrorBody, ErrorCode, ErrorReply, FinishReason, Message, Reply, Request,
    Response, Timings, Usage, WireError,
};

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
/// Longest inline `format` (its JSON text), in bytes; the daemon's format limits apply after.
pub const MAX_FORMAT_BYTES: usize = 32 * 1024;
/// Longest `format` name, in bytes.
pub const MAX_FORMAT_NAME_BYTES: usize = 64;
