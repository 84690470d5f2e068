//! The `format` field (added after version 1, version byte kept): version-1 postcard requests
//! still decode, JSON takes a name or an object, and JSON replies carry `json` and `message`.

use crate::fixtures::reply;
use crate::{bad_json, mentions, unhex};
use llamabus::mqtt::wire::*;
use serde_json::json;

#[test]
fn version_1_postcard_requests_still_decode_without_a_format() {
    // Version 1's bytes end after `deadline_ms`: no byte for `format`.
    let v1 = unhex("01 00 01 02 6869 00 00 00 00 00 00 00 00 00 00 00 00 00");
    let r = decode_request(&v1, Encoding::Postcard).unwrap();
    assert_eq!(r, Request::from_prompt("hi"));
    assert_eq!(r.format, None);
    // And a request without a format still encodes to exactly those bytes.
    assert_eq!(encode_request_postcard(&r), v1);
    // A truncated request is still an error, not a request with defaults.
    let cut = &v1[..v1.len() - 3];
    assert!(decode_request(cut, Encoding::Postcard).is_err());
}

#[test]
fn json_format_is_a_name_or_an_object() {
    let r = decode_request(br#"{"prompt":"hi","format":"light"}"#, Encoding::Json).unwrap();
    assert_eq!(r.format, Some(FormatRef::Named("light".into())));
    let text = r#"{"prompt":"hi","format":{"type":"json_schema","schema":{"type":"object","properties":{"t":{"type":"number","minimum":-2.5,"maximum":40}},"required":["t"]},"x":[1,true,null,"a\"b\n"]}}"#;
    let r = decode_request(text.as_bytes(), Encoding::Json).unwrap();
    let Some(FormatRef::Inline(inline)) = &r.format else {
        panic!("{r:?}")
    };
    // The inline text is the same JSON value as the request's `format` object.
    let sent: serde_json::Value = serde_json::from_str(text).unwrap();
    let kept: serde_json::Value = serde_json::from_str(inline).unwrap();
    assert_eq!(kept, sent["format"]);
    // JSON and postcard round trips keep it.
    let json = encode_request(&r, Encoding::Json).unwrap();
    assert_eq!(decode_request(&json, Encoding::Json).unwrap(), r);
    let again: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(again["format"], sent["format"]);
    let pc = encode_request(&r, Encoding::Postcard).unwrap();
    assert_eq!(decode_request(&pc, Encoding::Postcard).unwrap(), r);

    let m = bad_json(r#"{"prompt":"hi","format":5}"#);
    mentions(&m, &["format", "a format name or a format object"]);
    let big = format!(
        r#"{{"prompt":"hi","format":{{"type":"regex","pattern":"{}"}}}}"#,
        "a".repeat(MAX_FORMAT_BYTES)
    );
    let e = decode_request(big.as_bytes(), Encoding::Json).unwrap_err();
    assert_eq!(e.code, ErrorCode::BadFormat, "{e}");
    let e = decode_request(br#"{"prompt":"hi","format":""}"#, Encoding::Json).unwrap_err();
    assert_eq!(e.code, ErrorCode::BadFormat, "{e}");
}

#[test]
fn json_replies_carry_json_and_message_when_set() {
    let mut r = reply(Some(true));
    r.text = r#"{"on": true}"#.into();
    r.json = Some(r#"{"on":true}"#.into());
    let v: serde_json::Value = serde_json::from_slice(&encode_response(
        &Response::Reply(r.clone()),
        Encoding::Json,
    ))
    .unwrap();
    assert_eq!(v["json"], json!({"on": true}));
    assert!(v.get("message").is_none());
    let bytes = encode_response(&Response::Reply(r.clone()), Encoding::Json);
    assert_eq!(
        decode_response(&bytes, Encoding::Json).unwrap(),
        Response::Reply(r.clone())
    );
    r.json = None;
    r.message = Some("the reply ended before the format was complete".into());
    r.finish_reason = FinishReason::Length;
    let v: serde_json::Value = serde_json::from_slice(&encode_response(
        &Response::Reply(r.clone()),
        Encoding::Json,
    ))
    .unwrap();
    assert!(v.get("json").is_none());
    assert_eq!(v["finish_reason"], "length");
    // A client decoding the JSON reply (`llamabus ask`) gets the message back.
    let bytes = encode_response(&Response::Reply(r.clone()), Encoding::Json);
    assert_eq!(
        decode_response(&bytes, Encoding::Json).unwrap(),
        Response::Reply(r.clone())
    );
    assert_eq!(
        v["message"],
        "the reply ended before the format was complete"
    );
    // postcard replies are version 1's: `text` holds the JSON, nothing else is added.
    let mut plain = r.clone();
    plain.message = None;
    assert_eq!(
        encode_response(&Response::Reply(r), Encoding::Postcard),
        encode_response(&Response::Reply(plain), Encoding::Postcard)
    );
}
