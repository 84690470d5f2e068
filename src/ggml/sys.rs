//! Raw bindgen output for the vendored ggml headers: the committed src/ggml/bindings/ file for the
//! target's ABI (or, when build.rs runs bindgen, a fresh one), copied to OUT_DIR by build.rs.
#![allow(
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    dead_code,
    unsafe_code
)]
#![allow(clippy::all, rustdoc::all)]
include!(concat!(env!("OUT_DIR"), "/ggml_bindings.rs"));
