//! The CPU selector (src/ggml/cpu.rs) and the variants build.rs links into one binary: `choose`
//! on the feature sets of real CPUs (each gets the best variant it runs, never one needing a
//! feature it lacks; forcing works downwards and fails upwards with a clear error), and the
//! variant in use against ggml's own report. No subprocess, so it runs under qemu-user too
//! (scripts/test.sh runs it for aarch64 and armv7); `cpu_variants_cli.rs` checks the binary.

use llamabus::ggml::cpu::{self, CpuError};

/// A CPU given by its feature list.
fn cpu_with(features: &'static [&'static str]) -> impl Fn(&str) -> Option<bool> {
    move |f| Some(features.contains(&f))
}

fn best(features: &'static [&'static str]) -> Result<&'static str, CpuError> {
    cpu::choose(None, &cpu_with(features)).map(|v| v.name())
}

fn names() -> Vec<&'static str> {
    cpu::variants().iter().map(|v| v.name()).collect()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    pub const CORE2: &[&str] = &["sse3", "ssse3"];
    pub const NEHALEM: &[&str] = &["sse3", "ssse3", "sse4.1", "sse4.2", "popcnt"];
    pub const HASWELL: &[&str] = &[
        "sse3", "ssse3", "sse4.1", "sse4.2", "popcnt", "avx", "avx2", "fma", "f16c", "bmi1",
        "bmi2", "lzcnt",
    ];
    /// AVX-512 without VNNI (Skylake-SP/X).
    pub const SKYLAKE_X: &[&str] = &[
        "sse3", "ssse3", "sse4.1", "sse4.2", "popcnt", "avx", "avx2", "fma", "f16c", "bmi1",
        "bmi2", "lzcnt", "avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl",
    ];
    pub const ICELAKE: &[&str] = &[
        "sse3",
        "ssse3",
        "sse4.1",
        "sse4.2",
        "popcnt",
        "avx",
        "avx2",
        "fma",
        "f16c",
        "bmi1",
        "bmi2",
        "lzcnt",
        "avx512f",
        "avx512cd",
        "avx512bw",
        "avx512dq",
        "avx512vl",
        "avx512vnni",
    ];
    /// AVX2 without FMA does not exist in shipping CPUs, but the selector must not assume so.
    pub const AVX2_NO_FMA: &[&str] = &[
        "sse3", "ssse3", "sse4.1", "sse4.2", "popcnt", "avx", "avx2", "f16c", "bmi1", "bmi2",
    ];
}

#[cfg(target_arch = "x86_64")]
#[test]
fn x86_cpus_get_the_best_variant_they_run() {
    use x86::*;
    assert_eq!(names(), ["sse42", "avx2", "avx512"]);
    assert_eq!(best(NEHALEM).unwrap(), "sse42");
    assert_eq!(best(HASWELL).unwrap(), "avx2");
    assert_eq!(best(AVX2_NO_FMA).unwrap(), "sse42");
    assert_eq!(best(ICELAKE).unwrap(), "avx512");
    let avx512 = cpu::find("avx512").unwrap();
    if avx512.features().contains(&"avx512vnni") {
        assert_eq!(best(SKYLAKE_X).unwrap(), "avx2", "AVX-512 without VNNI");
    } else {
        println!("this compiler has no -mavx512vnni: the avx512 variant runs on Skylake-X");
        assert_eq!(best(SKYLAKE_X).unwrap(), "avx512");
    }
    // Before SSE4.2 nothing runs, and the error says what each variant lacks.
    let e = best(CORE2).unwrap_err().to_string();
    assert!(e.contains("none of the ggml variants"), "{e}");
    assert!(e.contains("sse42 lacks sse4.1 sse4.2"), "{e}");
}

#[cfg(target_arch = "x86_64")]
#[test]
fn x86_forcing_goes_down_never_up() {
    use x86::*;
    let forced = |name, features| cpu::choose(Some((name, "test")), &cpu_with(features));
    assert_eq!(forced("sse42", ICELAKE).unwrap().name(), "sse42");
    assert_eq!(forced("avx2", ICELAKE).unwrap().name(), "avx2");
    assert_eq!(forced("auto", HASWELL).unwrap().name(), "avx2");
    let e = forced("avx512", HASWELL).unwrap_err().to_string();
    assert!(
        e.contains("avx512 (from test) needs")
            && e.contains("avx512f")
            && e.contains("runs: sse42, avx2"),
        "{e}"
    );
    let e = forced("avx2", NEHALEM).unwrap_err().to_string();
    assert!(e.contains("\"avx2\"") && e.contains("\"fma\""), "{e}");
}

#[cfg(target_arch = "aarch64")]
#[test]
fn arm64_cpus_get_the_best_variant_they_run() {
    // Feature lists as Linux reports them (HWCAP/HWCAP2) for these cores.
    const A53: &[&str] = &["neon", "vfpv4", "crc"];
    const A76: &[&str] = &["neon", "vfpv4", "crc", "lse", "rdm", "dotprod", "fp16"];
    const NEOVERSE_V1: &[&str] = &[
        "neon", "vfpv4", "crc", "lse", "rdm", "dotprod", "fp16", "i8mm", "bf16", "sve",
    ];
    // dotprod without the armv8.1 atomics the -march=armv8.2-a compiler may use: not enough.
    const DOTPROD_NO_LSE: &[&str] = &["neon", "vfpv4", "crc", "rdm", "dotprod", "fp16"];
    assert_eq!(names(), ["armv8", "dotprod", "i8mm"]);
    assert_eq!(best(A53).unwrap(), "armv8");
    assert_eq!(best(A76).unwrap(), "dotprod");
    assert_eq!(best(NEOVERSE_V1).unwrap(), "i8mm");
    assert_eq!(best(DOTPROD_NO_LSE).unwrap(), "armv8");
    let e = cpu::choose(Some(("i8mm", "test")), &cpu_with(A76))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("\"i8mm\"") && e.contains("runs: armv8, dotprod"),
        "{e}"
    );
}

#[cfg(target_arch = "arm")]
#[test]
fn armv7_needs_neon_and_vfpv4() {
    assert_eq!(names(), ["armv7"]);
    assert_eq!(best(&["neon", "vfpv4"]).unwrap(), "armv7");
    let e = best(&["vfpv4"]).unwrap_err().to_string();
    assert!(e.contains("armv7 lacks neon"), "{e}");
}

#[test]
fn unknown_variant_names_are_refused_with_the_list() {
    let e = cpu::choose(Some(("avx1024", "[model] cpu_variant")), &cpu::cpu_has)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("\"avx1024\" (from [model] cpu_variant) is not compiled"),
        "{e}"
    );
    for n in names() {
        assert!(e.contains(n), "{e}");
    }
}

#[test]
fn variants_need_what_their_flags_enable() {
    // The lists come from the preprocessor: a variant's features are never empty, each one is
    // a feature the runtime detector knows (else the variant could never be selected), and
    // the variants are ordered by what they need.
    let all = cpu::variants();
    for v in &all {
        assert!(!v.features().is_empty(), "{v:?}");
        for f in v.features() {
            assert!(
                cpu::cpu_has(f).is_some(),
                "{v:?} needs {f}, which the selector cannot detect"
            );
        }
    }
    for pair in all.windows(2) {
        for f in pair[0].features() {
            assert!(
                pair[1].features().contains(f),
                "{:?} lacks {f} of {:?}",
                pair[1],
                pair[0]
            );
        }
    }
}

/// The variant in use and ggml's own report of it agree (ggml_cpu_has_* of the selected
/// symbol set).
#[test]
fn the_active_variant_is_what_ggml_reports() {
    let v = cpu::active_variant().expect("a variant runs here");
    let ggml = llamabus::ggml::ggml_reported_features();
    println!("variant {} ; ggml reports {ggml:?}", v.describe());
    assert!(v.runs_here());
    if let Ok(forced) = std::env::var(cpu::ENV_VAR) {
        assert_eq!(v.name(), forced, "{} is honoured", cpu::ENV_VAR);
    } else {
        assert_eq!(
            Some(v),
            cpu::variants().into_iter().rfind(|v| v.runs_here())
        );
    }
    let pairs = [
        ("avx2", "avx2"),
        ("fma", "fma"),
        ("avx512f", "avx512"),
        ("avx512vnni", "avx512_vnni"),
        ("neon", "neon"),
        ("dotprod", "dotprod"),
        ("fp16", "fp16_va"),
        ("i8mm", "i8mm"),
    ];
    for (feature, reported) in pairs {
        assert_eq!(
            v.features().contains(&feature),
            ggml.contains(&reported),
            "variant {} feature {feature} vs ggml's {reported}: {ggml:?}",
            v.name()
        );
    }
}
