//! The one bindgen configuration for the ggml headers, shared by build.rs (targets without
//! committed bindings, or `LLAMABUS_BINDGEN=1`) and scripts/gen-bindings (the committed files).

use std::path::Path;

/// Targets whose bindings are committed, and the file under src/ggml/bindings/ each one uses.
/// x86_64 and aarch64 share one file: both are LP64 Linux targets and bindgen's output for the
/// ggml headers is the same for both, byte for byte (`scripts/gen-bindings.sh --check` verifies
/// that for each target). armv7's pointer width and struct layouts differ, and so do the layout
/// tests bindgen emits for it.
pub const KNOWN_TARGETS: &[(&str, &str)] = &[
    ("x86_64-unknown-linux-gnu", "lp64-linux-gnu.rs"),
    ("aarch64-unknown-linux-gnu", "lp64-linux-gnu.rs"),
    (
        "armv7-unknown-linux-gnueabihf",
        "armv7-unknown-linux-gnueabihf.rs",
    ),
];

/// The committed bindings file (a name under src/ggml/bindings/) for `target`, if it has one.
pub fn committed_file(target: &str) -> Option<&'static str> {
    KNOWN_TARGETS
        .iter()
        .find(|(t, _)| *t == target)
        .map(|(_, file)| *file)
}

/// The bindgen builder for `target`, over the headers in `include` (vendor/ggml/include).
pub fn builder(include: &Path, target: &str) -> bindgen::Builder {
    let mut builder = bindgen::Builder::default()
        .header_contents(
            "llamabus-ggml.h",
            "#include \"ggml.h\"\n#include \"ggml-alloc.h\"\n#include \"ggml-backend.h\"\n#include \"ggml-cpu.h\"\n",
        )
        .clang_arg(format!("-I{}", include.display()))
        .clang_arg(format!("--target={}", clang_target(target)))
        .allowlist_function("ggml_.*")
        .allowlist_type("ggml_.*")
        .allowlist_var("GGML_.*")
        .blocklist_function("ggml_.*_opt_.*")
        .default_enum_style(bindgen::EnumVariation::Consts)
        .prepend_enum_name(false)
        .layout_tests(true)
        .derive_default(true)
        .generate_comments(false);
    // Point clang at the cross sysroot headers Debian's cross gcc packages install.
    let sysroot = Path::new("/usr").join(gnu_triple(target)).join("include");
    if sysroot.is_dir() {
        builder = builder.clang_arg(format!("-isystem{}", sysroot.display()));
    }
    builder
}

/// Runs bindgen; a missing libclang becomes an error that says how to install it (bindgen's
/// runtime loading panics instead of returning an error).
pub fn generate(builder: bindgen::Builder, target: &str) -> Result<String, String> {
    // Silence the default hook while bindgen runs: its panic is reported below, with the fix.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| builder.generate()));
    std::panic::set_hook(hook);
    match result {
        Ok(Ok(bindings)) => Ok(bindings.to_string()),
        Ok(Err(e)) => Err(format!(
            "bindgen failed on the ggml headers for {target}: {e}"
        )),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("bindgen panicked");
            Err(format!(
                "bindgen could not run for {target}: {msg}\n\
                 bindgen needs libclang: install it (Debian/Ubuntu/Raspberry Pi OS: \
                 `sudo apt-get install libclang-dev clang`), or set LIBCLANG_PATH to the folder \
                 holding libclang.so"
            ))
        }
    }
}

fn clang_target(target: &str) -> String {
    // clang does not know Rust's `unknown` vendor spelling for every triple.
    target.replace("-unknown-", "-")
}

fn gnu_triple(target: &str) -> String {
    match target {
        t if t.starts_with("aarch64") => "aarch64-linux-gnu".into(),
        t if t.starts_with("armv7") => "arm-linux-gnueabihf".into(),
        t if t.starts_with("x86_64") => "x86_64-linux-gnu".into(),
        t => t.into(),
    }
}
