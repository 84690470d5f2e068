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
    /// Copy the weights ggml has faster layouts for into them ([`crate::model::LoadOptions::repack`]).
    pub repack: bool,
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
            repack: true,
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
            || self.repack != other.repack
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
        at_least_one("n_ctx", self.n_ctx)?;
        let max_parallel = MAX_SEQS as usize / 2;
        within(
            "parallel",
            self.parallel,
            1..=max_parallel,
            &format!("1..={max_parallel}"),
        )?;
        if self.kv_cells() < self.n_ctx {
            return Err(StartError::Config {
                key: "kv_cells",
                why: format!(
                    "{} cells cannot hold one context of {}",
                    self.kv_cells(),
                    self.n_ctx
                ),
            });
        }
        within(
            "step_tokens",
            self.step_tokens,
            self.parallel..=MAX_UBATCH,
            &format!(
                "{}..={MAX_UBATCH} (parallel..=the largest micro-batch)",
                self.parallel
            ),
        )?;
        at_least_one("n_threads", self.n_threads)?;
        at_least_one("queue_capacity", self.queue_capacity)?;
        at_least_one("max_tokens_cap", self.max_tokens_cap as usize)?;
        within(
            "default_max_tokens",
            self.default_max_tokens as usize,
            1..=self.max_tokens_cap as usize,
            &format!("1..={} (max_tokens_cap)", self.max_tokens_cap),
        )?;
        at_least_one("max_prompt_tokens", self.max_prompt_tokens)?;
        self.default_sampling
            .validate()
            .map_err(|e| StartError::Config {
                key: "default_sampling",
                why: e.to_string(),
            })
    }
}

/// The setting `key` is at least 1.
fn at_least_one(key: &'static str, value: usize) -> Result<(), StartError> {
    if value == 0 {
        return Err(StartError::Config {
            key,
            why: "must be at least 1".into(),
        });
    }
    Ok(())
}

/// The setting `key` lies in `range`, which the error spells `bounds`.
fn within(
    key: &'static str,
    value: usize,
    range: std::ops::RangeInclusive<usize>,
    bounds: &str,
) -> Result<(), StartError> {
    if !range.contains(&value) {
        return Err(StartError::Config {
            key,
            why: format!("{value} is outside {bounds}"),
        });
    }
    Ok(())
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
