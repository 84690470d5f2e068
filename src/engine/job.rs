//! Jobs, their events and outcomes, and the engine's status counters.

use std::fmt;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::config::PromptMode;
use super::FormatOutcome;
use crate::format::Grammar;
use crate::sampler::{FinishReason, SamplingParams};
use crate::tokenizer::chat::ChatMessage;

/// What to complete.
#[derive(Clone, Debug, PartialEq)]
pub enum PromptInput {
    /// A plain-text payload: tokenized per [`EngineConfig::default_mode`].
    Text(String),
    /// A raw completion prompt (JSON `prompt`): no template, BOS when the tokenizer asks for it.
    Raw(String),
    /// A conversation (JSON `messages`), rendered with the chat template.
    Chat(Vec<ChatMessage>),
}

/// Receives a job's events on the worker thread; it must not block for long (the queue waits
/// behind it). A tokio `UnboundedSender::send` fits.
pub type EventSink = Box<dyn FnMut(JobEvent) + Send>;

/// One request for the worker.
pub struct Job {
    /// The caller's id for the job ([`Engine::next_id`] hands out unique ones).
    pub id: u64,
    pub input: PromptInput,
    /// New tokens at most; `None` takes [`EngineConfig::default_max_tokens`].
    pub max_tokens: Option<u32>,
    /// Complete sampling parameters: the caller merges request fields over
    /// [`EngineConfig::default_sampling`].
    pub sampling: SamplingParams,
    /// Stop strings (not included in the output).
    pub stop: Vec<String>,
    /// Not started by then: [`ErrorKind::Expired`].
    pub deadline: Option<Instant>,
    /// When the request arrived (for `queue_ms`).
    pub enqueued: Instant,
    /// Set to cancel: before the start, [`ErrorKind::Cancelled`]; while generating, the job
    /// ends within one token as [`JobEvent::Done`] with [`FinishReason::Cancelled`].
    pub cancel: Arc<AtomicBool>,
    /// Send [`JobEvent::Delta`]s as text is produced.
    pub stream: bool,
    /// Fairness key (the device): waiting jobs are admitted round-robin across clients.
    pub client: String,
    /// A compiled format the reply must follow (the caller compiles it with
    /// [`Engine::format_compiler`]); each running job has its own matcher.
    pub format: Option<Grammar>,
    pub events: EventSink,
}

impl fmt::Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("id", &self.id)
            .field("input", &self.input)
            .field("max_tokens", &self.max_tokens)
            .field("sampling", &self.sampling)
            .field("stop", &self.stop)
            .field("deadline", &self.deadline)
            .field("enqueued", &self.enqueued)
            .field("cancel", &self.cancel)
            .field("stream", &self.stream)
            .field("client", &self.client)
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

/// What the worker reports about a job, in this order: at most one `Started`, `Delta`s (only
/// when streaming), then exactly one `Done` or `Failed`.
#[derive(Clone, Debug, PartialEq)]
pub enum JobEvent {
    /// The job passed its checks and prompt processing begins; `queue_ms` since
    /// [`Job::enqueued`].
    Started { queue_ms: f64 },
    /// New text (only when [`Job::stream`]): valid UTF-8, never a split character, never part
    /// of a stop string. The deltas concatenate to the final text.
    Delta(String),
    /// The job ended normally, including a cancellation after it started.
    Done(JobOutcome),
    /// The job ended without a result.
    Failed(EngineError),
}

/// A finished job.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobOutcome {
    pub text: String,
    /// The generated token ids (stop/EOS token excluded), for tools and tests.
    #[serde(skip)]
    pub tokens: Vec<u32>,
    pub finish_reason: FinishReason,
    pub prompt_tokens: u32,
    /// Prompt tokens shared from the prefix cache instead of evaluated (included in
    /// `prompt_tokens`).
    pub cached_tokens: u32,
    pub completion_tokens: u32,
    pub queue_ms: f64,
    pub prompt_ms: f64,
    pub generate_ms: f64,
    /// Generation speed after the first token.
    pub tokens_per_s: f64,
    /// [`EngineConfig::model_name`].
    pub model: String,
    /// For a job with a format: whether the text completes it, and its JSON value.
    /// Boxed: most jobs have none, and the event enum stays small.
    #[serde(skip)]
    pub format: Option<Box<FormatOutcome>>,
}

/// Error classes; [`ErrorKind::code`] is the wire code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Invalid parameters: `max_tokens` of 0 or over the cap, bad sampling values, an empty
    /// prompt, a conversation the chat template rejects.
    BadRequest,
    /// The prompt exceeds `max_prompt_tokens`, or prompt plus `max_tokens` exceeds the context.
    TooLong,
    /// The queue is full.
    Busy,
    /// The deadline passed before the job started.
    Expired,
    /// Cancelled before it started, or refused/cancelled because the engine is shutting down.
    Cancelled,
    /// A bug or a compute failure.
    Internal,
    /// A format that does not compile, is over a limit, uses an unsupported keyword, or is
    /// not defined in the configuration.
    BadFormat,
}

impl ErrorKind {
    /// `bad_request`, `too_long`, `busy`, `expired`, `cancelled`, `internal` or `bad_format`.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::TooLong => "too_long",
            ErrorKind::Busy => "busy",
            ErrorKind::Expired => "expired",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Internal => "internal",
            ErrorKind::BadFormat => "bad_format",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Why a job produced no result: a class and a message for the requester.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct EngineError {
    pub kind: ErrorKind,
    pub message: String,
}

impl EngineError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> EngineError {
        EngineError {
            kind,
            message: message.into(),
        }
    }
}

/// A job [`Engine::submit`] refused, handed back with the reason.
#[derive(Debug, thiserror::Error)]
#[error("job {} refused: {error}", job.id)]
pub struct Rejected {
    pub job: Box<Job>,
    pub error: EngineError,
}

// ---------------------------------------------------------------------------------------------
// Status

/// What is loaded, for the status topic.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelInfo {
    /// [`EngineConfig::model_name`].
    pub name: String,
    /// `general.architecture`.
    pub architecture: String,
    /// Total weight elements.
    pub n_params: u64,
    /// `general.file_type` as llama.cpp names it (`Q4_1`, `Q4_K_M`, ...), else the type holding
    /// most weight bytes (`q4_1`).
    pub quantization: String,
    /// Context of one job.
    pub n_ctx: usize,
    /// Jobs decoded together.
    pub parallel: usize,
    /// KV cells of the session, shared by the running jobs and the prefix cache.
    pub kv_cells: usize,
    /// Bytes of weights repacked into ggml's faster layouts (anonymous memory); 0 with
    /// `repack` off or when none has one on this CPU.
    pub repacked_bytes: u64,
    /// Context the model was trained with.
    pub n_ctx_train: u32,
    pub has_chat_template: bool,
    /// How plain-text prompts are tokenized ([`PromptMode::Auto`] resolved).
    pub default_mode: PromptMode,
    /// The ggml CPU variant computing (`avx2`, `dotprod`, ...; process-wide).
    pub cpu_variant: &'static str,
}

/// Counters for the status topic.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EngineStats {
    /// Jobs waiting (not counting the running one).
    pub queue_depth: usize,
    pub queue_capacity: usize,
    /// Jobs running (up to [`ModelInfo::parallel`]).
    pub in_flight: usize,
    /// Jobs that ended with [`JobEvent::Done`].
    pub served: u64,
    /// Accepted jobs that ended with [`JobEvent::Failed`].
    pub failed: u64,
    /// Jobs [`Engine::submit`] refused (busy, bad request, shutting down).
    pub rejected: u64,
    /// Generation speed of the last job served; 0 before the first.
    pub last_tokens_per_s: f64,
    /// Prompt tokens of served jobs that were evaluated.
    pub prompt_tokens_evaluated: u64,
    /// Prompt tokens of served jobs shared from the prefix cache instead.
    pub prompt_tokens_cached: u64,
    /// Decode steps run (one batch each; the heartbeat advances before every one).
    pub decode_steps: u64,
    pub model: ModelInfo,
}
