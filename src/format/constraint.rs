//! One sequence's format constraint: the allowed-token mask before each sampling step, the
//! sampled token committed after it.

use std::time::{Duration, Instant};

use llguidance::toktrie::SimpleVob;
use llguidance::Matcher;

use super::error::FormatError;

/// llguidance's matcher for one sequence, plus the time each mask took.
pub struct Constraint {
    matcher: Matcher,
    mask: SimpleVob,
    mask_times: Vec<Duration>,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint")
            .field("steps", &self.mask_times.len())
            .field("stopped", &self.matcher.is_stopped())
            .finish()
    }
}

impl Constraint {
    pub(crate) fn new(matcher: Matcher) -> Self {
        Constraint {
            matcher,
            mask: SimpleVob::new(),
            mask_times: Vec::new(),
        }
    }

    /// The tokens allowed next, as a bit set (bit `i % 32` of word `i / 32`). End-of-generation
    /// tokens are in it only where the format accepts. Fails when the format cannot continue
    /// or a step exceeds llguidance's limits.
    pub fn mask(&mut self) -> Result<&[u32], FormatError> {
        if let Some(e) = self.matcher.get_error() {
            return Err(FormatError::Runtime(e));
        }
        let t = Instant::now();
        let mask = self
            .matcher
            .compute_mask()
            .map_err(|e| FormatError::Runtime(e.to_string()))?;
        self.mask_times.push(t.elapsed());
        self.mask = mask;
        Ok(self.mask.as_slice())
    }

    /// The lowest token the next [`Constraint::mask`] allows, `None` if it allows none: a
    /// deterministic pick for driving a constraint without a model (tests, fuzzing).
    pub fn first_allowed(&mut self) -> Result<Option<u32>, FormatError> {
        let mask = self.mask()?;
        Ok(mask
            .iter()
            .enumerate()
            .find(|(_, w)| **w != 0)
            .map(|(i, w)| i as u32 * 32 + w.trailing_zeros()))
    }

    /// Advances past `token`, which the last mask allowed.
    pub fn commit(&mut self, token: u32) -> Result<(), FormatError> {
        self.matcher
            .consume_token(token)
            .map_err(|e| FormatError::Runtime(e.to_string()))
    }

    /// Whether the output so far is a complete match.
    pub fn is_accepting(&mut self) -> bool {
        self.matcher.is_accepting().unwrap_or(false)
    }

    /// Whether the format allows nothing more: the match is complete and cannot grow (or the
    /// matcher failed; [`Constraint::mask`] then says why).
    pub fn is_stopped(&self) -> bool {
        self.matcher.is_stopped()
    }

    /// How long each [`Constraint::mask`] call took, in order.
    pub fn mask_times(&self) -> &[Duration] {
        &self.mask_times
    }
}
