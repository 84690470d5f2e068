//! Compiling a [`FormatSpec`] with llguidance, under its step and memory limits.
//!
//! One [`FormatCompiler`] per model holds llguidance's `ParserFactory` (the token trie plus
//! precomputed token-class slices, built once); [`FormatCompiler::compile`] turns a spec into a
//! [`Grammar`], from which each sequence takes its own [`Constraint`].

use std::panic::{catch_unwind, AssertUnwindSafe};

use llguidance::api::{ParserLimits, TopLevelGrammar};
use llguidance::toktrie::{ApproximateTokEnv, TokEnv};
use llguidance::{JsonCompileOptions, Matcher, ParserFactory, TokenParser};
use serde_json::{json, Value};

use super::constraint::Constraint;
use super::error::FormatError;
use super::spec::{FormatLimits, FormatSpec};
use super::vocab;
use crate::tokenizer::Tokenizer;

/// llguidance's limits, tightened for boards with little memory. Each bounds the work a
/// hostile format can cause: compile (`initial_lexer_fuel`, `max_grammar_size`), one token's
/// mask (`step_lexer_fuel`, `step_max_items`, `max_items_in_row`) and memory
/// (`max_lexer_states`, 1-2 kB each). Exceeding one is an error, never a hang.
pub fn parser_limits() -> ParserLimits {
    ParserLimits {
        // llguidance's defaults: ~20 ms of compile work, ~15 ms of mask work per token.
        initial_lexer_fuel: 1_000_000,
        step_lexer_fuel: 200_000,
        step_max_items: 50_000,
        max_items_in_row: 2_000,
        // Down from 250,000 (up to 500 MB) to at most ~100 MB of lexer states.
        max_lexer_states: 50_000,
        // Down from 500,000: our schemas are at most 32 KiB of text.
        max_grammar_size: 100_000,
        // Errors go back to untrusted clients: no parser state or grammar dumps in them.
        verbose_errors: false,
        ..ParserLimits::default()
    }
}

/// How JSON is laid out: fixed separators, no free whitespace. A small model given free
/// whitespace can spend its whole token budget on newlines; with none allowed, every token
/// moves the object forward.
fn json_options() -> JsonCompileOptions {
    JsonCompileOptions {
        item_separator: ", ".into(),
        key_separator: ": ".into(),
        whitespace_flexible: false,
        ..JsonCompileOptions::default()
    }
}

/// Compiles formats for one model's vocabulary.
pub struct FormatCompiler {
    factory: ParserFactory,
    limits: FormatLimits,
}

impl std::fmt::Debug for FormatCompiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FormatCompiler")
            .field("vocab", &self.factory.tok_env().tok_trie().vocab_size())
            .field("limits", &self.limits)
            .finish()
    }
}

impl FormatCompiler {
    /// A compiler for `tokenizer`'s vocabulary (builds the token trie: do it once per model).
    pub fn new(tokenizer: &Tokenizer, limits: FormatLimits) -> Result<Self, FormatError> {
        Self::with_env(&vocab::token_env(tokenizer)?, limits)
    }

    /// A compiler over a one-byte-per-token vocabulary: checks that a format compiles without
    /// loading a model (`check-config`, config reload).
    pub fn model_free(limits: FormatLimits) -> Result<Self, FormatError> {
        Self::with_env(&ApproximateTokEnv::single_byte_env(), limits)
    }

    fn with_env(env: &TokEnv, limits: FormatLimits) -> Result<Self, FormatError> {
        let mut factory = guarded(|| ParserFactory::new_simple(env))?;
        factory.quiet();
        *factory.limits_mut() = parser_limits();
        Ok(FormatCompiler { factory, limits })
    }

    /// Our limits, applied before llguidance's.
    pub fn limits(&self) -> &FormatLimits {
        &self.limits
    }

    /// Checks and compiles `spec`.
    pub fn compile(&self, spec: &FormatSpec) -> Result<Grammar, FormatError> {
        spec.check(&self.limits)?;
        let grammar = match spec {
            FormatSpec::JsonSchema { schema } => json_grammar(schema.clone()),
            FormatSpec::Json => json_grammar(json!({"type": "object"})),
            FormatSpec::Regex { pattern } => TopLevelGrammar::from_regex(pattern),
            FormatSpec::Lark { grammar } => TopLevelGrammar::from_lark(grammar.clone()),
        };
        let parser = guarded(|| self.factory.create_parser(grammar))?;
        Ok(Grammar {
            parser,
            json: spec.is_json(),
        })
    }
}

fn json_grammar(mut schema: Value) -> TopLevelGrammar {
    // `apply_to` needs an object root, which `FormatSpec::check` guarantees.
    if schema.is_object() {
        json_options().apply_to(&mut schema);
    }
    TopLevelGrammar::from_json_schema(schema)
}

/// Runs an llguidance call, turning its errors and any panic into [`FormatError::Compile`]:
/// formats come from untrusted clients, and a bug in a dependency must not take the worker down.
fn guarded<T>(f: impl FnOnce() -> anyhow::Result<T>) -> Result<T, FormatError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(FormatError::Compile(e.to_string())),
        Err(_) => Err(FormatError::Compile("the format compiler panicked".into())),
    }
}

/// A compiled format: cheap to clone; each sequence takes its own [`Constraint`].
#[derive(Clone)]
pub struct Grammar {
    parser: TokenParser,
    json: bool,
}

impl std::fmt::Debug for Grammar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammar").field("json", &self.json).finish()
    }
}

impl Grammar {
    /// Whether replies are JSON (the final reply then carries the parsed value).
    pub fn is_json(&self) -> bool {
        self.json
    }

    /// A fresh constraint for one sequence. Clones share llguidance's lexer cache.
    pub fn constraint(&self) -> Constraint {
        Constraint::new(Matcher::new(Ok(self.parser.clone())))
    }
}

// Grammars travel from the thread that compiles them to the inference thread, and named ones
// are shared between requests.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Grammar>();
    assert_send_sync::<FormatCompiler>();
};
