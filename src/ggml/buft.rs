//! ggml's CPU "extra" buffer types: weight layouts with faster kernels.
//!
//! The CPU backend can keep a weight in a buffer type of its own (`CPU_REPACK`, from
//! `ggml-cpu/repack.cpp`), which interleaves the quantized blocks of several rows at load time
//! so that its GEMV/GEMM kernels read them in SIMD-sized groups. Which types it takes depends on
//! the CPU (`ggml_repack_get_optimal_repack_type`: Q4_0, Q4_K and IQ4_NL with AVX2; Q4_0, Q4_K,
//! Q5_K, Q6_K, Q8_0, IQ4_NL with ARM dotprod or i8mm; Q2_K with AVX-512) and on the shape.
//!
//! The choice mirrors llama.cpp (`select_weight_buft` in `src/llama-model-loader.cpp`): a weight
//! goes to the first extra buffer type for which the CPU device says it supports the op the
//! weight is used in, asked with the weight placed (on paper) in a zero-size buffer of that
//! type. Only `ggml_mul_mat` weights are candidates; llama.cpp never repacks a weight used by
//! `ggml_get_rows` (the token embeddings, also when tied to the output).

use std::ptr::NonNull;
use std::sync::OnceLock;

use super::context::{Context, Tensor};
use super::{sys, Type};

/// The CPU backend registry of the selected variant (`None` when no variant runs here).
fn cpu_reg() -> Option<sys::ggml_backend_reg_t> {
    let v = super::init().ok()?;
    // SAFETY: the variant runs on this CPU (init checked) and its registry is a static.
    Some(unsafe { (v.api().backend_cpu_reg)() })
}

/// A CPU "extra" buffer type (e.g. `CPU_REPACK`). A static of ggml's: copyable, never freed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ExtraBufferType {
    ptr: NonNull<sys::ggml_backend_buffer_type>,
}

// SAFETY: the buffer types are process-wide statics that ggml never mutates after their
// one-time initialisation (done before the list is published through the OnceLock).
unsafe impl Send for ExtraBufferType {}
// SAFETY: as above; every use is a read of immutable state.
unsafe impl Sync for ExtraBufferType {}

impl std::fmt::Debug for ExtraBufferType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

impl ExtraBufferType {
    /// Every extra buffer type the CPU backend offers on this machine, in ggml's order of
    /// preference (`ggml_backend_dev_get_extra_bufts`). Empty when none is compiled in.
    pub fn cpu_all() -> &'static [ExtraBufferType] {
        static LIST: OnceLock<Vec<ExtraBufferType>> = OnceLock::new();
        LIST.get_or_init(|| {
            // The buffer types are the selected variant's (each has its own repack kernels).
            let Some(reg) = cpu_reg() else {
                return Vec::new();
            };
            let name = c"ggml_backend_dev_get_extra_bufts";
            // SAFETY: the registry is the variant's static one; get_proc_address is a lookup by
            // NUL-terminated name that returns NULL when unknown.
            let (dev, f) = unsafe {
                let dev = sys::ggml_backend_reg_dev_get(reg, 0);
                (
                    dev,
                    sys::ggml_backend_reg_get_proc_address(reg, name.as_ptr()),
                )
            };
            if f.is_null() || dev.is_null() {
                return Vec::new();
            }
            // SAFETY: the CPU registry returns ggml_backend_cpu_device_get_extra_buffers_type
            // for this name, whose type is ggml_backend_dev_get_extra_bufts_t.
            let f: sys::ggml_backend_dev_get_extra_bufts_t = unsafe { std::mem::transmute(f) };
            let Some(f) = f else { return Vec::new() };
            let mut out = Vec::new();
            // SAFETY: the function returns a static NULL-terminated array of buffer types.
            unsafe {
                let mut p = f(dev);
                while !p.is_null() {
                    let Some(b) = NonNull::new(*p) else { break };
                    out.push(ExtraBufferType { ptr: b });
                    p = p.add(1);
                }
            }
            out
        })
    }

    /// The first extra buffer type that can hold `w` for `ggml_mul_mat(w, x)` with an f32
    /// batch `x`, as llama.cpp picks it; `None` keeps `w` in plain memory.
    pub fn for_mul_mat(w: Tensor<'_>) -> Option<ExtraBufferType> {
        Self::cpu_all()
            .iter()
            .copied()
            .find(|b| b.supports_mul_mat(w))
    }

    /// ggml's name for the buffer type (`CPU_REPACK`, `AMX`, ...).
    pub fn name(&self) -> String {
        // SAFETY: returns a static NUL-terminated name.
        let p = unsafe { sys::ggml_backend_buft_name(self.ptr.as_ptr()) };
        if p.is_null() {
            return "?".into();
        }
        // SAFETY: static string, checked non-NULL.
        unsafe { std::ffi::CStr::from_ptr(p) }
            .to_string_lossy()
            .into_owned()
    }

    /// Whether the CPU device computes `ggml_mul_mat(w, x)` (x: f32 [ne0, 512]) with `w` in
    /// this buffer type: llama.cpp's `weight_buft_supported` for `GGML_OP_MUL_MAT`. `w` must be
    /// a weight without memory yet (metadata only).
    pub fn supports_mul_mat(&self, w: Tensor<'_>) -> bool {
        assert!(
            !w.is_allocated(),
            "ask before {} has memory (its buffer is borrowed for the question)",
            w.name()
        );
        let ne = w.ne();
        let ctx = Context::new_metadata(4, 0);
        let x = ctx.new_tensor(Type::F32, &[ne[0], 512, ne[2], ne[3]]);
        let op = ctx.mul_mat(w, x);
        let Some(reg) = cpu_reg() else {
            return false;
        };
        // SAFETY: a zero-size buffer of a valid type is a dummy that owns no memory. Setting it
        // as w's buffer is what ggml's supports_op inspects (the buffer *type*); the field is
        // restored to NULL before the dummy is freed, and nothing reads w meanwhile (w has no
        // memory, so no graph can be computing with it).
        unsafe {
            let dummy = sys::ggml_backend_buft_alloc_buffer(self.ptr.as_ptr(), 0);
            if dummy.is_null() {
                return false;
            }
            let dev = sys::ggml_backend_reg_dev_get(reg, 0);
            let raw = w.as_ptr();
            (*raw).buffer = dummy;
            let ok = !dev.is_null() && sys::ggml_backend_dev_supports_op(dev, op.as_ptr());
            (*raw).buffer = std::ptr::null_mut();
            sys::ggml_backend_buffer_free(dummy);
            ok
        }
    }

    pub(crate) fn as_ptr(&self) -> *mut sys::ggml_backend_buffer_type {
        self.ptr.as_ptr()
    }

    /// Whether `buft` is one of the extra buffer types (whose tensors cannot be read back).
    pub(crate) fn is_extra(buft: *mut sys::ggml_backend_buffer_type) -> bool {
        Self::cpu_all().iter().any(|b| b.ptr.as_ptr() == buft)
    }
}
