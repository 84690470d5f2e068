//! Helpers of the MQTT end-to-end tests: a real mosquitto on a free loopback port, the daemon
//! in-process (with a handle on its engine) or as the built binary, and a small MQTT 5 test
//! client that collects what it receives.
//!
//! One file per part; this one re-exports them all, so tests `use mqtt_support::*`.
// Each test binary uses part of these helpers and of their re-exports.
#![allow(dead_code, unused_imports)]

mod broker;
mod client;
mod commands;
mod daemon;
mod service;

pub use broker::*;
pub use client::*;
pub use commands::*;
pub use daemon::*;
pub use service::*;

use std::net::TcpListener;
use std::path::{Path, PathBuf};

pub fn model_path() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.is_file(),
        "{} is missing: run scripts/fetch-test-data.sh",
        p.display()
    );
    p
}

/// A loopback port nothing listens on now, never handed out before in this process: the tests
/// of one binary run concurrently, and the kernel may offer a port just released by another
/// test's probe, so two brokers could otherwise be given the same port.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}
