//! The inference worker: one OS thread that owns a model and its session and serves jobs from
//! a bounded FIFO queue. Knows nothing of MQTT: callers build [`Job`]s, [`Engine::submit`]
//! them without ever blocking, and hear back through each job's event sink.
//!
//! Life of a job:
//! 1. [`Engine::submit`] checks what needs no model (max_tokens against the cap, sampling
//!    parameters, an empty prompt) and enqueues; a full queue is refused at once with
//!    [`ErrorKind::Busy`] (CONVENTIONS practice 2: the MQTT event loop never waits on us).
//! 2. The worker admits waiting jobs to free slots, round-robin across [`Job::client`]s and
//!    in arrival order within one. A waiting job whose deadline passes gets
//!    [`ErrorKind::Expired`], one cancelled [`ErrorKind::Cancelled`], without compute.
//! 3. The prompt is rendered and tokenized on the worker; limits are checked
//!    ([`ErrorKind::TooLong`]); then [`JobEvent::Started`], streamed [`JobEvent::Delta`]s (when
//!    asked for) and one final [`JobEvent::Done`] or [`JobEvent::Failed`].
//!
//! Every accepted job gets exactly one final event, whatever happens: a panic inside a job
//! (including one in the caller's event sink) is caught, reported as [`ErrorKind::Internal`],
//! and the worker rebuilds its session and keeps serving.
//!
//! The worker's heartbeat ([`Engine::last_heartbeat`]) advances while it waits for work (at
//! least every [`IDLE_WAKE`]) and before every decode step, so a compute that hangs stops it:
//! the service pings the systemd watchdog only while it is fresh (CONVENTIONS practice 3).
//! It does not advance *during* one step: the watchdog interval must exceed the longest step,
//! i.e. [`EngineConfig::step_tokens`] prompt tokens on the slowest board.
//!
//! Up to [`EngineConfig::parallel`] jobs run at once, decoded together in one batch per step,
//! with chunked prompts, per-client fair admission and a prefix cache: see [`super::sched`]
//! for the scheduling rules.

use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::engine::sched::{FairQueue, SeqTable, Start};
use crate::engine::{rate, GenerateError, GenerateRequest, Stepper};
use crate::model::session::MAX_UBATCH;
use crate::model::{
    kv_cache_bytes, Batch, HParams, LoadOptions, Model, ModelError, SeqId, Session, MAX_SEQS,
};
use crate::sampler::{FinishReason, SamplingParams};
use crate::tokenizer::chat::{ChatError, ChatMessage, ChatTemplate};
use crate::tokenizer::Tokenizer;

/// Default [`EngineConfig::step_tokens`]: prompt tokens computed per step, across all jobs.
pub const DEFAULT_STEP_TOKENS: usize = 256;

/// Longest the idle worker waits before refreshing its heartbeat.
pub const IDLE_WAKE: Duration = Duration::from_millis(250);

// ---------------------------------------------------------------------------------------------
// Configuration

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
    /// Copy the weights ggml has faster layouts for into them ([`LoadOptions::repack`]).
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

// ---------------------------------------------------------------------------------------------
// Jobs and their events

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
}

impl ErrorKind {
    /// `bad_request`, `too_long`, `busy`, `expired`, `cancelled` or `internal`.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::TooLong => "too_long",
            ErrorKind::Busy => "busy",
            ErrorKind::Expired => "expired",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Internal => "internal",
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

// ---------------------------------------------------------------------------------------------
// The engine handle

/// A handle to the inference thread; cheap to clone, `Send + Sync`. When the last handle is
/// dropped without [`Engine::shutdown`], running and queued jobs are cancelled and the thread
/// is joined.
#[derive(Clone, Debug)]
pub struct Engine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// `None` once shutting down.
    queue: Mutex<Option<Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    worker: ThreadId,
    shared: Arc<Shared>,
    info: ModelInfo,
    queue_capacity: usize,
    next_id: AtomicU64,
}

/// State the worker and the handles share; all atomics.
#[derive(Debug)]
struct Shared {
    epoch: Instant,
    /// Microseconds since `epoch` of the worker's last sign of life.
    heartbeat_us: AtomicU64,
    queued: AtomicUsize,
    in_flight: AtomicUsize,
    served: AtomicU64,
    failed: AtomicU64,
    rejected: AtomicU64,
    /// `f64` bits.
    last_tps: AtomicU64,
    prompt_evaluated: AtomicU64,
    prompt_cached: AtomicU64,
    decode_steps: AtomicU64,
    /// From this time (µs since `epoch`) running jobs stop and queued ones are cancelled.
    cancel_from_us: AtomicU64,
    /// Test hook: the worker sleeps without heartbeats until then (µs since `epoch`).
    stall_until_us: AtomicU64,
    /// Read at each submit and job start; replaced by [`Engine::retune`].
    tunables: Mutex<Tunables>,
}

impl Shared {
    fn new(tunables: Tunables) -> Shared {
        Shared {
            epoch: Instant::now(),
            heartbeat_us: AtomicU64::new(0),
            queued: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            last_tps: AtomicU64::new(0f64.to_bits()),
            prompt_evaluated: AtomicU64::new(0),
            prompt_cached: AtomicU64::new(0),
            decode_steps: AtomicU64::new(0),
            cancel_from_us: AtomicU64::new(u64::MAX),
            stall_until_us: AtomicU64::new(0),
            tunables: Mutex::new(tunables),
        }
    }

    fn tunables(&self) -> Tunables {
        lock(&self.tunables).clone()
    }

    fn now_us(&self) -> u64 {
        micros(self.epoch.elapsed())
    }

    fn beat(&self) {
        self.heartbeat_us.store(self.now_us(), Ordering::Relaxed);
    }

    fn cancelling(&self) -> bool {
        self.now_us() >= self.cancel_from_us.load(Ordering::Relaxed)
    }

    /// Cancels everything from `after` on (an earlier time already set wins).
    fn cancel_after(&self, after: Duration) {
        let at = self.now_us().saturating_add(micros(after));
        self.cancel_from_us.fetch_min(at, Ordering::Relaxed);
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded values (a sender, a join handle) stay valid if a holder panicked.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Engine {
    /// Loads the model on a new inference thread, evaluates one warm-up token, and returns
    /// once the engine can serve (or with the load error). `on_status` hears each phase
    /// ("loading model ...", "warming up ...", "ready ...") from the inference thread.
    pub fn start(
        cfg: EngineConfig,
        on_status: impl Fn(&str) + Send + 'static,
    ) -> Result<Engine, StartError> {
        cfg.validate()?;
        let shared = Arc::new(Shared::new(cfg.tunables()));
        // Unbounded: `Shared::queued` bounds the queue (the worker moves jobs into its fair
        // queue at once, so the channel's own capacity would bound nothing).
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<ModelInfo, StartError>>();
        let queue_capacity = cfg.queue_capacity;
        let thread = thread::Builder::new()
            .name("llamabus-engine".into())
            .spawn({
                let shared = shared.clone();
                move || worker_main(cfg, rx, shared, ready_tx, on_status)
            })
            .map_err(StartError::Thread)?;
        let info = match ready_rx.recv() {
            Ok(Ok(info)) => info,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(StartError::Panicked);
            }
        };
        Ok(Engine {
            inner: Arc::new(Inner {
                queue: Mutex::new(Some(tx)),
                worker: thread.thread().id(),
                thread: Mutex::new(Some(thread)),
                shared,
                info,
                queue_capacity,
                next_id: AtomicU64::new(1),
            }),
        })
    }

    /// A unique job id (1, 2, ...) for callers that have none.
    pub fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A job with the engine's defaults: default sampling and max_tokens, no stop strings,
    /// no deadline, not streamed, the anonymous client `""`, enqueued now.
    pub fn job(&self, id: u64, input: PromptInput, events: EventSink) -> Job {
        Job {
            id,
            input,
            max_tokens: None,
            sampling: self.inner.shared.tunables().default_sampling,
            stop: Vec::new(),
            deadline: None,
            enqueued: Instant::now(),
            cancel: Arc::new(AtomicBool::new(false)),
            stream: false,
            client: String::new(),
            events,
        }
    }

    /// Queues `job`; never blocks. Refused, with the job handed back, when the queue is full
    /// ([`ErrorKind::Busy`]), when a parameter is invalid in a way visible without the model
    /// ([`ErrorKind::BadRequest`]: `max_tokens` of 0 or over the cap, bad sampling values, an
    /// empty prompt), when shutting down ([`ErrorKind::Cancelled`]) or when the inference
    /// thread is gone ([`ErrorKind::Internal`]). An accepted job gets exactly one final event.
    pub fn submit(&self, job: Job) -> Result<(), Rejected> {
        let inner = &*self.inner;
        let refuse = |job: Job, error: EngineError| {
            inner.shared.rejected.fetch_add(1, Ordering::Relaxed);
            Err(Rejected {
                job: Box::new(job),
                error,
            })
        };
        if let Err(e) = self.check(&job) {
            return refuse(job, e);
        }
        let queue = lock(&inner.queue);
        let Some(tx) = queue.as_ref() else {
            drop(queue);
            let e = EngineError::new(ErrorKind::Cancelled, "the engine is shutting down");
            return refuse(job, e);
        };
        // Counted before sending, so the worker's decrement can never come first.
        let cap = inner.queue_capacity;
        let counted = inner
            .shared
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < cap).then_some(n + 1)
            });
        if counted.is_err() {
            drop(queue);
            let e = EngineError::new(
                ErrorKind::Busy,
                format!("the queue is full ({cap} waiting); try again later"),
            );
            return refuse(job, e);
        }
        match tx.send(job) {
            Ok(()) => Ok(()),
            Err(mpsc::SendError(job)) => {
                inner.shared.queued.fetch_sub(1, Ordering::Relaxed);
                drop(queue);
                let e = EngineError::new(ErrorKind::Internal, "the inference thread has stopped");
                refuse(job, e)
            }
        }
    }

    /// The checks [`Engine::submit`] makes before queueing.
    fn check(&self, job: &Job) -> Result<(), EngineError> {
        let bad = |m: String| Err(EngineError::new(ErrorKind::BadRequest, m));
        let cap = lock(&self.inner.shared.tunables).max_tokens_cap;
        match job.max_tokens {
            Some(0) => return bad("max_tokens must be at least 1".into()),
            Some(n) if n > cap => {
                return bad(format!("max_tokens {n} exceeds the cap of {cap}"));
            }
            _ => {}
        }
        if let Err(e) = job.sampling.validate() {
            return bad(e.to_string());
        }
        match &job.input {
            PromptInput::Text(s) | PromptInput::Raw(s) if s.is_empty() => {
                bad("the prompt is empty".into())
            }
            PromptInput::Chat(m) if m.is_empty() => bad("messages is empty".into()),
            _ => Ok(()),
        }
    }

    /// Counters and the model description.
    pub fn stats(&self) -> EngineStats {
        let s = &self.inner.shared;
        EngineStats {
            queue_depth: s.queued.load(Ordering::Relaxed),
            queue_capacity: self.inner.queue_capacity,
            in_flight: s.in_flight.load(Ordering::Relaxed),
            served: s.served.load(Ordering::Relaxed),
            failed: s.failed.load(Ordering::Relaxed),
            rejected: s.rejected.load(Ordering::Relaxed),
            last_tokens_per_s: f64::from_bits(s.last_tps.load(Ordering::Relaxed)),
            prompt_tokens_evaluated: s.prompt_evaluated.load(Ordering::Relaxed),
            prompt_tokens_cached: s.prompt_cached.load(Ordering::Relaxed),
            decode_steps: s.decode_steps.load(Ordering::Relaxed),
            model: self.inner.info.clone(),
        }
    }

    /// Applies new limits and defaults from the next submitted or started job on (jobs
    /// already running keep theirs). Refused, with nothing changed, when they are invalid.
    pub fn retune(&self, t: Tunables) -> Result<(), StartError> {
        let mut check = EngineConfig::new("", "");
        check.max_tokens_cap = t.max_tokens_cap;
        check.default_max_tokens = t.default_max_tokens;
        check.max_prompt_tokens = t.max_prompt_tokens;
        check.default_sampling = t.default_sampling.clone();
        check.validate()?;
        *lock(&self.inner.shared.tunables) = t;
        Ok(())
    }

    /// The limits and defaults in force.
    pub fn tunables(&self) -> Tunables {
        self.inner.shared.tunables()
    }

    /// The loaded model.
    pub fn model_info(&self) -> ModelInfo {
        self.inner.info.clone()
    }

    /// The worker's last sign of life: refreshed while it waits for work (at least every
    /// [`IDLE_WAKE`]) and before every sampled token. Stale means hung (or stalled by
    /// [`Engine::stall_for_test`]).
    pub fn last_heartbeat(&self) -> Instant {
        let s = &self.inner.shared;
        s.epoch + Duration::from_micros(s.heartbeat_us.load(Ordering::Relaxed))
    }

    /// Stops accepting jobs, lets queued and running jobs finish for up to `drain`, then
    /// cancels the rest and joins the inference thread. After the drain time a running job
    /// ends within one token as [`JobEvent::Done`] with [`FinishReason::Cancelled`] (its
    /// partial text, like a client cancel); jobs not yet started get
    /// [`JobEvent::Failed`] with [`ErrorKind::Cancelled`]. Later submits are refused with
    /// [`ErrorKind::Cancelled`]. Called from several handles at once, only one waits for the
    /// thread; called from the inference thread (an event sink), it does not wait.
    pub fn shutdown(&self, drain: Duration) {
        self.inner.shutdown(drain);
    }

    /// Test hook for the watchdog: the idle worker sleeps for `d` without heartbeats (it
    /// notices within [`IDLE_WAKE`]), as a hung compute would.
    #[doc(hidden)]
    pub fn stall_for_test(&self, d: Duration) {
        let s = &self.inner.shared;
        s.stall_until_us
            .store(s.now_us().saturating_add(micros(d)), Ordering::Relaxed);
    }
}

impl Inner {
    fn shutdown(&self, drain: Duration) {
        self.shared.cancel_after(drain);
        // Dropping the only sender lets the worker finish the queue, then see the disconnect.
        drop(lock(&self.queue).take());
        if thread::current().id() == self.worker {
            return;
        }
        let handle = lock(&self.thread).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown(Duration::ZERO);
    }
}

// ---------------------------------------------------------------------------------------------
// The inference thread

/// Body of the inference thread: load, warm up, report readiness, serve until disconnected.
fn worker_main(
    cfg: EngineConfig,
    rx: Receiver<Job>,
    shared: Arc<Shared>,
    ready: mpsc::Sender<Result<ModelInfo, StartError>>,
    on_status: impl Fn(&str),
) {
    let path = cfg.model_path.clone();
    let model_err = |source| StartError::Model {
        path: path.clone(),
        source,
    };
    on_status(&format!(
        "loading model {} from {}",
        cfg.model_name,
        cfg.model_path.display()
    ));
    let opts = LoadOptions { repack: cfg.repack };
    let model = match Model::load_with(&cfg.model_path, opts) {
        Ok(m) => m,
        Err(e) => {
            let _ = ready.send(Err(model_err(e)));
            return;
        }
    };
    on_status(&format!("warming up {}", cfg.model_name));
    let session = match warm_up(&model, cfg.kv_cells(), cfg.n_threads) {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(model_err(e)));
            return;
        }
    };
    let info = model_info(&cfg, &model);
    let tokenizer = model.tokenizer();
    let fallback = model.chat_template().is_none().then(|| {
        let text = |t: Option<u32>| t.and_then(|t| tokenizer.token_text(t)).unwrap_or("");
        ChatTemplate::chatml_fallback(text(tokenizer.bos()), text(tokenizer.eos()))
    });
    let worker = Worker {
        model: &model,
        session,
        fallback,
        mode: info.default_mode,
        n_ctx: cfg.n_ctx,
        kv_cells: cfg.kv_cells(),
        n_threads: cfg.n_threads,
        parallel: cfg.parallel,
        prefix_cache: cfg.prefix_cache,
        step_tokens: cfg.step_tokens,
        model_name: cfg.model_name.clone(),
        shared,
        healthy: true,
        queue: FairQueue::default(),
        seqs: SeqTable::default(),
        running: Vec::new(),
        batch: Batch::default(),
        out_rows: Vec::new(),
    };
    worker.shared.beat();
    on_status(&format!(
        "ready: {} ({}, {} params, {} cells per job, {} parallel, {} KV cells, {:.1} MiB repacked)",
        info.name,
        info.quantization,
        info.n_params,
        info.n_ctx,
        info.parallel,
        info.kv_cells,
        info.repacked_bytes as f64 / f64::from(1 << 20)
    ));
    if ready.send(Ok(info)).is_err() {
        return;
    }
    worker.run(rx);
}

/// A session that has computed one token, so the first request pays no first-use costs.
fn warm_up(model: &Model, n_ctx: usize, n_threads: usize) -> Result<Session<'_>, ModelError> {
    let mut session = Session::new(model, n_ctx, n_threads)?;
    let token = model.tokenizer().bos().unwrap_or(0);
    session.eval(&[token])?;
    session.clear();
    Ok(session)
}

/// Describes the loaded model.
fn model_info(cfg: &EngineConfig, model: &Model) -> ModelInfo {
    let gguf = model.gguf();
    let md = gguf.metadata();
    let n_params = gguf
        .tensors()
        .iter()
        .fold(0u64, |n, t| n.saturating_add(t.n_elements()));
    let quantization = md
        .opt_u32("general.file_type")
        .ok()
        .flatten()
        .and_then(file_type_name)
        .map(str::to_owned)
        .unwrap_or_else(|| dominant_type(model));
    let has_chat_template = model.chat_template().is_some();
    ModelInfo {
        name: cfg.model_name.clone(),
        architecture: md
            .opt_str("general.architecture")
            .ok()
            .flatten()
            .unwrap_or("llama")
            .to_owned(),
        n_params,
        quantization,
        n_ctx: cfg.n_ctx,
        parallel: cfg.parallel,
        kv_cells: cfg.kv_cells(),
        repacked_bytes: model.repacked_bytes(),
        n_ctx_train: model.hparams().n_ctx_train,
        has_chat_template,
        default_mode: match cfg.default_mode {
            PromptMode::Auto if has_chat_template => PromptMode::Chat,
            PromptMode::Auto => PromptMode::Complete,
            m => m,
        },
    }
}

/// llama.cpp's `llama_ftype` names (`llama_model_ftype_name` in `src/llama-model-loader.cpp`).
fn file_type_name(ftype: u32) -> Option<&'static str> {
    Some(match ftype {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4",
        _ => return None,
    })
}

/// The tensor type holding the most bytes (ties to the lower type id).
fn dominant_type(model: &Model) -> String {
    let mut bytes: std::collections::BTreeMap<u32, (u64, &'static str)> = Default::default();
    for t in model.gguf().tensors() {
        let e = bytes.entry(t.ty.id()).or_insert((0, t.ty.name()));
        e.0 = e.0.saturating_add(t.n_bytes);
    }
    bytes
        .values()
        .fold(None::<(u64, &str)>, |best, &(n, name)| match best {
            Some((b, _)) if b >= n => best,
            _ => Some((n, name)),
        })
        .map_or_else(|| "unknown".to_owned(), |(_, name)| name.to_owned())
}

/// The inference thread's state: the model, its session, the running jobs and the queue.
struct Worker<'m> {
    model: &'m Model,
    session: Session<'m>,
    /// ChatML, when the model has no template of its own.
    fallback: Option<ChatTemplate>,
    /// Resolved: never [`PromptMode::Auto`].
    mode: PromptMode,
    n_ctx: usize,
    kv_cells: usize,
    n_threads: usize,
    parallel: usize,
    prefix_cache: bool,
    step_tokens: usize,
    model_name: String,
    shared: Arc<Shared>,
    /// False once the session could not be rebuilt after a panic: the thread then exits, its
    /// heartbeat stops, and the watchdog restarts the service.
    healthy: bool,
    queue: FairQueue<Job>,
    seqs: SeqTable,
    running: Vec<Running<'m>>,
    batch: Batch,
    /// Running-job index of each logits row of the last batch.
    out_rows: Vec<usize>,
}

/// A job holding a slot: reading its prompt, then generating.
struct Running<'m> {
    job: Job,
    seq: SeqId,
    prompt: Vec<u32>,
    /// Prompt tokens in the cache: shared from the prefix cache, then evaluated.
    n_past: usize,
    /// Prompt tokens shared from the prefix cache.
    cached: usize,
    max_tokens: usize,
    stepper: Stepper<'m>,
    /// The token sampled last, to evaluate in the next step.
    next: Option<u32>,
    queue_ms: f64,
    started: Instant,
    /// When the prompt's logits came out (the first token).
    first: Option<Instant>,
    failed: Option<EngineError>,
}

impl Running<'_> {
    fn done(&self) -> bool {
        self.failed.is_some() || self.stepper.is_finished()
    }

    /// Cells this job may still write: its whole prompt and answer minus what it holds.
    fn reserve(&self, seqs: &SeqTable) -> usize {
        (self.prompt.len() + self.max_tokens).saturating_sub(seqs.n_tokens(self.seq))
    }
}

impl<'m> Worker<'m> {
    /// Serves jobs until every sender is gone and all work is done (shutdown) or the worker
    /// is broken: take in new jobs, admit them to free slots, run one batched step.
    fn run(mut self, rx: Receiver<Job>) {
        let mut open = true;
        while self.healthy {
            self.stall_if_asked();
            if open && self.running.is_empty() && self.queue.is_empty() {
                match rx.recv_timeout(IDLE_WAKE) {
                    Ok(job) => self.enqueue(job),
                    Err(RecvTimeoutError::Timeout) => {
                        self.shared.beat();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => open = false,
                }
            }
            while open {
                match rx.try_recv() {
                    Ok(job) => self.enqueue(job),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => open = false,
                }
            }
            self.shared.beat();
            self.sweep_queue();
            self.admit();
            if self.running.is_empty() {
                if !open && self.queue.is_empty() {
                    return;
                }
                continue;
            }
            self.step();
            self.retire();
        }
        // Broken: nothing accepted may go unanswered.
        let broken = || EngineError::new(ErrorKind::Internal, "the inference thread failed");
        for mut r in std::mem::take(&mut self.running) {
            self.fail(&mut r.job, broken());
        }
        while let Ok(job) = rx.try_recv() {
            self.enqueue(job);
        }
        while let Some(p) = self.queue.pop() {
            let mut job = p.job;
            self.dequeued(&mut job, Some(broken()));
        }
    }

    fn enqueue(&mut self, job: Job) {
        let client = job.client.clone();
        self.queue.push(&client, job);
    }

    /// A job left the queue: count it, and fail it with `e` if given.
    fn dequeued(&self, job: &mut Job, e: Option<EngineError>) {
        self.shared.queued.fetch_sub(1, Ordering::Relaxed);
        if let Some(e) = e {
            self.fail(job, e);
        }
    }

    fn stall_if_asked(&self) {
        let until = self.shared.stall_until_us.load(Ordering::Relaxed);
        let now = self.shared.now_us();
        if until > now {
            thread::sleep(Duration::from_micros(until - now));
        }
    }

    /// Answers queued jobs that can no longer start: cancelled, expired, or shutting down.
    fn sweep_queue(&mut self) {
        let shared = &*self.shared;
        let now = Instant::now();
        let gone = |job: &Job| {
            shared.cancelling()
                || job.cancel.load(Ordering::Relaxed)
                || job.deadline.is_some_and(|d| now >= d)
        };
        for mut job in self.queue.remove_where(gone) {
            let e = if shared.cancelling() {
                EngineError::new(ErrorKind::Cancelled, "the engine is shutting down")
            } else if job.cancel.load(Ordering::Relaxed) {
                EngineError::new(ErrorKind::Cancelled, "cancelled before it started")
            } else {
                let queue_ms = ms(job.enqueued.elapsed());
                EngineError::new(
                    ErrorKind::Expired,
                    format!("the deadline passed after {queue_ms:.0} ms in the queue"),
                )
            };
            self.dequeued(&mut job, Some(e));
        }
    }

    /// Fills free slots from the queue, fairly across clients.
    fn admit(&mut self) {
        while self.running.len() < self.parallel {
            let Some(p) = self.queue.pop() else { return };
            let prepared = panic::catch_unwind(AssertUnwindSafe(|| self.prepare(&p.job)));
            let (prompt, max_tokens) = match prepared {
                Ok(Ok(x)) => x,
                Ok(Err(e)) => {
                    let mut job = p.job;
                    self.dequeued(&mut job, Some(e));
                    continue;
                }
                Err(payload) => {
                    let mut job = p.job;
                    let e = EngineError::new(
                        ErrorKind::Internal,
                        format!("inference panicked: {}", panic_message(&*payload)),
                    );
                    self.dequeued(&mut job, Some(e));
                    continue;
                }
            };
            let Some(start) = self.place(&prompt, max_tokens) else {
                // Running jobs hold the cells it needs: it waits for one to finish.
                self.queue.unpop(p);
                return;
            };
            let mut job = p.job;
            self.dequeued(&mut job, None);
            self.begin(job, prompt, max_tokens, start);
        }
    }

    /// Tokenizes and checks the limits.
    fn prepare(&self, job: &Job) -> Result<(Vec<u32>, usize), EngineError> {
        let prompt = self.tokenize(&job.input)?;
        let limits = self.shared.tunables();
        let max_tokens = job.max_tokens.unwrap_or(limits.default_max_tokens) as usize;
        if prompt.is_empty() {
            return Err(EngineError::new(
                ErrorKind::BadRequest,
                "the prompt is empty after tokenization",
            ));
        }
        if prompt.len() > limits.max_prompt_tokens {
            return Err(EngineError::new(
                ErrorKind::TooLong,
                format!(
                    "the prompt is {} tokens; the limit is {}",
                    prompt.len(),
                    limits.max_prompt_tokens
                ),
            ));
        }
        let n_ctx = self.n_ctx;
        if prompt.len() + max_tokens > n_ctx {
            return Err(EngineError::new(
                ErrorKind::TooLong,
                format!(
                    "the prompt of {} tokens plus max_tokens {max_tokens} exceeds the context of {n_ctx} tokens",
                    prompt.len()
                ),
            ));
        }
        Ok((prompt, max_tokens))
    }

    /// Creates the job's sequence, sharing the longest cached prefix, and makes room for the
    /// rest by evicting idle sequences, least recently used first. `None` (nothing changed)
    /// when running jobs leave too little room.
    fn place(&mut self, prompt: &[u32], max_tokens: usize) -> Option<Start> {
        while !self.seqs.has_room() {
            let victim = self.seqs.lru_idle()?;
            self.drop_seq(victim);
        }
        let start = self.seqs.start(prompt, self.prefix_cache)?;
        if let Some(from) = start.from {
            self.session.copy_prefix(from, start.seq, start.reuse);
        }
        for id in self.seqs.redundant(start.seq) {
            self.drop_seq(id);
        }
        let need = prompt.len() + max_tokens - start.reuse;
        loop {
            let reserved: usize = self.running.iter().map(|r| r.reserve(&self.seqs)).sum();
            if self.session.used_cells() + reserved + need <= self.kv_cells {
                return Some(start);
            }
            match self.seqs.lru_idle() {
                Some(victim) => self.drop_seq(victim),
                None => {
                    self.drop_seq(start.seq);
                    return None;
                }
            }
        }
    }

    fn drop_seq(&mut self, seq: SeqId) {
        self.session.remove(seq, 0);
        self.seqs.remove(seq);
    }

    /// Starts a placed job: `Started`, then it takes part in the next step.
    fn begin(&mut self, mut job: Job, prompt: Vec<u32>, max_tokens: usize, start: Start) {
        let req = GenerateRequest {
            prompt,
            max_tokens,
            sampling: job.sampling.clone(),
            stop: job.stop.clone(),
        };
        let stepper = match Stepper::new(self.model.tokenizer(), &req) {
            Ok(s) => s,
            Err(e) => {
                self.drop_seq(start.seq);
                return self.fail(&mut job, generate_error(e));
            }
        };
        let queue_ms = ms(job.enqueued.elapsed());
        self.shared
            .in_flight
            .store(self.running.len() + 1, Ordering::Relaxed);
        emit(&mut job, JobEvent::Started { queue_ms });
        self.running.push(Running {
            job,
            seq: start.seq,
            prompt: req.prompt,
            n_past: start.reuse,
            cached: start.reuse,
            max_tokens,
            stepper,
            next: None,
            queue_ms,
            started: Instant::now(),
            first: None,
            failed: None,
        });
    }

    /// One batched step: a token for every generating job, then prompt chunks within the
    /// step's budget, all in one decode; then each job samples from its row.
    fn step(&mut self) {
        let shared = &*self.shared;
        for r in &mut self.running {
            if r.job.cancel.load(Ordering::Relaxed) || shared.cancelling() {
                r.stepper.cancel();
            }
        }
        self.retire();
        if self.running.is_empty() {
            return;
        }
        self.build_batch();
        self.shared.beat();
        self.shared.decode_steps.fetch_add(1, Ordering::Relaxed);
        let decoded = panic::catch_unwind(AssertUnwindSafe(|| self.session.decode(&self.batch)));
        match decoded {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let e = generate_error(GenerateError::Model(e));
                for r in &mut self.running {
                    r.failed = Some(e.clone());
                }
                return;
            }
            Err(payload) => return self.crashed(&*payload),
        }
        for i in 0..self.batch.len() {
            let (seq, token) = (self.batch.seq[i], self.batch.tokens[i]);
            self.seqs.extend(seq, &[token]);
        }
        let now = Instant::now();
        for (row, &ri) in self.out_rows.iter().enumerate() {
            let r = &mut self.running[ri];
            r.first.get_or_insert(now);
            let (events, stream, failed) = (&mut r.job.events, r.job.stream, &mut r.failed);
            r.next = r.stepper.step(self.session.logits(row), |text| {
                if stream && failed.is_none() {
                    deliver(events, text, failed);
                }
            });
        }
    }

    /// Fills `self.batch` (and `out_rows`) for the next step.
    fn build_batch(&mut self) {
        self.batch.clear();
        self.out_rows.clear();
        for (i, r) in self.running.iter().enumerate() {
            if let Some(t) = r.next {
                let pos = self.seqs.n_tokens(r.seq) as i32;
                self.batch.push(t, pos, r.seq, true);
                self.out_rows.push(i);
            }
        }
        let mut budget = self.step_tokens.saturating_sub(self.batch.len()).max(1);
        for (i, r) in self.running.iter_mut().enumerate() {
            if budget == 0 {
                break;
            }
            if r.next.is_some() || r.n_past == r.prompt.len() {
                continue;
            }
            let end = (r.n_past + budget).min(r.prompt.len());
            for (p, &t) in r.prompt.iter().enumerate().take(end).skip(r.n_past) {
                let last = p + 1 == r.prompt.len();
                self.batch.push(t, p as i32, r.seq, last);
                if last {
                    self.out_rows.push(i);
                }
            }
            budget -= end - r.n_past;
            r.n_past = end;
        }
    }

    /// Ends the jobs that are done: `Done` or `Failed`, their sequences kept idle (prefix
    /// cache) or dropped.
    fn retire(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            if !self.running[i].done() {
                i += 1;
                continue;
            }
            let mut r = self.running.remove(i);
            self.shared
                .in_flight
                .store(self.running.len(), Ordering::Relaxed);
            if let Some(e) = r.failed.take() {
                self.drop_seq(r.seq);
                self.fail(&mut r.job, e);
                continue;
            }
            let (events, stream, failed) = (&mut r.job.events, r.job.stream, &mut r.failed);
            let (tokens, text, finish_reason) = r.stepper.finish(|text| {
                if stream && failed.is_none() {
                    deliver(events, text, failed);
                }
            });
            if let Some(e) = r.failed.take() {
                self.drop_seq(r.seq);
                self.fail(&mut r.job, e);
                continue;
            }
            if self.prefix_cache {
                self.seqs.park(r.seq);
            } else {
                self.drop_seq(r.seq);
            }
            let now = Instant::now();
            let first = r.first.unwrap_or(now);
            let generate = now - first;
            let outcome = JobOutcome {
                completion_tokens: tokens.len() as u32,
                prompt_tokens: r.prompt.len() as u32,
                cached_tokens: r.cached as u32,
                queue_ms: r.queue_ms,
                prompt_ms: ms(first - r.started),
                generate_ms: ms(generate),
                tokens_per_s: rate(tokens.len().saturating_sub(1), generate),
                model: self.model_name.clone(),
                finish_reason,
                text,
                tokens,
            };
            let shared = &self.shared;
            shared.served.fetch_add(1, Ordering::Relaxed);
            shared
                .prompt_cached
                .fetch_add(r.cached as u64, Ordering::Relaxed);
            shared
                .prompt_evaluated
                .fetch_add((r.n_past - r.cached) as u64, Ordering::Relaxed);
            shared
                .last_tps
                .store(outcome.tokens_per_s.to_bits(), Ordering::Relaxed);
            emit(&mut r.job, JobEvent::Done(outcome));
        }
    }

    /// A panic inside a decode: the KV cache or buffers may be half-updated, so every running
    /// job fails and the session starts afresh.
    fn crashed(&mut self, payload: &(dyn std::any::Any + Send)) {
        let e = EngineError::new(
            ErrorKind::Internal,
            format!("inference panicked: {}", panic_message(payload)),
        );
        for mut r in std::mem::take(&mut self.running) {
            self.fail(&mut r.job, e.clone());
        }
        self.shared.in_flight.store(0, Ordering::Relaxed);
        self.seqs.clear();
        self.rebuild_session();
    }

    /// The prompt's tokens. Special-token text is parsed only in template output, never in
    /// client text, so a client cannot inject control tokens.
    fn tokenize(&self, input: &PromptInput) -> Result<Vec<u32>, EngineError> {
        let tokenizer = self.model.tokenizer();
        match input {
            PromptInput::Raw(text) => Ok(with_bos(tokenizer, tokenizer.encode(text, false))),
            PromptInput::Text(text) if self.mode == PromptMode::Complete => {
                Ok(with_bos(tokenizer, tokenizer.encode(text, false)))
            }
            PromptInput::Text(text) => self.chat(&[ChatMessage::new("user", text.as_str())]),
            PromptInput::Chat(messages) => self.chat(messages),
        }
    }

    /// Renders `messages` with the generation prompt and tokenizes the result.
    fn chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, EngineError> {
        let template = match (self.model.chat_template(), &self.fallback) {
            (Some(t), _) | (None, Some(t)) => t,
            (None, None) => unreachable!("the fallback exists whenever the model has no template"),
        };
        // Only the template's own text may become control tokens (never message content);
        // the template decides whether the text starts with BOS.
        template
            .encode(self.model.tokenizer(), messages, true)
            .map_err(|e| {
                let kind = match e {
                    ChatError::Syntax(_) => ErrorKind::Internal,
                    _ => ErrorKind::BadRequest,
                };
                EngineError::new(kind, e.to_string())
            })
    }

    /// After a panic the session's KV cache or buffers may be half-updated: start afresh.
    fn rebuild_session(&mut self) {
        match Session::new(self.model, self.kv_cells, self.n_threads) {
            Ok(s) => self.session = s,
            Err(_) => self.healthy = false,
        }
    }

    fn fail(&self, job: &mut Job, e: EngineError) {
        self.shared.failed.fetch_add(1, Ordering::Relaxed);
        emit(job, JobEvent::Failed(e));
    }
}

/// Streams `text` to a job's sink; a panic there fails that job (only) as
/// [`ErrorKind::Internal`] and silences its stream.
fn deliver(events: &mut EventSink, text: &str, failed: &mut Option<EngineError>) {
    let sent = panic::catch_unwind(AssertUnwindSafe(|| {
        events(JobEvent::Delta(text.to_owned()))
    }));
    if let Err(payload) = sent {
        *failed = Some(EngineError::new(
            ErrorKind::Internal,
            format!("inference panicked: {}", panic_message(&*payload)),
        ));
    }
}

/// Delivers an event; a panicking sink must not take the worker down with it.
fn emit(job: &mut Job, event: JobEvent) {
    let _ = panic::catch_unwind(AssertUnwindSafe(|| (job.events)(event)));
}

fn with_bos(tokenizer: &Tokenizer, mut ids: Vec<u32>) -> Vec<u32> {
    if tokenizer.add_bos() {
        if let Some(b) = tokenizer.bos() {
            ids.insert(0, b);
        }
    }
    ids
}

fn generate_error(e: GenerateError) -> EngineError {
    let kind = match &e {
        GenerateError::Sampler(_) | GenerateError::EmptyPrompt => ErrorKind::BadRequest,
        GenerateError::TooLong { .. } => ErrorKind::TooLong,
        GenerateError::Model(_) => ErrorKind::Internal,
    };
    EngineError::new(kind, e.to_string())
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

// The MQTT side shares handles across tasks.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Engine>();
};
