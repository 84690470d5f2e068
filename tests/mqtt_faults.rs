//! Fault tests of at-least-once delivery (README "Delivery guarantees"), each against a real
//! mosquitto on loopback and the real `llamabus serve` binary with SmolLM2 (greedy, 1 thread):
//! the broker killed mid-generation, the daemon killed mid-request, requests sent while the
//! daemon is down, a broker stalled past the keep-alive, model-file trouble at start and at
//! reload, QoS 0 (at most once), a share-group member stopping and the duplicate window's byte
//! budget under long device levels. Each test prints a
//! `figures:` line: requests sent / answered / duplicated / lost (an answer is a final reply or
//! an error reply; stream chunks are not counted).

mod common;
mod mqtt_support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mqtt_support::*;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::v5::mqttbytes::QoS;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_llamabus");

/// A chat request SmolLM2 answers at length, streamed, so that its first chunk proves that
/// generation is under way (SmolLM2 on one thread needs seconds for `max_tokens`).
fn story(id: &str, max_tokens: u32) -> Value {
    json!({
        "id": id,
        "messages": [{"role": "user", "content": "Write a very long story about a dragon who learns to bake bread."}],
        "stream": true,
        "max_tokens": max_tokens,
    })
}

fn short(id: &str) -> Value {
    json!({"id": id, "prompt": "The capital of France is", "max_tokens": 4})
}

async fn send(c: &TestClient, device: &str, body: &Value) {
    c.publish(
        &format!("llamabus/prompt/{device}"),
        body.to_string(),
        PublishProperties::default(),
    )
    .await;
}

/// A service config (see [`service_config`]) with extra `[mqtt]` keys.
fn config(mosq: &Mosquitto, node: &str, mqtt: &str, limits: &str) -> String {
    service_config(&mosq.url(), node, limits, "").replacen(
        "[mqtt]\n",
        &format!("[mqtt]\n{mqtt}\n"),
        1,
    )
}

/// Starts `llamabus serve` (log captured) and waits for its retained `online` status.
async fn serve(mosq: &Mosquitto, node: &str, cfg: &str) -> ServeProcess {
    serve_logging(mosq, node, cfg, "info").await
}

/// [`serve`] logging at `level`.
async fn serve_logging(mosq: &Mosquitto, node: &str, cfg: &str, level: &str) -> ServeProcess {
    let p = ServeProcess::start_logged(BIN, cfg, &[("LLAMABUS_LOG", level.to_owned())]);
    wait_status(mosq.port, "llamabus", node, "online").await;
    p
}

/// A mosquitto, `node`'s config (see [`config`]), the daemon serving it and a client on every
/// reply topic.
async fn setup(
    node: &str,
    mqtt: &str,
    limits: &str,
) -> (Mosquitto, String, ServeProcess, TestClient) {
    let mosq = Mosquitto::start();
    let cfg = config(&mosq, node, mqtt, limits);
    let p = serve(&mosq, node, &cfg).await;
    let c = TestClient::connect(mosq.port, &["llamabus/reply/#"]).await;
    (mosq, cfg, p, c)
}

/// The key of plain-text replies in [`finals`].
const PLAIN: &str = "(plain text)";

/// Final replies (chunks skipped) by id, plain-text replies under [`PLAIN`], collected until
/// every id in `ids` has one (or `limit_s` seconds pass), then for `linger_s` more seconds to
/// catch duplicates.
async fn finals(
    c: &mut TestClient,
    ids: &[&str],
    limit_s: u64,
    linger_s: u64,
) -> HashMap<String, Vec<Value>> {
    let (limit, linger) = (Duration::from_secs(limit_s), Duration::from_secs(linger_s));
    let mut out: HashMap<String, Vec<Value>> = HashMap::new();
    let deadline = Instant::now() + limit;
    let mut until = deadline;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let Some(m) = c.try_recv(left.as_millis() as u64).await else {
            break;
        };
        let (id, v) = match serde_json::from_slice::<Value>(&m.payload) {
            Ok(v) if v.get("delta").is_some() => continue,
            Ok(v) => (v["id"].as_str().unwrap_or("").to_owned(), v),
            // A plain-text reply: the text is the answer.
            Err(_) => (PLAIN.to_owned(), json!({"text": m.text()})),
        };
        out.entry(id).or_default().push(v);
        if until == deadline && ids.iter().all(|i| out.contains_key(*i)) {
            until = Instant::now() + linger;
        }
    }
    out
}

/// Waits for the first streamed chunk of `id`, proof that its generation is under way; on a
/// timeout the panic carries the daemon's log.
async fn first_chunk(c: &mut TestClient, p: &ServeProcess, id: &str) {
    let Some(m) = c.try_recv(60_000).await else {
        panic!("no reply to {id} within 60 s; daemon log:\n{}", p.log());
    };
    let v = m.json();
    assert_eq!(v["id"], id);
    assert!(v["delta"].is_string(), "generating: {v}");
}

/// Requests sent / answered / duplicated / lost for `ids`.
#[derive(Debug, PartialEq)]
struct Figures {
    sent: usize,
    answered: usize,
    duplicated: usize,
    lost: usize,
}

fn figures(test: &str, ids: &[&str], got: &HashMap<String, Vec<Value>>) -> Figures {
    let answered = ids.iter().filter(|i| got.contains_key(**i)).count();
    let duplicated = ids
        .iter()
        .map(|i| got.get(*i).map_or(0, |v| v.len().saturating_sub(1)))
        .sum();
    let f = Figures {
        sent: ids.len(),
        answered,
        duplicated,
        lost: ids.len() - answered,
    };
    println!(
        "figures: {test}: sent {} / answered {} / duplicated {} / lost {}",
        f.sent, f.answered, f.duplicated, f.lost
    );
    f
}

/// A real answer (not an error) of `v`.
fn assert_answer(v: &Value) {
    assert!(
        v["text"].as_str().is_some_and(|t| !t.is_empty()),
        "not an answer: {v}"
    );
}

/// [`figures`] for `ids`, once each has a real answer (a lost id fails the test by name).
fn answered(test: &str, ids: &[&str], got: &HashMap<String, Vec<Value>>) -> Figures {
    let f = figures(test, ids, got);
    for id in ids {
        assert_answer(&got.get(*id).unwrap_or_else(|| panic!("{id} lost: {got:?}"))[0]);
    }
    f
}

/// The one final reply to `id`, collected by [`finals`] within `limit_s` and `linger_s` more
/// seconds, with its [`figures`] printed under `test`: exactly one, and a real answer.
async fn answered_once(
    c: &mut TestClient,
    test: &str,
    id: &str,
    limit_s: u64,
    linger_s: u64,
) -> Value {
    let got = finals(c, &[id], limit_s, linger_s).await;
    figures(test, &[id], &got);
    assert_eq!(got[id].len(), 1, "{got:?}");
    assert_answer(&got[id][0]);
    got[id][0].clone()
}

/// Waits until the daemon's log satisfies `pred`, or panics with the log after `limit`.
fn wait_log(p: &ServeProcess, limit: Duration, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let t0 = Instant::now();
    loop {
        let log = p.log();
        if pred(&log) {
            return log;
        }
        assert!(t0.elapsed() < limit, "no {what} within {limit:?}:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_mid_generation_loses_nothing() {
    let mut mosq = Mosquitto::start_persistent();
    // Debug: the dropped ack of the first connection is logged there.
    let p = serve_logging(&mosq, "bk", &config(&mosq, "bk", "", ""), "debug").await;
    let mut c = TestClient::connect_persistent(mosq.port, "fault-bk", &["llamabus/reply/#"]).await;
    send(&c, "d", &story("long", 200)).await;
    first_chunk(&mut c, &p, "long").await;

    // SIGKILL mid-generation; requests sent meanwhile wait in the client, then in the broker.
    mosq.restart();
    let queued = ["q1", "q2", "q3"];
    for id in queued {
        send(&c, "d", &short(id)).await;
    }
    let ids = ["long", "q1", "q2", "q3"];
    let got = finals(&mut c, &ids, 120, 3).await;
    let f = answered("broker killed mid-generation", &ids, &got);
    assert_eq!(f.lost, 0);
    let reason = &got["long"][0]["finish_reason"];
    assert!(reason == "length" || reason == "stop", "{reason}");
    let log = p.log();
    assert!(
        log.contains("lost") && log.matches("subscribing to").count() >= 2,
        "reconnected and subscribed again:\n{log}"
    );
    // `long` arrived on the first connection: its packet id means nothing on the second, so
    // its ack is dropped (acking it could acknowledge another request, which would be lost);
    // the broker's redelivery of `long` was merged into the running job and acked instead.
    assert!(
        log.contains("of an earlier connection: the broker redelivers it"),
        "the stale ack was not dropped:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_killed_mid_request_answers_once_after_restart() {
    let mosq = Mosquitto::start();
    let state = TempDir::tagged("state");
    let cfg = config(
        &mosq,
        "dk",
        &format!("state_dir = \"{}\"", state.path().display()),
        "",
    );
    let p = serve(&mosq, "dk", &cfg).await;
    let mut c = TestClient::connect(mosq.port, &["llamabus/reply/#"]).await;
    send(&c, "d", &story("long", 120)).await;
    first_chunk(&mut c, &p, "long").await;
    drop(p); // SIGKILL: the request is neither answered nor acknowledged
    send(&c, "d", &short("while-down")).await;

    let p = serve(&mosq, "dk", &cfg).await;
    let ids = ["long", "while-down"];
    let got = finals(&mut c, &ids, 120, 3).await;
    let f = figures("daemon SIGKILLed mid-request", &ids, &got);
    assert_eq!(
        f,
        Figures {
            sent: 2,
            answered: 2,
            duplicated: 0,
            lost: 0
        },
        "{got:?}"
    );
    let long = got["long"][0].clone();
    assert_answer(&long);

    // Killed again: a retry of `long` (same device and id) after the restart gets the stored
    // reply from the state directory, not a second generation.
    drop(p);
    let p = serve(&mosq, "dk", &cfg).await;
    send(&c, "d", &story("long", 120)).await;
    let again = answered_once(&mut c, "retry after a second restart", "long", 60, 2).await;
    assert_eq!(again["text"], long["text"]);
    assert_eq!(again["usage"], long["usage"]);
    let log = p.log();
    assert!(
        log.contains("was answered already") && !log.contains("answered on"),
        "no generation for the retry:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_sent_while_the_daemon_is_down_are_answered_when_it_returns() {
    let (mosq, cfg, mut p, mut c) = setup("down", "", "default_max_tokens = 8").await;
    // A refused request and a cancel are acknowledged too: neither comes back after the restart.
    let bad = json!({"id": "bad", "prompt": "Hi", "max_tokens": "many"});
    send(&c, "d", &bad).await;
    let cancel = b"nothing-runs".to_vec();
    c.publish("llamabus/cancel/d", cancel, PublishProperties::default())
        .await;
    let refused = finals(&mut c, &["bad"], 30, 0).await;
    assert_eq!(refused["bad"][0]["error"]["code"], "bad_request");
    wait_log(&p, Duration::from_secs(30), "the cancel", |l| {
        l.contains("no running request")
    });
    // A clean stop keeps the subscription in the broker's session.
    p.signal("TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(30)).code(), Some(0));
    for id in ["a", "b", "c", "d"] {
        send(&c, "d", &short(id)).await;
    }
    // Plain text has no id: answered, but it cannot be deduplicated.
    c.publish(
        "llamabus/prompt/plain",
        b"Hello".to_vec(),
        PublishProperties::default(),
    )
    .await;
    let p = serve(&mosq, "down", &cfg).await;
    let ids = ["a", "b", "c", "d", PLAIN];
    let got = finals(&mut c, &ids, 120, 2).await;
    let f = answered("published while the daemon was down", &ids, &got);
    assert_eq!((f.lost, f.duplicated), (0, 0));
    assert!(!got.contains_key("bad"), "the refusal came back: {got:?}");
    let log = p.log();
    assert!(
        !log.contains("no running request"),
        "the cancel came back:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_stalled_past_the_keep_alive_is_detected_and_recovered_from() {
    let mosq = Mosquitto::start();
    let p = serve(
        &mosq,
        "stall",
        &config(&mosq, "stall", "keep_alive_s = 5", ""),
    )
    .await;
    let mut c = TestClient::connect(mosq.port, &["llamabus/reply/#"]).await;
    send(&c, "d", &short("before")).await;
    let got = finals(&mut c, &["before"], 60, 0).await;
    assert_answer(&got["before"][0]);

    mosq.signal("STOP");
    // Sent into the stalled broker: processed once it resumes.
    send(&c, "d", &short("during")).await;
    let t0 = Instant::now();
    wait_log(&p, Duration::from_secs(60), "detected loss", |l| {
        l.contains("connection to") && l.contains("lost")
    });
    let detected = t0.elapsed();
    mosq.signal("CONT");
    let subscribed = |l: &str| l.matches("subscribing to").count() >= 2;
    wait_log(&p, Duration::from_secs(90), "reconnect", subscribed);
    send(&c, "d", &short("after")).await;
    let ids = ["before", "during", "after"];
    let mut all = got;
    all.extend(finals(&mut c, &ids[1..], 90, 2).await);
    println!(
        "figures: broker SIGSTOPped: dead link detected after {:.1} s (keep-alive 5 s)",
        detected.as_secs_f64()
    );
    let f = answered("broker SIGSTOPped past the keep-alive", &ids, &all);
    assert_eq!(f.lost, 0);
}

// ---- model trouble ----

/// Whether this process runs as root (then file modes do not stop reads).
fn running_as_root() -> bool {
    let (code, out, _) = run_cmd(Command::new("id").arg("-u"), Duration::from_secs(5));
    code == Some(0) && out.trim() == "0"
}

/// A copy of the first half of the model at `to`.
fn truncated_copy(to: &Path) {
    let bytes = std::fs::read(model_path()).unwrap();
    std::fs::write(to, &bytes[..bytes.len() / 2]).unwrap();
}

/// Starts the daemon with `model` under a test NOTIFY_SOCKET: it must exit non-zero without
/// READY=1 and log an error naming `model` and containing `why`.
fn refuses_to_start(mosq: &Mosquitto, case: &str, model: &Path, why: &str) {
    let n = NotifySocket::new();
    let cfg = config(mosq, "bad", "", "").replace(
        &model_path().display().to_string(),
        &model.display().to_string(),
    );
    let env = [
        ("NOTIFY_SOCKET", n.path.display().to_string()),
        ("LLAMABUS_LOG", "info".to_owned()),
    ];
    let mut p = ServeProcess::start_logged(BIN, &cfg, &env);
    let status = p.wait_exit(Duration::from_secs(60));
    let seen = n.during(Duration::from_millis(300));
    let log = p.log();
    println!("{case}: exit {status:?}; log: {}", log.trim());
    assert!(!status.success(), "{case}: {status:?}");
    assert!(
        !seen.iter().any(|m| m.1.lines().any(|l| l == "READY=1")),
        "{case}: READY=1 sent: {seen:?}"
    );
    let named = log
        .lines()
        .any(|l| l.contains(&*model.display().to_string()) && l.contains(why));
    assert!(
        named,
        "{case}: no error naming the file and `{why}`:\n{log}"
    );
}

#[test]
fn a_missing_unreadable_or_truncated_model_refuses_to_start() {
    let mosq = Mosquitto::start();
    let dir = TempDir::tagged("badmodel");
    refuses_to_start(
        &mosq,
        "missing",
        &dir.join("absent.gguf"),
        "not a readable file",
    );

    let cut = dir.join("truncated.gguf");
    truncated_copy(&cut);
    refuses_to_start(&mosq, "truncated", &cut, "run past the end");

    let locked = dir.join("locked.gguf");
    std::fs::copy(model_path(), &locked).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    if running_as_root() {
        println!("unreadable: skipped: running as root, where mode 000 does not stop reads");
    } else {
        refuses_to_start(&mosq, "unreadable", &locked, "Permission denied");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_model_at_reload_is_refused_and_the_old_one_keeps_serving() {
    let mosq = Mosquitto::start();
    let dir = TempDir::tagged("reload");
    let model: PathBuf = dir.join("model.gguf");
    std::fs::copy(model_path(), &model).unwrap();
    let cfg_for = |threads: u32| {
        config(&mosq, "rl", "", "")
            .replace(
                &model_path().display().to_string(),
                &model.display().to_string(),
            )
            .replace("threads = 1", &format!("threads = {threads}"))
    };
    let n = NotifySocket::new();
    let env = [
        ("NOTIFY_SOCKET", n.path.display().to_string()),
        ("LLAMABUS_LOG", "info".to_owned()),
    ];
    let p = ServeProcess::start_logged(BIN, &cfg_for(1), &env);
    n.until(Duration::from_secs(60), |m| {
        m.lines().any(|l| l == "READY=1")
    });
    wait_status(mosq.port, "llamabus", "rl", "online").await;
    let mut c = TestClient::connect(mosq.port, &["llamabus/reply/#"]).await;

    // The file is replaced by a truncated copy (renamed over it, as package managers do), and
    // a reload that needs a new engine (another thread count) tries to load it.
    let cut = dir.join("cut.gguf");
    truncated_copy(&cut);
    std::fs::rename(&cut, &model).unwrap();
    std::fs::write(&p.config, cfg_for(2)).unwrap();
    p.signal("HUP");
    let seen = n.until(Duration::from_secs(60), |m| {
        m.lines().any(|l| l == "READY=1")
    });
    let line = seen
        .last()
        .and_then(|m| m.1.lines().find_map(|l| l.strip_prefix("STATUS=")))
        .unwrap_or("")
        .to_owned();
    assert!(
        line.starts_with("reload refused")
            && line.contains("model.gguf")
            && line.contains("run past the end"),
        "{line}"
    );
    let log = p.log();
    assert!(
        log.lines()
            .any(|l| l.contains("reload refused") && l.contains(&*model.display().to_string())),
        "{log}"
    );
    send(&c, "d", &short("after-reload")).await;
    let got = finals(&mut c, &["after-reload"], 60, 0).await;
    figures("truncated model at reload", &["after-reload"], &got);
    assert_answer(&got["after-reload"][0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_by_device_and_id_are_generated_once() {
    let (_mosq, _, p, mut c) = setup("dup", "", "").await;
    // A retry while the first is generating is merged into it: one answer.
    send(&c, "d", &story("dup", 60)).await;
    first_chunk(&mut c, &p, "dup").await;
    send(&c, "d", &story("dup", 60)).await;
    let answer = answered_once(&mut c, "retry while running", "dup", 90, 3).await;

    // A retry after the answer gets the stored reply on its own reply topic, unstreamed
    // requests get it without `done`; another device with the same id is another request.
    let mut retry = story("dup", 60);
    retry["stream"] = json!(false);
    retry["reply_to"] = json!("llamabus/reply/elsewhere");
    send(&c, "d", &retry).await;
    let m = c.recv(30).await;
    assert_eq!(m.topic, "llamabus/reply/elsewhere");
    let v = m.json();
    assert_eq!(
        (&v["text"], &v["usage"]),
        (&answer["text"], &answer["usage"])
    );
    assert!(v.get("done").is_none(), "{v}");
    send(&c, "other", &short("dup")).await;
    let other = finals(&mut c, &["dup"], 60, 1).await;
    assert_answer(&other["dup"][0]);
    assert_ne!(other["dup"][0]["text"], answer["text"]);
    let log = p.log();
    assert_eq!(
        log.matches(" answered on ").count(),
        2,
        "two generations:\n{log}"
    );
    assert!(log.contains("duplicate of running job"), "{log}");
    assert!(log.contains("was answered already"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_requests_are_answered_at_most_once() {
    let (mosq, cfg, mut p, mut c) = setup("q0", "", "default_max_tokens = 4").await;
    // Answered while the daemon is up, and the reply keeps the request's QoS 0.
    let body = short("zero").to_string();
    c.publish_qos("llamabus/prompt/d", QoS::AtMostOnce, body)
        .await;
    let m = c.recv(60).await;
    assert_eq!(m.json()["id"], "zero");
    assert_answer(&m.json());
    assert_eq!(m.qos, QoS::AtMostOnce, "the reply's QoS");

    // While it is stopped, the broker keeps only the QoS 1 request for the daemon's session:
    // QoS 0 is at most once (README "Delivery guarantees").
    p.signal("TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(30)).code(), Some(0));
    c.publish_qos(
        "llamabus/prompt/d",
        QoS::AtMostOnce,
        short("zero-while-down").to_string(),
    )
    .await;
    send(&c, "d", &short("one-while-down")).await;
    let _p = serve(&mosq, "q0", &cfg).await;
    let ids = ["one-while-down", "zero-while-down"];
    let got = finals(&mut c, &ids[..1], 60, 3).await;
    let f = figures(
        "QoS 0 and QoS 1 sent while the daemon was stopped",
        &ids,
        &got,
    );
    assert_answer(&got["one-while-down"][0]);
    assert_eq!((f.answered, f.duplicated), (1, 0), "{got:?}");
    assert!(!got.contains_key("zero-while-down"), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_group_member_that_stops_leaves_its_share_to_the_others() {
    let mosq = Mosquitto::start();
    let group = "share_group = \"boards\"";
    let mut a = serve(&mosq, "sa", &config(&mosq, "sa", group, "")).await;
    let b = serve(&mosq, "sb", &config(&mosq, "sb", group, "")).await;
    let mut c = TestClient::connect(mosq.port, &["llamabus/reply/#"]).await;
    // Six short requests `{tag}0`..`{tag}5`, all sent before any reply is read.
    async fn six(c: &mut TestClient, tag: &str, test: &str) -> Figures {
        let ids: Vec<String> = (0..6).map(|i| format!("{tag}{i}")).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        for id in &ids {
            send(c, "d", &short(id)).await;
        }
        let got = finals(c, &ids, 90, 2).await;
        figures(test, &ids, &got)
    }
    // Both members take requests.
    assert_eq!(six(&mut c, "w", "share group, both up").await.lost, 0);
    let served = |p: &ServeProcess| p.log().matches(" answered on ").count();
    assert!(
        served(&a) > 0 && served(&b) > 0,
        "one member served all:\n{}\n{}",
        a.log(),
        b.log()
    );

    // A clean stop of one member unsubscribes it: mosquitto would otherwise keep queueing a
    // share of the group's requests in the stopped member's session, unanswered until it returns.
    a.signal("TERM");
    assert_eq!(a.wait_exit(Duration::from_secs(30)).code(), Some(0));
    let before = served(&b);
    let f = six(&mut c, "after", "share group, one member stopped").await;
    assert_eq!((f.lost, f.duplicated), (0, 0));
    assert_eq!(served(&b) - before, 6, "{}", b.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_duplicate_window_is_bounded_in_bytes() {
    // 30,000-byte device levels and a 64 KiB budget: two stored replies fit, not three.
    let (_mosq, _, p, mut c) = setup("dbytes", "dedup_max_bytes = 65536", "").await;
    let device = "x".repeat(30_000);
    // k3 is still stored at the end; k1 was evicted for it, so its retry is generated again.
    for id in ["k1", "k2", "k3", "k3", "k1"] {
        send(&c, &device, &short(id)).await;
        let got = finals(&mut c, &[id], 60, 0).await;
        assert_answer(&got[id][0]);
    }
    let log = p.log();
    assert_eq!(log.matches("was answered already").count(), 1, "{log}");
    assert_eq!(log.matches(" answered on ").count(), 4, "k1 twice:\n{log}");
}
