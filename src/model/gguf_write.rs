//! GGUF writer used by tests and tools (to be written).
