//! Models: the GGUF container, hyperparameters and the Llama forward pass.
pub mod gguf;
pub mod gguf_write;
pub mod types;
