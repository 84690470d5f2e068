//! Malformed postcard payloads, and salvaging the id from broken requests.

use crate::fixtures::full_request;
use crate::{bad, mentions};
use llamabus::mqtt::wire::*;

#[test]
fn postcard_wrong_version() {
    let mut bytes = encode_request_postcard(&Request::from_prompt("hi"));
    bytes[0] = 2;
    mentions(
        &bad(&bytes, Encoding::Postcard),
        &["unsupported wire version 2"],
    );
}

#[test]
fn postcard_empty_payload() {
    mentions(
        &bad(b"", Encoding::Postcard),
        &["empty", "wire version byte"],
    );
}

#[test]
fn postcard_truncated() {
    let bytes = encode_request_postcard(&full_request());
    for len in 1..bytes.len() {
        let m = bad(&bytes[..len], Encoding::Postcard);
        mentions(&m, &["malformed postcard request"]);
    }
}

#[test]
fn postcard_trailing_bytes() {
    let mut bytes = encode_request_postcard(&Request::from_prompt("hi"));
    // The first extra byte reads as the newer `format` field (`None`); the rest trails.
    bytes.extend_from_slice(&[0, 0, 0]);
    mentions(&bad(&bytes, Encoding::Postcard), &["2 trailing bytes"]);
}

#[test]
fn postcard_invalid_utf8_string() {
    // version, id None, prompt Some(len 1, 0xff)
    let m = bad(&[WIRE_VERSION, 0, 1, 1, 0xff], Encoding::Postcard);
    mentions(&m, &["malformed postcard request"]);
}

#[test]
fn postcard_huge_length_prefix_does_not_allocate_or_panic() {
    // messages: Some(vec of u32::MAX entries) with no data behind it.
    let m = bad(
        &[WIRE_VERSION, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 0x0f],
        Encoding::Postcard,
    );
    mentions(&m, &["malformed postcard request"]);
}

#[test]
fn postcard_response_errors() {
    assert!(decode_response(&[9, 0], Encoding::Postcard)
        .unwrap_err()
        .message
        .contains("unsupported wire version 9"));
    assert!(decode_response(&[WIRE_VERSION, 7], Encoding::Postcard).is_err());
}

#[test]
fn salvage_id_from_broken_requests() {
    let mut bytes = encode_request_postcard(&Request {
        id: Some("abc".into()),
        ..Request::default()
    });
    bytes.truncate(6);
    assert_eq!(
        salvage_id(&bytes, Encoding::Postcard).as_deref(),
        Some("abc")
    );
    assert_eq!(
        salvage_id(br#"{"id":"q7","prompt":5}"#, Encoding::Json).as_deref(),
        Some("q7")
    );
    assert_eq!(salvage_id(br#"{"id":7}"#, Encoding::Json), None);
    assert_eq!(salvage_id(b"{bad", Encoding::Json), None);
    let long = format!(r#"{{"id":"{}"}}"#, "x".repeat(200));
    assert_eq!(salvage_id(long.as_bytes(), Encoding::Json), None);
    assert_eq!(salvage_id(b"hello", Encoding::Text), None);
}
