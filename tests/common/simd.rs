//! Which llama.cpp reference file applies: the one for the SIMD path of the ggml CPU variant in
//! use (the one the selector picked at run time, or `LLAMABUS_CPU_VARIANT`'s). Kernels of the
//! AVX2 and AVX-512 paths sum in different orders, and llama.cpp's own outputs move with them,
//! so references come one per path; llama.cpp made none for NEON or the x86 sse42 variant.

use std::path::PathBuf;

use serde_json::Value;

/// The SIMD path of the variant in use, one llama.cpp made references for.
pub struct SimdPath {
    /// `avx512` or `avx2`: how reference files and their `simd_path` field name it.
    pub name: &'static str,
    /// `AVX-512` or `AVX2`, for messages.
    pub level: &'static str,
    /// The active variant's name.
    pub variant: &'static str,
    /// The active variant's features (what its compiler flags enabled).
    pub compiled: Vec<&'static str>,
}

impl SimdPath {
    /// The path of the active variant, or `None` after printing why the `what` reference (e.g.
    /// "kernel reference") is skipped on this one.
    pub fn active(what: &str) -> Option<SimdPath> {
        let compiled = llamabus::ggml::cpu::compiled_features();
        let variant = llamabus::ggml::cpu::active_variant().map_or("none", |v| v.name());
        let (name, level) = if compiled.contains(&"avx512f") {
            ("avx512", "AVX-512")
        } else if compiled.contains(&"avx2") {
            ("avx2", "AVX2")
        } else {
            println!(
                "skipped: no llama.cpp {what} for this SIMD path (variant {variant}, compiled \
                 with {compiled:?}); references exist for AVX2 and AVX-512"
            );
            return None;
        };
        Some(SimdPath {
            name,
            level,
            variant,
            compiled,
        })
    }

    /// Prints the path and the reference file used for it.
    pub fn announce(&self, file: &str) {
        println!(
            "SIMD path: {} (variant {}, compiled with {:?}); reference: {file}",
            self.level, self.variant, self.compiled
        );
    }

    /// `tests/data/{stem}.{name}.json` (`stem` may hold a directory), or `None` if it does not
    /// exist; a file made for another path is refused.
    pub fn data_reference(&self, stem: &str) -> Option<Value> {
        let name = format!("tests/data/{stem}.{}.json", self.name);
        let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(&name);
        if !file.exists() {
            return None;
        }
        self.announce(&name);
        let text =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let r: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert_eq!(r["simd_path"], self.name, "{}", file.display());
        Some(r)
    }
}
