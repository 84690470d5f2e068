//! `llamabus serve` as systemd runs it: the real binary with a test-owned `NOTIFY_SOCKET` (a
//! unix datagram socket) and `WATCHDOG_USEC`, against a real mosquitto and the real model.
//! Covers readiness, status lines, the heartbeat-gated watchdog, SIGTERM drain, a second
//! SIGTERM, and SIGHUP reloads.

mod common;
mod mqtt_support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mqtt_support::*;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_llamabus");
/// 1 s: pings every 500 ms.
const WATCHDOG_USEC: &str = "1000000";

fn notify_env(n: &NotifySocket) -> Vec<(&'static str, String)> {
    vec![
        ("NOTIFY_SOCKET", n.path.display().to_string()),
        ("WATCHDOG_USEC", WATCHDOG_USEC.to_owned()),
        ("LLAMABUS_LOG", "warn".to_owned()),
    ]
}

/// A chat request SmolLM2 answers at length (a raw completion of the same text ends at once).
fn story(id: &str, max_tokens: Option<u32>, stream: bool) -> Value {
    let mut v = json!({
        "id": id,
        "messages": [{"role": "user", "content": "Write a very long story about a dragon who learns to bake bread."}],
        "stream": stream,
    });
    if let Some(n) = max_tokens {
        v["max_tokens"] = json!(n);
    }
    v
}

fn has(msg: &str, line: &str) -> bool {
    msg.lines().any(|l| l == line)
}

fn status_of(msg: &str) -> Option<&str> {
    msg.lines().find_map(|l| l.strip_prefix("STATUS="))
}

/// Starts the daemon and waits for READY=1; returns the notifications up to it.
fn start_ready(
    mosq: &Mosquitto,
    node: &str,
    limits: &str,
    extra_env: &[(&'static str, String)],
) -> (ServeProcess, NotifySocket, Vec<(Instant, String)>) {
    let n = NotifySocket::new();
    let mut env = notify_env(&n);
    env.extend_from_slice(extra_env);
    let p = ServeProcess::start(BIN, &service_config(&mosq.url(), node, limits, ""), &env);
    let before = n.until(Duration::from_secs(60), |m| has(m, "READY=1"));
    (p, n, before)
}

async fn ask_json(c: &TestClient, device: &str, body: Value) {
    c.publish(
        &format!("llamabus/prompt/{device}"),
        body.to_string(),
        PublishProperties::default(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_lifecycle_ready_watchdog_stopping_and_offline_status() {
    let mosq = Mosquitto::start();
    let (mut p, n, before) = start_ready(&mosq, "life", "", &[]);

    // Before READY=1: the load announced itself, extended the start timeout, and warmed up.
    let statuses: Vec<&str> = before.iter().filter_map(|m| status_of(&m.1)).collect();
    assert!(
        statuses[0].starts_with("loading model SmolLM2-135M-Instruct.Q4_1 from "),
        "{statuses:?}"
    );
    assert!(
        statuses.iter().any(|s| s.starts_with("warming up")),
        "{statuses:?}"
    );
    assert!(
        before
            .iter()
            .any(|m| m.1.starts_with("EXTEND_TIMEOUT_USEC=")),
        "{before:?}"
    );
    let ready = &before.last().unwrap().1;
    assert!(
        status_of(ready)
            .unwrap()
            .starts_with("model SmolLM2-135M-Instruct.Q4_1 loaded"),
        "{ready}"
    );

    // Serving: periodic pings (every 500 ms) and a status line naming the broker link.
    wait_status(mosq.port, "llamabus", "life", "online").await;
    let during = n.during(Duration::from_millis(2600));
    let pings = during.iter().filter(|m| m.1 == "WATCHDOG=1").count();
    assert!(
        (4..=7).contains(&pings),
        "{pings} pings in 2.6 s: {during:?}"
    );
    let mut c = TestClient::connect(mosq.port, &["llamabus/reply/#"]).await;
    ask_json(
        &c,
        "d",
        json!({"id": "one", "prompt": "Hi", "max_tokens": 3}),
    )
    .await;
    assert_eq!(c.recv(60).await.json()["id"], "one");
    let served = n.until(Duration::from_secs(5), |m| {
        status_of(m).is_some_and(|s| s.starts_with("serving SmolLM2") && s.contains("1 served"))
    });
    assert!(served.len() <= 20);

    // SIGTERM: STOPPING=1, a clean exit 0, and the retained offline status.
    let mut status = TestClient::connect(mosq.port, &["llamabus/status/life"]).await;
    p.signal("TERM");
    let stop = n.until(Duration::from_secs(10), |m| has(m, "STOPPING=1"));
    assert!(
        status_of(&stop.last().unwrap().1)
            .unwrap()
            .starts_with("draining 0 running and 0 queued"),
        "{stop:?}"
    );
    let code = p.wait_exit(Duration::from_secs(20));
    assert_eq!(code.code(), Some(0), "{code:?}");
    let off = status
        .recv_where(10, |m| m.json()["state"] == "offline")
        .await;
    assert_eq!(off.json()["node"], "life");
}

// The stall switch exists only in debug builds of the binary (never in the packages).
#[cfg_attr(
    not(debug_assertions),
    ignore = "LLAMABUS_DEBUG_STALL is a debug-build switch"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_inference_thread_stops_the_watchdog_pings() {
    let mosq = Mosquitto::start();
    // Debug-build hook: 1.5 s after readiness the inference thread stalls for 5 s.
    let (mut p, n, _) = start_ready(
        &mosq,
        "stall",
        "",
        &[("LLAMABUS_DEBUG_STALL", "1500,5000".to_owned())],
    );
    let t_ready = Instant::now();
    let seen = n.during(Duration::from_millis(9000));
    assert!(p.alive());
    let pings: Vec<f64> = seen
        .iter()
        .filter(|m| m.1 == "WATCHDOG=1")
        .map(|m| (m.0 - t_ready).as_secs_f64())
        .collect();
    // Pings before the stall, none for most of it (systemd would have restarted us: the gap
    // exceeds WatchdogSec), and again once the thread is back.
    assert!(pings.iter().filter(|&&t| t < 1.5).count() >= 2, "{pings:?}");
    let gap = pings.windows(2).map(|w| w[1] - w[0]).fold(0.0f64, f64::max);
    assert!(
        gap >= 3.0,
        "largest gap between pings {gap:.2} s: {pings:?}"
    );
    assert!(pings.last().is_some_and(|&t| t > 6.5), "{pings:?}");
}

/// A daemon (with `limits`) generating a long streamed answer (id `long`, `max_tokens` tokens)
/// with short requests `queued` behind it; returns once the first chunk of `long` arrived,
/// after SIGTERM and `STOPPING=1`. One job at a time (`parallel = 1`, not the batching
/// default), so that the short requests really wait in the queue.
async fn terminate_while_generating(
    node: &str,
    limits: &str,
    max_tokens: u32,
    queued: &[&str],
) -> (Mosquitto, ServeProcess, TestClient) {
    let mosq = Mosquitto::start();
    let one_at_a_time = [("LLAMABUS_MODEL_PARALLEL", "1".to_owned())];
    let (p, n, _) = start_ready(&mosq, node, limits, &one_at_a_time);
    wait_status(mosq.port, "llamabus", node, "online").await;
    let mut c = TestClient::connect(mosq.port, &["llamabus/reply/#"]).await;
    ask_json(&c, "d", story("long", Some(max_tokens), true)).await;
    for id in queued {
        ask_json(&c, "d", json!({"id": id, "prompt": "Hi", "max_tokens": 4})).await;
    }
    let first = c.recv(60).await.json();
    assert_eq!(first["id"], "long");
    assert!(first["delta"].is_string(), "generating: {first}");
    p.signal("TERM");
    n.until(Duration::from_secs(10), |m| has(m, "STOPPING=1"));
    (mosq, p, c)
}

/// Final replies (chunks skipped) by id, until `n` have arrived.
async fn finals(c: &mut TestClient, n: usize) -> HashMap<String, Value> {
    let mut out = HashMap::new();
    while out.len() < n {
        let m = c.recv(90).await.json();
        if m.get("delta").is_none() {
            out.insert(m["id"].as_str().unwrap().to_owned(), m);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_long_generation_and_stops_taking_prompts() {
    let (_mosq, mut p, mut c) =
        terminate_while_generating("drain", "shutdown_drain_s = 60", 600, &["queued"]).await;
    // Prompts sent while draining are not taken (left unacknowledged for the broker to redeliver after a restart).
    tokio::time::sleep(Duration::from_millis(500)).await;
    ask_json(
        &c,
        "d",
        json!({"id": "late", "prompt": "Hi", "max_tokens": 4}),
    )
    .await;
    let f = finals(&mut c, 2).await;
    let reason = f["long"]["finish_reason"].as_str().unwrap();
    assert!(
        ["stop", "length"].contains(&reason),
        "the drain let it finish: {}",
        f["long"]
    );
    assert!(f["queued"]["text"].is_string(), "{}", f["queued"]);
    assert_eq!(p.wait_exit(Duration::from_secs(30)).code(), Some(0));
    // Nothing for the late prompt, not even an error.
    while let Some(m) = c.try_recv(1000).await {
        assert_ne!(m.json()["id"], "late", "{}", m.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_drain_time_running_and_queued_requests_are_answered_cancelled() {
    let (_mosq, mut p, mut c) =
        terminate_while_generating("cut", "shutdown_drain_s = 0", 900, &["q1", "q2"]).await;
    // Never silently dropped: the running one ends with its partial text, the queued ones
    // with a `cancelled` error.
    let f = finals(&mut c, 3).await;
    assert_eq!(f["long"]["finish_reason"], "cancelled", "{}", f["long"]);
    for q in ["q1", "q2"] {
        assert_eq!(f[q]["error"]["code"], "cancelled", "{}", f[q]);
    }
    assert_eq!(p.wait_exit(Duration::from_secs(20)).code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_exits_at_once() {
    let (_mosq, mut p, _c) =
        terminate_while_generating("twice", "shutdown_drain_s = 60", 900, &[]).await;
    assert!(p.alive(), "still draining the long request");
    let t0 = Instant::now();
    p.signal("TERM");
    let status = p.wait_exit(Duration::from_secs(3));
    assert!(t0.elapsed() < Duration::from_secs(3));
    assert_eq!(status.code(), Some(128 + 15), "{status:?}");
}

/// Sends one greedy request without max_tokens and returns its final reply.
async fn default_length_answer(c: &mut TestClient, id: &str) -> Value {
    ask_json(c, "r", story(id, None, false)).await;
    let m = c.recv(60).await.json();
    assert_eq!(m["id"], id, "{m}");
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_good_config_and_refuses_a_bad_one() {
    let mosq = Mosquitto::start();
    let (p, n, _) = start_ready(&mosq, "hup", "default_max_tokens = 4", &[]);
    wait_status(mosq.port, "llamabus", "hup", "online").await;
    let mut c = TestClient::connect(mosq.port, &["llamabus/reply/#"]).await;
    let a = default_length_answer(&mut c, "a").await;
    assert_eq!(a["usage"]["completion_tokens"], 4, "{a}");

    // A good config: the new default applies at once, without a model load.
    let good = service_config(&mosq.url(), "hup", "default_max_tokens = 9", "");
    std::fs::write(&p.config, &good).unwrap();
    p.signal("HUP");
    let seen = n.until(Duration::from_secs(10), |m| has(m, "READY=1"));
    assert!(seen.iter().any(|m| has(&m.1, "RELOADING=1")), "{seen:?}");
    let line = status_of(&seen.last().unwrap().1).unwrap().to_owned();
    assert!(line.starts_with("configuration reloaded"), "{line}");
    let b = default_length_answer(&mut c, "b").await;
    assert_eq!(b["usage"]["completion_tokens"], 9, "{b}");

    // A bad config (an unknown key on line 9): refused, the running one kept.
    let bad = good.replace(
        "default_max_tokens = 9",
        "default_max_tokens = 2\nmax_tokens_capp = 5",
    );
    std::fs::write(&p.config, &bad).unwrap();
    p.signal("HUP");
    let seen = n.until(Duration::from_secs(10), |m| has(m, "READY=1"));
    let line = status_of(&seen.last().unwrap().1).unwrap().to_owned();
    assert!(line.starts_with("reload refused"), "{line}");
    let path = p.config.display().to_string();
    assert!(
        line.contains(&path) && line.contains("line 9") && line.contains("max_tokens_capp"),
        "{line}"
    );
    let d = default_length_answer(&mut c, "d").await;
    assert_eq!(d["usage"]["completion_tokens"], 9, "{d}");

    // A changed model section: the new engine loads beside the old one, then takes over;
    // meanwhile the retained status says `reloading`.
    let mut st = TestClient::connect(mosq.port, &["llamabus/status/hup"]).await;
    st.recv_where(10, |m| m.json()["state"] == "online").await;
    let renamed = service_config(&mosq.url(), "hup", "default_max_tokens = 5", "")
        .replace("threads = 1", "threads = 1\nname = \"renamed\"");
    std::fs::write(&p.config, &renamed).unwrap();
    p.signal("HUP");
    let seen = n.until(Duration::from_secs(60), |m| has(m, "READY=1"));
    st.recv_where(10, |m| m.json()["state"] == "reloading")
        .await;
    let back = st
        .recv_where(10, |m| m.json()["state"] == "online")
        .await
        .json();
    assert_eq!(back["models"][0]["name"], "renamed", "{back}");
    assert!(
        seen.iter()
            .any(|m| status_of(&m.1) == Some("reloading: loading model renamed")),
        "{seen:?}"
    );
    let line = status_of(&seen.last().unwrap().1).unwrap().to_owned();
    assert_eq!(line, "configuration reloaded; serving renamed");
    let e = default_length_answer(&mut c, "e").await;
    assert_eq!(e["model"], "renamed", "{e}");
    assert_eq!(e["usage"]["completion_tokens"], 5, "{e}");
}
