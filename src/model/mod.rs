//! Models: the GGUF container, hyperparameters, the Llama weights and forward pass, the KV cache.
//!
//! [`Model`] is everything read from one GGUF file: hyperparameters, the tokenizer, the chat
//! template and the weights. Weights stay in the memory-mapped file (zero-copy), except those
//! ggml has a faster layout for on this CPU, which are copied into it ([`LoadOptions`]). [`Session`]
//! evaluates tokens against a model with its own KV cache and compute buffers.

pub mod gguf;
pub mod gguf_write;
pub mod hparams;
mod kv_cache;
mod llama;
pub mod session;
pub mod types;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ggml::{self, AllocatedContext, Context, ExtraBufferType, HostBytes, Type};
use crate::model::gguf::{Gguf, GgufError, TensorInfo};
use crate::tokenizer::chat::{ChatError, ChatTemplate};
use crate::tokenizer::{Tokenizer, TokenizerError};

pub use hparams::HParams;
pub use kv_cache::{kv_cache_bytes, SeqId, MAX_SEQS};
pub use session::{Batch, Session};

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("tokenizer: {0}")]
    Tokenizer(#[from] TokenizerError),
    #[error("chat template: {0}")]
    ChatTemplate(#[from] ChatError),
    #[error("unsupported architecture {0:?}: llamabus runs \"llama\" (Llama 1/2/3, TinyLlama, SmolLM, Mistral-style)")]
    UnsupportedArchitecture(String),
    #[error("unsupported model feature: {0}")]
    Unsupported(String),
    #[error("bad hyperparameter {0}: {1}")]
    BadHParam(String, String),
    #[error("missing tensor {0}")]
    MissingTensor(String),
    #[error("tensor {name}: expected shape {expected:?}, found {found:?}")]
    TensorShape {
        name: String,
        expected: Vec<u64>,
        found: Vec<u64>,
    },
    #[error("tensor {name}: type {ty} is not supported here ({why})")]
    TensorType {
        name: String,
        ty: &'static str,
        why: &'static str,
    },
    #[error("ggml: {0}")]
    Ggml(#[from] ggml::GgmlError),
    #[error("context of {requested} tokens is outside 1..={max}")]
    BadContext { requested: usize, max: usize },
    #[error("the KV cache is full ({0} cells): shorten the prompt or raise the context size")]
    ContextFull(usize),
    #[error("token id {id} at position {index} is outside the vocabulary of {n_vocab}")]
    BadToken { index: usize, id: u32, n_vocab: u32 },
    #[error("empty batch")]
    EmptyBatch,
    #[error("sequence id {seq} is outside 0..{max}")]
    BadSeq { seq: SeqId, max: SeqId },
}

/// Lets ggml place tensors straight into the GGUF mapping.
impl HostBytes for Gguf {
    fn host_bytes(&self) -> &[u8] {
        self.bytes()
    }
}

/// Indices into [`Model::weight_list`] for one transformer block.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LayerWeights {
    pub attn_norm: usize,
    pub wq: usize,
    pub wk: usize,
    pub wv: usize,
    pub wo: usize,
    pub ffn_norm: usize,
    pub ffn_gate: usize,
    pub ffn_up: usize,
    pub ffn_down: usize,
}

/// Indices of the model-wide weights.
#[derive(Clone, Debug)]
pub(crate) struct WeightIndex {
    pub tok_embd: usize,
    pub output_norm: usize,
    /// `output.weight`, or `token_embd.weight` when the embeddings are tied.
    pub output: usize,
    pub rope_freqs: Option<usize>,
    pub layers: Vec<LayerWeights>,
}

/// How weights are placed at load time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// Copy the weights ggml has a faster layout for into that layout (its CPU "extra" buffer
    /// types, e.g. `CPU_REPACK`), as llama.cpp does by default and the daemon does with
    /// `[model] repack = true` (its default). Those copies are anonymous memory; every other
    /// weight stays zero-copy in the file mapping (page cache). `false` keeps everything in the
    /// mapping.
    pub repack: bool,
}

impl LoadOptions {
    /// Every weight zero-copy in the mapping ([`Model::load`]).
    pub const ZERO_COPY: LoadOptions = LoadOptions { repack: false };
    /// Weights with a faster layout repacked into it (the daemon's default).
    pub const REPACK: LoadOptions = LoadOptions { repack: true };
}

/// A loaded Llama model: metadata, tokenizer, chat template and weights (memory-mapped, or
/// repacked into ggml's faster layouts).
pub struct Model {
    path: Option<PathBuf>,
    hparams: HParams,
    tokenizer: Tokenizer,
    chat_template: Option<ChatTemplate>,
    weights: LoadedWeights,
    index: WeightIndex,
    /// Bytes of tensor data used by the graph (mapped or repacked).
    weight_bytes: u64,
    load_time: Duration,
    gguf: Arc<Gguf>,
}

/// The weight tensors: those left in the mapping, and those copied into extra buffer types.
struct LoadedWeights {
    // Field order is drop order: nothing here references another.
    mapped: AllocatedContext,
    repacked: Vec<AllocatedContext>,
    /// Per weight, in [`WeightIndex`] order: which context holds it (0 = mapped,
    /// 1.. = repacked[i - 1]) and its name.
    order: Vec<(usize, String)>,
    /// Bytes copied into extra buffer types.
    repacked_bytes: u64,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("path", &self.path)
            .field("hparams", &self.hparams)
            .finish_non_exhaustive()
    }
}

impl Model {
    /// Maps and validates the GGUF file at `path`, every weight zero-copy
    /// ([`LoadOptions::ZERO_COPY`]).
    pub fn load(path: &Path) -> Result<Model, ModelError> {
        Self::load_with(path, LoadOptions::ZERO_COPY)
    }

    /// Maps and validates the GGUF file at `path`.
    pub fn load_with(path: &Path, opts: LoadOptions) -> Result<Model, ModelError> {
        let start = Instant::now();
        let gguf = Arc::new(Gguf::open(path)?);
        let mut m = Self::from_gguf_at(gguf, opts, start)?;
        m.path = Some(path.to_path_buf());
        Ok(m)
    }

    /// Builds a model from an already-parsed GGUF (tests build these in memory), every weight
    /// zero-copy.
    pub fn from_gguf(gguf: Arc<Gguf>) -> Result<Model, ModelError> {
        Self::from_gguf_with(gguf, LoadOptions::ZERO_COPY)
    }

    /// [`Model::from_gguf`] with explicit [`LoadOptions`].
    pub fn from_gguf_with(gguf: Arc<Gguf>, opts: LoadOptions) -> Result<Model, ModelError> {
        Self::from_gguf_at(gguf, opts, Instant::now())
    }

    fn from_gguf_at(
        gguf: Arc<Gguf>,
        opts: LoadOptions,
        start: Instant,
    ) -> Result<Model, ModelError> {
        ggml::init();
        let md = gguf.metadata();
        let tokenizer = Tokenizer::from_metadata(md)?;
        let hparams = HParams::from_metadata(md, tokenizer.n_vocab())?;
        if hparams.n_vocab as usize != tokenizer.n_vocab() {
            return Err(ModelError::BadHParam(
                "llama.vocab_size".into(),
                format!(
                    "{} but the tokenizer has {} tokens",
                    hparams.n_vocab,
                    tokenizer.n_vocab()
                ),
            ));
        }
        let chat_template = match md.opt_str("tokenizer.chat_template")? {
            Some(src) => {
                let bos = tokenizer
                    .bos()
                    .and_then(|t| tokenizer.token_text(t))
                    .unwrap_or("");
                let eos = tokenizer
                    .eos()
                    .and_then(|t| tokenizer.token_text(t))
                    .unwrap_or("");
                Some(ChatTemplate::new(src, bos, eos)?)
            }
            None => None,
        };
        let (weights, index, weight_bytes) = load_weights(&gguf, &hparams, opts)?;
        Ok(Model {
            path: None,
            hparams,
            tokenizer,
            chat_template,
            weights,
            index,
            weight_bytes,
            load_time: start.elapsed(),
            gguf,
        })
    }

    /// The hyperparameters.
    pub fn hparams(&self) -> &HParams {
        &self.hparams
    }

    /// The tokenizer built from the file's metadata.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The model's own chat template, if it has one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// The underlying GGUF file.
    pub fn gguf(&self) -> &Gguf {
        &self.gguf
    }

    /// Bytes of weights the graph uses (mapped from the file or repacked).
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    /// Bytes of weights copied into ggml's repacked layouts (anonymous memory, besides the
    /// mapping); 0 with `repack = false` or when no weight has a faster layout on this CPU.
    pub fn repacked_bytes(&self) -> u64 {
        self.weights.repacked_bytes
    }

    /// The file the model was loaded from (None when built in memory).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Number of weight parameters (elements of every tensor in the file).
    pub fn n_params(&self) -> u64 {
        self.gguf.tensors().iter().map(|t| t.n_elements()).sum()
    }

    /// Wall time of [`Model::load`] (map, parse, validate).
    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// The weight tensors in creation order (indexed by [`WeightIndex`]).
    pub(crate) fn weight_list(&self) -> Vec<ggml::Tensor<'_>> {
        let w = &self.weights;
        w.order
            .iter()
            .map(|(ctx, name)| {
                let holder = if *ctx == 0 {
                    &w.mapped
                } else {
                    &w.repacked[ctx - 1]
                };
                holder.tensor(name).expect("a loaded weight")
            })
            .collect()
    }

    pub(crate) fn index(&self) -> &WeightIndex {
        &self.index
    }
}

/// What a weight is used for, which decides the types it may have.
#[derive(Clone, Copy, PartialEq)]
enum Role {
    /// Multiplied with `ggml_mul_mat`: any type the CPU backend has a dot product for.
    Matrix,
    /// Looked up with `ggml_get_rows` and also possibly a matrix (tied output).
    Embedding,
    /// Element-wise vectors (norm weights, rope frequency factors): F32.
    Vector,
}

/// One weight the graph uses, validated, and where it goes.
struct PlannedWeight<'g> {
    name: String,
    ty: Type,
    ne: Vec<i64>,
    info: &'g TensorInfo,
    /// The extra buffer type it is copied into; `None` stays in the mapping.
    repack: Option<ExtraBufferType>,
}

/// Bytes of the weights of the model in `gguf` that loading with `opts` would copy into
/// repacked layouts on this CPU (for the memory guard, without loading anything).
pub fn repacked_bytes(gguf: &Gguf, hp: &HParams, opts: LoadOptions) -> Result<u64, ModelError> {
    Ok(plan_weights(gguf, hp, opts)?
        .0
        .iter()
        .filter(|w| w.repack.is_some())
        .map(|w| w.info.n_bytes)
        .sum())
}

/// Validates the weights, then places each into the mapping without copying, or copies it
/// into the extra buffer type the plan chose.
fn load_weights(
    gguf: &Arc<Gguf>,
    hp: &HParams,
    opts: LoadOptions,
) -> Result<(LoadedWeights, WeightIndex, u64), ModelError> {
    let (plan, index) = plan_weights(gguf, hp, opts)?;
    let data_offset = gguf.data_offset();
    let offset = |w: &PlannedWeight<'_>| (data_offset + w.info.offset) as usize;
    let weight_bytes = plan.iter().map(|w| w.info.n_bytes).sum();

    // Contexts: 0 for the mapping, then one per extra buffer type in use.
    let mut bufts: Vec<ExtraBufferType> = Vec::new();
    for b in plan.iter().filter_map(|w| w.repack) {
        if !bufts.contains(&b) {
            bufts.push(b);
        }
    }
    let holder = |w: &PlannedWeight<'_>| match w.repack {
        None => 0,
        Some(b) => 1 + bufts.iter().position(|&x| x == b).expect("listed"),
    };
    let ctxs: Vec<Context> = (0..=bufts.len())
        .map(|i| Context::new_metadata(plan.iter().filter(|w| holder(w) == i).count() + 1, 0))
        .collect();
    for w in &plan {
        ctxs[holder(w)].new_tensor(w.ty, &w.ne).set_name(&w.name);
    }
    let offsets: std::collections::HashMap<&str, usize> =
        plan.iter().map(|w| (w.name.as_str(), offset(w))).collect();
    let mut ctxs = ctxs.into_iter();
    let host: Arc<dyn HostBytes> = gguf.clone();
    let mapped = AllocatedContext::map_host(ctxs.next().expect("mapping context"), host, |n| {
        offsets.get(n).copied()
    })?;
    let bytes = gguf.bytes();
    let mut repacked = Vec::new();
    for (ctx, buft) in ctxs.zip(&bufts) {
        let loaded = AllocatedContext::load_into(ctx, *buft, |n| {
            let w = plan.iter().find(|w| w.name == n)?;
            bytes.get(offset(w)..offset(w) + w.info.n_bytes as usize)
        })?;
        repacked.extend(loaded);
    }
    let repacked_bytes = plan
        .iter()
        .filter(|w| w.repack.is_some())
        .map(|w| w.info.n_bytes)
        .sum();
    let order = plan.iter().map(|w| (holder(w), w.name.clone())).collect();
    let weights = LoadedWeights {
        mapped,
        repacked,
        order,
        repacked_bytes,
    };
    Ok((weights, index, weight_bytes))
}

/// Validates every tensor the graph will use against the hyperparameters and decides where
/// each goes: llama.cpp's choice (`select_weight_buft`) restricted to the CPU, i.e. a matrix
/// multiplied with `ggml_mul_mat` goes to the first extra buffer type that supports it, and
/// everything else (norms, `rope_freqs`, the token embeddings read by `ggml_get_rows`, also
/// when tied to the output) stays in the mapping.
fn plan_weights<'g>(
    gguf: &'g Gguf,
    hp: &HParams,
    opts: LoadOptions,
) -> Result<(Vec<PlannedWeight<'g>>, WeightIndex), ModelError> {
    let (e, q, kv, ff, v) = (
        u64::from(hp.n_embd),
        u64::from(hp.n_embd_q()),
        u64::from(hp.n_embd_kv()),
        u64::from(hp.n_ff),
        u64::from(hp.n_vocab),
    );
    let tied = gguf.tensor("output.weight").is_none();
    let has_rope_freqs = gguf.tensor("rope_freqs.weight").is_some();

    let mut wanted: Vec<(String, Vec<u64>, Role)> = vec![
        ("token_embd.weight".into(), vec![e, v], Role::Embedding),
        ("output_norm.weight".into(), vec![e], Role::Vector),
    ];
    if !tied {
        wanted.push(("output.weight".into(), vec![e, v], Role::Matrix));
    }
    if has_rope_freqs {
        wanted.push((
            "rope_freqs.weight".into(),
            vec![u64::from(hp.n_rot / 2)],
            Role::Vector,
        ));
    }
    for i in 0..hp.n_layer {
        let b = |s: &str| format!("blk.{i}.{s}.weight");
        wanted.extend([
            (b("attn_norm"), vec![e], Role::Vector),
            (b("attn_q"), vec![e, q], Role::Matrix),
            (b("attn_k"), vec![e, kv], Role::Matrix),
            (b("attn_v"), vec![e, kv], Role::Matrix),
            (b("attn_output"), vec![q, e], Role::Matrix),
            (b("ffn_norm"), vec![e], Role::Vector),
            (b("ffn_gate"), vec![e, ff], Role::Matrix),
            (b("ffn_up"), vec![e, ff], Role::Matrix),
            (b("ffn_down"), vec![ff, e], Role::Matrix),
        ]);
    }

    // A scratch context for asking ggml about each weight's placement.
    let scratch = Context::new_metadata(wanted.len() + 1, 0);
    let mut plan = Vec::with_capacity(wanted.len());
    for (name, shape, role) in &wanted {
        let info = gguf
            .tensor(name)
            .ok_or_else(|| ModelError::MissingTensor(name.clone()))?;
        if &info.dims != shape {
            return Err(ModelError::TensorShape {
                name: name.clone(),
                expected: shape.clone(),
                found: info.dims.clone(),
            });
        }
        let ty = Type::from_id(info.ty.id()).ok_or(ModelError::TensorType {
            name: name.clone(),
            ty: info.ty.name(),
            why: "unknown to the linked ggml",
        })?;
        let ok = match role {
            Role::Vector => ty == Type::F32,
            Role::Matrix | Role::Embedding => ty.cpu_supports_mul_mat(),
        };
        if !ok {
            return Err(ModelError::TensorType {
                name: name.clone(),
                ty: info.ty.name(),
                why: if *role == Role::Vector {
                    "norm and rope vectors must be f32"
                } else {
                    "the ggml CPU backend has no matrix product for it"
                },
            });
        }
        let ne: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        let repack = match role {
            Role::Matrix if opts.repack => {
                ExtraBufferType::for_mul_mat(scratch.new_tensor(ty, &ne))
            }
            _ => None,
        };
        plan.push(PlannedWeight {
            name: name.clone(),
            ty,
            ne,
            info,
            repack,
        });
    }

    // Indices follow the creation order of `wanted`.
    let pos = |name: &str| {
        wanted
            .iter()
            .position(|(n, _, _)| n == name)
            .expect("wanted")
    };
    let layers = (0..hp.n_layer)
        .map(|i| {
            let b = |s: &str| pos(&format!("blk.{i}.{s}.weight"));
            LayerWeights {
                attn_norm: b("attn_norm"),
                wq: b("attn_q"),
                wk: b("attn_k"),
                wv: b("attn_v"),
                wo: b("attn_output"),
                ffn_norm: b("ffn_norm"),
                ffn_gate: b("ffn_gate"),
                ffn_up: b("ffn_up"),
                ffn_down: b("ffn_down"),
            }
        })
        .collect();
    let index = WeightIndex {
        tok_embd: pos("token_embd.weight"),
        output_norm: pos("output_norm.weight"),
        output: if tied {
            pos("token_embd.weight")
        } else {
            pos("output.weight")
        },
        rope_freqs: has_rope_freqs.then(|| pos("rope_freqs.weight")),
        layers,
    };
    Ok((plan, index))
}
