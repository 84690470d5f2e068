//! Validation rules shared by JSON and postcard (validation is part of decoding): float
//! ranges, limits on tokens, stop strings, ids and messages.

use crate::{bad_json, invalid, mentions};
use llamabus::mqtt::wire::*;

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
