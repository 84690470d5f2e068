//! Runtime CPU guard: the SIMD features ggml was compiled for must exist on this CPU.
//!
//! A binary built for a Pi 5 (dotprod) started on a Pi 4, or an AVX-512 build on an AVX2
//! mini-PC, would otherwise die with SIGILL in the middle of a matrix product. `check()` turns
//! that into an error naming the missing feature. No `unsafe` here: x86 and aarch64 use std's
//! detection, 32-bit ARM reads `AT_HWCAP` from `/proc/self/auxv`.

/// The target triple this binary was built for.
pub const TARGET: &str = env!("LLAMABUS_TARGET");
/// Compiler flags build.rs chose for ggml's SIMD level.
pub const SIMD_FLAGS: &str = env!("LLAMABUS_SIMD_FLAGS");
const COMPILED: &str = env!("LLAMABUS_SIMD");

/// SIMD features ggml was compiled with (as the C preprocessor reported them at build time).
pub fn compiled_features() -> Vec<&'static str> {
    COMPILED.split(',').filter(|s| !s.is_empty()).collect()
}

/// A compiled-in SIMD feature this CPU lacks.
#[derive(Debug, thiserror::Error)]
#[error(
    "this CPU lacks {missing:?}, which this llamabus build ({target}, compiled with {compiled}) \
     needs; rebuild for this board (see README: \"Build for your board\")"
)]
pub struct MissingCpuFeatures {
    /// The missing features.
    pub missing: Vec<&'static str>,
    target: &'static str,
    compiled: &'static str,
}

/// Checks every compiled-in feature against the running CPU.
pub fn check() -> Result<(), MissingCpuFeatures> {
    let missing: Vec<&'static str> = compiled_features()
        .into_iter()
        .filter(|f| cpu_has(f) == Some(false))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(MissingCpuFeatures {
            missing,
            target: TARGET,
            compiled: COMPILED,
        })
    }
}

/// Whether the running CPU has `feature`; `None` if this platform cannot tell.
pub fn cpu_has(feature: &str) -> Option<bool> {
    detect(feature)
}

#[cfg(target_arch = "x86_64")]
fn detect(f: &str) -> Option<bool> {
    use std::arch::is_x86_feature_detected as d;
    Some(match f {
        "sse3" => d!("sse3"),
        "ssse3" => d!("ssse3"),
        "sse4.1" => d!("sse4.1"),
        "sse4.2" => d!("sse4.2"),
        "avx" => d!("avx"),
        "avx2" => d!("avx2"),
        "fma" => d!("fma"),
        "f16c" => d!("f16c"),
        "bmi2" => d!("bmi2"),
        "avx512f" => d!("avx512f"),
        "avx512bw" => d!("avx512bw"),
        "avx512dq" => d!("avx512dq"),
        "avx512vl" => d!("avx512vl"),
        "avx512vnni" => d!("avx512vnni"),
        "avx512bf16" => d!("avx512bf16"),
        "avxvnni" => d!("avxvnni"),
        _ => return None,
    })
}

#[cfg(target_arch = "aarch64")]
fn detect(f: &str) -> Option<bool> {
    use std::arch::is_aarch64_feature_detected as d;
    Some(match f {
        "neon" => d!("neon"),
        // On aarch64 the FMA macro comes with every NEON build.
        "vfpv4" => d!("neon"),
        "dotprod" => d!("dotprod"),
        "fp16" => d!("fp16"),
        "i8mm" => d!("i8mm"),
        "sve" => d!("sve"),
        _ => return None,
    })
}

#[cfg(target_arch = "arm")]
fn detect(f: &str) -> Option<bool> {
    // Linux arm HWCAP bits (arch/arm/include/uapi/asm/hwcap.h).
    const HWCAP_NEON: u64 = 1 << 12;
    const HWCAP_VFPV4: u64 = 1 << 16;
    let hwcap = auxv_entry(16)?;
    match f {
        "neon" => Some(hwcap & HWCAP_NEON != 0),
        "vfpv4" => Some(hwcap & HWCAP_VFPV4 != 0),
        _ => None,
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "arm")))]
fn detect(_f: &str) -> Option<bool> {
    None
}

/// Reads one entry of the auxiliary vector (native-endian pairs of machine words).
#[cfg_attr(not(target_arch = "arm"), allow(dead_code))]
fn auxv_entry(key: u64) -> Option<u64> {
    let raw = std::fs::read("/proc/self/auxv").ok()?;
    parse_auxv(&raw, std::mem::size_of::<usize>(), key)
}

/// Finds `key` in a raw auxv dump whose words are `word` bytes wide.
pub fn parse_auxv(raw: &[u8], word: usize, key: u64) -> Option<u64> {
    let read = |b: &[u8]| -> u64 {
        let mut buf = [0u8; 8];
        buf[..word].copy_from_slice(b);
        u64::from_ne_bytes(buf)
    };
    raw.chunks_exact(word * 2).find_map(|pair| {
        let (k, v) = pair.split_at(word);
        (read(k) == key).then(|| read(v))
    })
}

/// One-line description for `--version` and `sysinfo`.
pub fn summary() -> String {
    format!(
        "target {TARGET}, ggml {} (vendored), SIMD [{}]",
        super::GGML_VERSION,
        compiled_features().join(" ")
    )
}
