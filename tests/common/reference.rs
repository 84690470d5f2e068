//! An independent Llama forward pass in plain Rust, the oracle for the ggml graph.
//!
//! Written llama2.c-style for clarity rather than speed: f32 activations, f64 accumulation,
//! one function per stage, no KV cache (every call runs a fresh sequence from position 0 with
//! causal attention). It shares nothing with the crate's model code: it reads the GGUF through
//! the container parser only and dequantizes weights with ggml's own `to_float`, so the
//! comparison isolates the graph (activation quantization, F16 KV cache, op semantics).
//!
//! The maths follows llama.cpp (`src/models/llama.cpp`) and ggml's CPU ops
//! (`ggml-cpu/ops.cpp`):
//! - RMSNorm: `x / sqrt(mean(x²) + eps) * weight`;
//! - RoPE in ggml's NORMAL mode (`GGML_ROPE_TYPE_NORMAL`, the llama architecture's rope type):
//!   rotate *adjacent* pairs `(x[2i], x[2i+1])` by `pos · base^(-2i/n_rot) / freq_factor[i]`,
//!   where the factors come from `rope_freqs.weight` when present (`ggml_rope_cache_init`);
//! - grouped-query attention: query head `h` reads KV head `h / (n_head / n_head_kv)`, scores
//!   scaled by `1/sqrt(head_dim)`;
//! - SwiGLU FFN: `down(silu(gate(x)) * up(x))`;
//! - tied embeddings: the output projection falls back to `token_embd.weight`.
//!
//! [`Numerics::Exact`] is the mathematical model. [`Numerics::GgmlLike`] additionally rounds
//! where ggml's CPU backend does (matrix-product inputs to the weight type's `vec_dot_type`,
//! Q/K/V and attention probabilities to F16, as with an F16 KV cache), which separates
//! "different rounding" from "different maths" when a comparison is close but not tight.

use llamabus::ggml::{dequantize, Type};
use llamabus::gguf::{Gguf, TensorInfo};

/// Where the reference rounds intermediate values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Numerics {
    /// f32 activations everywhere (f64 accumulation): the model as written on paper.
    Exact,
    /// Round like ggml's CPU backend: each matrix product's input to the weight type's
    /// dot-product type (F16, Q8_0, Q8_1 or Q8_K; `type_traits_cpu[..].vec_dot_type` in
    /// ggml-cpu.c), Q, K and V to F16 (F16 KV cache; ggml converts Q to K's type for
    /// `K·Q`) and the attention probabilities to F16 (converted for `V·softmax`).
    GgmlLike,
}

/// Hyperparameters read from `llama.*` metadata.
#[derive(Clone, Debug)]
pub struct RefConfig {
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_rot: usize,
    pub n_ff: usize,
    pub rope_base: f32,
    pub rms_eps: f32,
}

/// A weight matrix kept in its stored type; rows are dequantized as they are used.
/// ggml layout: `ne0 = n_in` elements per row, `ne1 = n_out` rows, so `out[i] = row_i · x`.
struct Matrix {
    ty: Type,
    n_in: usize,
    n_out: usize,
    data: Vec<u8>,
}

impl Matrix {
    fn row_bytes(&self) -> usize {
        self.ty.row_bytes(self.n_in as i64)
    }

    /// Row `i` as f32.
    fn row(&self, i: usize) -> Vec<f32> {
        let rb = self.row_bytes();
        dequantize(self.ty, &self.data[i * rb..(i + 1) * rb], self.n_in)
    }

    /// `W·x` for every `x` in `xs` (one per position). Each row is dequantized once and used
    /// for all positions; rows are split across threads.
    fn matmul(&self, xs: &[Vec<f32>], numerics: Numerics) -> Vec<Vec<f32>> {
        for x in xs {
            assert_eq!(x.len(), self.n_in, "matmul input length");
        }
        let rounded: Vec<Vec<f32>>;
        let xs = match numerics {
            Numerics::Exact => xs,
            Numerics::GgmlLike => {
                rounded = xs.iter().map(|x| round_like_vec_dot(self.ty, x)).collect();
                &rounded
            }
        };
        // out_t[i][p] = row_i · xs[p], computed in row chunks in parallel.
        let n_threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let chunk = self.n_out.div_ceil(n_threads).max(1);
        let mut out_t = vec![Vec::new(); self.n_out];
        std::thread::scope(|s| {
            for (c, rows) in out_t.chunks_mut(chunk).enumerate() {
                s.spawn(move || {
                    for (k, slot) in rows.iter_mut().enumerate() {
                        let w = self.row(c * chunk + k);
                        *slot = xs.iter().map(|x| dot(&w, x)).collect::<Vec<f32>>();
                    }
                });
            }
        });
        (0..xs.len())
            .map(|p| out_t.iter().map(|r| r[p]).collect())
            .collect()
    }
}

/// One transformer block's weights.
struct Layer {
    attn_norm: Vec<f32>,
    wq: Matrix,
    wk: Matrix,
    wv: Matrix,
    wo: Matrix,
    ffn_norm: Vec<f32>,
    w_gate: Matrix,
    w_up: Matrix,
    w_down: Matrix,
}

/// The whole model, read from a GGUF file.
pub struct RefModel {
    pub config: RefConfig,
    token_embd: Matrix,
    layers: Vec<Layer>,
    output_norm: Vec<f32>,
    /// `None` when the file has no `output.weight` (tied to `token_embd`).
    output: Option<Matrix>,
    /// Per-pair RoPE frequency divisors (`rope_freqs.weight`), if present.
    rope_freqs: Option<Vec<f32>>,
}

impl std::fmt::Debug for RefModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefModel")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn tensor<'a>(gguf: &'a Gguf, name: &str) -> &'a TensorInfo {
    gguf.tensor(name)
        .unwrap_or_else(|| panic!("reference: missing tensor {name}"))
}

fn ggml_type(info: &TensorInfo) -> Type {
    Type::from_id(info.ty.id())
        .unwrap_or_else(|| panic!("reference: tensor {} has unknown type", info.name))
}

fn load_matrix(gguf: &Gguf, name: &str, n_in: usize, n_out: usize) -> Matrix {
    let info = tensor(gguf, name);
    assert_eq!(
        info.dims,
        [n_in as u64, n_out as u64],
        "reference: shape of {name}"
    );
    Matrix {
        ty: ggml_type(info),
        n_in,
        n_out,
        data: gguf.tensor_data(info).to_vec(),
    }
}

fn load_vector(gguf: &Gguf, name: &str, n: usize) -> Vec<f32> {
    let info = tensor(gguf, name);
    assert_eq!(info.dims, [n as u64], "reference: shape of {name}");
    dequantize(ggml_type(info), gguf.tensor_data(info), n)
}

impl RefModel {
    /// Reads hyperparameters and weights.
    ///
    /// # Panics
    /// On anything missing or outside plain Llama (this is a test oracle, not a loader): rope
    /// scaling other than none, a key/value head size other than `n_embd / n_head`.
    pub fn load(gguf: &Gguf) -> RefModel {
        let md = gguf.metadata();
        let arch = md.req_str("general.architecture").expect("architecture");
        assert_eq!(
            arch, "llama",
            "reference handles the llama architecture only"
        );
        let u = |key: &str| md.req_u32(key).unwrap_or_else(|e| panic!("{e}")) as usize;
        let n_embd = u("llama.embedding_length");
        let n_head = u("llama.attention.head_count");
        let n_head_kv = md
            .opt_u32("llama.attention.head_count_kv")
            .expect("head_count_kv")
            .map_or(n_head, |n| n as usize);
        let head_dim = n_embd / n_head;
        for key in ["llama.attention.key_length", "llama.attention.value_length"] {
            if let Some(n) = md.opt_u32(key).expect(key) {
                assert_eq!(
                    n as usize, head_dim,
                    "reference expects {key} = n_embd/n_head"
                );
            }
        }
        if let Some(kind) = md.opt_str("llama.rope.scaling.type").expect("scaling type") {
            assert!(
                kind == "none",
                "reference does not implement rope scaling '{kind}'"
            );
        }
        let n_vocab = tensor(gguf, "token_embd.weight").dims[1] as usize;
        let config = RefConfig {
            n_vocab,
            n_embd,
            n_layer: u("llama.block_count"),
            n_head,
            n_head_kv,
            head_dim,
            n_rot: md
                .opt_u32("llama.rope.dimension_count")
                .expect("rope dims")
                .map_or(head_dim, |n| n as usize),
            n_ff: u("llama.feed_forward_length"),
            // llama.cpp's default when the key is absent.
            rope_base: md
                .opt_f32("llama.rope.freq_base")
                .expect("freq_base")
                .unwrap_or(10000.0),
            rms_eps: md
                .req_f32("llama.attention.layer_norm_rms_epsilon")
                .expect("rms eps"),
        };
        assert!(config.n_rot <= head_dim && config.n_rot % 2 == 0);
        let c = &config;

        let layers = (0..c.n_layer)
            .map(|il| {
                let name = |t: &str| format!("blk.{il}.{t}.weight");
                Layer {
                    attn_norm: load_vector(gguf, &name("attn_norm"), c.n_embd),
                    wq: load_matrix(gguf, &name("attn_q"), c.n_embd, c.n_head * c.head_dim),
                    wk: load_matrix(gguf, &name("attn_k"), c.n_embd, c.n_head_kv * c.head_dim),
                    wv: load_matrix(gguf, &name("attn_v"), c.n_embd, c.n_head_kv * c.head_dim),
                    wo: load_matrix(gguf, &name("attn_output"), c.n_head * c.head_dim, c.n_embd),
                    ffn_norm: load_vector(gguf, &name("ffn_norm"), c.n_embd),
                    w_gate: load_matrix(gguf, &name("ffn_gate"), c.n_embd, c.n_ff),
                    w_up: load_matrix(gguf, &name("ffn_up"), c.n_embd, c.n_ff),
                    w_down: load_matrix(gguf, &name("ffn_down"), c.n_ff, c.n_embd),
                }
            })
            .collect();
        let output = gguf
            .tensor("output.weight")
            .map(|_| load_matrix(gguf, "output.weight", c.n_embd, c.n_vocab));
        let rope_freqs = gguf
            .tensor("rope_freqs.weight")
            .map(|_| load_vector(gguf, "rope_freqs.weight", c.n_rot / 2));
        RefModel {
            token_embd: load_matrix(gguf, "token_embd.weight", c.n_embd, c.n_vocab),
            output_norm: load_vector(gguf, "output_norm.weight", c.n_embd),
            layers,
            output,
            rope_freqs,
            config,
        }
    }

    /// Logits (`n_vocab` each) for every position of `tokens`, run as a fresh sequence
    /// starting at position 0, with [`Numerics::Exact`].
    pub fn forward(&self, tokens: &[u32]) -> Vec<Vec<f32>> {
        self.forward_with(tokens, Numerics::Exact)
    }

    /// [`RefModel::forward`] with a choice of rounding.
    pub fn forward_with(&self, tokens: &[u32], numerics: Numerics) -> Vec<Vec<f32>> {
        let c = &self.config;
        // x: [n_tokens][n_embd], the residual stream.
        let mut x: Vec<Vec<f32>> = tokens
            .iter()
            .map(|&t| {
                assert!((t as usize) < c.n_vocab, "token {t} out of range");
                self.token_embd.row(t as usize)
            })
            .collect();
        for layer in &self.layers {
            self.attention_block(layer, &mut x, numerics);
            self.ffn_block(layer, &mut x, numerics);
        }
        // Final norm, then the output projection (tied to token_embd when output is absent).
        let h: Vec<Vec<f32>> = x
            .iter()
            .map(|xi| rmsnorm(xi, &self.output_norm, c.rms_eps))
            .collect();
        self.output
            .as_ref()
            .unwrap_or(&self.token_embd)
            .matmul(&h, numerics)
    }

    /// `x += Wo · attention(rope(Wq·h), rope(Wk·h), Wv·h)` with `h = rmsnorm(x) * attn_norm`.
    fn attention_block(&self, layer: &Layer, x: &mut [Vec<f32>], numerics: Numerics) {
        let c = &self.config;
        let hd = c.head_dim;
        let h: Vec<Vec<f32>> = x
            .iter()
            .map(|xi| rmsnorm(xi, &layer.attn_norm, c.rms_eps))
            .collect();
        // q: [n_tokens][n_head*hd], k and v: [n_tokens][n_head_kv*hd]
        let mut q = layer.wq.matmul(&h, numerics);
        let mut k = layer.wk.matmul(&h, numerics);
        let mut v = layer.wv.matmul(&h, numerics);
        for (pos, (qp, kp)) in q.iter_mut().zip(k.iter_mut()).enumerate() {
            for head in qp.chunks_exact_mut(hd) {
                self.rope(head, pos);
            }
            for head in kp.chunks_exact_mut(hd) {
                self.rope(head, pos);
            }
        }
        let f16_rounding = numerics == Numerics::GgmlLike;
        if f16_rounding {
            for row in q.iter_mut().chain(k.iter_mut()).chain(v.iter_mut()) {
                round_f16_in_place(row);
            }
        }

        let group = c.n_head / c.n_head_kv;
        let scale = 1.0 / (hd as f64).sqrt();
        // attn: [n_tokens][n_head*hd], the heads' outputs concatenated.
        let attn: Vec<Vec<f32>> = (0..x.len())
            .map(|pos| {
                let mut out = vec![0f32; c.n_head * hd];
                for head in 0..c.n_head {
                    let kvh = head / group;
                    let qh = &q[pos][head * hd..(head + 1) * hd];
                    // Causal: position `pos` sees positions 0..=pos.
                    let scores: Vec<f64> = (0..=pos)
                        .map(|t| f64::from(dot(qh, &k[t][kvh * hd..(kvh + 1) * hd])) * scale)
                        .collect();
                    let mut p = softmax(&scores);
                    if f16_rounding {
                        for pi in &mut p {
                            *pi = f64::from(half::f16::from_f64(*pi).to_f32());
                        }
                    }
                    for (i, o) in out[head * hd..(head + 1) * hd].iter_mut().enumerate() {
                        let s: f64 = (0..=pos)
                            .map(|t| p[t] * f64::from(v[t][kvh * hd + i]))
                            .sum();
                        *o = s as f32;
                    }
                }
                out
            })
            .collect();
        let o = layer.wo.matmul(&attn, numerics);
        add_in_place(x, &o);
    }

    /// `x += Wdown · (silu(Wgate·h) * (Wup·h))` with `h = rmsnorm(x) * ffn_norm`.
    fn ffn_block(&self, layer: &Layer, x: &mut [Vec<f32>], numerics: Numerics) {
        let c = &self.config;
        let h: Vec<Vec<f32>> = x
            .iter()
            .map(|xi| rmsnorm(xi, &layer.ffn_norm, c.rms_eps))
            .collect();
        let gate = layer.w_gate.matmul(&h, numerics);
        let up = layer.w_up.matmul(&h, numerics);
        // act: [n_tokens][n_ff]
        let act: Vec<Vec<f32>> = gate
            .iter()
            .zip(&up)
            .map(|(g, u)| g.iter().zip(u).map(|(&g, &u)| silu(g) * u).collect())
            .collect();
        let down = layer.w_down.matmul(&act, numerics);
        add_in_place(x, &down);
    }

    /// Rotates adjacent pairs of one head in place (ggml NORMAL mode); dimensions past
    /// `n_rot` pass through.
    fn rope(&self, head: &mut [f32], pos: usize) {
        let c = &self.config;
        for i in 0..c.n_rot / 2 {
            let inv_freq = f64::from(c.rope_base).powf(-2.0 * i as f64 / c.n_rot as f64);
            let divisor = self.rope_freqs.as_ref().map_or(1.0, |f| f64::from(f[i]));
            let theta = pos as f64 * inv_freq / divisor;
            let (sin, cos) = theta.sin_cos();
            let (x0, x1) = (f64::from(head[2 * i]), f64::from(head[2 * i + 1]));
            head[2 * i] = (x0 * cos - x1 * sin) as f32;
            head[2 * i + 1] = (x0 * sin + x1 * cos) as f32;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ggml-like rounding (Numerics::GgmlLike)

fn round_f16_in_place(x: &mut [f32]) {
    for v in x {
        *v = half::f16::from_f32(*v).to_f32();
    }
}

/// `x` as ggml's CPU backend hands it to the dot product with weights of type `weight`:
/// converted to `vec_dot_type` and back.
fn round_like_vec_dot(weight: Type, x: &[f32]) -> Vec<f32> {
    let q8_0 = [Type::Q4_0, Type::Q5_0, Type::Q8_0, Type::IQ4_NL];
    let q8_1 = [Type::Q4_1, Type::Q5_1];
    let q8_k = [
        Type::Q2_K,
        Type::Q3_K,
        Type::Q4_K,
        Type::Q5_K,
        Type::Q6_K,
        Type::IQ4_XS,
    ];
    if weight == Type::F32 {
        x.to_vec()
    } else if weight == Type::F16 {
        let mut y = x.to_vec();
        round_f16_in_place(&mut y);
        y
    } else if weight == Type::BF16 {
        x.iter()
            .map(|&v| half::bf16::from_f32(v).to_f32())
            .collect()
    } else if q8_0.contains(&weight) || q8_1.contains(&weight) {
        x.chunks(32).flat_map(round_q8_block32).collect()
    } else if q8_k.contains(&weight) {
        x.chunks(256).flat_map(round_q8_k_block).collect()
    } else {
        panic!("reference: no ggml-like rounding for {weight:?}")
    }
}

/// Q8_0 / Q8_1 (`quantize_row_q8_{0,1}_ref`): scale `amax/127` stored as F16, values
/// `round(x / d)` (the two differ only in Q8_1's extra block sum).
fn round_q8_block32(block: &[f32]) -> Vec<f32> {
    let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let d16 = half::f16::from_f32(d).to_f32();
    block.iter().map(|&v| (v * id).round() * d16).collect()
}

/// Q8_K (`quantize_row_q8_K_ref`): scale from the signed value of largest magnitude, F32.
fn round_q8_k_block(block: &[f32]) -> Vec<f32> {
    let (max, amax) = block.iter().fold((0f32, 0f32), |(m, a), &v| {
        if v.abs() > a {
            (v, v.abs())
        } else {
            (m, a)
        }
    });
    if amax == 0.0 {
        return vec![0.0; block.len()];
    }
    let iscale = -127.0 / max;
    let d = 1.0 / iscale;
    block
        .iter()
        .map(|&v| (iscale * v).round_ties_even().min(127.0) * d)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Maths

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum::<f64>() as f32
}

fn rmsnorm(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let mean_sq = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / x.len() as f64;
    let scale = 1.0 / (mean_sq + f64::from(eps)).sqrt();
    x.iter()
        .zip(weight)
        .map(|(&v, &w)| (f64::from(v) * scale) as f32 * w)
        .collect()
}

fn softmax(scores: &[f64]) -> Vec<f64> {
    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = scores.iter().map(|&s| (s - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

fn add_in_place(x: &mut [Vec<f32>], delta: &[Vec<f32>]) {
    for (xi, di) in x.iter_mut().zip(delta) {
        for (a, b) in xi.iter_mut().zip(di) {
            *a += b;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Comparison helpers

/// Relative RMS error `‖got − want‖ / ‖want‖`.
pub fn rel_rms(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (f64::from(g) - f64::from(w)).powi(2))
        .sum();
    let den: f64 = want.iter().map(|&w| f64::from(w).powi(2)).sum();
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// Index of the largest value (first on ties).
pub fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &x)| {
            if x > best.1 {
                (i, x)
            } else {
                best
            }
        })
        .0
}

/// Gap between the largest and second-largest value.
pub fn top2_margin(v: &[f32]) -> f32 {
    let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &x in v {
        if x > a {
            b = a;
            a = x;
        } else if x > b {
            b = x;
        }
    }
    a - b
}

/// Log-softmax in f64.
pub fn log_softmax(v: &[f32]) -> Vec<f64> {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = v
        .iter()
        .map(|&x| (f64::from(x) - f64::from(max)).exp())
        .sum();
    let log_sum = sum.ln() + f64::from(max);
    v.iter().map(|&x| f64::from(x) - log_sum).collect()
}
