//! Token-exactness against llama.cpp on every ggml format llama-quantize makes of SmolLM2-135M.
//!
//! For each type in tests/data/format-matrix/greedy.PATH.json (Q4_0 ... BF16, made by
//! tests/common/formats.rs from the Q4_1 model, byte-identical to llama-quantize's output) and each
//! prompt: the prompt token ids and the greedy tokens must be llama.cpp's. As in tests/golden.rs, a
//! token may differ only at a step where llama.cpp's top-2 log-probability margin was below 0.01
//! (a true near-tie, where summation order decides) and ours is below 0.01 too; the comparison
//! ends there. PATH is the SIMD path the linked ggml was compiled for (avx512 or avx2): llama.cpp's
//! own tokens differ between the two on this tiny model.
//!
//! The references are llama.cpp's plain (`--no-repack`) output.

mod common;

use common::formats::format_model;
use common::golden::{case_prompt, follow_greedy, margins, token_ids, Followed};
use common::simd::SimdPath;
use llamabus::model::{Model, Session};
use serde_json::Value;

/// The reference for the SIMD path of the variant in use; None (with the reason printed) where
/// llama.cpp made none (NEON, or x86 below AVX2).
fn reference() -> Option<Value> {
    let simd = SimdPath::active("format-matrix reference")?;
    let r = simd
        .data_reference("format-matrix/greedy")
        .expect("a format-matrix reference for each x86 SIMD path");
    Some(r)
}

/// How one prompt went, and our text.
fn run_case(model: &Model, case: &Value) -> (Followed, String) {
    let prompt = case["prompt"].as_str().unwrap();
    let tokens = case_prompt(model, case);
    let want = token_ids(&case["output_tokens"]);
    // One thread, as llama-server ran for the reference (the result does not depend on it).
    let mut session = Session::new(model, 512, 1).unwrap();
    let (outcome, got) = follow_greedy(&mut session, &tokens, &want, &margins(&case["margins"]));
    // llama.cpp's text leaves out the end-of-generation token it stopped on.
    let shown: Vec<u32> = got
        .iter()
        .copied()
        .filter(|&t| !model.tokenizer().is_eog(t))
        .collect();
    let text = model.tokenizer().decode(&shown);
    if matches!(outcome, Followed::Exact) {
        assert_eq!(text, case["output_text"].as_str().unwrap(), "{prompt:?}");
    }
    (outcome, text)
}

#[test]
fn every_format_matches_llama_cpp() {
    let Some(reference) = reference() else {
        return;
    };
    let mut failures = Vec::new();
    let (mut exact, mut ties, mut total) = (0, 0, 0);
    for f in reference["formats"].as_array().unwrap() {
        let ty = f["type"].as_str().unwrap();
        let model = Model::load(&format_model(ty)).unwrap_or_else(|e| panic!("{ty}: {e}"));
        for case in f["cases"].as_array().unwrap() {
            total += 1;
            let (outcome, text) = run_case(&model, case);
            let prompt = case["prompt"].as_str().unwrap();
            match outcome {
                Followed::Exact => {
                    exact += 1;
                    println!("{ty:>7} exact     {prompt:?} -> {text:?}");
                }
                Followed::NearTie { message: m, .. } => {
                    ties += 1;
                    println!("{ty:>7} near-tie  {prompt:?}: {m}");
                }
                Followed::Differs(m) => {
                    println!("{ty:>7} DIFFERS   {prompt:?}: {m}; ours {text:?}");
                    failures.push(format!("{ty} {prompt:?}: {m}"));
                }
            }
        }
    }
    println!(
        "{} path: {exact} exact, {ties} near-tie, {} differ, of {total}",
        reference["simd_path"],
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "differences from llama.cpp:\n{}",
        failures.join("\n")
    );
}
