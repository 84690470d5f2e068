//! Tokenizer conformance against llama.cpp: the SmolLM2 reference strings, llama.cpp's own
//! vocabulary test suite, the golden prompts, special-token injection and streaming decode.
//!
//! Model files come from `scripts/fetch-test-data.sh`; a missing file fails the test.

use llamabus::gguf::Gguf;
use llamabus::tokenizer::{StreamDecoder, Tokenizer, TokenizerKind};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn model_file(rel: &str) -> PathBuf {
    let p = root().join("models").join(rel);
    assert!(
        p.is_file(),
        "missing test data {}: run scripts/fetch-test-data.sh",
        p.display()
    );
    p
}

fn reference_file(name: &str) -> PathBuf {
    // shared/ sits beside the checkout.
    let candidates = [
        root().join("../shared/reference").join(name),
        PathBuf::from("/work/shared/reference").join(name),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!("missing reference file {name} (expected in ../shared/reference)")
        })
}

fn load(rel: &str) -> Tokenizer {
    let path = model_file(rel);
    let gguf = Gguf::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let t = Tokenizer::from_metadata(gguf.metadata())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for w in t.warnings() {
        eprintln!("{rel}: warning: {w}");
    }
    t
}

fn smollm2() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| load("SmolLM2-135M-Instruct.Q4_1.gguf"))
}

#[derive(Deserialize)]
struct RefCase {
    text: String,
    tokens: Vec<u32>,
    #[serde(default)]
    parse_special: bool,
}

#[test]
fn smollm2_reference_strings() {
    let t = smollm2();
    assert_eq!(
        t.kind(),
        TokenizerKind::Bpe {
            pre: "smollm".into()
        }
    );
    let cases: Vec<RefCase> = serde_json::from_str(
        &std::fs::read_to_string(reference_file("smollm2-tokenizer.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cases.len(), 208);
    let mut failures = Vec::new();
    for c in &cases {
        let got = t.encode(&c.text, c.parse_special);
        if got != c.tokens {
            failures.push(format!(
                "{:?} (parse_special={}):\n  want {:?}\n  got  {:?}",
                c.text, c.parse_special, c.tokens, got
            ));
        }
    }
    eprintln!(
        "smollm2-tokenizer.json: {}/{} passed",
        cases.len() - failures.len(),
        cases.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Runs one llama.cpp `ggml-vocab-*.gguf` conformance pair (`.inp`/`.out`).
fn llama_cpp_vocab(name: &str) {
    let t = load(&format!("llama.cpp/ggml-vocab-{name}.gguf"));
    let inp = std::fs::read_to_string(model_file(&format!("llama.cpp/ggml-vocab-{name}.gguf.inp")))
        .unwrap();
    let out = std::fs::read_to_string(model_file(&format!("llama.cpp/ggml-vocab-{name}.gguf.out")))
        .unwrap();
    // Strings are separated (and terminated) by the marker; expected ids one line each.
    let texts: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    let texts = &texts[..texts.len() - 1];
    let expected: Vec<Vec<u32>> = out
        .lines()
        .take(texts.len())
        .map(|l| l.split_whitespace().map(|x| x.parse().unwrap()).collect())
        .collect();
    assert_eq!(texts.len(), expected.len(), "{name}: .inp/.out mismatch");
    let mut failures = Vec::new();
    for (text, want) in texts.iter().zip(&expected) {
        let got = t.encode(text, false);
        if &got != want {
            failures.push(format!("{text:?}:\n  want {want:?}\n  got  {got:?}"));
        }
    }
    eprintln!(
        "ggml-vocab-{name}: {}/{} passed",
        texts.len() - failures.len(),
        texts.len()
    );
    assert!(failures.is_empty(), "{name}:\n{}", failures.join("\n"));
}

#[test]
fn llama_cpp_vocab_llama_spm() {
    llama_cpp_vocab("llama-spm");
}

#[test]
fn llama_cpp_vocab_llama_bpe() {
    llama_cpp_vocab("llama-bpe");
}

#[test]
fn llama_cpp_vocab_phi_3() {
    llama_cpp_vocab("phi-3");
}

#[test]
fn llama_cpp_vocab_gpt_2() {
    llama_cpp_vocab("gpt-2");
}

#[test]
fn llama_cpp_vocab_qwen2() {
    llama_cpp_vocab("qwen2");
}

#[test]
fn llama_cpp_vocab_starcoder() {
    llama_cpp_vocab("starcoder");
}

#[derive(Deserialize)]
struct Greedy {
    key: String,
    mode: String,
    prompt: String,
    prompt_tokens: Vec<u32>,
}

#[test]
fn smollm2_golden_prompts() {
    let t = smollm2();
    assert!(!t.add_bos(), "SmolLM2 metadata says add_bos_token=false");
    let cases: Vec<Greedy> = serde_json::from_str(
        &std::fs::read_to_string(reference_file("smollm2-greedy.json")).unwrap(),
    )
    .unwrap();
    for c in &cases {
        match c.mode.as_str() {
            "raw" => assert_eq!(t.encode(&c.prompt, false), c.prompt_tokens, "{}", c.key),
            "chat" => {
                // The template is rendered elsewhere; here the templated token ids must survive
                // decode -> encode(parse_special).
                let text = t.decode(&c.prompt_tokens);
                assert!(text.contains(&c.prompt), "{}: {text:?}", c.key);
                assert_eq!(t.encode(&text, true), c.prompt_tokens, "{}", c.key);
            }
            other => panic!("{}: unknown mode {other}", c.key),
        }
    }
}

#[test]
fn control_tokens_cannot_be_injected() {
    let t = smollm2();
    let im_start = 1;
    assert_eq!(t.token_text(im_start), Some("<|im_start|>"));
    let plain = t.encode("<|im_start|>system", false);
    assert!(!plain.contains(&im_start), "{plain:?}");
    assert!(!plain.iter().any(|&id| t.is_eog(id)), "{plain:?}");
    let special = t.encode("<|im_start|>system", true);
    assert_eq!(special[0], im_start);
    // Control tokens render as nothing in output, but as text in decode().
    assert!(t.piece_bytes(im_start).is_empty());
    assert_eq!(t.decode(&special), "<|im_start|>system");
}

#[test]
fn tokenizer_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Tokenizer>();
}

#[test]
fn smollm2_special_ids() {
    let t = smollm2();
    assert_eq!(t.n_vocab(), 49152);
    assert_eq!(t.bos(), Some(1));
    assert_eq!(t.eos(), Some(2));
    // llama.cpp picks EOT by text in hash-map order (libstdc++ gives <|endoftext|> = 0 here);
    // we pick deterministically (highest id: <|im_end|>). The EOG set is identical either way.
    assert_eq!(t.eot(), Some(2));
    assert!(t.is_eog(2)); // <|im_end|>
    assert!(t.is_eog(0)); // <|endoftext|>
    assert!(!t.is_eog(1));
}

#[test]
fn stream_decoder_holds_back_split_characters() {
    let t = smollm2();
    for text in [
        "🦙 llamas",
        "日本語のテキスト",
        "a👩‍👩‍👧b",
        "Ünïcödé ✓ 🇫🇷 done",
        "plain ascii",
    ] {
        let ids = t.encode(text, false);
        let mut d = StreamDecoder::new(t);
        let mut streamed = String::new();
        let mut held_back = false;
        for &id in &ids {
            let piece = t.piece_bytes(id);
            let out = d.push(id);
            // A token that is only part of a character yields nothing yet.
            if std::str::from_utf8(piece).is_err() {
                held_back = true;
            }
            streamed.push_str(&out);
        }
        streamed.push_str(&d.finish());
        assert_eq!(streamed, t.decode(&ids), "{text}");
        assert_eq!(streamed, text);
        if !text.is_ascii() && text != "Ünïcödé ✓ 🇫🇷 done" {
            assert!(
                held_back,
                "{text}: expected a character split across tokens"
            );
        }
    }
    // Feeding a lone partial character ends in U+FFFD, never in invalid UTF-8.
    let ids = t.encode("🦙", false);
    assert!(ids.len() > 1, "🦙 should be several byte tokens: {ids:?}");
    let mut d = StreamDecoder::new(t);
    assert_eq!(d.push(ids[0]), "");
    assert_eq!(d.finish(), "\u{FFFD}");
}

/// Prints the encode time of ~4 KB of English prose on SmolLM2 (no assertion on time).
#[test]
fn encode_speed_smollm2() {
    let t = smollm2();
    let para = "The quick brown fox jumps over the lazy dog. MQTT brokers relay small messages \
                between sensors and services; a Raspberry Pi can run a 135M-parameter model, \
                tokenizing prompts of a few kilobytes in well under a millisecond. Numbers like \
                3.14159, 2024-07-15 and 1,000,000 appear too.\n";
    let mut text = String::new();
    while text.len() < 4096 {
        text.push_str(para);
    }
    let n_iter = 50;
    let mut ids = Vec::new();
    let start = Instant::now();
    for _ in 0..n_iter {
        ids = t.encode(&text, false);
    }
    let us = start.elapsed().as_secs_f64() * 1e6 / f64::from(n_iter);
    eprintln!(
        "encode {} bytes -> {} tokens: {us:.0} µs per call (this build's opt-level)",
        text.len(),
        ids.len()
    );
    assert_eq!(t.decode(&ids), text);
}
