//! Models: hyperparameters, the named Llama weights, the forward pass, the KV cache.
//!
//! [`Model`] is everything read from one GGUF file: hyperparameters, the tokenizer, the chat
//! template and the weights. Weights stay in the memory-mapped file (zero-copy), except those
//! ggml has a faster layout for on this CPU when [`LoadOptions::repack`] asks for it, which are
//! copied into it. [`Session`] evaluates tokens against a model with its own KV cache and
//! compute buffers.

mod describe;
pub mod hparams;
mod kv_cache;
mod llama;
pub mod session;
mod weights;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ggml;
use crate::gguf::{Gguf, GgufError};
use crate::tokenizer::chat::{ChatError, ChatMessage, ChatTemplate};
use crate::tokenizer::{Tokenizer, TokenizerError};

pub use describe::Description;
pub use hparams::HParams;
pub use kv_cache::{kv_cache_bytes, SeqId, MAX_SEQS};
pub use session::{Batch, Session};
pub use weights::LoadOptions;
use weights::{Placed, Weights};

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

/// A loaded Llama model: metadata, tokenizer, chat template and memory-mapped weights.
pub struct Model {
    path: Option<PathBuf>,
    hparams: HParams,
    tokenizer: Tokenizer,
    /// The model's own chat template, else ChatML.
    chat: ChatTemplate,
    /// Whether `chat` came from the file.
    own_template: bool,
    /// The weight tensors, in the mapped file or repacked; [`Model::weights`] names them.
    weights: Placed,
    /// Bytes of tensor data the graph uses (mapped or repacked).
    weight_bytes: u64,
    /// Bytes copied into repacked layouts (anonymous memory).
    repacked_bytes: u64,
    load_time: Duration,
    gguf: Arc<Gguf>,
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

    /// Maps and validates the GGUF file at `path`, placing the weights as `opts` says.
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
        ggml::init().map_err(ggml::GgmlError::from)?;
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
        let text = |t: Option<u32>| t.and_then(|t| tokenizer.token_text(t)).unwrap_or("");
        let (bos, eos) = (text(tokenizer.bos()), text(tokenizer.eos()));
        let (chat, own_template) = match md.opt_str("tokenizer.chat_template")? {
            Some(src) => (ChatTemplate::new(src, bos, eos)?, true),
            None => (ChatTemplate::chatml_fallback(bos, eos), false),
        };
        let plan = weights::plan(&gguf, &hparams, opts)?;
        let weight_bytes = plan.iter().map(|p| p.info.n_bytes).sum();
        let repacked_bytes = planned_repack_bytes(&plan);
        let weights = weights::place(&gguf, &plan)?;
        let model = Model {
            path: None,
            hparams,
            tokenizer,
            chat,
            own_template,
            weights,
            weight_bytes,
            repacked_bytes,
            load_time: start.elapsed(),
            gguf,
        };
        // Name every weight once now, so a session never meets a missing one.
        model.weights()?;
        Ok(model)
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
        self.own_template.then_some(&self.chat)
    }

    /// Renders `messages` with the model's chat template (ChatML when it has none) and
    /// tokenizes the result, ending with the assistant's turn. Only the template's own text may
    /// become control tokens, never message content; the template decides whether the text
    /// starts with BOS.
    pub fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, ChatError> {
        self.chat.encode(&self.tokenizer, messages, true)
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
    /// mapping); 0 with `repack` off or when no weight has a faster layout on this CPU.
    pub fn repacked_bytes(&self) -> u64 {
        self.repacked_bytes
    }

    /// The file the model was loaded from (None when built in memory).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Wall time of [`Model::load`] (map, parse, validate, repack).
    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// The weights by name, for a session's forward pass.
    pub(crate) fn weights(&self) -> Result<Weights<'_>, ModelError> {
        Weights::resolve(self.hparams.n_layer, |name| self.weights.tensor(name))
    }
}

/// Bytes of the weights of the model in `gguf` that loading with `opts` would copy into
/// repacked layouts on this CPU (for the memory guard, without loading anything).
pub fn repacked_bytes(gguf: &Gguf, hp: &HParams, opts: LoadOptions) -> Result<u64, ModelError> {
    Ok(planned_repack_bytes(&weights::plan(gguf, hp, opts)?))
}

fn planned_repack_bytes(plan: &[weights::Planned<'_>]) -> u64 {
    plan.iter()
        .filter(|p| p.repack.is_some())
        .map(|p| p.info.n_bytes)
        .sum()
}
