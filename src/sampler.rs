//! Sampling: one step's logits to the next token, seeded and deterministic; plus stop strings.
//!
//! The chain follows llama.cpp's default (`common_params_sampling::samplers` in
//! `common/common.h`, implementations in `src/llama-sampler.cpp`):
//! penalties → top-k → top-p → min-p → temperature → dist.
//!
//! Determinism: the same seed, parameters, logits and history give the same token on every
//! platform. The candidate order is a total order (logit descending, then id ascending), every
//! reduction runs in that fixed order in `f64`, `exp`/`ln` come from the pure-Rust `libm` crate
//! (not the platform libm, whose last-ulp results differ between glibc, musl and Apple), and the
//! PRNG is our own xoshiro256**. The token stream does not match llama.cpp's bit for bit (it uses
//! `std::mt19937`); the distribution does.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Seed used when a request gives none. Fixed, so an unseeded request is still reproducible.
pub const DEFAULT_SEED: u64 = 0x5EED;

/// How many of the best candidates top-p sorts first before falling back to sorting them all
/// (llama.cpp's adaptive heuristic): with typical p the nucleus is far smaller than the vocab.
const TOP_P_FIRST_PASS: usize = 256;

/// Invalid sampling parameters or sampler setup.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum SamplerError {
    /// A parameter is NaN, infinite or out of range. Parameters come from untrusted MQTT JSON.
    #[error("invalid sampling parameter `{field}` = {value}: must be {expected}")]
    InvalidParam {
        field: &'static str,
        value: String,
        expected: &'static str,
    },
    /// The vocabulary is empty or does not fit token ids (`u32`).
    #[error("invalid vocabulary size {0}")]
    InvalidVocab(usize),
}

/// Per-request sampling parameters; names and defaults follow llama.cpp's `common_params_sampling`.
///
/// Missing JSON fields take their default, so a request may send only what it changes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// Softmax temperature; `0` means greedy (argmax after penalties).
    pub temperature: f32,
    /// Keep only the `k` most likely tokens; `0` disables, `1` is greedy.
    pub top_k: u32,
    /// Nucleus sampling: keep the smallest set whose probability reaches `p`; `1` disables.
    pub top_p: f32,
    /// Drop tokens whose probability is below `min_p` times the best one's; `0` disables.
    pub min_p: f32,
    /// Repetition penalty over the last `repeat_last_n` tokens; `1` disables.
    pub repeat_penalty: f32,
    /// Window of history tokens the penalties look at; `0` disables all penalties.
    pub repeat_last_n: usize,
    /// Subtracted once from the logit of every token present in the window.
    pub presence_penalty: f32,
    /// Subtracted per occurrence from the logit of every token in the window.
    pub frequency_penalty: f32,
    /// PRNG seed.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: DEFAULT_SEED,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding: temperature 0, everything else default (penalties off).
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        }
    }

    /// Rejects NaN, infinite and out-of-range values, naming the first offending field.
    pub fn validate(&self) -> Result<(), SamplerError> {
        // Each check is a positive comparison, so NaN (for which every comparison is false) fails.
        check(
            "temperature",
            self.temperature,
            self.temperature >= 0.0 && self.temperature.is_finite(),
            "finite and >= 0",
        )?;
        check(
            "top_p",
            self.top_p,
            (0.0..=1.0).contains(&self.top_p),
            "in [0, 1]",
        )?;
        check(
            "min_p",
            self.min_p,
            (0.0..=1.0).contains(&self.min_p),
            "in [0, 1]",
        )?;
        check(
            "repeat_penalty",
            self.repeat_penalty,
            self.repeat_penalty > 0.0 && self.repeat_penalty.is_finite(),
            "finite and > 0",
        )?;
        check(
            "presence_penalty",
            self.presence_penalty,
            self.presence_penalty.is_finite(),
            "finite",
        )?;
        check(
            "frequency_penalty",
            self.frequency_penalty,
            self.frequency_penalty.is_finite(),
            "finite",
        )?;
        Ok(())
    }

    fn penalties_enabled(&self) -> bool {
        // Same test as llama.cpp's `llama_sampler_penalties::is_disabled`.
        self.repeat_last_n > 0
            && (self.repeat_penalty != 1.0
                || self.frequency_penalty != 0.0
                || self.presence_penalty != 0.0)
    }

    fn is_greedy(&self) -> bool {
        self.temperature <= 0.0 || self.top_k == 1
    }
}

fn check(
    field: &'static str,
    value: f32,
    ok: bool,
    expected: &'static str,
) -> Result<(), SamplerError> {
    if ok {
        Ok(())
    } else {
        Err(SamplerError::InvalidParam {
            field,
            value: value.to_string(),
            expected,
        })
    }
}

/// One candidate token: its (possibly transformed) logit and, once computed, its probability.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    id: u32,
    logit: f32,
    p: f64,
}

/// The candidate order everywhere: logit descending, ties to the lower id (like greedy argmax).
/// A total order, so unstable sorts and selections give the same result on every platform.
fn by_logit_desc(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id))
}

/// NaN logits (broken numerics) are treated as impossible; `-0.0` becomes `0.0` so `total_cmp`
/// agrees with `>` on ties.
fn sanitize(logit: f32) -> f32 {
    if logit.is_nan() {
        f32::NEG_INFINITY
    } else {
        logit + 0.0
    }
}

/// Turns the candidates' logits into unnormalised weights `exp(l - max)` in `p` and returns their
/// sum. The best candidate always weighs exactly 1, even when logits are infinite.
fn weights(cands: &mut [Candidate], max: f32) -> f64 {
    let mut sum = 0.0f64;
    for c in cands.iter_mut() {
        c.p = if c.logit == max {
            1.0
        } else {
            libm::exp(f64::from(c.logit) - f64::from(max))
        };
        sum += c.p;
    }
    sum
}

fn max_logit(cands: &[Candidate], sorted: bool) -> f32 {
    if sorted {
        cands[0].logit
    } else {
        cands.iter().fold(
            f32::NEG_INFINITY,
            |m, c| if c.logit > m { c.logit } else { m },
        )
    }
}

/// xoshiro256** seeded through splitmix64 (Blackman and Vigna): small, fast, and identical on
/// every platform because it is integer-only.
#[derive(Clone, Debug)]
struct Rng {
    s: [u64; 4],
}

impl Rng {
    fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut splitmix = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng {
            s: [splitmix(), splitmix(), splitmix(), splitmix()],
        }
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// A seeded sampler for one generation. Owns its scratch buffers, so [`Sampler::sample`] does
/// not allocate.
#[derive(Clone, Debug)]
pub struct Sampler {
    params: SamplingParams,
    n_vocab: usize,
    rng: Rng,
    /// Scratch: the candidate set for the current step (capacity `n_vocab`).
    cands: Vec<Candidate>,
    /// Scratch: per-token occurrence counts in the penalty window; all zero between calls.
    counts: Vec<u32>,
}

impl Sampler {
    /// Validates `params` and allocates the scratch buffers for a vocabulary of `n_vocab` tokens.
    pub fn new(params: SamplingParams, n_vocab: usize) -> Result<Sampler, SamplerError> {
        params.validate()?;
        if n_vocab == 0 || u32::try_from(n_vocab).is_err() {
            return Err(SamplerError::InvalidVocab(n_vocab));
        }
        let counts = if params.penalties_enabled() {
            vec![0; n_vocab]
        } else {
            Vec::new()
        };
        Ok(Sampler {
            rng: Rng::new(params.seed),
            params,
            n_vocab,
            cands: Vec::with_capacity(n_vocab),
            counts,
        })
    }

    /// The parameters this sampler was built with.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token from `logits` (one per vocabulary entry).
    ///
    /// `history`: tokens so far (prompt + generated), for penalties; ids outside the vocabulary
    /// are ignored. Greedy settings (temperature 0 or top-k 1) return the argmax after penalties
    /// and do not advance the PRNG.
    ///
    /// # Panics
    /// If `logits.len()` differs from the vocabulary size given to [`Sampler::new`].
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        self.fill(logits, history);
        self.choose()
    }

    /// [`Sampler::sample`] restricted to the tokens whose bit is set in `allowed` (bit `i % 32`
    /// of word `i / 32`, as llguidance's token masks): a grammar's mask, applied before the chain
    /// as llama.cpp applies a grammar (`grammar_first`: disallowed logits to -inf, then penalties
    /// and the chain). Disallowed tokens are dropped rather than set to -inf, which gives the same
    /// distribution for every step of the chain. Returns `None` when the mask allows no token.
    pub fn sample_masked(
        &mut self,
        logits: &[f32],
        history: &[u32],
        allowed: &[u32],
    ) -> Option<u32> {
        self.fill(logits, history);
        self.cands.retain(|c| {
            allowed
                .get(c.id as usize / 32)
                .is_some_and(|w| w & (1 << (c.id % 32)) != 0)
        });
        (!self.cands.is_empty()).then(|| self.choose())
    }

    /// The candidates for one step: every token in id order, penalties applied.
    fn fill(&mut self, logits: &[f32], history: &[u32]) {
        assert_eq!(
            logits.len(),
            self.n_vocab,
            "logits length must equal the vocabulary size"
        );
        self.cands.clear();
        self.cands
            .extend(logits.iter().enumerate().map(|(id, &l)| Candidate {
                // n_vocab fits u32, checked in `new`.
                id: id as u32,
                logit: sanitize(l),
                p: 0.0,
            }));
        if self.params.penalties_enabled() {
            self.apply_penalties(history);
        }
    }

    /// Runs the chain over the (non-empty, id-ordered) candidates.
    fn choose(&mut self) -> u32 {
        if self.params.is_greedy() {
            // The candidates are still in id order, so the first maximum is the lowest id.
            let mut best = self.cands[0];
            for c in &self.cands[1..] {
                if c.logit > best.logit {
                    best = *c;
                }
            }
            return best.id;
        }
        let mut sorted = self.top_k();
        sorted = self.top_p(sorted);
        self.min_p(sorted);
        self.temperature(sorted);
        self.dist(sorted)
    }

    /// llama.cpp `llama_sampler_penalties_apply`: repeat penalty divides positive logits and
    /// multiplies the others (the paper only divides, which would favour negative logits), then
    /// subtracts `count * frequency + presence`.
    fn apply_penalties(&mut self, history: &[u32]) {
        let window = &history[history.len().saturating_sub(self.params.repeat_last_n)..];
        for &t in window {
            if let Some(c) = self.counts.get_mut(t as usize) {
                *c += 1;
            }
        }
        let SamplingParams {
            repeat_penalty,
            frequency_penalty,
            presence_penalty,
            ..
        } = self.params;
        // Visit each distinct token once and reset its count, leaving `counts` all zero.
        for &t in window {
            let Some(count) = self.counts.get_mut(t as usize) else {
                continue;
            };
            if *count == 0 {
                continue;
            }
            let n = std::mem::take(count);
            let c = &mut self.cands[t as usize];
            if c.logit <= 0.0 {
                c.logit *= repeat_penalty;
            } else {
                c.logit /= repeat_penalty;
            }
            c.logit -= n as f32 * frequency_penalty + presence_penalty;
        }
    }

    /// Keeps the `k` best candidates, sorted. Selects, then sorts only `k`: never the whole vocab.
    /// Returns whether the candidates are now sorted.
    fn top_k(&mut self) -> bool {
        let k = self.params.top_k as usize;
        if k == 0 {
            return false;
        }
        if k < self.cands.len() {
            self.cands.select_nth_unstable_by(k - 1, by_logit_desc);
            self.cands.truncate(k);
        }
        self.cands.sort_unstable_by(by_logit_desc);
        true
    }

    /// llama.cpp `llama_sampler_top_p_apply`: keep the smallest prefix (by probability) whose
    /// cumulative probability reaches `p`. Leaves the candidates sorted.
    fn top_p(&mut self, sorted: bool) -> bool {
        let p = f64::from(self.params.top_p);
        if p >= 1.0 {
            return sorted;
        }
        let max = max_logit(&self.cands, sorted);
        let sum = weights(&mut self.cands, max);
        let len = self.cands.len();
        // Sort only a first slice of the best candidates; sort the rest if the nucleus is larger.
        let mut sorted_upto = if sorted {
            len
        } else {
            let m = TOP_P_FIRST_PASS.min(len);
            if m < len {
                self.cands.select_nth_unstable_by(m - 1, by_logit_desc);
            }
            self.cands[..m].sort_unstable_by(by_logit_desc);
            m
        };
        let mut cum = 0.0f64;
        let mut keep = len;
        let mut i = 0;
        while i < len {
            if i == sorted_upto {
                self.cands[i..].sort_unstable_by(by_logit_desc);
                sorted_upto = len;
            }
            cum += self.cands[i].p / sum;
            if cum >= p {
                keep = i + 1;
                break;
            }
            i += 1;
        }
        self.cands.truncate(keep);
        true
    }

    /// llama.cpp `llama_sampler_min_p_apply`: keep tokens with `p >= min_p * p_max`, tested on
    /// logits as `l >= l_max + ln(min_p)`. The best token always stays.
    fn min_p(&mut self, sorted: bool) {
        let p = self.params.min_p;
        if p <= 0.0 {
            return;
        }
        let min_logit = max_logit(&self.cands, sorted) + libm::logf(p);
        if sorted {
            let keep = self.cands[1..]
                .iter()
                .position(|c| c.logit < min_logit)
                .map_or(self.cands.len(), |i| i + 1);
            self.cands.truncate(keep);
        } else {
            self.cands.retain(|c| c.logit >= min_logit);
        }
    }

    /// Divides logits by the temperature, after shifting the best to 0. The shift leaves the
    /// softmax unchanged but keeps a tiny temperature from pushing every logit to -inf (which
    /// would turn the choice uniform instead of greedy).
    fn temperature(&mut self, sorted: bool) {
        let t = self.params.temperature;
        let max = max_logit(&self.cands, sorted);
        let shift = if max.is_finite() { max } else { 0.0 };
        for c in &mut self.cands {
            c.logit = (c.logit - shift) / t;
        }
    }

    /// llama.cpp `llama_sampler_dist_apply`: softmax, then one uniform draw walked along the
    /// cumulative weights in candidate order.
    fn dist(&mut self, sorted: bool) -> u32 {
        let max = max_logit(&self.cands, sorted);
        let sum = weights(&mut self.cands, max);
        // Always draw, so the PRNG stream does not depend on how many candidates survived.
        let target = sum * self.rng.next_f64();
        let mut cum = 0.0f64;
        let mut last_possible = self.cands[0].id;
        for c in &self.cands {
            if c.p > 0.0 {
                cum += c.p;
                last_possible = c.id;
                if cum > target {
                    return c.id;
                }
            }
        }
        // Only reachable through rounding of `sum * draw` up to `sum`.
        last_possible
    }
}

/// Greedy argmax; NaN is ignored and ties resolve to the lowest id, as llama.cpp's greedy sampler.
///
/// # Panics
/// If `logits` is empty.
pub fn argmax(logits: &[f32]) -> u32 {
    assert!(!logits.is_empty(), "argmax of empty logits");
    let mut best = 0usize;
    let mut best_l = sanitize(logits[0]);
    for (i, &l) in logits.iter().enumerate().skip(1) {
        if l > best_l {
            best = i;
            best_l = l;
        }
    }
    best as u32
}

/// `log p(top1) - log p(top2)` under softmax, which equals `logit1 - logit2`: how close greedy
/// decoding was to picking another token. `0` on a tie; infinite with fewer than two finite
/// candidates. NaN logits are ignored.
pub fn top2_logprob_margin(logits: &[f32]) -> f32 {
    let (mut t1, mut t2) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &l in logits {
        if l > t1 {
            t2 = t1;
            t1 = l;
        } else if l > t2 {
            t2 = l;
        }
    }
    if t2 == f32::NEG_INFINITY {
        f32::INFINITY
    } else {
        t1 - t2
    }
}

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// End-of-generation token or a stop string.
    Stop,
    /// The token limit was reached.
    Length,
    /// The client or the service cancelled the request.
    Cancelled,
}

/// What [`StopMatcher::push`] returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StopPush {
    /// Text that is safe to send to the client now.
    pub emit: String,
    /// A stop string matched: generation should end. `emit` holds the text before it.
    pub stopped: bool,
}

/// Stop strings for streaming output.
///
/// Feed decoded text pieces; get back the text that is safe to emit now. A suffix that could be
/// the start of a stop string is held back until the next piece decides it, so a stop string
/// split across tokens is still caught and never partly emitted. The stop string itself is not
/// emitted. Pieces are `&str`, so holding back at a byte offset where a stop string could start
/// never splits a character (a stop string never starts with a UTF-8 continuation byte); joining
/// partial UTF-8 across tokens is the detokenizer's job.
#[derive(Clone, Debug)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
    stopped: bool,
}

impl StopMatcher {
    /// A matcher for `stops`; empty strings are ignored.
    pub fn new(stops: Vec<String>) -> Self {
        StopMatcher {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: String::new(),
            stopped: false,
        }
    }

    /// Whether a stop string has matched. Later pushes emit nothing.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Adds a decoded piece; returns what can be emitted now.
    pub fn push(&mut self, piece: &str) -> StopPush {
        if self.stopped {
            return StopPush {
                emit: String::new(),
                stopped: true,
            };
        }
        self.pending.push_str(piece);
        // The earliest match wins: text after it was never meant to be produced.
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min();
        if let Some(at) = hit {
            self.pending.truncate(at);
            self.stopped = true;
            return StopPush {
                emit: std::mem::take(&mut self.pending),
                stopped: true,
            };
        }
        let hold = self.held_suffix_len();
        let mut split = self.pending.len() - hold;
        // Defensive only: see the type's docs for why `split` is always a char boundary.
        while !self.pending.is_char_boundary(split) {
            split -= 1;
        }
        let rest = self.pending.split_off(split);
        StopPush {
            emit: std::mem::replace(&mut self.pending, rest),
            stopped: false,
        }
    }

    /// Ends the stream: returns the held-back text (empty after a stop).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// Length of the longest suffix of `pending` that is a proper prefix of some stop string.
    fn held_suffix_len(&self) -> usize {
        let text = self.pending.as_bytes();
        self.stops
            .iter()
            .filter_map(|s| {
                let longest = (s.len() - 1).min(text.len());
                (1..=longest)
                    .rev()
                    .find(|&n| text.ends_with(&s.as_bytes()[..n]))
            })
            .max()
            .unwrap_or(0)
    }
}
