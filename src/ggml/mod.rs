//! ggml bindings and the safe layer (to be written).
