//! Helpers shared by the integration tests: tiny GGUF models generated on the fly
//! ([`tiny`]), driving the inference worker ([`jobs`]), an independent plain-Rust Llama forward pass to compare ggml against
//! ([`reference`]), which SIMD path's llama.cpp reference applies ([`simd`]), the llama.cpp greedy reference for the SIMD path in use ([`golden`]), the
//! format-matrix files ([`formats`]), one temporary directory ([`tempdir`]), and test-data
//! locations.
//!
//! Each test binary pulls this in with `mod common;` and uses only part of it.
#![allow(dead_code)]

pub mod formats;
pub mod golden;
pub mod jobs;
pub mod reference;
pub mod simd;
pub mod tempdir;
pub mod tiny;
