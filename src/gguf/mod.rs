//! The GGUF container: a hostile-input reader, a writer (tests and tools build files with it),
//! typed metadata and the tensor type table.
//!
//! Sits just above `ggml` (the reader maps files through it) and below both of its users:
//! `model/` reads weights and hyperparameters, `tokenizer/` reads the vocabulary.

mod error;
mod reader;
mod types;
mod value;
mod writer;

pub use error::GgufError;
pub use reader::{
    Gguf, TensorInfo, DEFAULT_ALIGNMENT, KEY_ALIGNMENT, MAGIC, MAX_ARRAY_DEPTH, MAX_ARRAY_LEN,
    MAX_DIMS, MAX_KEY_LEN, MAX_KVS, MAX_STRING_LEN, MAX_TENSORS, MAX_TENSOR_NAME_LEN,
};
pub use types::GgmlType;
pub use value::{value_type, Array, Metadata, Value};
pub use writer::GgufWriter;
