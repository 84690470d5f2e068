//! Everything that can go wrong reading a GGUF file, each variant naming the key or tensor.

use std::path::PathBuf;

use super::reader::MAX_DIMS;
use super::types::GgmlType;

/// Everything that can go wrong opening or reading a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be opened or mapped.
    #[error("cannot read GGUF file {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file opened by path failed to parse; `source` says why.
    #[error("invalid GGUF file {path}")]
    Invalid {
        path: PathBuf,
        #[source]
        source: Box<GgufError>,
    },
    #[error("not a GGUF file: magic is {found:02x?}, expected \"GGUF\"")]
    BadMagic { found: [u8; 4] },
    #[error("unsupported GGUF version {version}: {reason}")]
    UnsupportedVersion { version: u32, reason: &'static str },
    /// The file ends before `what` is complete.
    #[error("file truncated while reading {what} at byte {offset}: need {needed} bytes, {available} left")]
    Truncated {
        what: String,
        offset: u64,
        needed: u64,
        available: u64,
    },
    #[error("{what} count {count} exceeds the cap of {max}")]
    TooMany {
        what: &'static str,
        count: u64,
        max: u64,
    },
    /// A count that cannot be honest: even minimal entries would not fit in the rest of the file.
    #[error("{what} count {count} at byte {offset} cannot fit in the {available} bytes left (each needs at least {min_each})")]
    CountExceedsFile {
        what: &'static str,
        count: u64,
        offset: u64,
        available: u64,
        min_each: u64,
    },
    #[error("{what} at byte {offset} is {len} bytes long, over the cap of {max}")]
    StringTooLong {
        what: String,
        offset: u64,
        len: u64,
        max: u64,
    },
    #[error("{what} at byte {offset} is not valid UTF-8")]
    InvalidUtf8 { what: String, offset: u64 },
    #[error("key #{index} at byte {offset} is empty")]
    EmptyKey { index: u64, offset: u64 },
    #[error("duplicate key '{key}' at byte {offset}")]
    DuplicateKey { key: String, offset: u64 },
    #[error("key '{key}': unknown value type {type_id} at byte {offset}")]
    UnknownValueType {
        key: String,
        type_id: u32,
        offset: u64,
    },
    #[error("key '{key}': bool byte {value} at byte {offset} is neither 0 nor 1")]
    InvalidBool { key: String, value: u8, offset: u64 },
    #[error("key '{key}': array at byte {offset} has {len} elements, over the cap of {max}")]
    ArrayTooLong {
        key: String,
        len: u64,
        max: u64,
        offset: u64,
    },
    #[error("key '{key}': arrays at byte {offset} are nested deeper than {max}")]
    ArrayTooDeep {
        key: String,
        max: usize,
        offset: u64,
    },
    #[error("{key} = {value} is not a power of two")]
    BadAlignment { key: &'static str, value: u64 },
    #[error("duplicate tensor name '{name}' at byte {offset}")]
    DuplicateTensor { name: String, offset: u64 },
    #[error("tensor '{name}': {n_dims} dimensions at byte {offset}, must be 1..={max}", max = MAX_DIMS)]
    BadDimCount {
        name: String,
        n_dims: u32,
        offset: u64,
    },
    /// A zero dimension is rejected: no Llama tensor is empty, and a 0-byte tensor would slip
    /// past the bounds and overlap checks with an arbitrary offset.
    #[error("tensor '{name}': dimension {index} is 0")]
    ZeroDim { name: String, index: usize },
    #[error("tensor '{name}': element count of shape {dims:?} overflows i64")]
    ElementCountOverflow { name: String, dims: Vec<u64> },
    #[error("tensor '{name}': unknown ggml type id {type_id} at byte {offset}")]
    UnknownTensorType {
        name: String,
        type_id: u32,
        offset: u64,
    },
    #[error("tensor '{name}' of type {ty}: row of {ne0} elements is not a multiple of the block size {block}")]
    RowNotBlockMultiple {
        name: String,
        ty: GgmlType,
        ne0: u64,
        block: u64,
    },
    #[error("tensor '{name}' of type {ty}: byte size of shape {dims:?} overflows u64")]
    ByteSizeOverflow {
        name: String,
        ty: GgmlType,
        dims: Vec<u64>,
    },
    #[error(
        "tensor '{name}': data offset {offset} is not a multiple of the alignment {alignment}"
    )]
    MisalignedTensor {
        name: String,
        offset: u64,
        alignment: u64,
    },
    #[error("tensor '{name}': {n_bytes} bytes at data offset {offset} (data section at byte {data_offset}) run past the end of the {file_len}-byte file")]
    TensorOutOfBounds {
        name: String,
        offset: u64,
        n_bytes: u64,
        data_offset: u64,
        file_len: u64,
    },
    /// Overlapping tensors are rejected: no writer produces them, and aliasing lets a crafted
    /// file claim more weights than it holds or make two weights silently share bytes.
    #[error("tensors '{first}' and '{second}' overlap: '{second}' starts at data offset {offset}, before '{first}' ends at {first_end}")]
    OverlappingTensors {
        first: String,
        second: String,
        offset: u64,
        first_end: u64,
    },
    #[error("missing required key '{0}'")]
    MissingKey(String),
    #[error("key '{key}' has type {found}, expected {expected}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("key '{key}' = {value} does not fit in {expected}")]
    OutOfRange {
        key: String,
        value: String,
        expected: &'static str,
    },
}

impl GgufError {
    /// The innermost error: unwraps [`GgufError::Invalid`] so callers and tests can match the
    /// rule that fired regardless of how the file was opened.
    pub fn root(&self) -> &GgufError {
        match self {
            GgufError::Invalid { source, .. } => source.root(),
            other => other,
        }
    }
}
