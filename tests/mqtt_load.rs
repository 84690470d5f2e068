//! Load test (issue 7, item 3), bounded and on loopback: 50 MQTT clients send a burst of 1,000
//! requests with ids to one `llamabus serve` process (a generated tiny model decoding 4 requests together, a queue of 16)
//! through a real mosquitto. Every request must get exactly one final reply — an answer, or
//! `busy`/`expired` by policy — with no duplicates, none lost and no panic, while the daemon's
//! resident memory and open file descriptors stay under the limits below. Prints the figures.

mod common;
mod mqtt_support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::tiny::{write_tiny_model, TinySpec, TinyTokenizer};
use llamabus::ggml::Type;
use mqtt_support::*;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use serde_json::{json, Value};

const CLIENTS: usize = 50;
const PER_CLIENT: usize = 20;
const MAX_TOKENS: u64 = 8;
/// Limits for the daemon process during the burst (the tiny model is ~1 MB; the daemon idles
/// at ~30 MB): peak resident memory (VmHWM) and open file descriptors.
const MAX_PEAK_RSS_KIB: u64 = 160 * 1024;
const MAX_FDS: usize = 64;
/// Hang guard for the whole burst; it takes seconds.
const BURST_LIMIT: Duration = Duration::from_secs(180);

/// Resident memory (VmRSS, VmHWM in KiB) and open fds of process `pid`.
fn sample(pid: u32) -> Option<(u64, u64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some((kib("VmRSS:")?, kib("VmHWM:")?, fds))
}

/// Samples `pid` every 20 ms until `stop`; returns (peak VmHWM, peak fds, samples).
fn sampler(pid: u32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(u64, usize, usize)> {
    std::thread::spawn(move || {
        let (mut hwm, mut fds, mut n) = (0, 0, 0);
        while !stop.load(Ordering::Relaxed) {
            if let Some((_, h, f)) = sample(pid) {
                hwm = hwm.max(h);
                fds = fds.max(f);
                n += 1;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (hwm, fds, n)
    })
}

/// What one client saw: every final reply per request id.
type Replies = HashMap<String, Vec<Value>>;

/// One client: publishes its requests back to back, then collects replies until every id has
/// a final one, and listens a little longer for duplicates.
async fn client(port: u16, c: usize) -> Replies {
    let device = format!("load{c}");
    let mut tc = TestClient::connect(port, &[&format!("llamabus/reply/{device}")]).await;
    for k in 0..PER_CLIENT {
        let mut req = json!({"id": format!("{device}-{k}"), "prompt": format!("hello {k}"),
                             "max_tokens": MAX_TOKENS, "temperature": 0});
        // Every fifth request may wait at most 1 ms in the queue: `expired` by policy.
        if k % 5 == 4 {
            req["deadline_ms"] = json!(1);
        }
        tc.publish(
            &format!("llamabus/prompt/{device}"),
            req.to_string(),
            PublishProperties::default(),
        )
        .await;
    }
    let mut got = Replies::new();
    let deadline = Instant::now() + BURST_LIMIT;
    while got.len() < PER_CLIENT && Instant::now() < deadline {
        if let Some(m) = tc.try_recv(1000).await {
            let v = m.json();
            got.entry(v["id"].as_str().unwrap_or("").to_owned())
                .or_default()
                .push(v);
        }
    }
    // Late duplicates would arrive now.
    while let Some(m) = tc.try_recv(1500).await {
        let v = m.json();
        got.entry(v["id"].as_str().unwrap_or("").to_owned())
            .or_default()
            .push(v);
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_1000_requests_from_50_clients_gets_one_final_reply_each() {
    let dir = common::tempdir::TempDir::new();
    let model = dir.join("load.gguf");
    // Long pieces, never EOS: every answer is exactly MAX_TOKENS tokens.
    let spec = TinySpec {
        tokenizer: TinyTokenizer::Spm,
        long_pieces: true,
        ..TinySpec::new(Type::Q8_0)
    };
    write_tiny_model(&spec, &model);
    let mosq = Mosquitto::start();
    let config = format!(
        "[node]\nname = \"load\"\n[mqtt]\nbroker = \"{}\"\n\
             [limits]\nqueue_capacity = 16\nmax_prompt_tokens = 64\nmax_tokens_cap = 16\n\
             default_max_tokens = 8\n[model]\npath = \"{}\"\nthreads = 1\ncontext = 256\n\
             parallel = 4\n\
             [log]\nlevel = \"warn\"\n",
        mosq.url(),
        model.display()
    );
    let mut serve = ServeProcess::start_logged(env!("CARGO_BIN_EXE_llamabus"), &config, &[]);
    let pid = serve.child.id();
    wait_status(mosq.port, "llamabus", "load", "online").await;
    let (idle_rss, _, idle_fds) = sample(pid).expect("daemon running");

    let stop = Arc::new(AtomicBool::new(false));
    let peaks = sampler(pid, stop.clone());
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|c| tokio::spawn(client(mosq.port, c)))
        .collect();
    let mut all = Replies::new();
    for t in tasks {
        all.extend(t.await.expect("client task"));
    }
    let elapsed = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (peak_hwm, peak_fds, samples) = peaks.join().unwrap();
    let (after_rss, _, after_fds) = sample(pid).expect("daemon still running");

    let (mut answered, mut busy, mut expired, mut dup, mut other) = (0, 0, 0, 0, Vec::new());
    for (id, replies) in &all {
        if replies.len() > 1 {
            dup += replies.len() - 1;
        }
        let v = &replies[0];
        match v["error"]["code"].as_str() {
            None => {
                assert_eq!(v["finish_reason"], "length", "{id}: {v}");
                assert_eq!(v["usage"]["completion_tokens"], MAX_TOKENS, "{id}: {v}");
                assert!(!v["text"].as_str().unwrap().is_empty(), "{id}: {v}");
                answered += 1;
            }
            Some("busy") => busy += 1,
            Some("expired") => expired += 1,
            Some(_) => other.push(v.clone()),
        }
    }
    let sent = CLIENTS * PER_CLIENT;
    let lost = (0..CLIENTS)
        .flat_map(|c| (0..PER_CLIENT).map(move |k| format!("load{c}-{k}")))
        .filter(|id| !all.contains_key(id))
        .count();
    println!(
        "load: {sent} sent by {CLIENTS} clients in {elapsed:.1?}: {answered} answered, {busy} busy, \
         {expired} expired, {} other errors, {dup} duplicates, {lost} lost",
        other.len()
    );
    println!(
        "load: daemon RSS idle {idle_rss} KiB, after {after_rss} KiB, peak VmHWM {peak_hwm} KiB; \
         fds idle {idle_fds}, peak {peak_fds}, after {after_fds} ({samples} samples)"
    );

    let log = serve.log();
    assert!(!log.contains("panicked"), "the daemon panicked:\n{log}");
    assert!(serve.alive(), "the daemon exited");
    assert_eq!(lost, 0, "requests without a reply");
    assert_eq!(dup, 0, "duplicate replies");
    assert!(other.is_empty(), "unexpected errors: {other:?}");
    assert_eq!(answered + busy + expired, sent);
    assert!(
        answered > 0 && busy > 0,
        "the burst must both be served and overflow the queue"
    );
    assert!(samples > 0);
    assert!(peak_hwm < MAX_PEAK_RSS_KIB, "peak RSS {peak_hwm} KiB");
    assert!(peak_fds < MAX_FDS, "peak fds {peak_fds}");
    // Connections and buffers of the burst are released again.
    assert!(after_fds <= idle_fds + 2, "fds {idle_fds} -> {after_fds}");

    // A clean stop after the burst: SIGTERM drains and exits 0.
    serve.signal("TERM");
    let status = serve.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
}
