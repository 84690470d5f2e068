//! Delivery: postcard on the topic form for MQTT 3.1.1 clients, replies over 10 KiB, shared
//! subscriptions, and reconnecting after a broker restart.

use std::collections::HashSet;
use std::path::PathBuf;

use crate::common::tempdir::TempDir;
use crate::common::tiny::{write_tiny_model, TinySpec, TinyTokenizer};
use crate::mqtt_support::*;
use crate::{ask_greedy, publish_greedy, recv_stream, setup};
use llamabus::ggml::Type;
use llamabus::mqtt::wire::{self, Encoding, Request, Response};
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use serde_json::json;

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
