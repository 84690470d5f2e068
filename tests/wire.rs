//! The MQTT wire format: golden postcard bytes, JSON shapes, every malformed-input rule, text mode,
//! splitting and sniffing. Pure; no broker needed.

use llamabus::mqtt::wire::*;
use serde_json::json;

// ---- helpers ----

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

// ---- fixtures ----

fn full_request() -> Request {
    Request {
        id: Some("r1".into()),
        prompt: Some("14 + 16 =".into()),
        messages: None,
        model: Some("tiny".into()),
        max_tokens: Some(32),
        temperature: Some(0.5),
        top_k: Some(40),
        top_p: Some(0.75),
        min_p: None,
        repeat_penalty: Some(1.0),
        seed: Some(300),
        stop: Some(vec!["\n".into()]),
        stream: Some(true),
        reply_to: Some("llamabus/reply/x".into()),
        deadline_ms: Some(5000),
        format: None,
    }
}

fn chat_request() -> Request {
    Request {
        messages: Some(vec![
            Message {
                role: "system".into(),
                content: "Be brief.".into(),
            },
            Message {
                role: "user".into(),
                content: "Hi".into(),
            },
        ]),
        ..Request::default()
    }
}

fn reply(done: Option<bool>) -> Reply {
    Reply {
        id: Some("r1".into()),
        model: "tiny".into(),
        text: "30".into(),
        finish_reason: FinishReason::Stop,
        usage: Usage {
            prompt_tokens: 7,
            completion_tokens: 2,
        },
        timings: Timings {
            queue_ms: 0.5,
            prompt_ms: 12.25,
            generate_ms: 40.0,
            tokens_per_s: 50.0,
        },
        done,
        json: None,
        message: None,
    }
}

fn chunk() -> Chunk {
    Chunk {
        id: Some("r1".into()),
        seq: 3,
        delta: " 3€".into(),
    }
}

fn error_reply() -> ErrorReply {
    ErrorReply {
        id: Some("r1".into()),
        error: ErrorBody {
            code: ErrorCode::Busy,
            message: "queue is full".into(),
        },
    }
}

// ---- golden postcard bytes ----

/// Checks the exact envelope bytes of a request and that they decode back to it.
#[track_caller]
fn golden_request(r: &Request, expected_hex: &str) {
    let bytes = encode_request_postcard(r);
    assert_eq!(
        hex(&bytes),
        hex(&unhex(expected_hex)),
        "wire format changed"
    );
    assert_eq!(decode_request(&bytes, Encoding::Postcard).unwrap(), *r);
    assert_eq!(encode_request(r, Encoding::Postcard).unwrap(), bytes);
}

#[track_caller]
fn golden_response(r: &Response, expected_hex: &str) {
    let bytes = encode_response(r, Encoding::Postcard);
    assert_eq!(
        hex(&bytes),
        hex(&unhex(expected_hex)),
        "wire format changed"
    );
    assert_eq!(decode_response(&bytes, Encoding::Postcard).unwrap(), *r);
}

#[test]
fn golden_postcard_full_request() {
    golden_request(
        &full_request(),
        "01
         01 02 7231
         01 09 3134202b203136203d
         00
         01 04 74696e79
         01 20
         01 0000003f
         01 28
         01 0000403f
         00
         01 0000803f
         01 ac02
         01 01 01 0a
         01 01
         01 10 6c6c616d616275732f7265706c792f78
         01 8827",
    );
}

#[test]
fn golden_postcard_chat_request() {
    golden_request(
        &chat_request(),
        "01
         00
         00
         01 02 06 73797374656d 09 4265206272696566 2e
               04 75736572 02 4869
         00 00 00 00 00 00 00 00 00 00 00 00",
    );
}

/// The postcard bytes of `reply(done)` up to its last field, `done`.
const REPLY_BEFORE_DONE_HEX: &str = "
    01 00
    01 02 7231
    04 74696e79
    02 3330
    00
    07 02
    000000000000e03f 0000000000802840 0000000000004440 0000000000004940";

#[test]
fn golden_postcard_reply() {
    golden_response(
        &Response::Reply(reply(None)),
        &format!("{REPLY_BEFORE_DONE_HEX} 00"),
    );
}

#[test]
fn golden_postcard_streamed_final_reply() {
    // The same reply with `done: Some(true)`: only the last field differs.
    golden_response(
        &Response::Reply(reply(Some(true))),
        &format!("{REPLY_BEFORE_DONE_HEX} 01 01"),
    );
}

#[test]
fn golden_postcard_chunk() {
    golden_response(
        &Response::Chunk(chunk()),
        "01 01
         01 02 7231
         03
         05 2033e282ac",
    );
}

#[test]
fn golden_postcard_error() {
    golden_response(
        &Response::Error(error_reply()),
        "01 02
         01 02 7231
         02 0d 717565756520697320 66756c6c",
    );
}

#[test]
fn postcard_error_codes_and_finish_reasons_keep_their_indices() {
    for (i, code) in ErrorCode::ALL.into_iter().enumerate() {
        let r = Response::Error(ErrorReply {
            id: None,
            error: ErrorBody {
                code,
                message: String::new(),
            },
        });
        assert_eq!(
            encode_response(&r, Encoding::Postcard),
            vec![WIRE_VERSION, 2, 0, i as u8, 0],
            "{code}"
        );
    }
    for (i, reason) in [
        FinishReason::Stop,
        FinishReason::Length,
        FinishReason::Cancelled,
    ]
    .into_iter()
    .enumerate()
    {
        let r = Reply {
            finish_reason: reason,
            ..Reply::default()
        };
        let bytes = encode_response(&Response::Reply(r), Encoding::Postcard);
        // version, variant, id None, model "", text "", finish_reason
        assert_eq!(bytes[5], i as u8);
    }
}

#[test]
fn postcard_round_trips_defaults_and_every_field() {
    let mut r = full_request();
    r.min_p = Some(0.05);
    r.prompt = None;
    r.messages = chat_request().messages;
    let bytes = encode_request_postcard(&r);
    assert_eq!(decode_request(&bytes, Encoding::Postcard).unwrap(), r);
    for resp in [
        Response::Reply(Reply::default()),
        Response::Chunk(Chunk::default()),
    ] {
        let bytes = encode_response(&resp, Encoding::Postcard);
        assert_eq!(decode_response(&bytes, Encoding::Postcard).unwrap(), resp);
    }
}

// ---- JSON shapes ----

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

// ---- malformed input: text ----

#[test]
fn text_invalid_utf8() {
    let m = bad(b"ab\xffcd", Encoding::Text);
    mentions(&m, &["not valid UTF-8", "byte 2"]);
}

#[test]
fn text_empty_prompt() {
    mentions(&bad(b"", Encoding::Text), &["prompt is empty"]);
}

#[test]
fn text_whitespace_only_prompt() {
    mentions(&bad(b" \t\r\n", Encoding::Text), &["prompt is empty"]);
    mentions(&bad(b"\n", Encoding::Text), &["prompt is empty"]);
}

// ---- malformed input: JSON ----

#[test]
fn json_invalid_utf8_inside_string() {
    let m = bad(b"{\"prompt\":\"h\xc3\x28\"}", Encoding::Json);
    mentions(&m, &["not valid UTF-8", "byte 12"]);
}

#[test]
fn json_bad_syntax() {
    let m = bad_json(r#"{"prompt": "hi",}"#);
    mentions(
        &m,
        &["invalid JSON request", "trailing comma", "line 1 column 17"],
    );
    assert!(!m.contains('?'), "{m}");
}

#[test]
fn json_unterminated() {
    let m = bad_json(r#"{"prompt": "hi"#);
    mentions(&m, &["invalid JSON request", "EOF"]);
}

#[test]
fn json_trailing_characters() {
    let m = bad_json(r#"{"prompt": "hi"} x"#);
    mentions(&m, &["trailing characters", "line 1 column"]);
}

#[test]
fn json_array_instead_of_object() {
    // serde would otherwise accept a struct written as an array.
    mentions(
        &bad_json(r#"[null, "hi"]"#),
        &["must be an object", "array"],
    );
}

#[test]
fn json_string_instead_of_object() {
    mentions(&bad_json(r#""hi""#), &["must be an object", "string"]);
}

#[test]
fn json_number_instead_of_object() {
    mentions(&bad_json("42"), &["must be an object", "number"]);
    mentions(&bad_json("-1"), &["must be an object", "number"]);
}

#[test]
fn json_null_and_bool_instead_of_object() {
    mentions(&bad_json("null"), &["must be an object", "null"]);
    mentions(&bad_json("true"), &["must be an object", "boolean"]);
}

#[test]
fn json_empty_payload() {
    mentions(&bad_json("  \n"), &["JSON request is empty"]);
}

#[test]
fn json_wrong_type_max_tokens() {
    let m = bad_json(r#"{"prompt":"hi","max_tokens":"ten"}"#);
    mentions(
        &m,
        &[
            "`max_tokens`",
            "invalid type",
            "\"ten\"",
            "u32",
            "line 1 column",
        ],
    );
}

#[test]
fn json_wrong_type_temperature() {
    let m = bad_json(r#"{"prompt":"hi","temperature":"hot"}"#);
    mentions(&m, &["`temperature`", "invalid type", "\"hot\""]);
}

#[test]
fn json_wrong_type_nested_message_names_the_path() {
    let m = bad_json(r#"{"messages":[{"role":"user","content":"a"},{"role":5,"content":"b"}]}"#);
    mentions(&m, &["`messages[1].role`", "invalid type"]);
}

#[test]
fn json_negative_max_tokens() {
    let m = bad_json(r#"{"prompt":"hi","max_tokens":-5}"#);
    mentions(&m, &["`max_tokens`", "-5"]);
}

#[test]
fn json_huge_numbers() {
    mentions(
        &bad_json(r#"{"prompt":"hi","max_tokens":1e99}"#),
        &["`max_tokens`", "invalid type"],
    );
    mentions(
        &bad_json(r#"{"prompt":"hi","max_tokens":99999999999}"#),
        &["`max_tokens`", "99999999999"],
    );
    mentions(
        &bad_json(r#"{"prompt":"hi","seed":123456789012345678901234567890}"#),
        &["`seed`"],
    );
    // f32 overflow becomes infinity, which validation refuses by name. (With serde_json's
    // `float_roundtrip`, which the `jsonschema` dev-dependency turns on in test builds only,
    // the parser refuses it first, still naming the field.)
    let m = bad_json(r#"{"prompt":"hi","temperature":1e99}"#);
    mentions(&m, &["`temperature`"]);
    assert!(
        m.contains("finite") && m.contains("out of range for a 32-bit float")
            || m.contains("number out of range"),
        "{m}"
    );
}

#[test]
fn json_negative_float_out_of_range() {
    mentions(
        &bad_json(r#"{"prompt":"hi","temperature":-0.5}"#),
        &["`temperature`", "-0.5"],
    );
}

#[test]
fn json_unknown_field() {
    let m = bad_json(r#"{"prompt":"hi","temprature":0.2}"#);
    mentions(&m, &["unknown field", "`temprature`", "`temperature`"]);
}

#[test]
fn json_unknown_field_in_message() {
    let m = bad_json(r#"{"messages":[{"role":"user","content":"a","name":"bob"}]}"#);
    mentions(&m, &["unknown field", "`name`"]);
}

#[test]
fn json_duplicate_field() {
    let m = bad_json(r#"{"prompt":"a","prompt":"b"}"#);
    mentions(&m, &["duplicate field", "`prompt`"]);
}

#[test]
fn json_empty_prompt() {
    mentions(&bad_json(r#"{"prompt":""}"#), &["`prompt` is empty"]);
    mentions(&bad_json(r#"{"prompt":"  \n"}"#), &["`prompt` is empty"]);
}

#[test]
fn json_both_prompt_and_messages() {
    let m = bad_json(r#"{"prompt":"a","messages":[{"role":"user","content":"b"}]}"#);
    mentions(&m, &["`prompt`", "`messages`", "mutually exclusive"]);
}

#[test]
fn json_neither_prompt_nor_messages() {
    let m = bad_json(r#"{"id":"x"}"#);
    mentions(&m, &["neither `prompt` nor `messages`"]);
}

#[test]
fn json_empty_messages() {
    mentions(&bad_json(r#"{"messages":[]}"#), &["`messages` is empty"]);
}

#[test]
fn json_bad_role() {
    let m =
        bad_json(r#"{"messages":[{"role":"user","content":"a"},{"role":"bot","content":"b"}]}"#);
    mentions(&m, &["`messages[1].role`", "\"bot\"", "assistant"]);
}

#[test]
fn json_empty_message_content() {
    let m = bad_json(r#"{"messages":[{"role":"user","content":""}]}"#);
    mentions(&m, &["`messages[0].content` is empty"]);
}

#[test]
fn json_missing_message_content() {
    let m = bad_json(r#"{"messages":[{"role":"user"}]}"#);
    mentions(&m, &["missing field `content`"]);
}

// ---- malformed input: validation rules (shared by JSON and postcard) ----

#[test]
fn nan_temperature_via_postcard() {
    let r = Request {
        temperature: Some(f32::NAN),
        ..Request::from_prompt("hi")
    };
    let m = invalid(&r);
    mentions(&m, &["`temperature`", "finite", "NaN"]);
}

#[test]
fn infinite_and_nan_floats_are_refused() {
    for (field, r) in [
        (
            "top_p",
            Request {
                top_p: Some(f32::INFINITY),
                ..Request::from_prompt("hi")
            },
        ),
        (
            "min_p",
            Request {
                min_p: Some(f32::NAN),
                ..Request::from_prompt("hi")
            },
        ),
        (
            "repeat_penalty",
            Request {
                repeat_penalty: Some(f32::NEG_INFINITY),
                ..Request::from_prompt("hi")
            },
        ),
    ] {
        mentions(&invalid(&r), &[&format!("`{field}`"), "finite"]);
    }
}

#[test]
fn out_of_range_top_p() {
    mentions(
        &bad_json(r#"{"prompt":"hi","top_p":1.5}"#),
        &["`top_p`", "1.5", "0..=1"],
    );
}

#[test]
fn float_range_edges() {
    let ok = |r: Request| r.validate().unwrap();
    ok(Request {
        temperature: Some(0.0),
        top_p: Some(1.0),
        min_p: Some(0.0),
        repeat_penalty: Some(100.0),
        ..Request::from_prompt("hi")
    });
    mentions(
        &invalid(&Request {
            temperature: Some(100.5),
            ..Request::from_prompt("hi")
        }),
        &["`temperature`"],
    );
    mentions(
        &invalid(&Request {
            min_p: Some(-0.1),
            ..Request::from_prompt("hi")
        }),
        &["`min_p`"],
    );
    mentions(
        &invalid(&Request {
            repeat_penalty: Some(0.0),
            ..Request::from_prompt("hi")
        }),
        &["`repeat_penalty`", "greater than 0"],
    );
}

#[test]
fn zero_max_tokens() {
    mentions(
        &bad_json(r#"{"prompt":"hi","max_tokens":0}"#),
        &["`max_tokens`", "at least 1"],
    );
}

#[test]
fn too_many_stop_strings() {
    let stops: Vec<String> = (0..9).map(|i| i.to_string()).collect();
    let m = invalid(&Request {
        stop: Some(stops),
        ..Request::from_prompt("hi")
    });
    mentions(&m, &["`stop`", "9", "at most 8"]);
}

#[test]
fn empty_and_overlong_stop_strings() {
    mentions(
        &bad_json(r#"{"prompt":"hi","stop":["a",""]}"#),
        &["`stop[1]` is empty"],
    );
    let m = invalid(&Request {
        stop: Some(vec!["x".repeat(257)]),
        ..Request::from_prompt("hi")
    });
    mentions(&m, &["`stop[0]`", "257 bytes", "at most 256"]);
    Request {
        stop: Some(vec!["x".repeat(256); 8]),
        ..Request::from_prompt("hi")
    }
    .validate()
    .unwrap();
}

#[test]
fn overlong_id() {
    let m = invalid(&Request {
        id: Some("i".repeat(129)),
        ..Request::from_prompt("hi")
    });
    mentions(&m, &["`id`", "129 bytes", "at most 128"]);
    Request {
        id: Some("i".repeat(128)),
        ..Request::from_prompt("hi")
    }
    .validate()
    .unwrap();
}

#[test]
fn overlong_reply_to_and_model() {
    mentions(
        &invalid(&Request {
            reply_to: Some("r".repeat(257)),
            ..Request::from_prompt("hi")
        }),
        &["`reply_to`", "at most 256"],
    );
    mentions(
        &invalid(&Request {
            model: Some("m".repeat(129)),
            ..Request::from_prompt("hi")
        }),
        &["`model`", "at most 128"],
    );
    mentions(
        &bad_json(r#"{"prompt":"hi","model":""}"#),
        &["`model` is empty"],
    );
    mentions(
        &bad_json(r#"{"prompt":"hi","reply_to":""}"#),
        &["`reply_to` is empty"],
    );
}

#[test]
fn too_many_messages() {
    let msg = Message {
        role: "user".into(),
        content: "a".into(),
    };
    let r = Request {
        messages: Some(vec![msg.clone(); 257]),
        ..Request::default()
    };
    mentions(&invalid(&r), &["`messages`", "257", "at most 256"]);
    Request {
        messages: Some(vec![msg; 256]),
        ..Request::default()
    }
    .validate()
    .unwrap();
}

// ---- malformed input: postcard ----

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

// ---- text mode ----

#[test]
fn text_prompt_keeps_whitespace_but_drops_one_trailing_newline() {
    let p = |b: &[u8]| decode_request(b, Encoding::Text).unwrap().prompt.unwrap();
    assert_eq!(p(b"14 + 16 ="), "14 + 16 =");
    assert_eq!(p(b"14 + 16 = "), "14 + 16 = ");
    assert_eq!(p(b"14 + 16 =\n"), "14 + 16 =");
    assert_eq!(p(b"14 + 16 =\r\n"), "14 + 16 =");
    assert_eq!(p(b"a\n\n"), "a\n");
    assert_eq!(p(b"  {x}  "), "  {x}  ");
    let r = decode_request("日本語".as_bytes(), Encoding::Text).unwrap();
    assert_eq!(r, Request::from_prompt("日本語"));
}

#[test]
fn text_error_starts_with_error_prefix() {
    for code in ErrorCode::ALL {
        let r = Response::Error(ErrorReply {
            id: Some("x".into()),
            error: ErrorBody {
                code,
                message: "something went wrong".into(),
            },
        });
        let text = String::from_utf8(encode_response(&r, Encoding::Text)).unwrap();
        assert!(text.starts_with("error: "), "{text}");
        assert_eq!(text, format!("error: {code}: something went wrong"));
        let back = decode_response(text.as_bytes(), Encoding::Text).unwrap();
        let Response::Error(back) = back else {
            panic!("{back:?}")
        };
        assert_eq!(back.error.code, code);
        assert_eq!(back.error.message, "something went wrong");
    }
}

#[test]
fn text_reply_and_chunk_are_the_bare_text() {
    assert_eq!(
        encode_response(&Response::Reply(reply(None)), Encoding::Text),
        b"30"
    );
    assert_eq!(
        encode_response(&Response::Chunk(chunk()), Encoding::Text),
        " 3€".as_bytes()
    );
    let back = decode_response(b"30", Encoding::Text).unwrap();
    assert_eq!(
        back,
        Response::Reply(Reply {
            text: "30".into(),
            ..Reply::default()
        })
    );
}

#[test]
fn text_request_encoding_carries_only_a_prompt() {
    assert_eq!(
        encode_request(&Request::from_prompt("hi"), Encoding::Text).unwrap(),
        b"hi"
    );
    let e = encode_request(&full_request(), Encoding::Text).unwrap_err();
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert!(encode_request(&chat_request(), Encoding::Text).is_err());
}

#[test]
fn wire_error_display_and_reply() {
    let e = WireError::bad_request("`prompt` is empty");
    assert_eq!(e.to_string(), "bad_request: `prompt` is empty");
    let reply = e.to_reply(Some("id9".into()));
    assert_eq!(
        encode_response(&Response::Error(reply), Encoding::Json),
        br#"{"id":"id9","error":{"code":"bad_request","message":"`prompt` is empty"}}"#
    );
}

// ---- splitting ----

/// Deterministic xorshift generator, so the property tests need no extra crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const ALPHABET: &[char] = &[
    'a', 'Z', ' ', '0', '"', '\\', '\n', '\r', '\t', '\u{0}', '\u{1}', '\u{1f}', '\u{7f}', 'é',
    'ß', '€', '中', '語', '\u{2028}', '🦀', '😀', '𝄞',
];

fn random_string(rng: &mut Rng) -> String {
    let len = rng.below(60);
    (0..len)
        .map(|_| ALPHABET[rng.below(ALPHABET.len())])
        .collect()
}

#[test]
fn split_utf8_property() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..5000 {
        let s = random_string(&mut rng);
        let max = 4 + rng.below(20);
        let pieces: Vec<&str> = split_utf8(&s, max).collect();
        assert_eq!(pieces.concat(), s);
        for p in &pieces {
            assert!(!p.is_empty());
            assert!(p.len() <= max, "{p:?} longer than {max}");
        }
        // Greedy: each piece but the last is full up to the next character boundary.
        for w in pieces.windows(2) {
            let next = w[1].chars().next().unwrap();
            assert!(w[0].len() + next.len_utf8() > max);
        }
    }
}

#[test]
fn split_utf8_edges() {
    assert_eq!(split_utf8("", 4).count(), 0);
    assert_eq!(split_utf8("abc", 10).collect::<Vec<_>>(), ["abc"]);
    assert_eq!(split_utf8("🦀🦀a", 5).collect::<Vec<_>>(), ["🦀", "🦀a"]);
    // Below 4 bytes a long character still comes out whole, alone.
    assert_eq!(split_utf8("a🦀b", 2).collect::<Vec<_>>(), ["a", "🦀", "b"]);
    assert_eq!(split_utf8("ab", 0).collect::<Vec<_>>(), ["a", "b"]);
}

#[test]
fn json_escaped_len_matches_serde_json() {
    let mut rng = Rng(42);
    for _ in 0..2000 {
        let s = random_string(&mut rng);
        let quoted = serde_json::to_string(&s).unwrap();
        assert_eq!(json_escaped_len(&s), quoted.len() - 2, "{s:?}");
    }
    for b in 0u8..0x80 {
        let s = (b as char).to_string();
        assert_eq!(
            json_escaped_len(&s),
            serde_json::to_string(&s).unwrap().len() - 2,
            "{b:#x}"
        );
    }
}

#[test]
fn chunk_encoded_len_is_exact() {
    let mut rng = Rng(7);
    let ids = [None, Some("r1"), Some("q\"\n"), Some("ü")];
    for _ in 0..2000 {
        let delta = random_string(&mut rng);
        let id = ids[rng.below(ids.len())];
        let seq = match rng.below(3) {
            0 => rng.below(200) as u32,
            1 => u32::MAX,
            _ => rng.next() as u32,
        };
        for enc in [Encoding::Text, Encoding::Json, Encoding::Postcard] {
            let r = Response::Chunk(Chunk {
                id: id.map(str::to_owned),
                seq,
                delta: delta.clone(),
            });
            assert_eq!(
                chunk_encoded_len(id, seq, &delta, enc),
                encode_response(&r, enc).len(),
                "{enc:?} {id:?} {seq} {delta:?}"
            );
        }
    }
}

#[test]
fn split_chunk_delta_fits_every_piece_exactly() {
    let mut rng = Rng(1234);
    for _ in 0..2000 {
        let delta = random_string(&mut rng);
        let id = if rng.below(2) == 0 {
            None
        } else {
            Some("req-1")
        };
        let max = 50 + rng.below(80);
        for enc in [Encoding::Text, Encoding::Json, Encoding::Postcard] {
            let pieces = split_chunk_delta(&delta, id, max, enc).expect("fits");
            assert_eq!(pieces.concat(), delta);
            for p in &pieces {
                assert!(!p.is_empty());
                assert!(chunk_encoded_len(id, u32::MAX, p, enc) <= max);
            }
            // Greedy: no piece could have taken the next character.
            for w in pieces.windows(2) {
                let next = w[1].chars().next().unwrap();
                let longer = format!("{}{next}", w[0]);
                assert!(chunk_encoded_len(id, u32::MAX, &longer, enc) > max);
            }
        }
    }
}

#[test]
fn split_chunk_delta_reports_no_room() {
    assert_eq!(
        split_chunk_delta("", Some("id"), 10, Encoding::Json),
        Some(vec![])
    );
    // {"id":null,"seq":4294967295,"delta":""} is 39 bytes; a control char needs 6 more.
    assert_eq!(split_chunk_delta("a", None, 39, Encoding::Json), None);
    assert_eq!(
        split_chunk_delta("a", None, 40, Encoding::Json),
        Some(vec!["a"])
    );
    assert_eq!(split_chunk_delta("\u{1}", None, 44, Encoding::Json), None);
    assert_eq!(
        split_chunk_delta("\u{1}", None, 45, Encoding::Json),
        Some(vec!["\u{1}"])
    );
    assert_eq!(split_chunk_delta("🦀", None, 3, Encoding::Text), None);
}

#[test]
fn chunk_delta_budget_is_conservative() {
    let mut rng = Rng(99);
    for _ in 0..2000 {
        let delta = random_string(&mut rng);
        let max = 70 + rng.below(200);
        for enc in [Encoding::Text, Encoding::Json, Encoding::Postcard] {
            let budget = chunk_delta_budget(max, Some("r1"), enc);
            assert!(budget >= 4, "{enc:?} {max}");
            for p in split_utf8(&delta, budget) {
                assert!(chunk_encoded_len(Some("r1"), u32::MAX, p, enc) <= max);
            }
        }
    }
    // All control characters: the JSON worst case is reached exactly.
    let worst = "\u{1}".repeat(1000);
    let budget = chunk_delta_budget(1000, None, Encoding::Json);
    assert_eq!(budget, (1000 - 39) / JSON_WORST_CASE_EXPANSION);
    let piece = split_utf8(&worst, budget).next().unwrap();
    assert!(chunk_encoded_len(None, u32::MAX, piece, Encoding::Json) <= 1000);
    assert_eq!(chunk_delta_budget(10, None, Encoding::Json), 0);
}

// ---- sniffing ----

#[test]
fn sniff_by_content_type() {
    assert_eq!(sniff(b"hello", Some("application/json")), Encoding::Json);
    assert_eq!(
        sniff(b"hello", Some("Application/JSON; charset=utf-8")),
        Encoding::Json
    );
    assert_eq!(
        sniff(b"{", Some("application/postcard")),
        Encoding::Postcard
    );
    assert_eq!(sniff(b"{\"a\":1}", Some("text/plain")), Encoding::Text);
    assert_eq!(
        sniff(b"{x}", Some("text/plain; charset=utf-8")),
        Encoding::Text
    );
}

#[test]
fn sniff_by_payload() {
    assert_eq!(sniff(b"{\"prompt\":\"hi\"}", None), Encoding::Json);
    assert_eq!(sniff(b" \r\n\t{", None), Encoding::Json);
    assert_eq!(sniff(b"14 + 16 =", None), Encoding::Text);
    assert_eq!(sniff(b"[1,2]", None), Encoding::Text);
    assert_eq!(sniff(b"", None), Encoding::Text);
    assert_eq!(sniff(b"\x01\x00", None), Encoding::Text);
    // Unknown content types fall back to the payload; postcard is never guessed.
    assert_eq!(
        sniff(b"{}", Some("application/octet-stream")),
        Encoding::Json
    );
    assert_eq!(
        sniff(&encode_request_postcard(&Request::from_prompt("hi")), None),
        Encoding::Text
    );
}

#[test]
fn encoding_content_types_sniff_back() {
    for enc in [Encoding::Text, Encoding::Json, Encoding::Postcard] {
        assert_eq!(sniff(b"{", Some(enc.content_type())), enc);
    }
}

// ---- format (added after version 1) ----

#[test]
fn golden_postcard_request_with_a_format() {
    let mut r = Request::from_prompt("hi");
    r.format = Some(FormatRef::Named("light".into()));
    golden_request(
        &r,
        "01 00 01 02 6869 00 00 00 00 00 00 00 00 00 00 00 00 00
         01 00 05 6c69676874",
    );
    r.format = Some(FormatRef::Inline(r#"{"type":"json"}"#.into()));
    golden_request(
        &r,
        "01 00 01 02 6869 00 00 00 00 00 00 00 00 00 00 00 00 00
         01 01 0f 7b2274797065223a226a736f6e227d",
    );
}

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
