//! The CPU selector: which of the compiled-in variants of ggml's CPU backend this process runs.
//!
//! build.rs links several builds of the CPU backend side by side (x86_64: sse42, avx2, avx512;
//! aarch64: armv8, dotprod, i8mm; armv7: one), each under its own symbol prefix. Before any
//! of them runs, [`select`] picks one: the variant forced by `LLAMABUS_CPU_VARIANT` or
//! `[model] cpu_variant`, else the best the running CPU supports. A variant is supported only
//! if the CPU has every SIMD feature its compiler flags enable (as the C preprocessor reported
//! them at build time), so the selector never picks one that could raise SIGILL; forcing a
//! variant the CPU lacks is an error naming the missing features.
//!
//! Detection: x86 CPUID (with the OS's XSAVE support for AVX/AVX-512) and aarch64 HWCAP/HWCAP2
//! through std's feature detection; 32-bit ARM reads `AT_HWCAP` from `/proc/self/auxv`.

use std::sync::{Mutex, OnceLock};

use super::cpu_api::{CpuApi, VariantEntry, VARIANTS};

/// The target triple this binary was built for.
pub const TARGET: &str = env!("LLAMABUS_TARGET");
/// The environment variable that forces a variant (it wins over `[model] cpu_variant`).
pub const ENV_VAR: &str = "LLAMABUS_CPU_VARIANT";

/// A compiled-in variant of ggml's CPU backend.
#[derive(Clone, Copy)]
pub struct Variant {
    entry: &'static VariantEntry,
}

impl PartialEq for Variant {
    fn eq(&self, other: &Variant) -> bool {
        std::ptr::eq(self.entry, other.entry)
    }
}

impl Eq for Variant {}

impl std::fmt::Debug for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.entry.name)
    }
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.entry.name)
    }
}

impl Variant {
    /// Its name (`avx2`, `dotprod`, ...), as `cpu_variant` takes it.
    pub fn name(self) -> &'static str {
        self.entry.name
    }

    /// The SIMD features its compiler flags enable; the CPU must have all of them.
    pub fn features(self) -> &'static [&'static str] {
        self.entry.features
    }

    /// The compiler flags it was built with.
    pub fn flags(self) -> &'static str {
        self.entry.flags
    }

    /// `name (feature feature ...)`, for `sysinfo`, `bench` and logs.
    pub fn describe(self) -> String {
        format!("{} ({})", self.name(), self.features().join(" "))
    }

    /// The features this CPU lacks (empty: the variant runs here).
    pub fn missing(self) -> Vec<&'static str> {
        self.missing_with(&cpu_has)
    }

    fn missing_with(self, has: &dyn Fn(&str) -> Option<bool>) -> Vec<&'static str> {
        // A feature the platform cannot confirm counts as missing: never risk SIGILL.
        self.features()
            .iter()
            .copied()
            .filter(|f| has(f) != Some(true))
            .collect()
    }

    /// Whether this CPU runs the variant.
    pub fn runs_here(self) -> bool {
        self.missing().is_empty()
    }

    /// The variant's CPU-backend functions, after its one-time initialisation
    /// (`ggml_cpu_init`: its FP16 and activation tables). Only for a variant that runs here;
    /// the selector guarantees that for the active one.
    pub(crate) fn api(self) -> &'static CpuApi {
        let api = &self.entry.api;
        let index = VARIANTS
            .iter()
            .position(|e| std::ptr::eq(e, self.entry))
            .expect("variants come from VARIANTS");
        static DONE: Mutex<Vec<usize>> = Mutex::new(Vec::new());
        let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
        if !done.contains(&index) {
            assert!(
                self.runs_here(),
                "ggml CPU variant {self} used on a CPU that lacks {:?}",
                self.missing()
            );
            // SAFETY: ggml_cpu_init has no preconditions; the lock serialises the first call
            // per variant, and the CPU has every feature the variant was compiled for.
            unsafe { (api.cpu_init)() };
            done.push(index);
        }
        api
    }
}

/// Every variant compiled into this binary, in ascending order of preference.
pub fn variants() -> Vec<Variant> {
    VARIANTS.iter().map(|entry| Variant { entry }).collect()
}

/// The compiled-in variant called `name`.
pub fn find(name: &str) -> Option<Variant> {
    variants().into_iter().find(|v| v.name() == name)
}

/// Why no variant, or not the one asked for, can run.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    #[error(
        "CPU variant {name:?} (from {from}) is not compiled into this build ({TARGET}); \
         it has: {available}"
    )]
    Unknown {
        name: String,
        from: &'static str,
        available: String,
    },
    #[error(
        "CPU variant {name} (from {from}) needs {missing:?}, which this CPU lacks; \
         it runs: {runs}"
    )]
    Unsupported {
        name: &'static str,
        from: &'static str,
        missing: Vec<&'static str>,
        runs: String,
    },
    #[error(
        "this CPU runs none of the ggml variants in this build ({TARGET}): {detail}; \
         rebuild for this board (see README: \"Build for your board\")"
    )]
    NoneRuns { detail: String },
    #[error(
        "CPU variant {requested} asked for, but this process already runs {active} \
         (the variant is chosen once per process: restart to change it)"
    )]
    AlreadySelected {
        requested: &'static str,
        active: &'static str,
    },
}

/// Picks a variant without selecting it: `forced` (with where it came from) if given, else
/// the last variant whose features `has` confirms. The pure core of [`select`], testable with
/// any CPU's feature set.
pub fn choose(
    forced: Option<(&str, &'static str)>,
    has: &dyn Fn(&str) -> Option<bool>,
) -> Result<Variant, CpuError> {
    let all = variants();
    let runs: Vec<Variant> = all
        .iter()
        .copied()
        .filter(|v| v.missing_with(has).is_empty())
        .collect();
    let names = |vs: &[Variant]| {
        if vs.is_empty() {
            "none".to_string()
        } else {
            vs.iter().map(|v| v.name()).collect::<Vec<_>>().join(", ")
        }
    };
    match forced {
        Some((name, source)) if name != "auto" => {
            let v = find(name).ok_or_else(|| CpuError::Unknown {
                name: name.to_string(),
                from: source,
                available: format!("{}, or auto", names(&all)),
            })?;
            let missing = v.missing_with(has);
            if missing.is_empty() {
                Ok(v)
            } else {
                Err(CpuError::Unsupported {
                    name: v.name(),
                    from: source,
                    missing,
                    runs: names(&runs),
                })
            }
        }
        _ => runs.last().copied().ok_or_else(|| CpuError::NoneRuns {
            detail: all
                .iter()
                .map(|v| format!("{} lacks {}", v.name(), v.missing_with(has).join(" ")))
                .collect::<Vec<_>>()
                .join("; "),
        }),
    }
}

/// Checks `[model] cpu_variant` (or the environment variable) without selecting anything:
/// what `check-config` and the config loader report.
pub fn validate(config: Option<&str>) -> Result<Variant, CpuError> {
    choose(
        forced(config).as_ref().map(|(n, s)| (n.as_str(), *s)),
        &cpu_has,
    )
}

fn forced(config: Option<&str>) -> Option<(String, &'static str)> {
    match std::env::var(ENV_VAR) {
        Ok(v) if !v.is_empty() => Some((v, ENV_VAR)),
        _ => config.map(|c| (c.to_string(), "[model] cpu_variant")),
    }
}

static ACTIVE: OnceLock<Variant> = OnceLock::new();

/// Selects the variant this process runs, once: `LLAMABUS_CPU_VARIANT` if set, else `config`
/// (`[model] cpu_variant`), else the best this CPU supports. Later calls return the same
/// variant, or [`CpuError::AlreadySelected`] if they ask for a different one.
pub fn select(config: Option<&str>) -> Result<Variant, CpuError> {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let chosen = validate(config)?;
    match ACTIVE.get() {
        None => {
            let _ = ACTIVE.set(chosen);
            Ok(chosen)
        }
        Some(&active) => {
            let explicit = forced(config).is_some_and(|(n, _)| n != "auto");
            if explicit && active != chosen {
                Err(CpuError::AlreadySelected {
                    requested: chosen.name(),
                    active: active.name(),
                })
            } else {
                Ok(active)
            }
        }
    }
}

/// The variant this process runs: the one [`select`] chose, or (if nothing selected yet)
/// the environment variable's or the best one, selected now.
pub fn active_variant() -> Result<Variant, CpuError> {
    match ACTIVE.get() {
        Some(&v) => Ok(v),
        None => select(None),
    }
}

/// SIMD features of the variant in use (empty if none can run here).
pub fn compiled_features() -> Vec<&'static str> {
    active_variant().map_or_else(|_| Vec::new(), |v| v.features().to_vec())
}

/// Whether a variant runs here at all (the environment variable's, if set): `main` checks this
/// before anything else, so an unusable CPU gets a message instead of SIGILL.
pub fn check() -> Result<Variant, CpuError> {
    validate(None)
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
        "popcnt" => d!("popcnt"),
        "avx" => d!("avx"),
        "avx2" => d!("avx2"),
        "fma" => d!("fma"),
        "f16c" => d!("f16c"),
        "bmi1" => d!("bmi1"),
        "bmi2" => d!("bmi2"),
        "lzcnt" => d!("lzcnt"),
        "avx512f" => d!("avx512f"),
        "avx512cd" => d!("avx512cd"),
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
        "crc" => d!("crc"),
        "lse" => d!("lse"),
        "rdm" => d!("rdm"),
        "dotprod" => d!("dotprod"),
        "fp16" => d!("fp16"),
        "i8mm" => d!("i8mm"),
        "bf16" => d!("bf16"),
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

/// One-line description for `--version`: the target, ggml, and the variants compiled in.
pub fn summary() -> String {
    format!(
        "target {TARGET}, ggml {} (vendored), CPU variants: {}",
        super::GGML_VERSION,
        variants()
            .iter()
            .map(|v| v.describe())
            .collect::<Vec<_>>()
            .join(", ")
    )
}
