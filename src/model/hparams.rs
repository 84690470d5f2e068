//! Llama hyperparameters read from GGUF metadata (`llama.*` keys).
//!
//! Required keys fail by name; every default sits next to a comment saying where it comes from
//! (llama.cpp's `llama_model::load_hparams` for the llama architecture).

use crate::gguf::Metadata;
use crate::model::ModelError;

/// Shape and numerics of a Llama-architecture model.
#[derive(Clone, Debug, PartialEq)]
pub struct HParams {
    /// Context length the model was trained with (`llama.context_length`).
    pub n_ctx_train: u32,
    /// Embedding width (`llama.embedding_length`).
    pub n_embd: u32,
    /// Transformer blocks (`llama.block_count`).
    pub n_layer: u32,
    /// FFN hidden width (`llama.feed_forward_length`).
    pub n_ff: u32,
    /// Query heads (`llama.attention.head_count`).
    pub n_head: u32,
    /// Key/value heads (`llama.attention.head_count_kv`; default `n_head`, i.e. no GQA).
    pub n_head_kv: u32,
    /// Per-head width of keys and queries (`llama.attention.key_length`; default n_embd / n_head).
    pub head_dim: u32,
    /// Dimensions rotated by RoPE (`llama.rope.dimension_count`; default `head_dim`).
    pub n_rot: u32,
    /// RoPE base frequency (`llama.rope.freq_base`; default 10000, the original Llama value).
    pub rope_freq_base: f32,
    /// RoPE linear scaling (`llama.rope.scale_linear`, or `rope.scaling.factor` with type
    /// `linear`; default 1). ggml takes its inverse as `freq_scale`.
    pub rope_freq_scale: f32,
    /// RMSNorm epsilon (`llama.attention.layer_norm_rms_epsilon`, required as in llama.cpp).
    pub rms_eps: f32,
    /// Vocabulary size (`llama.vocab_size`, else the token list length).
    pub n_vocab: u32,
}

impl HParams {
    /// Reads and validates the hyperparameters. `n_vocab_tokens` is the tokenizer's size.
    pub fn from_metadata(md: &Metadata, n_vocab_tokens: usize) -> Result<HParams, ModelError> {
        let arch = md.req_str("general.architecture")?;
        if arch != "llama" {
            return Err(ModelError::UnsupportedArchitecture(arch.to_string()));
        }
        if let Some(n) = md.opt_u32("llama.expert_count")? {
            if n > 0 {
                return Err(ModelError::Unsupported(format!(
                    "mixture-of-experts llama models (llama.expert_count = {n})"
                )));
            }
        }
        let n_embd = md.req_u32("llama.embedding_length")?;
        let n_head = md.req_u32("llama.attention.head_count")?;
        let n_head_kv = md
            .opt_u32("llama.attention.head_count_kv")?
            .unwrap_or(n_head);
        let head_dim_default = n_embd.checked_div(n_head).unwrap_or(0);
        let head_dim = md
            .opt_u32("llama.attention.key_length")?
            .unwrap_or(head_dim_default);
        let v_dim = md
            .opt_u32("llama.attention.value_length")?
            .unwrap_or(head_dim);
        let rope_scale = match md.opt_str("llama.rope.scaling.type")? {
            None | Some("none") => md.opt_f32("llama.rope.scale_linear")?.unwrap_or(1.0),
            Some("linear") => md.opt_f32("llama.rope.scaling.factor")?.unwrap_or(1.0),
            Some(other) => {
                return Err(ModelError::Unsupported(format!(
                    "rope scaling type {other:?}"
                )))
            }
        };
        let hp = HParams {
            n_ctx_train: md.req_u32("llama.context_length")?,
            n_embd,
            n_layer: md.req_u32("llama.block_count")?,
            n_ff: md.req_u32("llama.feed_forward_length")?,
            n_head,
            n_head_kv,
            head_dim,
            n_rot: md
                .opt_u32("llama.rope.dimension_count")?
                .unwrap_or(head_dim),
            rope_freq_base: md.opt_f32("llama.rope.freq_base")?.unwrap_or(10_000.0),
            rope_freq_scale: if rope_scale > 0.0 {
                1.0 / rope_scale
            } else {
                0.0
            },
            rms_eps: md.req_f32("llama.attention.layer_norm_rms_epsilon")?,
            n_vocab: md
                .opt_u32("llama.vocab_size")?
                .unwrap_or(u32::try_from(n_vocab_tokens).unwrap_or(u32::MAX)),
        };
        if v_dim != head_dim {
            return Err(ModelError::Unsupported(format!(
                "value head width {v_dim} differing from key head width {head_dim}"
            )));
        }
        hp.validate()?;
        Ok(hp)
    }

    /// Sanity limits: a hostile file must not make us build an impossible graph.
    fn validate(&self) -> Result<(), ModelError> {
        let bad = |key: &str, why: String| Err(ModelError::BadHParam(key.to_string(), why));
        let cap = 1 << 20;
        for (key, v) in [
            ("llama.embedding_length", self.n_embd),
            ("llama.block_count", self.n_layer),
            ("llama.feed_forward_length", self.n_ff),
            ("llama.attention.head_count", self.n_head),
            ("llama.attention.head_count_kv", self.n_head_kv),
            ("llama.attention.key_length", self.head_dim),
            ("llama.context_length", self.n_ctx_train),
        ] {
            if v == 0 || v > cap {
                return bad(key, format!("{v} is outside 1..={cap}"));
            }
        }
        if self.n_layer > 1024 {
            return bad("llama.block_count", format!("{} layers", self.n_layer));
        }
        if self.n_head % self.n_head_kv != 0 {
            return bad(
                "llama.attention.head_count_kv",
                format!(
                    "{} does not divide head_count {}",
                    self.n_head_kv, self.n_head
                ),
            );
        }
        if self.n_rot == 0 || self.n_rot > self.head_dim || self.n_rot % 2 != 0 {
            return bad(
                "llama.rope.dimension_count",
                format!(
                    "{} must be even and at most the head width {}",
                    self.n_rot, self.head_dim
                ),
            );
        }
        let finite_pos = |x: f32| x.is_finite() && x > 0.0;
        if !finite_pos(self.rope_freq_base) {
            return bad("llama.rope.freq_base", format!("{}", self.rope_freq_base));
        }
        if !finite_pos(self.rope_freq_scale) {
            return bad("llama.rope.scaling.factor", "must be positive".into());
        }
        if !finite_pos(self.rms_eps) || self.rms_eps > 1.0 {
            return bad(
                "llama.attention.layer_norm_rms_epsilon",
                format!("{}", self.rms_eps),
            );
        }
        if self.n_vocab == 0 {
            return bad("llama.vocab_size", "0".into());
        }
        Ok(())
    }

    /// Width of all query heads together.
    pub fn n_embd_q(&self) -> u32 {
        self.head_dim * self.n_head
    }

    /// Width of all key (or value) heads together: the KV cache's row.
    pub fn n_embd_kv(&self) -> u32 {
        self.head_dim * self.n_head_kv
    }
}
