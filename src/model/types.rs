//! ggml tensor types known to the GGUF reader (to be written).
