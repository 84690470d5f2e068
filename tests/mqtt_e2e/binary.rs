//! The binary: `llamabus serve` with mosquitto (`llamabus ask`, the last will) and on the
//! embedded broker.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::mqtt_support::*;
use crate::{pub_sub_one, rr_answer, BIN};
use serde_json::Value;

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
