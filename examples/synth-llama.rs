//! Writes a Llama-3.2-1B-shaped GGUF with random weights, for benchmarks only (its answers are
//! noise): 16 layers, 2048 embedding, 32 heads / 8 KV heads (head width 64), 8192 FFN, tied
//! embeddings, Llama 3's vocabulary and pre-tokenizer copied from llama.cpp's
//! `ggml-vocab-llama-bpe.gguf`, and `rope_freqs` from Llama 3's frequency scaling. Matrices are
//! written as Q8_0 (norms F32); `llama-quantize --allow-requantize` turns the file into Q4_K_M
//! or any other format (scripts/bench-vs-llamacpp.sh does). Keep the result out of the repo.
//!
//! ```text
//! cargo run --release --example synth-llama -- models/llama.cpp/ggml-vocab-llama-bpe.gguf OUT.gguf
//! ```

use std::path::Path;

use llamabus::ggml::{quantize, Type};
use llamabus::gguf::{GgmlType, Gguf, GgufWriter, Value};

const N_LAYER: u32 = 16;
const N_EMBD: u64 = 2048;
const N_HEAD: u32 = 32;
const N_HEAD_KV: u32 = 8;
const HEAD_DIM: u64 = 64;
const N_FF: u64 = 8192;
const ROPE_BASE: f32 = 500_000.0;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [vocab, out] = args.as_slice() else {
        eprintln!("usage: synth-llama VOCAB.gguf OUT.gguf");
        std::process::exit(2);
    };
    let vocab = Gguf::open(Path::new(vocab)).expect("the vocabulary GGUF");
    let n_vocab = vocab
        .metadata()
        .opt_str_array("tokenizer.ggml.tokens")
        .expect("tokens")
        .expect("tokenizer.ggml.tokens")
        .len() as u64;

    let mut w = GgufWriter::new()
        .kv("general.architecture", Value::String("llama".into()))
        .kv(
            "general.name",
            Value::String("synthetic Llama-3.2-1B shape".into()),
        )
        // 7 = MOSTLY_Q8_0.
        .kv("general.file_type", Value::U32(7))
        .kv("llama.context_length", Value::U32(131_072))
        .kv("llama.embedding_length", Value::U32(N_EMBD as u32))
        .kv("llama.block_count", Value::U32(N_LAYER))
        .kv("llama.feed_forward_length", Value::U32(N_FF as u32))
        .kv("llama.attention.head_count", Value::U32(N_HEAD))
        .kv("llama.attention.head_count_kv", Value::U32(N_HEAD_KV))
        .kv("llama.rope.dimension_count", Value::U32(HEAD_DIM as u32))
        .kv("llama.rope.freq_base", Value::F32(ROPE_BASE))
        .kv("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5))
        .kv("llama.vocab_size", Value::U32(n_vocab as u32));
    for (k, v) in vocab.metadata().iter() {
        if k.starts_with("tokenizer.") {
            w = w.kv(k, v.clone());
        }
    }

    let mut rng = Rng(0x1b1b_1b1b);
    let q8 = GgmlType::from_id(Type::Q8_0.id()).expect("Q8_0");
    let f32t = GgmlType::from_id(Type::F32.id()).expect("F32");
    let mut matrix = |w: GgufWriter, name: String, cols: u64, rows: u64| {
        // std 0.02, as a freshly initialised Llama.
        let vals: Vec<f32> = (0..cols * rows).map(|_| rng.normal() * 0.02).collect();
        let data = quantize(Type::Q8_0, &vals, cols as usize);
        w.tensor(name, &[cols, rows], q8, data)
    };
    let ones = |n: u64| -> Vec<u8> { (0..n).flat_map(|_| 1f32.to_le_bytes()).collect() };

    let (q, kv) = (
        u64::from(N_HEAD) * HEAD_DIM,
        u64::from(N_HEAD_KV) * HEAD_DIM,
    );
    w = matrix(w, "token_embd.weight".into(), N_EMBD, n_vocab);
    w = w.tensor("output_norm.weight", &[N_EMBD], f32t, ones(N_EMBD));
    let freqs: Vec<u8> = llama3_rope_factors()
        .iter()
        .flat_map(|f| f.to_le_bytes())
        .collect();
    w = w.tensor("rope_freqs.weight", &[HEAD_DIM / 2], f32t, freqs);
    for i in 0..N_LAYER {
        let b = |s: &str| format!("blk.{i}.{s}.weight");
        w = w.tensor(b("attn_norm"), &[N_EMBD], f32t, ones(N_EMBD));
        w = matrix(w, b("attn_q"), N_EMBD, q);
        w = matrix(w, b("attn_k"), N_EMBD, kv);
        w = matrix(w, b("attn_v"), N_EMBD, kv);
        w = matrix(w, b("attn_output"), q, N_EMBD);
        w = w.tensor(b("ffn_norm"), &[N_EMBD], f32t, ones(N_EMBD));
        w = matrix(w, b("ffn_gate"), N_EMBD, N_FF);
        w = matrix(w, b("ffn_up"), N_EMBD, N_FF);
        w = matrix(w, b("ffn_down"), N_FF, N_EMBD);
        eprint!(".");
    }
    eprintln!();
    w.write(Path::new(out)).expect("write the model");
    eprintln!("wrote {out}");
}

/// Llama 3's RoPE frequency divisors (factor 32, low/high frequency factors 1 and 4, original
/// context 8192), as llama.cpp's convert_hf_to_gguf.py computes `rope_freqs`.
fn llama3_rope_factors() -> Vec<f32> {
    let (factor, low, high, old_ctx) = (32.0f64, 1.0f64, 4.0f64, 8192.0f64);
    let (low_wavelen, high_wavelen) = (old_ctx / low, old_ctx / high);
    (0..HEAD_DIM / 2)
        .map(|i| {
            let freq = 1.0 / f64::from(ROPE_BASE).powf(2.0 * i as f64 / HEAD_DIM as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let f = if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (old_ctx / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            f as f32
        })
        .collect()
}

/// xorshift64 with a sum-of-uniforms normal: fast and deterministic.
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }

    fn normal(&mut self) -> f32 {
        (self.unit() + self.unit() + self.unit() + self.unit() - 2.0) * 1.732
    }
}
