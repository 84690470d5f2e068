//! Serving requests: text over mosquitto_pub/_sub/_rr, JSON with id echo, correlation data and
//! status, denied reply topics, streaming, agreement with `llamabus complete`, and busy,
//! expired and cancelled requests while the worker is stalled.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::mqtt_support::*;
use crate::{
    ask_greedy, greedy, pub_sub_one, publish_greedy, recv_by_id, recv_stream, rr_answer, rr_cmd,
    setup, BIN,
};
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use serde_json::json;

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
    // The ggml CPU variant the daemon's selector picked (or LLAMABUS_CPU_VARIANT's).
    let variant = llamabus::ggml::cpu::validate(None).unwrap();
    assert_eq!(s["cpu_variant"], variant.name(), "{s}");
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
