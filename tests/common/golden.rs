//! Which llama.cpp greedy reference applies: the one for the SIMD path of the ggml CPU variant
//! in use (the one the selector picked at run time, or `LLAMABUS_CPU_VARIANT`'s). On SmolLM2-135M
//! the summation order of AVX2 vs AVX-512 kernels moves log-probabilities by up to ~0.2 and flips
//! near-tied tokens, and llama.cpp's own output moves the same way, so ../shared/reference has one
//! file per path (see its README). No machine is refused: an AVX-512 CPU runs the avx512 variant
//! and uses the AVX-512 file, an AVX2 CPU (or `LLAMABUS_CPU_VARIANT=avx2`) the AVX2 file.

use std::path::PathBuf;

use llamabus::model::{Model, Session};
use llamabus::sampler::{argmax, top2_logprob_margin};
use serde_json::Value;

use super::simd::SimdPath;

/// The greedy reference for the path in use.
pub struct GreedyReference {
    /// File name in ../shared/reference.
    pub file: &'static str,
    /// The SIMD level it was produced with.
    pub level: &'static str,
    /// Its entries.
    pub entries: Vec<Value>,
}

/// The reference for the SIMD level of the variant in use, or `None` (with the reason printed)
/// for a path llama.cpp produced no reference for (NEON, or the x86 sse42 variant).
pub fn greedy_reference() -> Option<GreedyReference> {
    let simd = SimdPath::active("reference")?;
    let file = if simd.name == "avx512" {
        "smollm2-greedy.json"
    } else {
        "smollm2-greedy.avx2.json"
    };
    simd.announce(file);
    let entries = match reference_json(file) {
        Value::Array(entries) => entries,
        other => panic!("{file}: expected an array, got {other}"),
    };
    Some(GreedyReference {
        file,
        level: simd.level,
        entries,
    })
}

/// The per-step top-5 log-probabilities (`smollm2-top5.json`), which llama.cpp produced on the
/// AVX-512 path only: on AVX2 the same steps differ from it by up to ~0.07 nats (measured), as
/// llama.cpp's own AVX2 build does, so the comparison runs only where ggml is compiled for
/// AVX-512, and says why it does not elsewhere.
pub fn top5_reference() -> Option<Value> {
    let compiled = llamabus::ggml::cpu::compiled_features();
    if !compiled.contains(&"avx512f") {
        println!(
            "skipped: smollm2-top5.json was produced by llama.cpp on the AVX-512 path, and ggml \
             here is compiled with {compiled:?}; the greedy check covers this path"
        );
        return None;
    }
    println!("SIMD path: AVX-512 (ggml compiled with {compiled:?}); reference: smollm2-top5.json");
    Some(reference_json("smollm2-top5.json"))
}

/// A JSON file of ../shared/reference (next to the repository; no script fetches it).
pub fn reference_json(name: &str) -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/reference")
        .join(name);
    assert!(
        p.exists(),
        "missing {}: ../shared/reference must sit next to the repository",
        p.display()
    );
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A reference's token ids (a JSON array of integers).
pub fn token_ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array of ids")
        .iter()
        .map(|x| x.as_u64().expect("a token id") as u32)
        .collect()
}

/// A token may differ from llama.cpp's only at a step where its top-2 log-probability margin and
/// ours are both below this: a true near tie, where summation order decides.
pub const NEAR_TIE: f64 = 0.01;

/// How greedy decoding followed llama.cpp's tokens.
pub enum Followed {
    /// Every token matched.
    Exact,
    /// The first difference, at a near tie on both sides (the comparison ends there).
    NearTie { step: usize, message: String },
    /// The first difference, a real one.
    Differs(String),
}

/// A reference case's prompt (`prompt`), tokenized without BOS as llama.cpp's server did; it
/// must give the case's `prompt_tokens`.
pub fn case_prompt(model: &Model, case: &Value) -> Vec<u32> {
    let prompt = case["prompt"].as_str().expect("a prompt");
    let tokens = model.tokenizer().encode(prompt, false);
    assert_eq!(
        tokens,
        token_ids(&case["prompt_tokens"]),
        "{prompt:?}: prompt tokens"
    );
    tokens
}

/// A reference's per-step top-2 margins; a missing one (null) counts as no tie.
pub fn margins(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array of margins")
        .iter()
        .map(|m| m.as_f64().unwrap_or(f64::INFINITY))
        .collect()
}

/// Greedy decoding of `prompt` against llama.cpp's tokens `want`, whose top-2 margins were
/// `margins`, up to the first difference; with our tokens so far.
pub fn follow_greedy(
    session: &mut Session<'_>,
    prompt: &[u32],
    want: &[u32],
    margins: &[f64],
) -> (Followed, Vec<u32>) {
    let mut logits = session.eval(prompt).unwrap().to_vec();
    let mut got = Vec::new();
    for (step, &w) in want.iter().enumerate() {
        let t = argmax(&logits);
        let margin = f64::from(top2_logprob_margin(&logits));
        got.push(t);
        if t != w {
            let message = format!(
                "step {step}: llama.cpp {w}, ours {t}; margins llama.cpp {:.4}, ours {margin:.4}",
                margins[step]
            );
            let outcome = if margins[step] < NEAR_TIE && margin < NEAR_TIE {
                Followed::NearTie { step, message }
            } else {
                Followed::Differs(message)
            };
            return (outcome, got);
        }
        if step + 1 < want.len() {
            logits = session.eval(&[t]).unwrap().to_vec();
        }
    }
    (Followed::Exact, got)
}
