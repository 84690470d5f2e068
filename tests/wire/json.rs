//! JSON shapes: field names, omitted and null fields, snake_case codes, round trips.

use crate::fixtures::{chat_request, chunk, error_reply, full_request, reply};
use crate::json_value;
use llamabus::mqtt::wire::*;
use serde_json::json;

#[test]
fn json_reply_shape() {
    let bytes = encode_response(&Response::Reply(reply(None)), Encoding::Json);
    assert_eq!(
        std::str::from_utf8(&bytes).unwrap(),
        r#"{"id":"r1","model":"tiny","text":"30","finish_reason":"stop","usage":{"prompt_tokens":7,"completion_tokens":2},"timings":{"queue_ms":0.5,"prompt_ms":12.25,"generate_ms":40.0,"tokens_per_s":50.0}}"#
    );
}

#[test]
fn json_streamed_final_reply_has_done_true() {
    let mut r = reply(Some(true));
    r.finish_reason = FinishReason::Length;
    let bytes = encode_response(&Response::Reply(r), Encoding::Json);
    assert_eq!(
        json_value(&bytes),
        json!({
            "id": "r1", "model": "tiny", "text": "30", "finish_reason": "length",
            "usage": {"prompt_tokens": 7, "completion_tokens": 2},
            "timings": {"queue_ms": 0.5, "prompt_ms": 12.25, "generate_ms": 40.0, "tokens_per_s": 50.0},
            "done": true
        })
    );
}

#[test]
fn json_chunk_shape() {
    let bytes = encode_response(&Response::Chunk(chunk()), Encoding::Json);
    assert_eq!(
        std::str::from_utf8(&bytes).unwrap(),
        r#"{"id":"r1","seq":3,"delta":" 3€"}"#
    );
}

#[test]
fn json_error_shape() {
    let bytes = encode_response(&Response::Error(error_reply()), Encoding::Json);
    assert_eq!(
        std::str::from_utf8(&bytes).unwrap(),
        r#"{"id":"r1","error":{"code":"busy","message":"queue is full"}}"#
    );
}

#[test]
fn json_error_codes_are_snake_case() {
    let names: Vec<String> = ErrorCode::ALL
        .into_iter()
        .map(|c| {
            serde_json::to_value(c)
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        names,
        [
            "bad_request",
            "too_long",
            "busy",
            "unknown_model",
            "reply_topic_denied",
            "expired",
            "cancelled",
            "internal",
            "bad_format"
        ]
    );
    for c in ErrorCode::ALL {
        assert_eq!(c.to_string(), names[c as usize]);
        assert_eq!(ErrorCode::from_name(c.as_str()), Some(c));
    }
}

#[test]
fn json_reply_without_id_has_null_id() {
    let r = Response::Chunk(Chunk {
        id: None,
        seq: 0,
        delta: "a".into(),
    });
    assert_eq!(
        encode_response(&r, Encoding::Json),
        br#"{"id":null,"seq":0,"delta":"a"}"#
    );
}

#[test]
fn json_responses_round_trip() {
    for r in [
        Response::Reply(reply(None)),
        Response::Reply(reply(Some(true))),
        Response::Chunk(chunk()),
        Response::Error(error_reply()),
    ] {
        let bytes = encode_response(&r, Encoding::Json);
        assert_eq!(decode_response(&bytes, Encoding::Json).unwrap(), r);
    }
}

#[test]
fn json_request_round_trips_and_omits_absent_fields() {
    let bytes = encode_request(&chat_request(), Encoding::Json).unwrap();
    assert_eq!(
        std::str::from_utf8(&bytes).unwrap(),
        r#"{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}]}"#
    );
    assert_eq!(
        decode_request(&bytes, Encoding::Json).unwrap(),
        chat_request()
    );
    let bytes = encode_request(&full_request(), Encoding::Json).unwrap();
    assert_eq!(
        decode_request(&bytes, Encoding::Json).unwrap(),
        full_request()
    );
}

#[test]
fn json_request_with_issue_field_names_decodes() {
    let r = decode_request(
        br#" {"id":"a","prompt":"hi","model":"m","max_tokens":5,"temperature":0,"top_k":1,
             "top_p":1,"min_p":0.1,"repeat_penalty":1.1,"seed":7,"stop":["."],"stream":false,
             "reply_to":"llamabus/reply/d","deadline_ms":100}
"#,
        Encoding::Json,
    )
    .unwrap();
    assert_eq!(r.id.as_deref(), Some("a"));
    assert_eq!(r.temperature, Some(0.0));
    assert_eq!(r.stop, Some(vec![".".to_owned()]));
    assert_eq!(r.deadline_ms, Some(100));
}

#[test]
fn json_null_fields_are_absent() {
    let r = decode_request(br#"{"prompt":"hi","model":null}"#, Encoding::Json).unwrap();
    assert_eq!(r, Request::from_prompt("hi"));
}
