//! The CPU backend's entry points, once per compiled-in variant.
//!
//! build.rs compiles ggml's CPU backend once per variant and renames every symbol of variant
//! `v` to `llamabus_<v>_<name>`; no unprefixed `ggml_backend_cpu_init` (or any other CPU-backend
//! symbol) exists in the binary, so a call through the plain bindings in [`sys`] fails to link.
//! The crate reaches the CPU backend only through a [`CpuApi`] table, and the tables reach
//! the rest of the crate only through the variant the selector (`cpu.rs`) chose.

use std::os::raw::c_int;

use super::sys;

/// The CPU-backend functions the crate calls, resolved to one variant's copies.
///
/// Everything created through one table (backends, threadpools, the type traits) belongs to
/// that variant and is used only with the same table.
#[derive(Debug)]
pub(crate) struct CpuApi {
    pub cpu_init: unsafe extern "C" fn(),
    pub backend_cpu_init: unsafe extern "C" fn() -> sys::ggml_backend_t,
    pub backend_cpu_set_n_threads: unsafe extern "C" fn(sys::ggml_backend_t, c_int),
    pub backend_cpu_set_threadpool:
        unsafe extern "C" fn(sys::ggml_backend_t, sys::ggml_threadpool_t),
    /// The CPU backend's registry entry: its device and extra (repacking) buffer types.
    #[allow(dead_code)]
    pub backend_cpu_reg: unsafe extern "C" fn() -> sys::ggml_backend_reg_t,
    pub threadpool_new:
        unsafe extern "C" fn(*mut sys::ggml_threadpool_params) -> sys::ggml_threadpool_t,
    pub threadpool_free: unsafe extern "C" fn(sys::ggml_threadpool_t),
    pub get_type_traits_cpu:
        unsafe extern "C" fn(sys::ggml_type) -> *const sys::ggml_type_traits_cpu,
    /// ggml's own `ggml_cpu_has_*` reports, by the name [`super::ggml_reported_features`] prints.
    pub has: [(&'static str, unsafe extern "C" fn() -> c_int); 14],
}

/// One CPU variant's table: `$prefix` is the symbol prefix build.rs gave the variant.
macro_rules! cpu_api {
    ($prefix:literal) => {{
        extern "C" {
            #[link_name = concat!($prefix, "ggml_cpu_init")]
            fn cpu_init();
            #[link_name = concat!($prefix, "ggml_backend_cpu_init")]
            fn backend_cpu_init() -> sys::ggml_backend_t;
            #[link_name = concat!($prefix, "ggml_backend_cpu_set_n_threads")]
            fn backend_cpu_set_n_threads(backend: sys::ggml_backend_t, n: c_int);
            #[link_name = concat!($prefix, "ggml_backend_cpu_set_threadpool")]
            fn backend_cpu_set_threadpool(
                backend: sys::ggml_backend_t,
                pool: sys::ggml_threadpool_t,
            );
            #[link_name = concat!($prefix, "ggml_backend_cpu_reg")]
            fn backend_cpu_reg() -> sys::ggml_backend_reg_t;
            #[link_name = concat!($prefix, "ggml_threadpool_new")]
            fn threadpool_new(params: *mut sys::ggml_threadpool_params) -> sys::ggml_threadpool_t;
            #[link_name = concat!($prefix, "ggml_threadpool_free")]
            fn threadpool_free(pool: sys::ggml_threadpool_t);
            #[link_name = concat!($prefix, "ggml_get_type_traits_cpu")]
            fn get_type_traits_cpu(t: sys::ggml_type) -> *const sys::ggml_type_traits_cpu;
            #[link_name = concat!($prefix, "ggml_cpu_has_sse3")]
            fn has_sse3() -> c_int;
            #[link_name = concat!($prefix, "ggml_cpu_has_ssse3")]
            fn has_ssse3() -> c_int;
            #[link_name = concat!($prefix, "ggml_cpu_has_avx")]
            fn has_avx() -> c_int;
            #[link_name = concat!($prefix, "ggml_cpu_has_avx2")]
            fn has_avx2() -> c_int;
            #[link_name = concat!($prefix, "ggml_cpu_has_fma")]
            fn has_fma() -> c_int;
            #[link_name = concat!($prefix, "ggml_cpu_has_f16c")]
            fn has_f16c() -> c_int;
            #[link_name = concat!($prefix, "ggml_cpu_has_bmi2")]
            fn has_bmi2() -> c_int;
            #[link_name = concat!($prefix, "ggml_cpu_has_avx512")]
            fn has_avx512() -> c_int;
            #[link_name = concat!($prefix, "ggml_cpu_has_avx512_vnni")]
            fn has_avx512_vnni() -> c_int;
            #[link_name = concat!($prefix, "ggml_cpu_has_neon")]
            fn has_neon() -> c_int;
            #[link_name = concat!($prefix, "ggml_cpu_has_arm_fma")]
            fn has_arm_fma() -> c_int;
            #[link_name = concat!($prefix, "ggml_cpu_has_fp16_va")]
            fn has_fp16_va() -> c_int;
            #[link_name = concat!($prefix, "ggml_cpu_has_dotprod")]
            fn has_dotprod() -> c_int;
            #[link_name = concat!($prefix, "ggml_cpu_has_matmul_int8")]
            fn has_matmul_int8() -> c_int;
        }
        CpuApi {
            cpu_init,
            backend_cpu_init,
            backend_cpu_set_n_threads,
            backend_cpu_set_threadpool,
            backend_cpu_reg,
            threadpool_new,
            threadpool_free,
            get_type_traits_cpu,
            has: [
                ("sse3", has_sse3),
                ("ssse3", has_ssse3),
                ("avx", has_avx),
                ("avx2", has_avx2),
                ("fma", has_fma),
                ("f16c", has_f16c),
                ("bmi2", has_bmi2),
                ("avx512", has_avx512),
                ("avx512_vnni", has_avx512_vnni),
                ("neon", has_neon),
                ("arm_fma", has_arm_fma),
                ("fp16_va", has_fp16_va),
                ("dotprod", has_dotprod),
                ("i8mm", has_matmul_int8),
            ],
        }
    }};
}

/// A compiled-in variant as build.rs describes it.
#[derive(Debug)]
pub(crate) struct VariantEntry {
    pub name: &'static str,
    /// The SIMD features its compiler flags enable (all must exist on the CPU).
    pub features: &'static [&'static str],
    pub flags: &'static str,
    pub api: CpuApi,
}

macro_rules! cpu_variant {
    ($name:literal, $prefix:literal, [$($feature:literal),*], $flags:literal) => {
        VariantEntry {
            name: $name,
            features: &[$($feature),*],
            flags: $flags,
            api: cpu_api!($prefix),
        }
    };
}

/// Every variant linked into this binary, in ascending order of preference.
pub(crate) static VARIANTS: &[VariantEntry] =
    &include!(concat!(env!("OUT_DIR"), "/cpu_variants.rs"));

// The table's signatures are the headers' (bindgen's declarations of the unprefixed names).
// Only type-checked: an unused constant is never emitted, so the unprefixed symbols, which
// do not exist, are never linked.
const _: [unsafe extern "C" fn(); 1] = [sys::ggml_cpu_init];
const _: unsafe extern "C" fn() -> sys::ggml_backend_t = sys::ggml_backend_cpu_init;
const _: unsafe extern "C" fn(sys::ggml_backend_t, c_int) = sys::ggml_backend_cpu_set_n_threads;
const _: unsafe extern "C" fn(sys::ggml_backend_t, sys::ggml_threadpool_t) =
    sys::ggml_backend_cpu_set_threadpool;
const _: unsafe extern "C" fn() -> sys::ggml_backend_reg_t = sys::ggml_backend_cpu_reg;
const _: unsafe extern "C" fn(*mut sys::ggml_threadpool_params) -> sys::ggml_threadpool_t =
    sys::ggml_threadpool_new;
const _: unsafe extern "C" fn(sys::ggml_threadpool_t) = sys::ggml_threadpool_free;
const _: unsafe extern "C" fn(sys::ggml_type) -> *const sys::ggml_type_traits_cpu =
    sys::ggml_get_type_traits_cpu;
const _: [unsafe extern "C" fn() -> c_int; 14] = [
    sys::ggml_cpu_has_sse3,
    sys::ggml_cpu_has_ssse3,
    sys::ggml_cpu_has_avx,
    sys::ggml_cpu_has_avx2,
    sys::ggml_cpu_has_fma,
    sys::ggml_cpu_has_f16c,
    sys::ggml_cpu_has_bmi2,
    sys::ggml_cpu_has_avx512,
    sys::ggml_cpu_has_avx512_vnni,
    sys::ggml_cpu_has_neon,
    sys::ggml_cpu_has_arm_fma,
    sys::ggml_cpu_has_fp16_va,
    sys::ggml_cpu_has_dotprod,
    sys::ggml_cpu_has_matmul_int8,
];
