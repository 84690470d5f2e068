//! Hostile-input GGUF reader (to be written).
