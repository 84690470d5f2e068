//! Structured answers end to end: a real mosquitto, the in-process daemon with the real model
//! and a `[formats.light]` schema in its configuration. The named format works from JSON, from
//! postcard (field and topic) and from the plain-text topic form; inline formats work from
//! JSON; every reply validates against the schema with an independent validator (the
//! `jsonschema` crate); `max_tokens` before completion says so; each `bad_format` case is
//! answered and the daemon keeps serving; `llamabus ask --format` sends a name or a file.

mod common;
mod mqtt_support;

use std::process::Command;
use std::time::Duration;

use common::tempdir::TempDir;
use llamabus::mqtt::wire::{self, Encoding, FormatRef, Request, Response};
use mqtt_support::*;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use serde_json::{json, Value};

const LIGHT: &str = r#"{"type": "object", "properties": {"action": {"enum": ["on", "off"]}, "room": {"enum": ["kitchen", "hall", "bedroom"]}}, "required": ["action", "room"], "additionalProperties": false}"#;

fn config() -> String {
    format!(
        "[model]\nthreads = 2\nparallel = 2\n[limits]\nmax_tokens_cap = 256\ndefault_max_tokens = 64\n\
         [formats.light]\nschema = '{LIGHT}'\n[formats.pct]\nregex = \"[0-9]{{1,3}}%\"\n"
    )
}

async fn setup() -> (Mosquitto, Daemon) {
    let mosq = Mosquitto::start();
    let d = Daemon::start(settings(&mosq.url(), "n1", &config()));
    wait_status(mosq.port, "llamabus", "n1", "online").await;
    (mosq, d)
}

fn light_validator() -> jsonschema::Validator {
    jsonschema::validator_for(&serde_json::from_str(LIGHT).unwrap()).unwrap()
}

/// A complete JSON reply: `json` equals the parsed `text` and validates against `schema`.
#[track_caller]
fn check_json_reply(v: &Value, schema: &jsonschema::Validator) -> Value {
    assert_eq!(v["finish_reason"], "stop", "{v}");
    assert!(v.get("message").is_none(), "{v}");
    let parsed: Value = serde_json::from_str(v["text"].as_str().unwrap()).expect("text is JSON");
    assert_eq!(v["json"], parsed, "json and text agree");
    let errors: Vec<String> = schema.iter_errors(&parsed).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{v}: {errors:?}");
    parsed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_format_from_json_postcard_and_plain_text() {
    let (mosq, _d) = setup().await;
    let light = light_validator();
    let mut c = TestClient::connect(mosq.port, &["llamabus/reply/#"]).await;

    // JSON, greedy and sampled.
    for (i, sampling) in [
        json!({"temperature": 0}),
        json!({"temperature": 1.0, "seed": 7}),
        json!({"temperature": 0.8, "seed": 11}),
    ]
    .into_iter()
    .enumerate()
    {
        let mut req = json!({"id": format!("j{i}"), "messages": [{"role": "user", "content": "Turn the kitchen light off."}], "format": "light", "max_tokens": 64});
        for (k, x) in sampling.as_object().unwrap() {
            req[k] = x.clone();
        }
        c.publish(
            "llamabus/prompt/kitchen",
            req.to_string(),
            PublishProperties::default(),
        )
        .await;
        let v = c.recv(120).await.json();
        assert_eq!(v["id"], format!("j{i}"));
        check_json_reply(&v, &light);
    }

    // postcard: the `format` field, and the format topic with a version-1 request.
    let mut req = Request {
        id: Some("pc".into()),
        prompt: Some("Switch the hall light on. JSON:".into()),
        max_tokens: Some(64),
        temperature: Some(0.0),
        format: Some(FormatRef::Named("light".into())),
        ..Request::default()
    };
    for topic in [
        "llamabus/pc/prompt/mcu",
        "llamabus/format/light/pc/prompt/mcu",
    ] {
        c.publish(
            topic,
            wire::encode_request(&req, Encoding::Postcard).unwrap(),
            PublishProperties::default(),
        )
        .await;
        let m = c.recv_where(120, |m| m.topic == "llamabus/reply/mcu").await;
        let Response::Reply(r) = wire::decode_response(&m.payload, Encoding::Postcard).unwrap()
        else {
            panic!("{:?}", m.payload)
        };
        assert_eq!(r.finish_reason, wire::FinishReason::Stop, "{topic}: {r:?}");
        let parsed: Value = serde_json::from_str(&r.text).expect("postcard text is the JSON");
        assert!(light.is_valid(&parsed), "{topic}: {}", r.text);
        req.format = None;
    }

    // Plain text on the format topic, with the Mosquitto clients a person would use.
    let port = mosq.port.to_string();
    let (mut sub, lines) = mosquitto_sub(&[
        "-p",
        &port,
        "-t",
        "llamabus/reply/kitchen",
        "-C",
        "1",
        "-W",
        "120",
    ]);
    let (code, _, err) = run_cmd(
        Command::new("mosquitto_pub").args([
            "-p",
            &port,
            "-t",
            "llamabus/format/light/prompt/kitchen",
            "-m",
            "kitchen off",
        ]),
        Duration::from_secs(10),
    );
    assert_eq!(code, Some(0), "{err}");
    let payloads = sub_payloads(lines, Duration::from_secs(120));
    let _ = sub.wait();
    assert_eq!(payloads.len(), 1, "{payloads:?}");
    let parsed: Value = serde_json::from_str(payloads[0].trim()).expect("a JSON answer");
    assert!(light.is_valid(&parsed), "{}", payloads[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_formats_length_and_bad_format() {
    let (mosq, _d) = setup().await;
    let mut c = TestClient::connect(mosq.port, &["llamabus/reply/#"]).await;
    let ask = |id: &str, format: Value, max_tokens: u32| {
        json!({"id": id, "messages": [{"role": "user", "content": "The hall is at 21 degrees. Report it."}],
               "format": format, "max_tokens": max_tokens, "temperature": 0})
        .to_string()
    };

    // An inline schema.
    let schema = json!({"type": "object", "properties": {
        "room": {"type": "string", "maxLength": 12},
        "celsius": {"type": "number", "minimum": -30, "maximum": 50}},
        "required": ["room", "celsius"], "additionalProperties": false});
    c.publish(
        "llamabus/prompt/d1",
        ask("s", json!({"type": "json_schema", "schema": schema}), 64),
        PublishProperties::default(),
    )
    .await;
    let v = c.recv(120).await.json();
    check_json_reply(&v, &jsonschema::validator_for(&schema).unwrap());

    // A regex: no `json` in the reply, the text matches in full.
    c.publish(
        "llamabus/prompt/d1",
        ask(
            "r",
            json!({"type": "regex", "pattern": "(hall|kitchen): -?[0-9]{1,2} C"}),
            16,
        ),
        PublishProperties::default(),
    )
    .await;
    let v = c.recv(120).await.json();
    assert_eq!(v["finish_reason"], "stop", "{v}");
    assert!(v.get("json").is_none(), "{v}");
    let re =
        jsonschema::validator_for(&json!({"pattern": "^(hall|kitchen): -?[0-9]{1,2} C$"})).unwrap();
    assert!(re.is_valid(&v["text"]), "{v}");

    // max_tokens before the format completes: length, no json, a message.
    c.publish(
        "llamabus/prompt/d1",
        ask(
            "len",
            json!({"type": "json_schema", "schema": {"type": "object",
            "properties": {"story": {"type": "string", "minLength": 100}}, "required": ["story"]}}),
            6,
        ),
        PublishProperties::default(),
    )
    .await;
    let v = c.recv(120).await.json();
    assert_eq!(v["finish_reason"], "length", "{v}");
    assert!(v.get("json").is_none(), "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("before the format was complete"),
        "{v}"
    );

    // bad_format, each named, and the daemon serves a normal request afterwards.
    let bad = [
        (
            "unknown",
            ask("u", json!("nosuch"), 8),
            "unknown format `nosuch`",
        ),
        (
            "keyword",
            ask(
                "k",
                json!({"type": "json_schema", "schema": {"type": "array", "uniqueItems": true}}),
                8,
            ),
            "unsupported JSON Schema keyword `uniqueItems`",
        ),
        (
            "compile",
            ask("c", json!({"type": "regex", "pattern": "(unclosed"}), 8),
            "does not compile",
        ),
        (
            "size",
            ask(
                "z",
                json!({"type": "regex", "pattern": "a".repeat(40_000)}),
                8,
            ),
            "over the limit",
        ),
        (
            "shape",
            ask("h", json!({"type": "yaml"}), 8),
            "invalid format",
        ),
    ];
    for (what, payload, needle) in bad {
        c.publish("llamabus/prompt/d1", payload, PublishProperties::default())
            .await;
        let v = c.recv(60).await.json();
        assert_eq!(v["error"]["code"], "bad_format", "{what}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(needle),
            "{what}: {v}"
        );
    }
    // An unknown name on the topic form, in plain text.
    c.publish(
        "llamabus/format/nosuch/prompt/d2",
        "hello",
        PublishProperties::default(),
    )
    .await;
    let m = c.recv_where(60, |m| m.topic == "llamabus/reply/d2").await;
    assert!(
        m.text()
            .starts_with("error: bad_format: unknown format `nosuch`"),
        "{}",
        m.text()
    );

    c.publish(
        "llamabus/prompt/d1",
        json!({"id": "after", "prompt": "14 + 16 =", "max_tokens": 4, "temperature": 0})
            .to_string(),
        PublishProperties::default(),
    )
    .await;
    let v = c.recv(60).await.json();
    assert_eq!(v["id"], "after");
    assert_eq!(v["usage"]["completion_tokens"], 4, "{v}");
}

/// `llamabus ask` (the binary) with `--format`, over the same mosquitto.
fn ask_bin(port: u16, args: &[&str]) -> (Option<i32>, String, String) {
    run_cmd(
        Command::new(env!("CARGO_BIN_EXE_llamabus"))
            .arg("ask")
            .arg("--broker")
            .arg(format!("mqtt://127.0.0.1:{port}"))
            .args(["--temperature", "0"])
            .args(args),
        Duration::from_secs(120),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ask_takes_a_format_name_or_file() {
    let (mosq, _d) = setup().await;
    let light = light_validator();

    // A name from the daemon's configuration.
    let (code, out, err) = ask_bin(
        mosq.port,
        &["--format", "light", "Turn the kitchen light off."],
    );
    assert_eq!(code, Some(0), "{err}");
    let parsed: Value = serde_json::from_str(out.trim()).expect("a JSON answer");
    assert!(light.is_valid(&parsed), "{out}");

    // A schema file, parsed as `complete --format @file` parses it, compiled by the daemon.
    let dir = TempDir::tagged("ask-format");
    let file = dir.join("pct.json");
    std::fs::write(&file, r#"{"type": "regex", "pattern": "[0-9]{1,3}%"}"#).unwrap();
    let at = format!("@{}", file.display());
    let (code, out, err) = ask_bin(mosq.port, &["--format", &at, "How full is the tank?"]);
    assert_eq!(code, Some(0), "{err}");
    let pct = jsonschema::validator_for(&json!({"pattern": "^[0-9]{1,3}%$"})).unwrap();
    assert!(pct.is_valid(&json!(out.trim())), "{out:?}");

    // An answer cut short by max_tokens is printed but fails, saying why.
    let (code, _, err) = ask_bin(
        mosq.port,
        &[
            "--format",
            "light",
            "--max-tokens",
            "2",
            "Turn the hall light on.",
        ],
    );
    assert_ne!(code, Some(0));
    assert!(err.contains("before the format was complete"), "{err}");

    // An unknown name is the daemon's bad_format.
    let (code, _, err) = ask_bin(mosq.port, &["--format", "nosuch", "hi"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("bad_format: unknown format `nosuch`"), "{err}");
}
