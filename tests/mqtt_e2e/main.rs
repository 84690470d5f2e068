//! End-to-end tests of `llamabus serve` against a real mosquitto (Debian package) on a free
//!
//! One file per theme; this one holds the helpers they share.

#[path = "../common/mod.rs"]
mod common;
#[path = "../mqtt_support/mod.rs"]
mod mqtt_support;

mod binary;
mod delivery;
mod malformed;
mod serving;
mod tls;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::process::Command;
use std::time::Duration;

use crate::mqtt_support::*;
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
