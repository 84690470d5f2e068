//! The [`Engine`] handle: submit jobs without blocking, read counters, shut down.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::{self, JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use super::config::{EngineConfig, StartError, Tunables};
use super::job::{
    EngineError, EngineStats, ErrorKind, EventSink, Job, ModelInfo, PromptInput, Rejected,
};
use super::worker::worker_main;
use crate::format::{FormatCompiler, FormatError};

/// A handle to the inference thread; cheap to clone, `Send + Sync`. When the last handle is
/// dropped without [`Engine::shutdown`], running and queued jobs are cancelled and the thread
/// is joined.
#[derive(Clone, Debug)]
pub struct Engine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(super) struct Inner {
    /// `None` once shutting down.
    pub queue: Mutex<Option<Sender<Job>>>,
    pub thread: Mutex<Option<JoinHandle<()>>>,
    pub worker: ThreadId,
    pub shared: Arc<Shared>,
    pub info: ModelInfo,
    pub queue_capacity: usize,
    pub next_id: AtomicU64,
}

/// State the worker and the handles share; all atomics.
#[derive(Debug)]
pub(super) struct Shared {
    pub epoch: Instant,
    /// Microseconds since `epoch` of the worker's last sign of life.
    pub heartbeat_us: AtomicU64,
    pub queued: AtomicUsize,
    pub in_flight: AtomicUsize,
    pub served: AtomicU64,
    pub failed: AtomicU64,
    pub rejected: AtomicU64,
    /// `f64` bits.
    pub last_tps: AtomicU64,
    pub prompt_evaluated: AtomicU64,
    pub prompt_cached: AtomicU64,
    pub decode_steps: AtomicU64,
    /// From this time (µs since `epoch`) running jobs stop and queued ones are cancelled.
    pub cancel_from_us: AtomicU64,
    /// Test hook: the worker sleeps without heartbeats until then (µs since `epoch`).
    pub stall_until_us: AtomicU64,
    /// Read at each submit and job start; replaced by [`Engine::retune`].
    pub tunables: Mutex<Tunables>,
    /// The model's format compiler, set once by the worker after loading the model.
    pub formats: OnceLock<Result<Arc<FormatCompiler>, FormatError>>,
}

impl Shared {
    pub(super) fn new(tunables: Tunables) -> Shared {
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
            formats: OnceLock::new(),
        }
    }

    pub(super) fn tunables(&self) -> Tunables {
        lock(&self.tunables).clone()
    }

    pub(super) fn now_us(&self) -> u64 {
        micros(self.epoch.elapsed())
    }

    pub(super) fn beat(&self) {
        self.heartbeat_us.store(self.now_us(), Ordering::Relaxed);
    }

    pub(super) fn cancelling(&self) -> bool {
        self.now_us() >= self.cancel_from_us.load(Ordering::Relaxed)
    }

    /// Cancels everything from `after` on (an earlier time already set wins).
    pub(super) fn cancel_after(&self, after: Duration) {
        let at = self.now_us().saturating_add(micros(after));
        self.cancel_from_us.fetch_min(at, Ordering::Relaxed);
    }
}

pub(super) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

pub(super) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
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

    /// Compiles formats for this engine's model (the token trie is built once, at start).
    /// Compile on the caller's thread, not the inference thread: a large schema then never
    /// stalls the running batch.
    pub fn format_compiler(&self) -> Result<Arc<FormatCompiler>, FormatError> {
        match self.inner.shared.formats.get() {
            Some(r) => r.clone(),
            // Unreachable once `start` returned: the worker sets it before reporting ready.
            None => Err(FormatError::Compile("the model is not loaded".into())),
        }
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
            format: None,
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
