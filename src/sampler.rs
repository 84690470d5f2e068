//! Sampling: logits to token (to be written).
