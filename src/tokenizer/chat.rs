//! Chat templates rendered with minijinja (to be written).
