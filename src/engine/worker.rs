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

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::thread::{self};
use std::time::{Duration, Instant};

use super::config::{EngineConfig, PromptMode, StartError};
use super::handle::{ms, Engine, Shared};
use super::job::{
    EngineError, ErrorKind, EventSink, Job, JobEvent, JobOutcome, ModelInfo, PromptInput,
};
use crate::engine::sched::{FairQueue, SeqTable, Start};
use crate::engine::{rate, GenerateError, GenerateRequest, Stepper};
use crate::format::{FormatCompiler, FormatLimits};
use crate::model::{Batch, LoadOptions, Model, ModelError, SeqId, Session};
use crate::tokenizer::chat::{ChatError, ChatMessage};

/// Longest the idle worker waits before refreshing its heartbeat.
pub const IDLE_WAKE: Duration = Duration::from_millis(250);

/// Body of the inference thread: load, warm up, report readiness, serve until disconnected.
pub(super) fn worker_main(
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
    let _ = shared
        .formats
        .set(FormatCompiler::new(model.tokenizer(), FormatLimits::default()).map(Arc::new));
    let worker = Worker {
        model: &model,
        session,
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

/// Describes the loaded model as served with `cfg`.
fn model_info(cfg: &EngineConfig, model: &Model) -> ModelInfo {
    let d = model.describe();
    ModelInfo {
        name: cfg.model_name.clone(),
        architecture: d.architecture,
        n_params: d.n_params,
        quantization: d.quantization,
        n_ctx: cfg.n_ctx,
        parallel: cfg.parallel,
        kv_cells: cfg.kv_cells(),
        repacked_bytes: model.repacked_bytes(),
        n_ctx_train: d.n_ctx_train,
        has_chat_template: d.has_chat_template,
        default_mode: match cfg.default_mode {
            PromptMode::Auto if d.has_chat_template => PromptMode::Chat,
            PromptMode::Auto => PromptMode::Complete,
            m => m,
        },
        // Loading the model selected it.
        cpu_variant: crate::ggml::cpu::active_variant().map_or("none", |v| v.name()),
    }
}

/// The inference thread's state: the model, its session, the running jobs and the queue.
struct Worker<'m> {
    model: &'m Model,
    session: Session<'m>,
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
            format: job.format.clone(),
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
            let (tokens, text, finish_reason, format) = r.stepper.finish_with_format(|text| {
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
                format: format.map(Box::new),
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
            PromptInput::Raw(text) => Ok(tokenizer.with_bos(tokenizer.encode(text, false))),
            PromptInput::Text(text) if self.mode == PromptMode::Complete => {
                Ok(tokenizer.with_bos(tokenizer.encode(text, false)))
            }
            PromptInput::Text(text) => self.chat(&[ChatMessage::new("user", text.as_str())]),
            PromptInput::Chat(messages) => self.chat(messages),
        }
    }

    /// Renders `messages` with the generation prompt and tokenizes the result.
    fn chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, EngineError> {
        self.model.encode_chat(messages).map_err(|e| {
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
