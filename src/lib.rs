//! llamabus: run small Llama-family GGUF models on edge boards and answer prompts over MQTT.
//!
//! Module map (data flows top to bottom):
//! - [`ggml`]: the only FFI and the only `unsafe` in the crate: bindings to the vendored ggml and
//!   a safe layer (contexts, tensors, graphs, compute), plus the runtime CPU-feature guard.
//! - [`gguf`]: the GGUF container: reader (hostile-input discipline), writer, type table.
//! - [`model`]: hyperparameters, named weights, the Llama graph, the KV cache.
//! - [`tokenizer`]: BPE and SentencePiece tokenizers built from GGUF metadata; chat templates.
//! - [`sampler`]: logits to token, seeded and deterministic.
//! - [`format`]: structured output: JSON Schema, regex and Lark formats compiled by llguidance
//!   into per-sequence token masks.
//! - [`engine`]: generation (prompt in, streamed text out, timings); knows nothing of MQTT.
//! - [`bench`], [`commands`]: the `bench`, `complete`, `inspect` and `tokenize` commands
//!   (`main.rs` only parses and dispatches).
//! - [`mqtt`]: the daemon's MQTT side: wire types, topics, the event loop, `ask`, the embedded
//!   broker; knows nothing of ggml.
//! - [`service`]: the daemon as a systemd service: layered configuration, sd_notify readiness
//!   and watchdog, signals, journald logging.
#![deny(unsafe_code)]
#![warn(missing_debug_implementations, rust_2018_idioms)]

pub mod bench;
pub mod commands;
pub mod engine;
pub mod format;
pub mod ggml;
pub mod gguf;
pub mod model;
pub mod mqtt;
pub mod sampler;
pub mod service;
pub mod tokenizer;

/// `e` and its sources, each once ("a: b: c"): a model load fails deep in the GGUF reader,
/// and the log must say why, while wrapping errors often repeat their source's text.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let m = s.to_string();
        if !out.contains(&m) {
            out.push_str(": ");
            out.push_str(&m);
        }
        cur = s.source();
    }
    out
}
