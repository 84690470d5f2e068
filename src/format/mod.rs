//! Structured output: a request's `format` (JSON Schema, any JSON object, a regex, or a Lark
//! grammar) compiled by llguidance into a per-sequence constraint whose token mask the sampler
//! applies before its chain.
//!
//! - [`spec`]: what a format is, parsed from a request or the config, with our own limits
//!   (size, nesting depth, supported JSON Schema keywords) checked before llguidance sees it.
//! - [`vocab`]: the model's token bytes as llguidance's token trie, built once per model.
//! - [`compiler`]: spec to [`Grammar`] under llguidance's step and memory limits.
//! - [`constraint`]: one sequence's matcher: mask before sampling, commit after.
//! - [`error`]: [`FormatError`], which the daemon reports as `bad_format`.
//!
//! Imports: `tokenizer <- format <- engine`. Nothing here knows MQTT.

pub mod compiler;
pub mod constraint;
pub mod error;
pub mod spec;
pub mod vocab;

pub use compiler::{FormatCompiler, Grammar};
pub use constraint::Constraint;
pub use error::FormatError;
pub use spec::{FormatArg, FormatLimits, FormatSpec};
