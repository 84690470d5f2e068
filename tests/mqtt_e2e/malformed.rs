//! Malformed input: every bad request gets exactly one error reply, named by case, and the
//! daemon keeps serving.

use crate::mqtt_support::*;
use crate::{ask_greedy, setup};
use llamabus::mqtt::wire::{self, Response};
use serde_json::json;

/// One malformed request and the error reply it must get.
struct Case<'a> {
    /// Printed when the case fails.
    name: &'a str,
    payload: Vec<u8>,
    content_type: Option<&'a str>,
    /// The expected error code.
    code: &'a str,
    /// The id the error reply must echo (None when it cannot be salvaged).
    id: Option<&'a str>,
}

fn case<'a>(
    name: &'a str,
    payload: impl Into<Vec<u8>>,
    content_type: Option<&'a str>,
    code: &'a str,
    id: Option<&'a str>,
) -> Case<'a> {
    Case {
        name,
        payload: payload.into(),
        content_type,
        code,
        id,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_gets_one_error_reply_each_and_serving_continues() {
    let (mosq, _d) = setup("[limits]\nmax_payload_bytes = 4096").await;
    let mut c = TestClient::connect(mosq.port, &["llamabus/reply/#"]).await;
    let big = "x".repeat(5000);
    let bad = "bad_request";
    let json = Some("application/json");
    let postcard = Some("application/postcard");
    let cases = [
        case("invalid UTF-8", vec![0xff, 0xfe, b'a'], None, bad, None),
        case("empty payload", "", None, bad, None),
        case("whitespace only", "   \n", None, bad, None),
        // Truncated JSON: the id cannot be salvaged.
        case(
            "truncated JSON",
            "{\"id\": \"j1\", \"prompt\": ",
            None,
            bad,
            None,
        ),
        case(
            "prompt is a number",
            r#"{"id": "j2", "prompt": 5}"#,
            None,
            bad,
            Some("j2"),
        ),
        // NaN is not JSON: the document does not parse, so no id.
        case(
            "NaN temperature",
            r#"{"id": "j3", "prompt": "a", "temperature": NaN}"#,
            None,
            bad,
            None,
        ),
        case(
            "negative max_tokens",
            r#"{"id": "j4", "prompt": "a", "max_tokens": -1}"#,
            None,
            bad,
            Some("j4"),
        ),
        case(
            "negative temperature",
            r#"{"id": "j5", "prompt": "a", "temperature": -0.5}"#,
            None,
            bad,
            Some("j5"),
        ),
        case(
            "unknown field",
            r#"{"id": "j6", "prompt": "a", "frobnicate": 1}"#,
            None,
            bad,
            Some("j6"),
        ),
        case(
            "empty prompt",
            r#"{"id": "j7", "prompt": ""}"#,
            None,
            bad,
            Some("j7"),
        ),
        case(
            "no messages",
            r#"{"id": "j8", "messages": []}"#,
            None,
            bad,
            Some("j8"),
        ),
        case(
            "unknown model",
            r#"{"id": "j9", "prompt": "a", "model": "gpt-9"}"#,
            None,
            "unknown_model",
            Some("j9"),
        ),
        case(
            "max_tokens over the cap",
            r#"{"id": "j10", "prompt": "a", "max_tokens": 100000}"#,
            None,
            bad,
            Some("j10"),
        ),
        case("JSON array", "[1, 2]", json, bad, None),
        case(
            "bad postcard",
            vec![1, 0xff, 0xff, 0xff],
            postcard,
            bad,
            None,
        ),
        case(
            "payload over max_payload_bytes",
            format!("{{\"id\": \"big\", \"prompt\": \"{big}\"}}"),
            None,
            "too_long",
            None,
        ),
    ];
    for (i, case) in cases.iter().enumerate() {
        let name = case.name;
        let corr = format!("m{i}");
        c.publish(
            "llamabus/prompt/bad",
            case.payload.clone(),
            rr("llamabus/reply/bad", &corr, case.content_type),
        )
        .await;
        let m = c.recv(30).await;
        assert_eq!(m.correlation(), Some(corr.as_bytes()), "{name}");
        let enc = wire::sniff(&case.payload, case.content_type);
        match wire::decode_response(&m.payload, enc).unwrap_or_else(|e| panic!("{name}: {e}")) {
            Response::Error(e) => {
                assert_eq!(
                    e.error.code.as_str(),
                    case.code,
                    "{name}: {}",
                    e.error.message
                );
                assert_eq!(e.id.as_deref(), case.id, "{name}");
                assert!(!e.error.message.is_empty(), "{name}");
            }
            other => panic!("{name}: expected an error, got {other:?}"),
        }
        // Exactly one reply per request.
        assert!(c.try_recv(50).await.is_none(), "{name}: a second reply");
    }
    // Still serving.
    let v = ask_greedy(
        &mut c,
        "llamabus/prompt/bad",
        json!({"id": "ok", "prompt": "Hi"}),
        60,
    )
    .await;
    assert_eq!(v["id"], "ok");
    assert!(v.get("error").is_none(), "{v}");
}
