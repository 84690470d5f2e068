//! The engine's configuration and its validation.

use std::path::PathBuf;
use std::thread;

use serde::Serialize;

use crate::model::session::MAX_UBATCH;
use crate::model::{kv_cache_bytes, HParams, ModelError, MAX_SEQS};
use crate::sampler::SamplingParams;

/// Default [`EngineConfig::step_tokens`]: prompt tokens computed per step, across all jobs.
pub const DEFAULT_STEP_TOKENS: usize = 256;

/// How a plain-text prompt is turned into tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptMode {
    /// The text is one user message in the model's chat template (ChatML when it has none).
    Chat,
    /// The text is completed as is (BOS prepended when the tokenizer asks for it).
    Complete,
    /// [`PromptMode::Chat`] when the model has a chat template, else [`PromptMode::Complete`];
    /// resolved once the model is loaded (see [`ModelInfo::default_mode`]).
    #[default]
    Auto,
}

/// Everything the worker needs; immutable once the engine runs.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// The name requests use to address this model (the `model` field of replies).
    pub model_name: String,
    /// The GGUF file.
    pub model_path: PathBuf,
    /// Context of one job: its prompt plus generated tokens must fit.
    pub n_ctx: usize,
    /// Jobs decoded together (continuous batching slots).
    pub parallel: usize,
    /// KV cells shared by all sequences, running and cached; `None` is `n_ctx * parallel`,
    /// so every slot can hold a full context. Fewer makes jobs wait for cells; more keeps more
    /// idle prefixes cached. See [`kv_cache_bytes`](fn@kv_cache_bytes) for the memory.
    pub kv_cells: Option<usize>,
    /// Keep finished sequences in the KV cache and start new jobs from the longest cached
    /// prefix of their prompt.
    pub prefix_cache: bool,
    /// Tokens per batched step (decode tokens plus prompt chunks): bounds how long one step,
    /// and so everyone's next token, waits behind a long prompt.
    pub step_tokens: usize,
    /// Compute threads.
    pub n_threads: usize,
    /// Jobs that may wait behind the running one; a full queue answers [`ErrorKind::Busy`].
    pub queue_capacity: usize,
    /// Largest `max_tokens` a request may ask for; more is [`ErrorKind::BadRequest`].
    pub max_tokens_cap: u32,
    /// `max_tokens` of requests that give none.
    pub default_max_tokens: u32,
    /// Longest prompt, in tokens; longer is [`ErrorKind::TooLong`].
    pub max_prompt_tokens: usize,
    /// Sampling of requests that give none (callers merge request fields over these; see
    /// [`Engine::job`]).
    pub default_sampling: SamplingParams,
    /// How [`PromptInput::Text`] is tokenized.
    pub default_mode: PromptMode,
}

impl EngineConfig {
    /// A configuration with the defaults used when the config file says nothing: 2048 cells,
    /// one job at a time, the prefix cache on, 256-token steps, every core, 8 queued jobs, at
    /// most 1024 new tokens (128 by default), prompts up to 1536 tokens, llama.cpp's default
    /// sampling, [`PromptMode::Auto`].
    pub fn new(model_name: impl Into<String>, model_path: impl Into<PathBuf>) -> EngineConfig {
        EngineConfig {
            model_name: model_name.into(),
            model_path: model_path.into(),
            n_ctx: 2048,
            parallel: 1,
            kv_cells: None,
            prefix_cache: true,
            step_tokens: DEFAULT_STEP_TOKENS,
            n_threads: thread::available_parallelism().map_or(1, |n| n.get()),
            queue_capacity: 8,
            max_tokens_cap: 1024,
            default_max_tokens: 128,
            max_prompt_tokens: 1536,
            default_sampling: SamplingParams::default(),
            default_mode: PromptMode::Auto,
        }
    }

    /// True when going from `self` to `other` needs a new engine (another model load): the
    /// model, its name, the context, threads, queue capacity or prompt mode differ. The other
    /// fields are [`Tunables`] that [`Engine::retune`] applies at once.
    pub fn needs_new_engine(&self, other: &EngineConfig) -> bool {
        self.model_name != other.model_name
            || self.model_path != other.model_path
            || self.n_ctx != other.n_ctx
            || self.parallel != other.parallel
            || self.kv_cells() != other.kv_cells()
            || self.prefix_cache != other.prefix_cache
            || self.step_tokens != other.step_tokens
            || self.n_threads != other.n_threads
            || self.queue_capacity != other.queue_capacity
            || self.default_mode != other.default_mode
    }

    /// KV cells the session allocates ([`EngineConfig::kv_cells`] resolved).
    pub fn kv_cells(&self) -> usize {
        self.kv_cells
            .unwrap_or_else(|| self.n_ctx.saturating_mul(self.parallel))
    }

    /// The fields a running engine can change.
    pub fn tunables(&self) -> Tunables {
        Tunables {
            max_tokens_cap: self.max_tokens_cap,
            default_max_tokens: self.default_max_tokens,
            max_prompt_tokens: self.max_prompt_tokens,
            default_sampling: self.default_sampling.clone(),
        }
    }

    /// Checks the values that do not need the model.
    pub fn validate(&self) -> Result<(), StartError> {
        let bad = |key: &'static str, why: String| Err(StartError::Config { key, why });
        if self.n_ctx == 0 {
            return bad("n_ctx", "must be at least 1".into());
        }
        if self.parallel == 0 || self.parallel > MAX_SEQS as usize / 2 {
            return bad(
                "parallel",
                format!("{} is outside 1..={}", self.parallel, MAX_SEQS / 2),
            );
        }
        if self.kv_cells() < self.n_ctx {
            return bad(
                "kv_cells",
                format!(
                    "{} cells cannot hold one context of {}",
                    self.kv_cells(),
                    self.n_ctx
                ),
            );
        }
        if self.step_tokens < self.parallel || self.step_tokens > MAX_UBATCH {
            return bad(
                "step_tokens",
                format!(
                    "{} is outside {}..={MAX_UBATCH} (parallel..=the largest micro-batch)",
                    self.step_tokens, self.parallel
                ),
            );
        }
        if self.n_threads == 0 {
            return bad("n_threads", "must be at least 1".into());
        }
        if self.queue_capacity == 0 {
            return bad("queue_capacity", "must be at least 1".into());
        }
        if self.max_tokens_cap == 0 {
            return bad("max_tokens_cap", "must be at least 1".into());
        }
        if self.default_max_tokens == 0 || self.default_max_tokens > self.max_tokens_cap {
            return bad(
                "default_max_tokens",
                format!(
                    "{} is outside 1..={} (max_tokens_cap)",
                    self.default_max_tokens, self.max_tokens_cap
                ),
            );
        }
        if self.max_prompt_tokens == 0 {
            return bad("max_prompt_tokens", "must be at least 1".into());
        }
        if let Err(e) = self.default_sampling.validate() {
            return bad("default_sampling", e.to_string());
        }
        Ok(())
    }
}

/// Bytes of the KV cache an engine with `cfg` allocates for a model with `hp` (f16 keys and
/// values for [`EngineConfig::kv_cells`] cells): what a memory guard adds to the weights.
pub fn kv_cache_bytes_for(cfg: &EngineConfig, hp: &HParams) -> u64 {
    kv_cache_bytes(hp, cfg.kv_cells())
}

/// Limits and defaults a running engine applies to the next job ([`Engine::retune`]), so a
/// configuration reload needs no model load for them.
#[derive(Clone, Debug, PartialEq)]
pub struct Tunables {
    pub max_tokens_cap: u32,
    pub default_max_tokens: u32,
    pub max_prompt_tokens: usize,
    pub default_sampling: SamplingParams,
}

/// Why [`Engine::start`] failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("engine setting `{key}`: {why}")]
    Config { key: &'static str, why: String },
    #[error("model {}: {source}", path.display())]
    Model {
        path: PathBuf,
        #[source]
        source: ModelError,
    },
    #[error("cannot start the inference thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("the inference thread panicked while loading the model")]
    Panicked,
}
