//! Tiny Llama GGUF files with seeded random weights, for tests that must not depend on a
//! downloaded model: the ggml graph against the reference forward pass, loaders, tokenizers.
//!
//! Names, shapes and metadata keys are llama.cpp's (`src/models/llama.cpp`,
//! `load_arch_tensors`); shapes are in ggml order, `ne[0]` (the row length, i.e. a matrix's
//! *input* dimension) first. Weight matrices use the spec's type, norms and `rope_freqs` are F32.
//! The weights are drawn from a uniform distribution without transcendental functions, so the
//! same spec gives the same bytes on every target (up to ggml's quantizer, which is integer-
//! and float-deterministic per target).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use llamabus::ggml::{quantize, Type};
use llamabus::gguf::GgmlType;
use llamabus::gguf::GgufWriter;
use llamabus::gguf::{Array, Value};

/// Which tokenizer metadata the model carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TinyTokenizer {
    /// Byte-level BPE (`tokenizer.ggml.model = "gpt2"`) with the given `tokenizer.ggml.pre`
    /// (`"smollm"` or `"default"`): specials `<|endoftext|>`, `<|im_start|>`, `<|im_end|>`
    /// (ids 0-2, control), the 256 byte tokens in GPT-2's byte-to-unicode spelling, then merged
    /// tokens with their merges; a ChatML chat template.
    Bpe { pre: &'static str },
    /// SentencePiece (`tokenizer.ggml.model = "llama"`): `<unk>`, `<s>`, `</s>`, 256 `<0xNN>`
    /// byte tokens, `▁`, then scored pieces.
    Spm,
}

/// What to generate. [`TinySpec::new`] gives a sensible model for a weight type.
#[derive(Clone, Debug)]
pub struct TinySpec {
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub n_ff: usize,
    pub n_ctx_train: usize,
    pub rope_freq_base: f32,
    pub rms_eps: f32,
    /// Type of every weight matrix (token_embd, attention, FFN, output); norms stay F32.
    pub weight_type: Type,
    /// Per-tensor exceptions to `weight_type` (exact tensor names), for models that mix types
    /// across layers as llama-quantize's mixes (`Q5_K_M`, ...) and its per-tensor fallbacks do.
    pub overrides: Vec<(String, Type)>,
    /// Omit `output.weight`, so the output projection falls back to `token_embd.weight`.
    pub tied_embeddings: bool,
    pub tokenizer: TinyTokenizer,
    pub seed: u64,
    /// Add a llama3-style `rope_freqs.weight` (frequency divisors 1.0..4.0).
    pub rope_freqs: bool,
    /// SentencePiece only: spell every scored piece as a string of at least 64 bytes and give
    /// the specials, byte tokens and `▁` all-zero rows in `output.weight`. Their logits are
    /// then exactly 0 while the long pieces' are random, so greedy generation emits only long
    /// pieces and never EOS (all ~120 random logits negative is a 2^-120 event) — a
    /// deterministic source of long replies for transport tests.
    pub long_pieces: bool,
}

impl TinySpec {
    /// Two layers with GQA (4 query heads, 2 KV heads). K-quants need rows of 256, so they get
    /// `n_embd = 256, n_ff = 512`; every other type `n_embd = 128, n_ff = 256`.
    pub fn new(weight_type: Type) -> TinySpec {
        let k_quant = weight_type.block_size() == 256;
        let (n_embd, n_ff) = if k_quant { (256, 512) } else { (128, 256) };
        TinySpec {
            n_vocab: 384,
            n_embd,
            n_layer: 2,
            n_head: 4,
            n_head_kv: 2,
            n_ff,
            n_ctx_train: 256,
            rope_freq_base: 10000.0,
            rms_eps: 1e-5,
            weight_type,
            overrides: Vec::new(),
            tied_embeddings: false,
            tokenizer: TinyTokenizer::Bpe { pre: "smollm" },
            seed: 1,
            rope_freqs: false,
            long_pieces: false,
        }
    }

    /// The type of weight matrix `name`.
    pub fn type_of(&self, name: &str) -> Type {
        self.overrides
            .iter()
            .find(|(n, _)| n == name)
            .map_or(self.weight_type, |&(_, t)| t)
    }

    /// Per-head dimension (`n_embd / n_head`), also the RoPE dimension count.
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }
}

/// The model as GGUF bytes.
///
/// # Panics
/// If the spec is inconsistent (head counts, row lengths not a multiple of the type's block,
/// a vocabulary too small for the 259 fixed tokens).
pub fn tiny_model_bytes(spec: &TinySpec) -> Vec<u8> {
    assert!(
        spec.n_head > 0 && spec.n_embd % spec.n_head == 0,
        "n_embd % n_head"
    );
    assert!(
        spec.n_head_kv > 0 && spec.n_head % spec.n_head_kv == 0,
        "n_head % n_head_kv"
    );
    assert!(
        spec.head_dim() % 2 == 0,
        "RoPE needs an even head dimension"
    );
    let block = spec.weight_type.block_size();
    for (what, n) in [("n_embd", spec.n_embd), ("n_ff", spec.n_ff)] {
        assert!(n % block == 0, "{what} = {n} is not a multiple of {block}");
    }
    // (Overridden tensors are checked where they are quantized: `quantize` refuses partial blocks.)

    let head_dim = spec.head_dim();
    let mut w = GgufWriter::new()
        .kv("general.architecture", Value::String("llama".into()))
        .kv("general.name", Value::String("tiny-test".into()))
        .kv("llama.context_length", u32_value(spec.n_ctx_train))
        .kv("llama.embedding_length", u32_value(spec.n_embd))
        .kv("llama.block_count", u32_value(spec.n_layer))
        .kv("llama.feed_forward_length", u32_value(spec.n_ff))
        .kv("llama.attention.head_count", u32_value(spec.n_head))
        .kv("llama.attention.head_count_kv", u32_value(spec.n_head_kv))
        .kv("llama.rope.dimension_count", u32_value(head_dim))
        .kv("llama.rope.freq_base", Value::F32(spec.rope_freq_base))
        .kv(
            "llama.attention.layer_norm_rms_epsilon",
            Value::F32(spec.rms_eps),
        )
        .kv("llama.vocab_size", u32_value(spec.n_vocab));
    assert!(
        !spec.long_pieces || spec.tokenizer == TinyTokenizer::Spm,
        "long_pieces needs the SentencePiece vocabulary"
    );
    for (key, value) in tokenizer_metadata(spec.tokenizer, spec.n_vocab, spec.long_pieces) {
        w = w.kv(key, value);
    }

    let mut t = Tensors {
        w,
        seed: spec.seed,
        spec,
    };
    let (n_embd, n_vocab, n_ff) = (spec.n_embd, spec.n_vocab, spec.n_ff);
    let n_q = spec.n_head * head_dim;
    let n_kv = spec.n_head_kv * head_dim;
    // Uniform in [-a, a] has standard deviation a/√3; projections get ~1/√fan_in so
    // activations keep their scale, embeddings ~0.1 so tied logits spread over a few units.
    let proj = |fan_in: usize| 3f32.sqrt() / (fan_in as f32).sqrt();

    t.matrix("token_embd.weight", n_embd, n_vocab, 0.17);
    if spec.rope_freqs {
        // llama3-style divisors: 1 for the fastest pairs rising to 4 for the slowest.
        let n = head_dim / 2;
        let f: Vec<f32> = (0..n)
            .map(|i| 1.0 + 3.0 * i as f32 / (n - 1).max(1) as f32)
            .collect();
        t.f32_tensor("rope_freqs.weight", &[n as u64], &f);
    }
    for il in 0..spec.n_layer {
        t.norm(&format!("blk.{il}.attn_norm.weight"), n_embd);
        t.matrix(
            &format!("blk.{il}.attn_q.weight"),
            n_embd,
            n_q,
            proj(n_embd),
        );
        t.matrix(
            &format!("blk.{il}.attn_k.weight"),
            n_embd,
            n_kv,
            proj(n_embd),
        );
        t.matrix(
            &format!("blk.{il}.attn_v.weight"),
            n_embd,
            n_kv,
            proj(n_embd),
        );
        t.matrix(
            &format!("blk.{il}.attn_output.weight"),
            n_q,
            n_embd,
            proj(n_q),
        );
        t.norm(&format!("blk.{il}.ffn_norm.weight"), n_embd);
        t.matrix(
            &format!("blk.{il}.ffn_gate.weight"),
            n_embd,
            n_ff,
            proj(n_embd),
        );
        t.matrix(
            &format!("blk.{il}.ffn_up.weight"),
            n_embd,
            n_ff,
            proj(n_embd),
        );
        t.matrix(
            &format!("blk.{il}.ffn_down.weight"),
            n_ff,
            n_embd,
            proj(n_ff),
        );
    }
    t.norm("output_norm.weight", n_embd);
    if !spec.tied_embeddings {
        let silent = if spec.long_pieces { SPM_FIRST_PIECE } else { 0 };
        t.matrix_zero_rows("output.weight", n_embd, n_vocab, proj(n_embd), silent);
    } else {
        assert!(!spec.long_pieces, "long_pieces needs an output matrix");
    }
    t.w.to_bytes()
}

/// Writes the model to `path`.
pub fn write_tiny_model(spec: &TinySpec, path: &Path) {
    std::fs::write(path, tiny_model_bytes(spec))
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

fn u32_value(n: usize) -> Value {
    Value::U32(u32::try_from(n).expect("fits in u32"))
}

/// The writer plus what every tensor needs.
struct Tensors<'a> {
    w: GgufWriter,
    seed: u64,
    spec: &'a TinySpec,
}

impl Tensors<'_> {
    /// A `[n_in, n_out]` weight matrix (rows of `n_in`) in its spec type, uniform in ±`a`.
    fn matrix(&mut self, name: &str, n_in: usize, n_out: usize, a: f32) {
        self.matrix_zero_rows(name, n_in, n_out, a, 0);
    }

    /// [`Self::matrix`] with its first `n_zero` rows all zero.
    fn matrix_zero_rows(&mut self, name: &str, n_in: usize, n_out: usize, a: f32, n_zero: usize) {
        let mut rng = Rng::for_tensor(self.seed, name);
        let mut data: Vec<f32> = (0..n_in * n_out).map(|_| a * rng.symmetric()).collect();
        data[..n_zero * n_in].fill(0.0);
        let ty = self.spec.type_of(name);
        let bytes = quantize(ty, &data, n_in);
        self.push(name, &[n_in as u64, n_out as u64], ty, bytes);
    }

    /// A norm weight vector around 1.0 (±0.2), F32.
    fn norm(&mut self, name: &str, n: usize) {
        let mut rng = Rng::for_tensor(self.seed, name);
        let data: Vec<f32> = (0..n).map(|_| 1.0 + 0.2 * rng.symmetric()).collect();
        self.f32_tensor(name, &[n as u64], &data);
    }

    fn f32_tensor(&mut self, name: &str, dims: &[u64], data: &[f32]) {
        let bytes = quantize(Type::F32, data, data.len());
        self.push(name, dims, Type::F32, bytes);
    }

    fn push(&mut self, name: &str, dims: &[u64], ty: Type, bytes: Vec<u8>) {
        let gty = GgmlType::from_id(ty.id()).expect("ggml type known to the GGUF table");
        let w = std::mem::take(&mut self.w);
        self.w = w.tensor(name, dims, gty, bytes);
    }
}

/// SplitMix64: tiny, seedable, identical on every target.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// An independent stream per tensor name, so adding a tensor does not shift the others.
    fn for_tensor(seed: u64, name: &str) -> Rng {
        // FNV-1a over the name.
        let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        Rng(seed ^ h)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 24 bits (exact in f32).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in [-1, 1).
    pub fn symmetric(&mut self) -> f32 {
        2.0 * self.unit() - 1.0
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

// ---------------------------------------------------------------------------------------------
// Tokenizer metadata

/// llama.cpp's `llama_token_type` values stored in `tokenizer.ggml.token_type`.
mod token_type {
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const BYTE: i32 = 6;
}

/// Words whose prefixes become merged tokens first (so common text tokenizes into a few
/// pieces); two-letter pairs fill the vocabulary after them.
const WORDS: &[&str] = &[
    "the", "and", "hello", "world", "llama", "model", "token", "test", "tiny", "is", "of", "to",
    "in", "it", "that", "for", "on", "with", "as", "was", "ing", "tion", "er", "re",
];

/// The GPT-2 byte-to-unicode table: printable bytes map to themselves, the rest to U+0100 up,
/// so every byte has a visible, space-free spelling (space is `Ġ`).
pub fn gpt2_byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[usize::from(b)] = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(next).expect("valid codepoint");
            next += 1;
            c
        };
    }
    table
}

/// `tokenizer.*` metadata for a vocabulary of exactly `n_vocab` tokens.
fn tokenizer_metadata(
    kind: TinyTokenizer,
    n_vocab: usize,
    long_pieces: bool,
) -> Vec<(&'static str, Value)> {
    match kind {
        TinyTokenizer::Bpe { pre } => bpe_metadata(pre, n_vocab),
        TinyTokenizer::Spm => spm_metadata(n_vocab, long_pieces),
    }
}

/// The first scored piece of the SentencePiece vocabulary: after `<unk>`, `<s>`, `</s>`, the
/// 256 byte tokens and `▁`.
const SPM_FIRST_PIECE: usize = 3 + 256 + 1;

/// A vocabulary under construction: texts with their types, no duplicates.
#[derive(Default)]
struct VocabBuilder {
    tokens: Vec<String>,
    types: Vec<i32>,
    seen: HashSet<String>,
}

impl VocabBuilder {
    fn add(&mut self, text: &str, ty: i32) -> bool {
        if !self.seen.insert(text.to_owned()) {
            return false;
        }
        self.tokens.push(text.to_owned());
        self.types.push(ty);
        true
    }

    fn has(&self, text: &str) -> bool {
        self.seen.contains(text)
    }

    fn len(&self) -> usize {
        self.tokens.len()
    }
}

fn bpe_metadata(pre: &'static str, n_vocab: usize) -> Vec<(&'static str, Value)> {
    let mut v = VocabBuilder::default();
    for special in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] {
        v.add(special, token_type::CONTROL);
    }
    let bytes = gpt2_byte_chars();
    for c in bytes {
        v.add(&c.to_string(), token_type::NORMAL);
    }
    assert!(
        n_vocab >= v.len(),
        "BPE vocab needs at least {} tokens",
        v.len()
    );

    // Merges build each word left to right ("Ġ t" → "Ġt", "Ġt h" → "Ġth", ...), so both
    // halves of every merge are tokens and every merged token is reachable.
    let space = bytes[usize::from(b' ')];
    let mut merges = Vec::new();
    let words = WORDS
        .iter()
        .flat_map(|w| [format!("{space}{w}"), (*w).to_owned()]);
    let pairs = ('a'..='z').flat_map(|a| ('a'..='z').map(move |b| format!("{a}{b}")));
    'fill: for word in words.chain(pairs) {
        let chars: Vec<char> = word.chars().collect();
        let mut left = chars[0].to_string();
        for &c in &chars[1..] {
            if v.len() == n_vocab {
                break 'fill;
            }
            let merged = format!("{left}{c}");
            if v.add(&merged, token_type::NORMAL) {
                merges.push(format!("{left} {c}"));
            }
            left = merged;
        }
    }
    assert_eq!(v.len(), n_vocab, "not enough merges to fill the vocabulary");

    let template = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + \
                    message['content'] + '<|im_end|>' + '\n'}}{% endfor %}\
                    {% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
    vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String(pre.into())),
        (
            "tokenizer.ggml.tokens",
            Value::Array(Array::String(v.tokens)),
        ),
        (
            "tokenizer.ggml.token_type",
            Value::Array(Array::I32(v.types)),
        ),
        ("tokenizer.ggml.merges", Value::Array(Array::String(merges))),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
        ("tokenizer.ggml.unknown_token_id", Value::U32(0)),
        ("tokenizer.ggml.padding_token_id", Value::U32(0)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
        ("tokenizer.chat_template", Value::String(template.into())),
    ]
}

fn spm_metadata(n_vocab: usize, long_pieces: bool) -> Vec<(&'static str, Value)> {
    let mut v = VocabBuilder::default();
    v.add("<unk>", token_type::UNKNOWN);
    v.add("<s>", token_type::CONTROL);
    v.add("</s>", token_type::CONTROL);
    for b in 0..=255u8 {
        v.add(&format!("<0x{b:02X}>"), token_type::BYTE);
    }
    v.add("▁", token_type::NORMAL);
    assert!(
        n_vocab >= v.len(),
        "SPM vocab needs at least {} tokens",
        v.len()
    );

    // Single letters, then every prefix of each "▁word", then two-letter pairs: SentencePiece
    // merges adjacent symbols whose concatenation is a piece, so prefixes keep words reachable.
    let letters = ('a'..='z').map(|c| c.to_string());
    let words = WORDS.iter().flat_map(|w| {
        let full = format!("▁{w}");
        let ends: Vec<usize> = full.char_indices().map(|(i, c)| i + c.len_utf8()).collect();
        ends.into_iter()
            .skip(1)
            .map(move |end| full[..end].to_owned())
    });
    let pairs = ('a'..='z').flat_map(|a| ('a'..='z').map(move |b| format!("{a}{b}")));
    for piece in letters.chain(words).chain(pairs) {
        if v.len() == n_vocab {
            break;
        }
        // `<piece>` repeated stays unique per piece (no piece contains `<` or `>`).
        let piece = if long_pieces {
            let one = format!("<{piece}>");
            one.repeat(64usize.div_ceil(one.len()))
        } else {
            piece
        };
        if !v.has(&piece) {
            v.add(&piece, token_type::NORMAL);
        }
    }
    assert_eq!(v.len(), n_vocab, "not enough pieces to fill the vocabulary");

    // Scores: specials and bytes 0, pieces ranked by position (earlier = preferred).
    let first_piece = 3 + 256;
    let scores: Vec<f32> = (0..n_vocab)
        .map(|i| {
            if i < first_piece {
                0.0
            } else {
                -((i - first_piece) as f32)
            }
        })
        .collect();
    vec![
        ("tokenizer.ggml.model", Value::String("llama".into())),
        (
            "tokenizer.ggml.tokens",
            Value::Array(Array::String(v.tokens)),
        ),
        ("tokenizer.ggml.scores", Value::Array(Array::F32(scores))),
        (
            "tokenizer.ggml.token_type",
            Value::Array(Array::I32(v.types)),
        ),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
        ("tokenizer.ggml.unknown_token_id", Value::U32(0)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(true)),
    ]
}

// ---------------------------------------------------------------------------------------------
// Test data and scratch space

/// `models/` in the crate root, where `scripts/fetch-test-data.sh` puts the real model.
pub fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models")
}

/// Panics unless `path` exists: missing test data is a failure, never a silent skip.
pub fn require(path: &Path) -> &Path {
    assert!(
        path.exists(),
        "missing {}: run scripts/fetch-test-data.sh",
        path.display()
    );
    path
}
