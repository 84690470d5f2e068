//! Running commands with a time limit: the mosquitto_* clients and the daemon binary.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

/// Runs a command to completion with a time limit, returning (status code, stdout, stderr).
pub fn run_cmd(cmd: &mut Command, limit: Duration) -> (Option<i32>, String, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let (otx, orx) = std_mpsc::channel();
    let (etx, erx) = std_mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(out), &mut s);
        let _ = otx.send(s);
    });
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(err), &mut s);
        let _ = etx.send(s);
    });
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.code();
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status,
        orx.recv().unwrap_or_default(),
        erx.recv().unwrap_or_default(),
    )
}

/// `mosquitto_sub -d` that is known to be subscribed: returns the child once SUBACK is seen,
/// with its remaining stdout lines arriving on the receiver.
pub fn mosquitto_sub(args: &[&str]) -> (Child, std_mpsc::Receiver<String>) {
    // stdbuf: mosquitto_sub's stdout is block-buffered when piped.
    let mut child = Command::new("stdbuf")
        .args(["-oL", "mosquitto_sub", "-d"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto_sub");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std_mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let t0 = Instant::now();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("mosquitto_sub subscribed");
        if line.contains("SUBACK") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10));
    }
    (child, rx)
}

/// Collects `mosquitto_sub -d` output until it exits: the payload lines of PUBLISH messages.
pub fn sub_payloads(rx: std_mpsc::Receiver<String>, limit: Duration) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_payload = false;
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            break;
        };
        if line.starts_with("Client ") {
            in_payload = line.contains("received PUBLISH");
            if in_payload {
                out.push(String::new());
            }
            continue;
        }
        if in_payload {
            let last = out.last_mut().unwrap();
            if !last.is_empty() {
                last.push('\n');
            }
            last.push_str(&line);
        }
    }
    out
}
