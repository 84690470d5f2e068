//! The one FFI boundary: bindings to the vendored ggml and a safe layer over them.
//!
//! Everything `unsafe` in the crate lives under this folder, each block with a `// SAFETY:`
//! comment. The rest of the crate sees RAII owners ([`Context`], [`CpuBackend`],
//! [`AllocatedContext`], [`GraphAllocator`]) and borrowed [`Tensor`] handles.
#![allow(unsafe_code)]

mod backend;
mod buft;
mod context;
pub mod cpu;
mod mmap;
pub mod sys;
mod types;

pub use backend::{AllocatedContext, CpuBackend, GgmlError, Graph, GraphAllocator, HostBytes};
pub use buft::ExtraBufferType;
pub use context::{Context, Tensor};
pub use mmap::{map_readonly, AlignedBytes};
pub use types::{dequantize, quantize, Type};

/// The ggml version compiled in (from vendor/ggml, recorded by build.rs).
pub const GGML_VERSION: &str = env!("LLAMABUS_GGML_VERSION");

/// Initialises ggml's CPU tables (FP16 lookup tables, feature detection). Idempotent and
/// thread-safe; every entry point that computes calls it.
pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: ggml_log_set stores a function pointer valid for the whole program;
        // ggml_cpu_init has no preconditions; Once serialises the first call.
        unsafe {
            sys::ggml_log_set(Some(forward_log), std::ptr::null_mut());
            sys::ggml_cpu_init()
        }
    });
}

/// ggml's log lines (e.g. one per repacked tensor at debug level) go to the `log` crate under
/// the target `ggml`, instead of ggml's default of printing everything to stderr.
extern "C" fn forward_log(
    level: sys::ggml_log_level,
    text: *const std::ffi::c_char,
    _user: *mut std::ffi::c_void,
) {
    if text.is_null() {
        return;
    }
    // SAFETY: ggml passes a NUL-terminated string valid for the duration of the call.
    let text = unsafe { std::ffi::CStr::from_ptr(text) }.to_string_lossy();
    let text = text.trim_end();
    if text.is_empty() {
        return;
    }
    let level = match level {
        sys::GGML_LOG_LEVEL_ERROR => log::Level::Error,
        sys::GGML_LOG_LEVEL_WARN => log::Level::Warn,
        sys::GGML_LOG_LEVEL_INFO => log::Level::Info,
        _ => log::Level::Debug,
    };
    log::log!(target: "ggml", level, "{text}");
}

/// ggml's own report of the CPU features its CPU backend was compiled with and sees.
pub fn ggml_reported_features() -> Vec<&'static str> {
    init();
    let mut v = Vec::new();
    // SAFETY: these are pure queries of compile-time/CPU state.
    unsafe {
        let checks: [(&str, unsafe extern "C" fn() -> i32); 9] = [
            ("avx", sys::ggml_cpu_has_avx),
            ("avx2", sys::ggml_cpu_has_avx2),
            ("fma", sys::ggml_cpu_has_fma),
            ("f16c", sys::ggml_cpu_has_f16c),
            ("avx512", sys::ggml_cpu_has_avx512),
            ("neon", sys::ggml_cpu_has_neon),
            ("arm_fma", sys::ggml_cpu_has_arm_fma),
            ("fp16_va", sys::ggml_cpu_has_fp16_va),
            ("dotprod", sys::ggml_cpu_has_dotprod),
        ];
        for (name, f) in checks {
            if f() != 0 {
                v.push(name);
            }
        }
    }
    v
}
