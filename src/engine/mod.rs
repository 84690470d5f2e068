//! Generation: prompt in, tokens out, with timings. Knows nothing of MQTT.
//!
//! [`generate`] drives one request through a [`Session`]: prompt processing in batches, then
//! one token per step through the sampler, streaming UTF-8-safe text to a callback until EOS,
//! a stop string, `max_tokens`, or cancellation.

pub mod memory;
pub mod worker;

use std::time::{Duration, Instant};

use crate::model::session::MAX_UBATCH;
use crate::model::{ModelError, SeqId, Session};
use crate::sampler::{FinishReason, Sampler, SamplerError, SamplingParams, StopMatcher};
use crate::tokenizer::StreamDecoder;

/// One generation request, already tokenized.
#[derive(Clone, Debug)]
pub struct GenerateRequest {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
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

fn rate(n: usize, d: Duration) -> f64 {
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

/// Runs `req` on sequence `seq` of `session` (which must be empty for that sequence),
/// calling `on_text` with each new piece of valid UTF-8 text, and `cancelled` between steps.
pub fn generate(
    session: &mut Session<'_>,
    seq: SeqId,
    req: &GenerateRequest,
    mut on_text: impl FnMut(&str),
    cancelled: impl Fn() -> bool,
) -> Result<Generation, GenerateError> {
    if req.prompt.is_empty() {
        return Err(GenerateError::EmptyPrompt);
    }
    let n_ctx = session.n_ctx();
    if req.prompt.len() + req.max_tokens > n_ctx {
        return Err(GenerateError::TooLong {
            prompt: req.prompt.len(),
            max_tokens: req.max_tokens,
            n_ctx,
        });
    }
    let model = session.model();
    let tokenizer = model.tokenizer();
    let mut sampler = Sampler::new(req.sampling.clone(), tokenizer.n_vocab())?;
    let mut stops = StopMatcher::new(req.stop.clone());
    let mut decoder = StreamDecoder::new(tokenizer);
    let mut history = req.prompt.clone();
    let mut out = Generation {
        tokens: Vec::new(),
        text: String::new(),
        finish_reason: FinishReason::Length,
        prompt_tokens: req.prompt.len(),
        timings: Timings::default(),
    };
    let mut emit = |s: &str, out: &mut Generation| {
        if !s.is_empty() {
            on_text(s);
            out.text.push_str(s);
        }
    };

    let t0 = Instant::now();
    // Prompt in micro-batches, checking for cancellation between them, so a long prompt on a
    // slow board can still be cancelled (and the caller's heartbeat keeps moving).
    for chunk in req.prompt.chunks(MAX_UBATCH) {
        if cancelled() {
            out.finish_reason = FinishReason::Cancelled;
            out.timings.prompt = t0.elapsed();
            return Ok(out);
        }
        session.eval_seq(seq, chunk)?;
    }
    out.timings.prompt = t0.elapsed();
    let t1 = Instant::now();
    while out.tokens.len() < req.max_tokens {
        if cancelled() {
            out.finish_reason = FinishReason::Cancelled;
            break;
        }
        let token = sampler.sample(session.logits(0), &history);
        if tokenizer.is_eog(token) {
            out.finish_reason = FinishReason::Stop;
            break;
        }
        out.tokens.push(token);
        history.push(token);
        let piece = decoder.push(token);
        let pushed = stops.push(&piece);
        emit(&pushed.emit, &mut out);
        if pushed.stopped {
            out.finish_reason = FinishReason::Stop;
            break;
        }
        if out.tokens.len() == req.max_tokens {
            break;
        }
        session.eval_seq(seq, &[token])?;
    }
    if out.finish_reason != FinishReason::Stop || !stops.is_stopped() {
        // Flush held-back text: a partial character, or a partial stop-string prefix that
        // never completed.
        let tail = decoder.finish();
        let pushed = stops.push(&tail);
        emit(&pushed.emit, &mut out);
        if !pushed.stopped {
            let rest = stops.finish();
            emit(&rest, &mut out);
        }
    }
    out.timings.generate = t1.elapsed();
    Ok(out)
}
