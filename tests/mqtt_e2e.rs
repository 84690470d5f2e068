//! End-to-end tests of `llamabus serve` against a real mosquitto (Debian package) on a free
//! loopback port, with the real model (models/SmolLM2-135M-Instruct.Q4_1.gguf). Most tests run
//! the daemon in-process through `llamabus::mqtt::server::run`; the binary tests run
//! `llamabus serve` and `llamabus ask` themselves. Generation is greedy and short.

mod common;
mod mqtt_support;

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::tempdir::TempDir;
use common::tiny::{write_tiny_model, TinySpec, TinyTokenizer};
use llamabus::ggml::Type;
use llamabus::mqtt::wire::{self, Encoding, Request, Response};
use mqtt_support::*;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_llamabus");

fn greedy(extra: Value) -> Vec<u8> {
    let mut v = json!({"temperature": 0, "max_tokens": 12});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v.to_string().into_bytes()
}

/// Publishes the greedy JSON request `greedy(extra)` on `topic`, without MQTT 5 properties.
async fn publish_greedy(c: &TestClient, topic: &str, extra: Value) {
    c.publish(topic, greedy(extra), PublishProperties::default())
        .await;
}

/// [`publish_greedy`], then the next message (the reply) within `secs`, as JSON.
async fn ask_greedy(c: &mut TestClient, topic: &str, extra: Value, secs: u64) -> Value {
    publish_greedy(c, topic, extra).await;
    c.recv(secs).await.json()
}

/// mosquitto + one in-process daemon with `extra` config, ready (status online).
async fn setup(extra: &str) -> (Mosquitto, Daemon) {
    let mosq = Mosquitto::start();
    let d = Daemon::start(settings(&mosq.url(), "n1", extra));
    wait_status(mosq.port, "llamabus", "n1", "online").await;
    (mosq, d)
}

/// mosquitto_sub waits on `llamabus/reply/{device}` for one message while mosquitto_pub sends
/// `text` to `llamabus/prompt/{device}`; returns that one payload. `version` goes before the
/// other client arguments: empty for MQTT 3.1.1, `["-V", "5"]` for MQTT 5.
fn pub_sub_one(port: u16, version: &[&str], device: &str, text: &str) -> String {
    let port = port.to_string();
    let (prompt, reply) = (
        format!("llamabus/prompt/{device}"),
        format!("llamabus/reply/{device}"),
    );
    let mut sub_args = version.to_vec();
    sub_args.extend(["-p", &port, "-t", &reply, "-C", "1", "-W", "60"]);
    let (mut sub, lines) = mosquitto_sub(&sub_args);
    let (code, _, err) = run_cmd(
        Command::new("mosquitto_pub")
            .args(version)
            .args(["-p", &port, "-t", &prompt, "-m", text]),
        Duration::from_secs(10),
    );
    assert_eq!(code, Some(0), "{err}");
    let payloads = sub_payloads(lines, Duration::from_secs(60));
    let _ = sub.wait();
    assert_eq!(payloads.len(), 1, "{payloads:?}");
    payloads.into_iter().next().unwrap()
}

/// mosquitto_rr with `client` arguments (broker, TLS, user): sends `message` on `topic` with
/// `response_topic` as the MQTT 5 response topic and waits `wait_s` for the reply.
fn rr_cmd<S: AsRef<OsStr>>(
    client: &[S],
    topic: &str,
    response_topic: &str,
    message: &str,
    wait_s: u64,
) -> Command {
    let mut cmd = Command::new("mosquitto_rr");
    cmd.args(client).args([
        "-t",
        topic,
        "-e",
        response_topic,
        "-m",
        message,
        "-W",
        &wait_s.to_string(),
    ]);
    cmd
}

/// [`rr_cmd`] that must succeed within 60 s with an answer (not empty, not an error); returns it.
fn rr_answer<S: AsRef<OsStr>>(
    client: &[S],
    topic: &str,
    response_topic: &str,
    message: &str,
) -> String {
    let (code, out, err) = run_cmd(
        &mut rr_cmd(client, topic, response_topic, message, 60),
        Duration::from_secs(70),
    );
    assert_eq!(code, Some(0), "mosquitto_rr: {out} {err}");
    assert!(
        !out.trim().is_empty() && !out.starts_with("error:"),
        "{out}"
    );
    out
}

/// mosquitto_sub with `client` arguments: one message on `topic` within `wait_s`.
fn sub_one_cmd(client: &[String], topic: &str, wait_s: u64) -> Command {
    let mut cmd = Command::new("mosquitto_sub");
    cmd.args(client)
        .args(["-t", topic, "-C", "1", "-W", &wait_s.to_string()]);
    cmd
}

/// Receives the stream of request `id` up to its final message, checking that every chunk
/// carries the id and that `seq` counts up from 0, and that the final message has
/// `"done": true` and the chunks' deltas as its `text`. Returns (that text, the number of
/// chunks, the final message).
async fn recv_stream(c: &mut TestClient, id: &str, secs: u64) -> (String, u64, Value) {
    let mut text = String::new();
    let mut seq = 0;
    let fin = loop {
        let v = c.recv(secs).await.json();
        assert_eq!(v["id"], id, "{v}");
        if v.get("done").is_some() {
            break v;
        }
        assert_eq!(v["seq"], seq, "{v}");
        seq += 1;
        text.push_str(v["delta"].as_str().unwrap());
    };
    assert_eq!(fin["done"], true, "{fin}");
    // No payloads in the message: streams here may be tens of KiB.
    assert!(
        fin["text"].as_str() == Some(text.as_str()),
        "{id}: the chunks do not reassemble to the final text"
    );
    (text, seq, fin)
}

/// The next `n` JSON replies, each within `secs`, by their `id`.
async fn recv_by_id(c: &mut TestClient, n: usize, secs: u64) -> HashMap<String, Value> {
    let mut got = HashMap::new();
    for _ in 0..n {
        let v = c.recv(secs).await.json();
        got.insert(v["id"].as_str().unwrap().to_owned(), v);
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_text_via_mosquitto_pub_sub_and_rr() {
    let (mosq, _d) =
        setup("[mqtt]\nallowed_reply_prefixes = [\"llamabus/reply/#\", \"some/#\"]").await;

    // mosquitto_pub / mosquitto_sub (MQTT 3.1.1): default reply topic, plain text.
    let answer = pub_sub_one(mosq.port, &[], "dev1", "14 + 16 =");
    assert!(
        !answer.trim().is_empty() && !answer.starts_with("error:"),
        "{answer:?}"
    );

    // mosquitto_rr exactly as the issue writes it (MQTT 5 response topic + correlation data).
    let port = mosq.port.to_string();
    rr_answer(
        &["-p", &port],
        "llamabus/prompt/x",
        "some/topic",
        "14 + 16 =",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_id_echo_correlation_data_and_status() {
    let (mosq, mut d) = setup("").await;
    let mut c = TestClient::connect(mosq.port, &["llamabus/reply/#"]).await;
    c.publish(
        "llamabus/prompt/t1",
        greedy(json!({"id": "abc-1", "prompt": "14 + 16 ="})),
        rr("llamabus/reply/t1-rr", "corr-42", None),
    )
    .await;
    let m = c.recv(60).await;
    assert_eq!(m.topic, "llamabus/reply/t1-rr");
    assert_eq!(m.correlation(), Some(&b"corr-42"[..]));
    assert_eq!(m.props.content_type.as_deref(), Some("application/json"));
    let v = m.json();
    assert_eq!(v["id"], "abc-1");
    assert_eq!(v["model"], "SmolLM2-135M-Instruct.Q4_1");
    assert!(!v["text"].as_str().unwrap().is_empty(), "{v}");
    assert_eq!(v["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 12);
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 3);
    assert!(v["timings"]["tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(v.get("done").is_none());

    // JSON without MQTT 5 properties: default reply topic, no correlation data.
    publish_greedy(
        &c,
        "llamabus/prompt/t2",
        json!({"id": "x2", "prompt": "Hi"}),
    )
    .await;
    let m = c.recv(60).await;
    assert_eq!(m.topic, "llamabus/reply/t2");
    assert_eq!(m.correlation(), None);
    assert_eq!(m.json()["id"], "x2");

    // Status: retained, with the model and the counters.
    let s = wait_status(mosq.port, "llamabus", "n1", "online").await;
    assert_eq!(s["node"], "n1");
    assert_eq!(s["models"][0]["architecture"], "llama");
    assert_eq!(s["models"][0]["quantization"], "Q4_1");
    assert!(s["models"][0]["parameters"].as_u64().unwrap() > 100_000_000);
    assert_eq!(s["queue"]["capacity"], 8);
    for key in ["evaluated", "cached"] {
        assert!(
            s["models"][0]["prompt_tokens"][key].is_u64(),
            "status lacks prompt_tokens.{key}: {s}"
        );
    }
    for key in [
        "in_flight",
        "served",
        "failed",
        "last_tokens_per_s",
        "uptime_s",
        "version",
    ] {
        assert!(s.get(key).is_some(), "status lacks {key}: {s}");
    }
    // Clean shutdown publishes the retained offline status.
    d.stop();
    let s = wait_status(mosq.port, "llamabus", "n1", "offline").await;
    assert_eq!(s["node"], "n1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_topics_outside_the_allowed_prefixes_are_denied() {
    let (mosq, _d) = setup("").await;
    let mut c = TestClient::connect(mosq.port, &["llamabus/reply/#", "devices/#"]).await;
    // JSON reply_to (MQTT 3.1.1 style).
    c.publish(
        "llamabus/prompt/evil",
        json!({"id": "r1", "prompt": "x", "reply_to": "devices/lamp/cmd"}).to_string(),
        PublishProperties::default(),
    )
    .await;
    let m = c.recv(30).await;
    assert_eq!(m.topic, "llamabus/reply/evil");
    assert_eq!(m.json()["error"]["code"], "reply_topic_denied");
    assert_eq!(m.json()["id"], "r1");
    // MQTT 5 Response Topic: outside, wildcard, `$`.
    for (i, rt) in ["devices/lamp/cmd", "llamabus/reply/+", "$SYS/x"]
        .iter()
        .enumerate()
    {
        let corr = format!("c{i}");
        c.publish("llamabus/prompt/evil", "hello", rr(rt, &corr, None))
            .await;
        let m = c.recv(30).await;
        assert_eq!(m.topic, "llamabus/reply/evil", "{rt}");
        assert_eq!(
            m.text().split(':').nth(1).map(str::trim),
            Some("reply_topic_denied"),
            "{rt}"
        );
    }
    // mosquitto_rr with the default config: denied, so it hears nothing.
    let port = mosq.port.to_string();
    let (code, _, _) = run_cmd(
        &mut rr_cmd(
            &["-p", &port],
            "llamabus/prompt/evil",
            "some/topic",
            "hi",
            2,
        ),
        Duration::from_secs(10),
    );
    assert_ne!(code, Some(0));
    let m = c.recv(30).await;
    assert!(
        m.text().starts_with("error: reply_topic_denied"),
        "{}",
        m.text()
    );
    // Nothing ever reached devices/#.
    while let Some(m) = c.try_recv(300).await {
        assert!(!m.topic.starts_with("devices/"), "published on {}", m.topic);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_reassembles_to_the_non_streamed_text() {
    let (mosq, _d) = setup("").await;
    let mut c = TestClient::connect(mosq.port, &["llamabus/reply/#"]).await;
    let prompt = "The three primary colours are";
    let plain = ask_greedy(
        &mut c,
        "llamabus/prompt/s",
        json!({"id": "plain", "prompt": prompt, "max_tokens": 24}),
        60,
    )
    .await;
    publish_greedy(
        &c,
        "llamabus/prompt/s",
        json!({"id": "st", "prompt": prompt, "max_tokens": 24, "stream": true}),
    )
    .await;
    let (text, chunks, _) = recv_stream(&mut c, "st", 60).await;
    assert!(chunks >= 2, "expected several chunks, got {chunks}");
    assert_eq!(plain["text"].as_str().unwrap(), text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_prompt_equals_llamabus_complete() {
    let (mosq, _d) = setup("").await;
    let prompt = "The capital of France is";
    let (code, out, err) = run_cmd(
        Command::new(BIN)
            .args([
                "complete",
                "--temperature",
                "0",
                "--max-tokens",
                "20",
                "--threads",
                "1",
            ])
            .arg("--model")
            .arg(model_path())
            .arg(prompt),
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(0), "{err}");
    // The in-process latency figures that scripts/bench-mqtt.sh compares against.
    assert!(
        err.contains("first token") && err.contains("last token"),
        "{err}"
    );
    let expected = out.strip_suffix('\n').unwrap();
    let mut c = TestClient::connect(mosq.port, &["llamabus/reply/#"]).await;
    let v = ask_greedy(
        &mut c,
        "llamabus/prompt/g",
        json!({"prompt": prompt, "max_tokens": 20}),
        60,
    )
    .await;
    assert_eq!(v["text"].as_str().unwrap(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_expired_and_cancelled_while_the_worker_is_stalled() {
    let (mosq, d) = setup("[limits]\nqueue_capacity = 2").await;
    let mut c = TestClient::connect(mosq.port, &["llamabus/reply/#"]).await;
    // The idle worker sleeps (it notices within 250 ms): queued jobs wait.
    d.engine.stall_for_test(Duration::from_secs(3));
    tokio::time::sleep(Duration::from_millis(400)).await;
    // q1: expires through MQTT 5 Message Expiry; q2: cancelled while queued; b1, b2: busy.
    let expiry = PublishProperties {
        message_expiry_interval: Some(1),
        ..PublishProperties::default()
    };
    c.publish(
        "llamabus/prompt/q",
        greedy(json!({"id": "q1", "prompt": "a"})),
        expiry,
    )
    .await;
    publish_greedy(&c, "llamabus/prompt/q", json!({"id": "q2", "prompt": "b"})).await;
    publish_greedy(&c, "llamabus/prompt/q", json!({"id": "b1", "prompt": "c"})).await;
    publish_greedy(&c, "llamabus/prompt/q", json!({"id": "b2", "prompt": "d"})).await;
    let t0 = Instant::now();
    let mut got = recv_by_id(&mut c, 2, 10).await;
    // Busy arrives at once, long before the worker wakes.
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert_eq!(got["b1"]["error"]["code"], "busy");
    assert_eq!(got["b2"]["error"]["code"], "busy");
    c.publish("llamabus/cancel/q", "q2", PublishProperties::default())
        .await;
    got.extend(recv_by_id(&mut c, 2, 20).await);
    assert_eq!(got["q1"]["error"]["code"], "expired", "{}", got["q1"]);
    assert_eq!(got["q2"]["error"]["code"], "cancelled", "{}", got["q2"]);

    // JSON deadline_ms, behind a stalled worker.
    d.engine.stall_for_test(Duration::from_millis(1500));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let v = ask_greedy(
        &mut c,
        "llamabus/prompt/q",
        json!({"id": "dl", "prompt": "a", "deadline_ms": 200}),
        20,
    )
    .await;
    assert_eq!(v["error"]["code"], "expired", "{v}");

    // Cancel while generating: ends within a token with finish_reason "cancelled".
    let first = ask_greedy(
        &mut c,
        "llamabus/prompt/q",
        json!({"id": "long", "prompt": "Once upon a time", "max_tokens": 500, "stream": true}),
        30,
    )
    .await;
    assert_eq!(first["seq"], 0);
    c.publish("llamabus/cancel/q", "long", PublishProperties::default())
        .await;
    let fin = c
        .recv_where(30, |m| m.json().get("done").is_some())
        .await
        .json();
    assert_eq!(fin["finish_reason"], "cancelled", "{fin}");
    assert!(fin["usage"]["completion_tokens"].as_u64().unwrap() < 500);
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postcard_on_the_topic_form_for_mqtt_311_clients() {
    let (mosq, _d) = setup("").await;
    let mut c = TestClient::connect(mosq.port, &["llamabus/reply/#"]).await;
    let req = Request {
        id: Some("pc1".into()),
        prompt: Some("14 + 16 =".into()),
        max_tokens: Some(6),
        temperature: Some(0.0),
        ..Request::default()
    };
    let payload = wire::encode_request(&req, Encoding::Postcard).unwrap();
    // No MQTT 5 properties at all, as a 3.1.1 client sends it.
    c.publish(
        "llamabus/pc/prompt/mcu",
        payload,
        PublishProperties::default(),
    )
    .await;
    let m = c.recv(60).await;
    assert_eq!(m.topic, "llamabus/reply/mcu");
    assert_eq!(m.payload[0], wire::WIRE_VERSION);
    match wire::decode_response(&m.payload, Encoding::Postcard).unwrap() {
        Response::Reply(r) => {
            assert_eq!(r.id.as_deref(), Some("pc1"));
            assert_eq!(r.usage.completion_tokens, 6);
        }
        other => panic!("{other:?}"),
    }
}

/// A generated tiny model whose every generated token is a 64-byte piece and which never
/// produces EOS (see `TinySpec::long_pieces`), so reply size is set by `max_tokens` alone.
fn long_reply_model(dir: &TempDir) -> PathBuf {
    let spec = TinySpec {
        tokenizer: TinyTokenizer::Spm,
        long_pieces: true,
        n_ctx_train: 1024,
        ..TinySpec::new(Type::Q8_0)
    };
    let path = dir.join("long-pieces.gguf");
    write_tiny_model(&spec, &path);
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_over_10_kib_arrives_whole() {
    let dir = TempDir::new();
    let mosq = Mosquitto::start();
    let mut s = settings(
        &mosq.url(),
        "n1",
        "[limits]\nmax_tokens_cap = 400\ndefault_max_tokens = 300",
    );
    s.models[0].path = long_reply_model(&dir);
    let _d = Daemon::start(s);
    wait_status(mosq.port, "llamabus", "n1", "online").await;
    let mut c = TestClient::connect(mosq.port, &["llamabus/reply/#"]).await;
    // 300 tokens of >= 64 bytes: ~19 KiB, above rumqttc's 10 KiB default packet limit.
    let want = 10 * 1024;

    // Plain text (the model's default sampling): one message carrying the whole answer.
    c.publish(
        "llamabus/prompt/long",
        b"hello".to_vec(),
        PublishProperties::default(),
    )
    .await;
    let plain = c.recv(60).await.text();
    assert!(!plain.starts_with("error: "), "{plain}");
    assert!(plain.len() > want, "only {} bytes", plain.len());

    // JSON, greedy: one reply.
    let v = ask_greedy(
        &mut c,
        "llamabus/prompt/long",
        json!({"id": "long", "prompt": "hello", "max_tokens": 300}),
        60,
    )
    .await;
    assert_eq!(v["id"], "long");
    assert_eq!(v["finish_reason"], "length", "{v}");
    let greedy_text = v["text"].as_str().unwrap().to_owned();
    assert!(greedy_text.len() > want, "only {} bytes", greedy_text.len());

    // Streamed: the chunks reassemble to the same text.
    publish_greedy(
        &c,
        "llamabus/prompt/long",
        json!({"id": "ls", "prompt": "hello", "max_tokens": 300, "stream": true}),
    )
    .await;
    let (text, _, fin) = recv_stream(&mut c, "ls", 60).await;
    assert_eq!(fin["text"].as_str().unwrap(), greedy_text);
    assert!(
        text == greedy_text,
        "the chunks do not reassemble to the final text"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_in_one_share_group_answer_each_request_once() {
    let mosq = Mosquitto::start();
    let extra = "[mqtt]\nshare_group = \"boards\"";
    let a = Daemon::start(settings(&mosq.url(), "a", extra));
    let b = Daemon::start(settings(&mosq.url(), "b", extra));
    wait_status(mosq.port, "llamabus", "a", "online").await;
    wait_status(mosq.port, "llamabus", "b", "online").await;
    let mut c = TestClient::connect(mosq.port, &["llamabus/reply/#"]).await;
    let n = 8;
    for i in 0..n {
        publish_greedy(
            &c,
            "llamabus/prompt/sg",
            json!({"id": format!("r{i}"), "prompt": "Hi", "max_tokens": 3}),
        )
        .await;
    }
    let mut seen = HashSet::new();
    for _ in 0..n {
        let v = c.recv(60).await.json();
        assert!(v.get("error").is_none(), "{v}");
        assert!(
            seen.insert(v["id"].as_str().unwrap().to_owned()),
            "twice: {v}"
        );
    }
    assert!(c.try_recv(1500).await.is_none(), "an extra reply");
    let (sa, sb) = (a.engine.stats().served, b.engine.stats().served);
    assert_eq!(sa + sb, n);
    assert!(sa > 0 && sb > 0, "a served {sa}, b served {sb}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_reconnects_and_resubscribes_after_a_broker_restart() {
    let (mut mosq, _d) = setup("").await;
    let hi = |id: &str| json!({"id": id, "prompt": "Hi", "max_tokens": 3});
    {
        let mut c = TestClient::connect(mosq.port, &["llamabus/reply/#"]).await;
        let v = ask_greedy(&mut c, "llamabus/prompt/r", hi("before"), 60).await;
        assert_eq!(v["id"], "before");
    }
    mosq.restart();
    // No persistence: the retained status is gone until the daemon is back and subscribed.
    wait_status(mosq.port, "llamabus", "n1", "online").await;
    let mut c = TestClient::connect(mosq.port, &["llamabus/reply/#"]).await;
    let v = ask_greedy(&mut c, "llamabus/prompt/r", hi("after"), 60).await;
    assert_eq!(v["id"], "after");
}

/// mosquitto_rr/_sub arguments for the TLS broker: its CA, a client certificate and, with a
/// `user`, that user's password.
fn tls_client_args(port: u16, tls: &TlsFiles, user: Option<&str>) -> Vec<String> {
    let mut a: Vec<String> = ["-h", "localhost", "-p", &port.to_string(), "--cafile"]
        .map(String::from)
        .to_vec();
    a.push(tls.ca.display().to_string());
    a.extend(["--cert".into(), tls.client_cert.display().to_string()]);
    a.extend(["--key".into(), tls.client_key.display().to_string()]);
    if let Some(user) = user {
        a.extend(["-u", user, "-P", TlsFiles::PASSWORD].map(String::from));
    }
    a
}

/// `[mqtt]` settings for the TLS broker: `ca_file` (which CA to trust), our client
/// certificate, the daemon's user and its password file.
fn tls_daemon_config(tls: &TlsFiles, ca_file: &std::path::Path) -> String {
    format!(
        "[mqtt]\nusername = \"{}\"\npassword_file = \"{}\"\nca_file = \"{}\"\n\
         client_cert = \"{}\"\nclient_key = \"{}\"\n",
        TlsFiles::USER,
        tls.password_file.display(),
        ca_file.display(),
        tls.client_cert.display(),
        tls.client_key.display()
    )
}

/// mosquitto with TLS, passwords and the ACL, plus an in-process daemon connected to it
/// (online). Returns the daemon user's client arguments for mosquitto_rr/_sub.
async fn tls_setup(node: &str) -> (Mosquitto, TlsFiles, Daemon, Vec<String>) {
    let (mosq, tls) = Mosquitto::start_tls();
    let url = format!("mqtts://localhost:{}", mosq.port);
    let d = Daemon::start(settings(&url, node, &tls_daemon_config(&tls, &tls.ca)));
    let client = tls_client_args(mosq.port, &tls, Some(TlsFiles::USER));
    // The retained status says online once the daemon has connected and subscribed.
    let (code, out, err) = run_cmd(
        &mut sub_one_cmd(&client, &format!("llamabus/status/{node}"), 60),
        Duration::from_secs(70),
    );
    assert_eq!(code, Some(0), "{out} {err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["state"],
        "online"
    );
    (mosq, tls, d, client)
}

/// mosquitto_rr with `client` args: prompt on `prompt/{device}`, reply on `reply/{device}`.
fn tls_rr(client: &[String], device: &str, prompt: &str) -> String {
    rr_answer(
        client,
        &format!("llamabus/prompt/{device}"),
        &format!("llamabus/reply/{device}"),
        prompt,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtts_with_a_client_certificate_and_a_password_file() {
    let (mosq, tls, _d, client) = tls_setup("tls").await;
    tls_rr(&client, "tls", "14 + 16 =");

    // The same broker refuses a client without the password: authentication is really on.
    let anon = tls_client_args(mosq.port, &tls, None);
    let (code, _, _) = run_cmd(
        &mut sub_one_cmd(&anon, "llamabus/status/tls", 5),
        Duration::from_secs(10),
    );
    assert_ne!(code, Some(0), "an anonymous client was let in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_keeps_each_device_to_its_own_replies() {
    let (mosq, tls, _d, _) = tls_setup("acl").await;
    let [kitchen, garage] =
        TlsFiles::DEVICES.map(|user| tls_client_args(mosq.port, &tls, Some(user)));
    // The kitchen listens on every reply topic; the broker's ACL lets through only its own.
    let mut sub_args: Vec<&str> = kitchen.iter().map(String::as_str).collect();
    sub_args.extend(["-t", "llamabus/reply/#", "-C", "1", "-W", "60"]);
    let (mut sub, lines) = mosquitto_sub(&sub_args);
    // The garage is answered first, then the kitchen; the kitchen's first message is its own.
    tls_rr(&garage, "garage", "Hi");
    let own = tls_rr(&kitchen, "kitchen", "Hello");
    let got = sub_payloads(lines, Duration::from_secs(30));
    let _ = sub.wait();
    assert_eq!(
        got,
        vec![own.trim_end().to_owned()],
        "the kitchen saw another reply"
    );
    // And a device cannot publish into another device's prompt topic.
    let (code, out, err) = run_cmd(
        &mut rr_cmd(
            &kitchen,
            "llamabus/prompt/garage",
            "llamabus/reply/kitchen",
            "Hi",
            5,
        ),
        Duration::from_secs(15),
    );
    assert_ne!(
        code,
        Some(0),
        "answered through another device's topic: {out} {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_broker_certificate_is_refused_with_a_clear_error() {
    let (mosq, tls) = Mosquitto::start_tls();
    // A CA of its own that did not sign the broker's certificate.
    let other = TempDir::new();
    let other_ca = other.join("other-ca.pem");
    let (code, out, err) = run_cmd(
        Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .args(["-subj", "/CN=untrusted CA", "-keyout"])
            .arg(other.join("other-ca.key"))
            .arg("-out")
            .arg(&other_ca),
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(0), "{out} {err}");
    let cfg = other.join("llamabus.toml");
    std::fs::write(&cfg, tls_daemon_config(&tls, &other_ca)).unwrap();
    let mut child = Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(&cfg)
        .arg("--model")
        .arg(model_path())
        .arg("--broker")
        .arg(format!("mqtts://localhost:{}", mosq.port))
        .env("LLAMABUS_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("llamabus serve");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let line = loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(l) if l.contains("cannot connect") => break l,
            Ok(_) => {}
            Err(e) => panic!("no connection error logged: {e}"),
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        line.contains(&format!("mqtts://localhost:{}", mosq.port))
            && line.contains("certificate")
            && line.contains("UnknownIssuer"),
        "{line}"
    );
}

// ---- The binary: `llamabus serve` and `llamabus ask` ----

struct Serve(std::process::Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve_bin(args: &[&str], config: &str) -> Serve {
    let dir = std::env::temp_dir().join(format!(
        "llamabus-e2e-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("llamabus.toml");
    std::fs::write(&cfg, config).unwrap();
    let child = Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(&cfg)
        .arg("--model")
        .arg(model_path())
        .args(args)
        .env("LLAMABUS_LOG", "warn")
        .spawn()
        .expect("llamabus serve");
    Serve(child)
}

fn ask(port: u16, args: &[&str]) -> (Option<i32>, String, String) {
    run_cmd(
        Command::new(BIN)
            .arg("ask")
            .arg("--broker")
            .arg(format!("mqtt://127.0.0.1:{port}"))
            .args(args),
        Duration::from_secs(90),
    )
}

fn sigterm(child: &std::process::Child) {
    let (code, _, _) = run_cmd(
        Command::new("kill").args(["-TERM", &child.id().to_string()]),
        Duration::from_secs(5),
    );
    assert_eq!(code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_binary_with_mosquitto_ask_and_last_will() {
    let mosq = Mosquitto::start();
    let mut serve = serve_bin(
        &["--broker", &mosq.url(), "--prefix", "lb"],
        "[node]\nname = \"bin\"\n[model]\nthreads = 1\ncontext = 512\n[limits]\nmax_prompt_tokens = 256\ndefault_max_tokens = 12\nmax_tokens_cap = 64\n",
    );
    wait_status(mosq.port, "lb", "bin", "online").await;
    let port = mosq.port;
    // Plain answer.
    let (code, out, err) = ask(port, &["--prefix", "lb", "14 + 16 ="]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!out.trim().is_empty(), "{out}");
    // Streamed answer, printed as it arrives; JSON lines with --json.
    let (code, out, err) = ask(
        port,
        &["--prefix", "lb", "--stream", "--temperature", "0", "Hi"],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(!out.trim().is_empty());
    let (code, out, err) = ask(
        port,
        &[
            "--prefix",
            "lb",
            "--json",
            "--stream",
            "--temperature",
            "0",
            "Hi",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines.len() >= 2 && lines.last().unwrap()["done"] == true,
        "{out}"
    );
    // --timings: client-side latency next to the daemon's own times, on stderr.
    let (code, out, err) = ask(
        port,
        &[
            "--prefix",
            "lb",
            "--stream",
            "--timings",
            "--max-tokens",
            "4",
            "Hi",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(!out.contains("timings"), "timings belong on stderr: {out}");
    let line = err
        .lines()
        .find(|l| l.starts_with("timings: "))
        .unwrap_or_else(|| panic!("{err}"));
    for part in [
        "publish->first token",
        "publish->last token",
        "daemon: queue",
        "outside the engine",
    ] {
        assert!(line.contains(part), "{part} missing: {line}");
    }
    // An error reply exits non-zero and says why.
    let (code, _, err) = ask(port, &["--prefix", "lb", "--max-tokens", "1000", "Hi"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("bad_request"), "{err}");
    // No daemon on that prefix: timeout, non-zero.
    let (code, _, err) = ask(port, &["--prefix", "nobody", "--timeout", "1", "Hi"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("no answer"), "{err}");
    // SIGKILL: the broker publishes the Last Will (retained offline).
    let _ = serve.0.kill();
    let _ = serve.0.wait();
    let s = wait_status(port, "lb", "bin", "offline").await;
    assert_eq!(s["node"], "bin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_binary_on_the_embedded_broker() {
    let p5 = free_port();
    let serve = serve_bin(
        &[],
        &format!(
            "[node]\nname = \"emb\"\n[mqtt]\nembedded_listen = \"127.0.0.1:{p5}\"\n\
             [model]\nthreads = 1\ncontext = 512\n[limits]\nmax_prompt_tokens = 256\ndefault_max_tokens = 8\nmax_tokens_cap = 64\n"
        ),
    );
    wait_status(p5, "llamabus", "emb", "online").await;
    // `ask` (MQTT 5 response topic + correlation data through rumqttd).
    let (code, out, err) = ask(p5, &["14 + 16 ="]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!out.trim().is_empty());
    // mosquitto_rr (MQTT 5) against rumqttd.
    let p = p5.to_string();
    rr_answer(
        &["-p", &p],
        "llamabus/prompt/x",
        "llamabus/reply/x",
        "14 + 16 =",
    );
    // mosquitto_pub / mosquitto_sub speaking MQTT 5 (the embedded broker has no 3.1.1).
    pub_sub_one(p5, &["-V", "5"], "old", "Hello");
    // SIGTERM: clean exit.
    let mut serve = serve;
    sigterm(&serve.0);
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = serve.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "serve did not exit on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}
