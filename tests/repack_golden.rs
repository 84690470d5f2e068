//! Repacked weights against llama.cpp on SmolLM2-135M requantized to Q4_0 and Q4_K_M.
//!
//! Repacked kernels round differently from the plain ones (llama.cpp's own greedy tokens move
//! with `--no-repack`), so each setting is compared with llama.cpp in the same setting: with
//! `repack = true` against llama.cpp's default (repacked), with `repack = false` against
//! `--no-repack`. References: tests/data/repack/greedy.PATH.json, written by
//! scripts/make-repack-reference.py from llama.cpp on the same ggml; PATH is the SIMD path
//! (avx512 or avx2) this ggml was compiled for. As in tests/golden.rs, a token may differ only
//! at a step where llama.cpp's top-2 log-probability margin was below 0.01 and ours is too; the
//! comparison of that prompt ends there.
//!
//! The model files are llama-quantize's (`SmolLM2-135M-Instruct.{Q4_0,Q4_K_M}.gguf` in
//! `$LLAMABUS_ORACLE/models`, default `../scratch/oracle/models`, made by issue 19's
//! scripts/build-oracle.sh); the reference records their sha256 and the test checks it.
//! Without them the test says so and checks nothing.

mod common;

use std::path::PathBuf;

use llamabus::model::{LoadOptions, Model, Session};
use serde_json::Value;

use common::golden::{case_prompt, follow_greedy, margins, token_ids, Followed};
use common::simd::SimdPath;

/// The reference for the SIMD path of the variant in use; None (with the reason printed) off
/// x86 or where none was made.
fn reference() -> Option<Value> {
    let simd = SimdPath::active("repack reference")?;
    let r = simd.data_reference("repack/greedy");
    if r.is_none() {
        println!(
            "skipped: no reference tests/data/repack/greedy.{}.json for this SIMD path",
            simd.name
        );
    }
    r
}

fn oracle_models() -> PathBuf {
    std::env::var_os("LLAMABUS_ORACLE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scratch/oracle"))
        .join("models")
}

fn sha256(path: &std::path::Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_owned()
}

/// Greedy decoding of one case; `Err` describes a real difference, `Ok(n)` the steps matched
/// (stopping early at a near-tie both sides share).
fn run_case(model: &Model, case: &Value) -> Result<usize, String> {
    let tokens = case_prompt(model, case);
    let want = token_ids(&case["output_tokens"]);
    let mut session = Session::new(model, 512, 2).unwrap();
    match follow_greedy(
        &mut session,
        &tokens,
        &want,
        &margins(&case["top2_margins"]),
    ) {
        (Followed::Exact, _) => Ok(want.len()),
        (Followed::NearTie { step, .. }, _) => Ok(step),
        (Followed::Differs(m), _) => Err(format!("{:?} {m}", case["prompt"])),
    }
}

#[test]
fn repacked_and_plain_weights_match_llama_cpp_in_the_same_setting() {
    let Some(r) = reference() else { return };
    let dir = oracle_models();
    let mut failures = Vec::new();
    let mut checked = 0;
    for (ty, entry) in r["models"].as_object().unwrap() {
        let path = dir.join(format!("SmolLM2-135M-Instruct.{ty}.gguf"));
        if !path.exists() {
            println!(
                "skipped {ty}: {} is missing (scripts/build-oracle.sh makes it; set LLAMABUS_ORACLE)",
                path.display()
            );
            continue;
        }
        assert_eq!(
            sha256(&path),
            entry["file_sha256"].as_str().unwrap(),
            "{}: not the file llama.cpp ran",
            path.display()
        );
        for (key, repack) in [("repack", true), ("no_repack", false)] {
            let model = Model::load_with(&path, LoadOptions { repack }).unwrap();
            // On this x86 path ggml has layouts for Q4_0 and Q4_K: the setting must matter.
            assert_eq!(model.repacked_bytes() > 0, repack, "{ty} {key}");
            for case in entry[key].as_array().unwrap() {
                checked += 1;
                match run_case(&model, case) {
                    Ok(n) => println!("{ty} {key} {:?}: {n} tokens match", case["prompt"]),
                    Err(e) => failures.push(format!("{ty} {key}: {e}")),
                }
            }
        }
    }
    println!("{checked} cases checked");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
