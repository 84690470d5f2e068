//! Why a format was refused or failed; every variant names the problem for the `bad_format` reply.

use thiserror::Error;

/// A format that cannot be used, or a constraint that failed while generating.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FormatError {
    /// The `format` value is not one of the accepted shapes.
    #[error("invalid format: {0}")]
    Invalid(String),
    /// Schema, regex or grammar text over the size limit.
    #[error("{what} is {bytes} bytes, over the limit of {limit}")]
    TooLarge {
        what: &'static str,
        bytes: usize,
        limit: usize,
    },
    /// Nested deeper than the limit (schema objects/arrays, or regex/grammar brackets).
    #[error("{what} nests {depth} levels deep, over the limit of {limit}")]
    TooDeep {
        what: &'static str,
        depth: usize,
        limit: usize,
    },
    /// A JSON Schema keyword we do not enforce: refused, never silently ignored.
    #[error("unsupported JSON Schema keyword `{keyword}` at {path}")]
    UnsupportedKeyword { keyword: String, path: String },
    /// llguidance refused to compile it (its reason, which includes its own limits).
    #[error("format does not compile: {0}")]
    Compile(String),
    /// A format name that the configuration does not define.
    #[error("unknown format `{0}`")]
    UnknownName(String),
    /// The constraint failed while generating (e.g. a mask step ran out of llguidance's fuel).
    #[error("format constraint failed: {0}")]
    Runtime(String),
}
