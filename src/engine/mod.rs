//! Generation: prompt in, tokens out, with timings. Knows nothing of MQTT.
//!
//! [`generate`] drives one request through a [`Session`]: prompt processing in batches, then
//! one token per step through the sampler, streaming UTF-8-safe text to a callback until EOS,
//! a stop string, `max_tokens`, or cancellation.

mod config;
mod handle;
mod job;
pub mod memory;
pub mod sched;
mod worker;

use std::time::{Duration, Instant};

use crate::format::{Constraint, FormatError, Grammar};
use crate::model::session::MAX_UBATCH;
use crate::model::{ModelError, SeqId, Session};
use crate::sampler::{FinishReason, Sampler, SamplerError, SamplingParams, StopMatcher};
use crate::tokenizer::{StreamDecoder, Tokenizer};

pub use config::{
    kv_cache_bytes_for, EngineConfig, PromptMode, StartError, Tunables, DEFAULT_STEP_TOKENS,
};
pub use handle::Engine;
pub use job::{
    EngineError, EngineStats, ErrorKind, EventSink, Job, JobEvent, JobOutcome, ModelInfo,
    PromptInput, Rejected,
};
pub use worker::IDLE_WAKE;

/// One generation request, already tokenized.
#[derive(Clone, Debug)]
pub struct GenerateRequest {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// A compiled format the reply must follow; `None` leaves sampling untouched.
    pub format: Option<Grammar>,
}

/// Wall-clock timings of one generation.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Timings {
    /// Prompt processing (all prompt tokens through the model, first logits out).
    pub prompt: Duration,
    /// Token generation after the first logits.
    pub generate: Duration,
}

/// What a generation produced.
#[derive(Clone, Debug)]
pub struct Generation {
    /// Generated token ids (stop/EOS token excluded).
    pub tokens: Vec<u32>,
    /// The text sent to the callback, concatenated.
    pub text: String,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    pub timings: Timings,
    /// How the format constraint ended, for a request with a format.
    pub format: Option<FormatOutcome>,
}

/// How a constrained generation ended.
#[derive(Clone, Debug, PartialEq)]
pub struct FormatOutcome {
    /// The text is a complete match of the format (not cut by `max_tokens` or a stop string).
    pub complete: bool,
    /// For JSON formats that completed: the parsed reply, which equals the text.
    pub json: Option<serde_json::Value>,
    /// Why the constraint failed mid-generation (a mask step over llguidance's limits).
    pub error: Option<FormatError>,
    /// Time spent computing each token's mask.
    pub mask_times: Vec<Duration>,
}

impl Generation {
    /// Prompt tokens per second.
    pub fn prompt_tps(&self) -> f64 {
        rate(self.prompt_tokens, self.timings.prompt)
    }

    /// Generated tokens per second (excluding the first, which prompt processing produced).
    pub fn generate_tps(&self) -> f64 {
        rate(self.tokens.len().saturating_sub(1), self.timings.generate)
    }
}

pub(crate) fn rate(n: usize, d: Duration) -> f64 {
    if d.is_zero() {
        0.0
    } else {
        n as f64 / d.as_secs_f64()
    }
}

/// Why a generation failed.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("sampling parameters: {0}")]
    Sampler(#[from] SamplerError),
    #[error("empty prompt")]
    EmptyPrompt,
    #[error(
        "prompt of {prompt} tokens plus {max_tokens} new tokens exceeds the context of {n_ctx}"
    )]
    TooLong {
        prompt: usize,
        max_tokens: usize,
        n_ctx: usize,
    },
}

/// One sequence's token-by-token state: sampler, stop strings, UTF-8 stream decoder and the
/// token history. [`generate`] drives one on its own; the worker's scheduler drives several
/// side by side, each fed the logits of its own batch row.
#[derive(Debug)]
pub struct Stepper<'t> {
    tokenizer: &'t Tokenizer,
    sampler: Sampler,
    stops: StopMatcher,
    decoder: StreamDecoder<'t>,
    history: Vec<u32>,
    max_tokens: usize,
    tokens: Vec<u32>,
    text: String,
    finish: Option<FinishReason>,
    /// The format's matcher, when the request has one; whether its replies are JSON.
    constraint: Option<(Constraint, bool)>,
    format_error: Option<FormatError>,
}

impl<'t> Stepper<'t> {
    /// State for `req` (its prompt seeds the repetition-penalty history).
    pub fn new(tokenizer: &'t Tokenizer, req: &GenerateRequest) -> Result<Self, GenerateError> {
        Ok(Stepper {
            tokenizer,
            sampler: Sampler::new(req.sampling.clone(), tokenizer.n_vocab())?,
            stops: StopMatcher::new(req.stop.clone()),
            decoder: StreamDecoder::new(tokenizer),
            history: req.prompt.clone(),
            max_tokens: req.max_tokens,
            tokens: Vec::new(),
            text: String::new(),
            finish: (req.max_tokens == 0).then_some(FinishReason::Length),
            constraint: req.format.as_ref().map(|g| (g.constraint(), g.is_json())),
            format_error: None,
        })
    }

    /// Samples from `logits` (the row after the last evaluated token), passing new text to
    /// `on_text`. Returns the token to evaluate next, or `None` once finished (EOS, a stop
    /// string, `max_tokens`), after which [`Stepper::finish`] gives the result.
    pub fn step(&mut self, logits: &[f32], mut on_text: impl FnMut(&str)) -> Option<u32> {
        if self.finish.is_some() {
            return None;
        }
        let token = match self.constraint.as_mut() {
            None => self.sampler.sample(logits, &self.history),
            Some((c, _)) => {
                let picked = c.mask().and_then(|allowed| {
                    self.sampler
                        .sample_masked(logits, &self.history, allowed)
                        .ok_or_else(|| FormatError::Runtime("the format allows no token".into()))
                });
                match picked {
                    Ok(t) => t,
                    Err(e) => return self.format_failed(e),
                }
            }
        };
        // With a format, the mask allows end-of-generation only where the format accepts.
        if self.tokenizer.is_eog(token) {
            self.finish = Some(FinishReason::Stop);
            return None;
        }
        if let Some((c, _)) = self.constraint.as_mut() {
            if let Err(e) = c.commit(token) {
                return self.format_failed(e);
            }
        }
        self.tokens.push(token);
        self.history.push(token);
        let piece = self.decoder.push(token);
        let pushed = self.stops.push(&piece);
        self.emit(&pushed.emit, &mut on_text);
        if pushed.stopped || self.format_done() {
            self.finish = Some(FinishReason::Stop);
        } else if self.tokens.len() >= self.max_tokens {
            self.finish = Some(FinishReason::Length);
        }
        self.finish.is_none().then_some(token)
    }

    fn format_failed(&mut self, e: FormatError) -> Option<u32> {
        self.format_error = Some(e);
        self.finish = Some(FinishReason::Stop);
        None
    }

    /// The format is complete and allows nothing more, so the reply ends without waiting for
    /// the model to pick end-of-generation.
    fn format_done(&self) -> bool {
        self.constraint
            .as_ref()
            .is_some_and(|(c, _)| c.is_stopped() && self.format_error.is_none())
    }

    /// Ends the sequence early (cancellation); [`Stepper::finish`] then reports it.
    pub fn cancel(&mut self) {
        self.finish.get_or_insert(FinishReason::Cancelled);
    }

    /// Tokens generated so far.
    pub fn n_tokens(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the sequence has ended ([`Stepper::step`] returned `None`, or cancelled).
    pub fn is_finished(&self) -> bool {
        self.finish.is_some()
    }

    /// Flushes held-back text (a partial character, or a stop-string prefix that never
    /// completed) to `on_text` and returns (tokens, text, finish reason).
    pub fn finish(self, on_text: impl FnMut(&str)) -> (Vec<u32>, String, FinishReason) {
        let (tokens, text, reason, _) = self.finish_with_format(on_text);
        (tokens, text, reason)
    }

    /// [`Stepper::finish`], plus, for a request with a format, how the format ended: whether
    /// the text completes it, the parsed JSON for JSON formats, and the mask timings.
    pub fn finish_with_format(
        mut self,
        mut on_text: impl FnMut(&str),
    ) -> (Vec<u32>, String, FinishReason, Option<FormatOutcome>) {
        if !self.stops.is_stopped() {
            let tail = self.decoder.finish();
            let pushed = self.stops.push(&tail);
            self.emit(&pushed.emit, &mut on_text);
            if !pushed.stopped {
                let rest = self.stops.finish();
                self.emit(&rest, &mut on_text);
            }
        }
        let reason = self.finish.unwrap_or(FinishReason::Length);
        let outcome = self.constraint.take().map(|(mut c, is_json)| {
            let error = self.format_error.take();
            // A stop string cuts the text short of what the format matched.
            let mut complete = error.is_none() && !self.stops.is_stopped() && c.is_accepting();
            let json = (complete && is_json)
                .then(|| serde_json::from_str(&self.text).ok())
                .flatten();
            complete &= !is_json || json.is_some();
            FormatOutcome {
                complete,
                json,
                error,
                mask_times: c.mask_times().to_vec(),
            }
        });
        (self.tokens, self.text, reason, outcome)
    }

    fn emit(&mut self, s: &str, on_text: &mut impl FnMut(&str)) {
        if !s.is_empty() {
            on_text(s);
            self.text.push_str(s);
        }
    }
}

/// Checks what [`generate`] and the worker both refuse: an empty prompt, or one that with
/// `max_tokens` new tokens does not fit `n_ctx`.
pub fn check_fits(req: &GenerateRequest, n_ctx: usize) -> Result<(), GenerateError> {
    if req.prompt.is_empty() {
        return Err(GenerateError::EmptyPrompt);
    }
    if req.prompt.len() + req.max_tokens > n_ctx {
        return Err(GenerateError::TooLong {
            prompt: req.prompt.len(),
            max_tokens: req.max_tokens,
            n_ctx,
        });
    }
    Ok(())
}

/// Runs `req` on sequence `seq` of `session` (which must be empty for that sequence),
/// calling `on_text` with each new piece of valid UTF-8 text, and `cancelled` between steps.
pub fn generate(
    session: &mut Session<'_>,
    seq: SeqId,
    req: &GenerateRequest,
    mut on_text: impl FnMut(&str),
    cancelled: impl Fn() -> bool,
) -> Result<Generation, GenerateError> {
    check_fits(req, session.n_ctx())?;
    let mut stepper = Stepper::new(session.model().tokenizer(), req)?;
    let mut timings = Timings::default();
    let t0 = Instant::now();
    // Prompt in micro-batches, checking for cancellation between them, so a long prompt on a
    // slow board can still be cancelled (and the caller's heartbeat keeps moving).
    for chunk in req.prompt.chunks(MAX_UBATCH) {
        if cancelled() {
            stepper.cancel();
            break;
        }
        session.eval_seq(seq, chunk)?;
    }
    timings.prompt = t0.elapsed();
    let t1 = Instant::now();
    while stepper.finish.is_none() {
        if cancelled() {
            stepper.cancel();
            break;
        }
        if let Some(token) = stepper.step(session.logits(0), &mut on_text) {
            session.eval_seq(seq, &[token])?;
        }
    }
    let (tokens, text, finish_reason, format) = stepper.finish_with_format(&mut on_text);
    timings.generate = t1.elapsed();
    Ok(Generation {
        tokens,
        text,
        finish_reason,
        prompt_tokens: req.prompt.len(),
        timings,
        format,
    })
}
