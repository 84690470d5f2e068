//! The one FFI boundary: bindings to the vendored ggml and a safe layer over them.
//!
//! Everything `unsafe` in the crate lives under this folder, each block with a `// SAFETY:`
//! comment. The rest of the crate sees RAII owners ([`Context`], [`CpuBackend`],
//! [`AllocatedContext`], [`GraphAllocator`]) and borrowed [`Tensor`] handles.
#![allow(unsafe_code)]

mod backend;
mod context;
pub mod cpu;
mod cpu_api;
mod mmap;
pub mod sys;
mod types;

pub use backend::{AllocatedContext, CpuBackend, GgmlError, Graph, GraphAllocator, HostBytes};
pub use context::{Context, Tensor};
pub use mmap::{map_readonly, AlignedBytes};
pub use types::{dequantize, quantize, Type};

/// The ggml version compiled in (from vendor/ggml, recorded by build.rs).
pub const GGML_VERSION: &str = env!("LLAMABUS_GGML_VERSION");

/// Selects the CPU variant (if nothing has yet: the environment variable's, else the best this
/// CPU runs) and initialises its tables (FP16 lookup tables, feature detection). Idempotent and
/// thread-safe; every entry point that computes calls it.
pub fn init() -> Result<cpu::Variant, cpu::CpuError> {
    let v = cpu::active_variant()?;
    v.api();
    Ok(v)
}

/// ggml's own report of the CPU features the variant in use was compiled with (empty if no
/// variant runs here).
pub fn ggml_reported_features() -> Vec<&'static str> {
    let Ok(v) = init() else {
        return Vec::new();
    };
    v.api()
        .has
        .iter()
        // SAFETY: these are pure queries of compile-time state in the selected variant, which
        // this CPU runs.
        .filter(|(_, f)| unsafe { f() } != 0)
        .map(|(name, _)| *name)
        .collect()
}
