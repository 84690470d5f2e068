//! The MQTT wire format: golden postcard bytes, JSON shapes, every malformed-input rule, text mode,
//! splitting and sniffing, one file each. Pure; no broker needed. This file holds the helpers
//! they share.

mod fixtures;
mod format;
mod golden;
mod json;
mod malformed;
mod postcard;
mod rules;
mod sniff;
mod split;
mod text;

use llamabus::mqtt::wire::*;

/// Decodes `payload`, expecting `bad_request`, and returns the message.
fn bad(payload: &[u8], enc: Encoding) -> String {
    match decode_request(payload, enc) {
        Ok(r) => panic!("expected bad_request for {payload:?}, decoded {r:?}"),
        Err(e) => {
            assert_eq!(e.code, ErrorCode::BadRequest, "{e}");
            e.message
        }
    }
}

fn bad_json(text: &str) -> String {
    bad(text.as_bytes(), Encoding::Json)
}

/// Asserts that `message` contains every needle.
#[track_caller]
fn mentions(message: &str, needles: &[&str]) {
    for n in needles {
        assert!(message.contains(n), "message {message:?} lacks {n:?}");
    }
}

/// Validates `r`, expecting `bad_request`, and returns the message.
fn invalid(r: &Request) -> String {
    let e = r.validate().expect_err("expected a validation error");
    assert_eq!(e.code, ErrorCode::BadRequest);
    // The same rules apply to postcard payloads (validation is part of decoding).
    let e2 = decode_request(&encode_request_postcard(r), Encoding::Postcard).unwrap_err();
    assert_eq!(e, e2);
    e.message
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn json_value(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap()
}
