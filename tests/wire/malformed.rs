//! Malformed text and JSON payloads: each is refused as `bad_request` with a message naming
//! the problem.

use crate::{bad, bad_json, mentions};
use llamabus::mqtt::wire::*;

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
