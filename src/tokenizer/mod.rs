//! Tokenizers built from GGUF metadata, and chat templates.
pub mod chat;
