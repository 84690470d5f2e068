//! Compiles the vendored ggml with `cc`: ggml-base once, and ggml's CPU backend once per CPU
//! variant, linked side by side in one static library; provides its bindings (committed per
//! target; bindgen only when asked or for an unknown target).
//!
//! Every SIMD decision is made from the *target* (`TARGET`, `CARGO_CFG_TARGET_ARCH`), never from
//! the machine running the build, so cross builds for a Pi are correct on an x86 host. The one
//! exception is the explicit `LLAMABUS_NATIVE=1` knob (or `-C target-cpu=native`), which compiles
//! a single variant with `-march=native` for on-device builds and benchmarks.
//!
//! Variants (see [`variants`]): x86_64 sse42 / avx2 / avx512, aarch64 armv8 / dotprod / i8mm,
//! armv7 one. ggml-base is compiled for the target's baseline (the same CPU the Rust code
//! targets), so it runs on any CPU the binary starts on.
//!
//! Each variant's symbols are renamed `llamabus_<variant>_<name>` with `objcopy --redefine-syms`
//! over its objects (see [`prefix_variant`]), and the result is checked: every symbol a variant
//! defines carries its prefix (so no CPU-backend symbol is defined twice and the linker can never
//! swap an AVX-512 copy of an inline function into another variant or into ggml-base), nothing
//! outside a variant references it by its old name, and no variant object has a static
//! initialiser or finaliser (`.init_array`, `.ctors`, ...), so nothing of a variant runs before
//! the runtime selector (src/ggml/cpu.rs) has chosen it. The Rust side reaches a variant only
//! through the prefixed names in the generated `cpu_variants.rs`.
//!
//! The preprocessor is asked which SIMD macros each variant's flags really enable; those lists
//! are what the selector checks against the running CPU.

use std::collections::BTreeSet;
use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "scripts/gen-bindings/src/builder.rs"]
mod bindgen_builder;
#[path = "scripts/ggml-cache.rs"]
mod ggml_cache;

const GGML_VERSION: &str = "0.26.0";

/// ggml-base sources under vendor/ggml/src: compiled once, for the target's baseline.
const CORE_C: &[&str] = &["ggml.c", "ggml-alloc.c", "ggml-quants.c"];
const CORE_CPP: &[&str] = &[
    "ggml.cpp",
    "ggml-backend.cpp",
    "ggml-backend-meta.cpp",
    "ggml-threading.cpp",
    "gguf.cpp",
];
/// CPU backend sources under vendor/ggml/src/ggml-cpu: compiled once per variant. Left out
/// because they are empty under every variant's flags: hbm.cpp (needs GGML_USE_CPU_HBM) and
/// amx/*.cpp (need AMX-INT8, which no variant enables).
const CPU_C: &[&str] = &["ggml-cpu.c", "quants.c"];
const CPU_CPP: &[&str] = &[
    "ggml-cpu.cpp",
    "repack.cpp",
    "traits.cpp",
    "binary-ops.cpp",
    "unary-ops.cpp",
    "vec.cpp",
    "ops.cpp",
    "tiled/tiled.cpp",
    "tiled/tiled-kernel.cpp",
];

/// Preprocessor macros that name a SIMD feature, with the name the runtime selector checks
/// (src/ggml/cpu.rs `detect`). A variant needs every feature its flags define.
const SIMD_MACROS: &[(&str, &str)] = &[
    ("__SSE3__", "sse3"),
    ("__SSSE3__", "ssse3"),
    ("__SSE4_1__", "sse4.1"),
    ("__SSE4_2__", "sse4.2"),
    ("__POPCNT__", "popcnt"),
    ("__AVX__", "avx"),
    ("__AVX2__", "avx2"),
    ("__FMA__", "fma"),
    ("__F16C__", "f16c"),
    ("__BMI__", "bmi1"),
    ("__BMI2__", "bmi2"),
    ("__LZCNT__", "lzcnt"),
    ("__AVXVNNI__", "avxvnni"),
    ("__AVX512F__", "avx512f"),
    ("__AVX512CD__", "avx512cd"),
    ("__AVX512BW__", "avx512bw"),
    ("__AVX512DQ__", "avx512dq"),
    ("__AVX512VL__", "avx512vl"),
    ("__AVX512VNNI__", "avx512vnni"),
    ("__AVX512BF16__", "avx512bf16"),
    ("__ARM_NEON", "neon"),
    ("__ARM_FEATURE_FMA", "vfpv4"),
    ("__ARM_FEATURE_CRC32", "crc"),
    ("__ARM_FEATURE_ATOMICS", "lse"),
    ("__ARM_FEATURE_QRDMX", "rdm"),
    ("__ARM_FEATURE_DOTPROD", "dotprod"),
    ("__ARM_FEATURE_FP16_VECTOR_ARITHMETIC", "fp16"),
    ("__ARM_FEATURE_MATMUL_INT8", "i8mm"),
    ("__ARM_FEATURE_BF16_VECTOR_ARITHMETIC", "bf16"),
    ("__ARM_FEATURE_SVE", "sve"),
];

/// Sections whose code the C runtime runs on its own, before `main` or at exit. None may
/// appear in a variant's objects.
const STARTUP_SECTIONS: &[&str] = &[
    ".init_array",
    ".preinit_array",
    ".fini_array",
    ".ctors",
    ".dtors",
    ".init",
    ".fini",
];

/// One build of ggml's CPU backend: a name (also its symbol prefix) and its compiler flags.
struct VariantSpec {
    name: &'static str,
    flags: Vec<String>,
}

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let target = env::var("TARGET").unwrap();
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap();
    // Host-native only when asked: LLAMABUS_NATIVE=1, or RUSTFLAGS="-C target-cpu=native"
    // (then Rust and C both target this machine's CPU).
    let rustflags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let native = env::var("LLAMABUS_NATIVE").is_ok_and(|v| v == "1")
        || rustflags
            .split('\x1f')
            .any(|f| f == "target-cpu=native" || f == "-Ctarget-cpu=native");

    let ggml = manifest.join("vendor/ggml");
    println!("cargo:rerun-if-changed=vendor/ggml");
    // Only watch vendor/patches when it exists: cargo treats a missing rerun-if-changed path
    // as always dirty, which would recompile ggml on every build.
    if manifest.join("vendor/patches").exists() {
        println!("cargo:rerun-if-changed=vendor/patches");
    }
    println!("cargo:rerun-if-env-changed=LLAMABUS_NATIVE");
    println!("cargo:rerun-if-env-changed=LLAMABUS_GGML_DEBUG");
    if has_patches(&manifest.join("vendor/patches")) {
        panic!("vendor/patches/ is not empty, but no patch is expected: wire patch application into build.rs first");
    }

    // ggml-version.h is generated by CMake upstream; we write the same header.
    let gen_inc = out.join("include");
    std::fs::create_dir_all(&gen_inc).unwrap();
    std::fs::write(
        gen_inc.join("ggml-version.h"),
        format!(
            "#pragma once\n#define GGML_VERSION \"{GGML_VERSION}\"\n#define GGML_COMMIT \"llama-cpp-sys-2-0.1.161\"\n"
        ),
    )
    .unwrap();

    // Bindings first: a missing libclang (only when bindgen must run) fails before the long compile.
    bindings(&manifest, &ggml, &target, &out);

    if arch == "arm" {
        // 32-bit Raspberry Pi OS: hard-float ABI for ggml-base and the variant alike.
        assert!(
            target.ends_with("gnueabihf"),
            "llamabus: 32-bit ARM needs a hard-float target (armv7-unknown-linux-gnueabihf), got {target}"
        );
    }

    // `flags`: the SIMD flags of a variant; ggml-base gets none (the target's baseline).
    // Compiled as llama.cpp's CMake compiles ggml, because the flags change the numbers:
    // - the GNU dialects (CMake's default C_EXTENSIONS: -std=gnu11, -std=gnu++17). In ISO mode
    //   (-std=c11) GCC turns floating-point contraction off, so a scalar `a += b * c` in the C
    //   kernels (ggml_vec_dot_q5_K_q8_K's min term, iq4_nl, q4_1, q5_1, quantize_row_q8_0/1) is
    //   rounded twice instead of fused into one FMA: different logits from llama.cpp's build.
    // - no flag inherited from rustc: cc would copy Rust target features (RUSTFLAGS
    //   -C target-feature=+avx2,+fma...) onto ggml-base as -mavx2 -mfma, which CMake compiles
    //   without SIMD flags, and its dequantize/quantize code would round differently.
    let build = |cpp: bool, flags: &[String]| {
        let mut b = cc::Build::new();
        b.cpp(cpp)
            .inherit_rustflags(false)
            .include(ggml.join("include"))
            .include(ggml.join("src"))
            .include(ggml.join("src/ggml-cpu"))
            .include(&gen_inc)
            // ggml at -O0 is an order of magnitude slower, and the tests run a real model.
            .opt_level(3)
            .debug(env::var("LLAMABUS_GGML_DEBUG").is_ok_and(|v| v == "1"))
            .warnings(false)
            .define("_GNU_SOURCE", None)
            .define("_XOPEN_SOURCE", "600")
            .define("NDEBUG", None)
            .define("GGML_SCHED_MAX_COPIES", "4")
            .define("GGML_USE_CPU", None)
            // ggml's repacked weight layouts (CPU_REPACK extra buffer type), as upstream's
            // default GGML_CPU_REPACK=ON; used only for weights the model loader puts there.
            .define("GGML_USE_CPU_REPACK", None)
            .flag_if_supported("-pthread");
        if cpp {
            b.std("gnu++17");
        } else {
            b.std("gnu11")
                // cc hides warnings; an implicit declaration here means a real ABI bug.
                .flag("-Werror=implicit-function-declaration");
        }
        // llamafile's sgemm speeds up prompt processing; its ARM path needs 64-bit fp16 NEON
        // types, so 32-bit ARM builds go without it (as upstream's armv7 builds do in practice).
        if arch != "arm" {
            b.define("GGML_USE_LLAMAFILE", None);
        }
        if arch == "arm" || arch == "aarch64" {
            b.flag("-Wno-psabi");
        }
        for f in flags {
            b.flag(f);
        }
        b
    };

    let cpu = ggml.join("src/ggml-cpu");
    let arch_dir = match arch.as_str() {
        "x86_64" | "x86" => "x86",
        "aarch64" | "arm" => "arm",
        other => panic!("llamabus: unsupported target architecture {other} (x86_64, aarch64, armv7 are supported)"),
    };
    let variants = variants(&arch, native, &build(false, &[]));

    // Every compile unit (ggml-base C and C++, each variant's C and C++) with its sources.
    let base_dir = out.join("ggml-base");
    let src = |dir: &Path, names: &[&str]| names.iter().map(|f| dir.join(f)).collect::<Vec<_>>();
    let mut units: Vec<(cc::Build, Vec<PathBuf>)> = vec![
        (build(false, &[]), src(&ggml.join("src"), CORE_C)),
        (build(true, &[]), src(&ggml.join("src"), CORE_CPP)),
    ];
    for u in &mut units {
        u.0.out_dir(&base_dir);
    }
    for v in &variants {
        let dir = out.join(format!("ggml-cpu-{}", v.name));
        let mut c_files = src(&cpu, CPU_C);
        c_files.push(cpu.join("arch").join(arch_dir).join("quants.c"));
        let mut cpp_files = src(&cpu, CPU_CPP);
        cpp_files.push(cpu.join("arch").join(arch_dir).join("repack.cpp"));
        if arch != "arm" {
            cpp_files.push(cpu.join("llamafile/sgemm.cpp"));
        }
        // arch/*/cpu-feats.cpp only scores CPUs for dynamic backend loading (GGML_BACKEND_DL);
        // the selector in src/ggml/cpu.rs does that job for the variants linked in here.
        for (cpp, files) in [(false, c_files), (true, cpp_files)] {
            let mut b = build(cpp, &v.flags);
            b.out_dir(&dir);
            units.push((b, files));
        }
    }
    let tools = Binutils::for_build(&build(false, &[]));

    // Reuse another profile's identical build when the test command asks (scripts/ggml-cache.rs).
    println!("cargo:rerun-if-env-changed=LLAMABUS_GGML_CACHE");
    let cache = env::var_os("LLAMABUS_GGML_CACHE").map(PathBuf::from);
    let mut key_parts = vec![
        tools.nm.clone(),
        tools.objcopy.clone(),
        tools.readelf.clone(),
    ];
    for (b, files) in &units {
        let tool = b.get_compiler();
        let out_dir = out.to_string_lossy();
        key_parts.push(tool.path().display().to_string());
        key_parts.extend(
            tool.args()
                .iter()
                .map(|a| a.to_string_lossy().replace(&*out_dir, "$OUT")),
        );
        key_parts.extend(files.iter().map(|f| f.display().to_string()));
    }
    key_parts.push(env::var("CARGO_CFG_SANITIZE").unwrap_or_default());
    let key = cache
        .as_ref()
        .map(|_| ggml_cache::key(&key_parts, units[0].0.get_compiler().path(), &ggml));
    let cached = cache
        .as_deref()
        .zip(key.as_deref())
        .and_then(|(dir, key)| ggml_cache::load(dir, key));

    let (base_objects, variant_objects) = match cached {
        Some(mut groups) => {
            println!(
                "llamabus: ggml objects from the cache, key {}",
                key.as_deref().unwrap()
            );
            let base: Vec<PathBuf> = groups.remove(0);
            (base, groups)
        }
        None => {
            let (base, variant_objects) = compile_and_check(&units, &variants, &tools);
            if let (Some(dir), Some(key)) = (&cache, &key) {
                let groups: Vec<Vec<PathBuf>> = std::iter::once(base.clone())
                    .chain(variant_objects.iter().cloned())
                    .collect();
                ggml_cache::store(dir, key, &groups);
            }
            (base, variant_objects)
        }
    };

    // One archive for everything: ggml-base and the variants reference each other, so
    // separate archives would depend on link order.
    let mut lib = build(true, &[]);
    lib.objects(&base_objects)
        .objects(variant_objects.iter().flatten());
    lib.compile("ggml");

    println!("cargo:rustc-link-lib=pthread");
    println!("cargo:rustc-link-lib=m");

    write_variant_table(&out, &variants, &build);
    println!("cargo:rustc-env=LLAMABUS_GGML_VERSION={GGML_VERSION}");
    println!("cargo:rustc-env=LLAMABUS_TARGET={target}");
}

/// Compiles every unit, each on its own thread (cc's jobserver still caps the compilers running
/// at once at cargo's -j, and no core idles while one unit's last big file compiles), then renames
/// each variant's symbols and checks the result. Returns ggml-base's objects and each variant's.
fn compile_and_check(
    units: &[(cc::Build, Vec<PathBuf>)],
    variants: &[VariantSpec],
    tools: &Binutils,
) -> (Vec<PathBuf>, Vec<Vec<PathBuf>>) {
    let mut objects: Vec<Vec<PathBuf>> = std::thread::scope(|s| {
        let handles: Vec<_> = units
            .iter()
            .map(|(b, files)| {
                s.spawn(move || {
                    let mut b = b.clone();
                    b.files(files);
                    b.compile_intermediates()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let base_objects: Vec<PathBuf> = objects.drain(..2).flatten().collect();
    let variant_objects: Vec<Vec<PathBuf>> = objects.chunks(2).map(|pair| pair.concat()).collect();
    let mut renamed: Vec<BTreeSet<String>> = Vec::new();
    for (v, objs) in variants.iter().zip(&variant_objects) {
        renamed.push(prefix_variant(tools, &symbol_prefix(v.name), objs));
    }
    check_variants(tools, variants, &variant_objects, &renamed, &base_objects);
    (base_objects, variant_objects)
}

/// The CPU variants for the target, in ascending order of preference (the selector takes the
/// last one the running CPU supports). `probe` is a C build for the target, used to ask the
/// compiler whether it knows an optional flag.
fn variants(arch: &str, native: bool, probe: &cc::Build) -> Vec<VariantSpec> {
    let flags = |f: &[&str]| f.iter().map(|s| (*s).to_string()).collect::<Vec<_>>();
    if native {
        return vec![VariantSpec {
            name: "native",
            flags: flags(&["-march=native"]),
        }];
    }
    match arch {
        "x86_64" | "x86" => {
            let sse42 = flags(&["-msse3", "-mssse3", "-msse4.1", "-msse4.2"]);
            // Haswell and newer, Zen: llama.cpp's "haswell" variant.
            let mut avx2 = sse42.clone();
            avx2.extend(flags(&["-mavx", "-mavx2", "-mfma", "-mf16c", "-mbmi2"]));
            // Ice Lake / Cascade Lake servers, Zen 4/5. With VNNI when the compiler knows it
            // (ggml's AVX-512 dot products use it); Skylake-X, without VNNI, runs avx2 then.
            let mut avx512 = avx2.clone();
            avx512.extend(flags(&[
                "-mavx512f",
                "-mavx512bw",
                "-mavx512dq",
                "-mavx512vl",
            ]));
            if probe.is_flag_supported("-mavx512vnni").unwrap_or(false) {
                avx512.push("-mavx512vnni".into());
            }
            vec![
                VariantSpec {
                    name: "sse42",
                    flags: sse42,
                },
                VariantSpec {
                    name: "avx2",
                    flags: avx2,
                },
                VariantSpec {
                    name: "avx512",
                    flags: avx512,
                },
            ]
        }
        // All three need what -march implies too (the selector checks each macro the compiler
        // defines: LSE atomics, RDM, CRC from armv8.1). armv8.2-a is the floor for the upper
        // two instead of armv8.6-a, so no armv8.3+ instruction (LRCPC, FRINT, ...) can slip in
        // unchecked on a core that has i8mm but not all of armv8.6 (Neoverse V1 is armv8.4).
        "aarch64" => vec![
            // Pi 3/4, Cortex-A53/A72.
            VariantSpec {
                name: "armv8",
                flags: flags(&["-march=armv8-a"]),
            },
            // Pi 5 (Cortex-A76), Jetson Orin (A78AE), Neoverse N1.
            VariantSpec {
                name: "dotprod",
                flags: flags(&["-march=armv8.2-a+dotprod+fp16"]),
            },
            // Neoverse V1/V2/N2, Cortex-A710 and newer, Apple M2+ under Linux.
            VariantSpec {
                name: "i8mm",
                flags: flags(&["-march=armv8.2-a+dotprod+fp16+i8mm"]),
            },
        ],
        // 32-bit Raspberry Pi OS: armv7-a + NEON/VFPv4 runs on Pi 2 (Cortex-A7) and newer.
        "arm" => vec![VariantSpec {
            name: "armv7",
            flags: flags(&["-march=armv7-a", "-mfpu=neon-vfpv4", "-mfloat-abi=hard"]),
        }],
        other => panic!("llamabus: no CPU variants for {other}"),
    }
}

/// The prefix every symbol of variant `name` gets.
fn symbol_prefix(name: &str) -> String {
    format!("llamabus_{name}_")
}

/// The binutils matching the C compiler (the cross ones for arm targets): derived from the
/// archiver cc picked (`aarch64-linux-gnu-ar` -> `aarch64-linux-gnu-objcopy`, `llvm-ar` ->
/// `llvm-objcopy`), so `AR_<target>` steers them too.
struct Binutils {
    nm: String,
    objcopy: String,
    readelf: String,
}

impl Binutils {
    fn for_build(b: &cc::Build) -> Binutils {
        let ar = b.get_archiver();
        let ar = Path::new(ar.get_program())
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let prefix = ar
            .strip_suffix("ar")
            .unwrap_or_else(|| panic!("llamabus: cannot derive binutils from archiver {ar}"));
        let tool = |name: &str| {
            let var = format!("LLAMABUS_{}", name.to_uppercase());
            println!("cargo:rerun-if-env-changed={var}");
            env::var(&var).unwrap_or_else(|_| format!("{prefix}{name}"))
        };
        Binutils {
            nm: tool("nm"),
            objcopy: tool("objcopy"),
            readelf: tool("readelf"),
        }
    }

    fn run(&self, tool: &str, args: &[&str], obj: &Path) -> String {
        let out = Command::new(tool)
            .args(args)
            .arg(obj)
            .output()
            .unwrap_or_else(|e| panic!("llamabus: running {tool} (binutils for the target): {e}"));
        assert!(
            out.status.success(),
            "llamabus: {tool} {args:?} {} failed: {}",
            obj.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Symbols `obj` defines, each with whether it is global (or weak), from `nm -P`.
    fn defined(&self, obj: &Path) -> Vec<(String, bool)> {
        self.run(&self.nm, &["-P", "--defined-only"], obj)
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                let (name, kind) = (it.next()?, it.next()?);
                Some((
                    name.to_string(),
                    kind.chars().next()?.is_ascii_uppercase() || kind == "v" || kind == "w",
                ))
            })
            .collect()
    }

    /// Symbols `obj` references but does not define.
    fn undefined(&self, obj: &Path) -> Vec<String> {
        self.run(&self.nm, &["-P", "-u"], obj)
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect()
    }

    /// Names of `obj`'s sections.
    fn sections(&self, obj: &Path) -> Vec<String> {
        self.run(&self.readelf, &["-S", "-W"], obj)
            .lines()
            .filter_map(|l| {
                let rest = l.trim_start().strip_prefix('[')?;
                let (_, rest) = rest.split_once(']')?;
                rest.split_whitespace().next().map(str::to_string)
            })
            .collect()
    }
}

/// Renames every symbol the variant's objects define to `prefix` + name, in place: the globals
/// (and weak C++ inline copies) of all its objects wherever they are defined or referenced, and
/// each object's own locals (COMDAT group signatures like `..C5Ev` are local symbols, and a group
/// left with its old name could be merged with ggml-base's group of that name). References to
/// symbols no variant object defines (ggml-base, libc, libstdc++) keep their names. Returns the
/// global names renamed.
fn prefix_variant(tools: &Binutils, prefix: &str, objs: &[PathBuf]) -> BTreeSet<String> {
    let defined: Vec<Vec<(String, bool)>> = objs.iter().map(|o| tools.defined(o)).collect();
    let globals: BTreeSet<String> = defined
        .iter()
        .flatten()
        .filter(|(_, global)| *global)
        .map(|(n, _)| n.clone())
        .collect();
    for (obj, own) in objs.iter().zip(&defined) {
        let names: BTreeSet<&String> = globals.iter().chain(own.iter().map(|(n, _)| n)).collect();
        let map: String = names.iter().map(|n| format!("{n} {prefix}{n}\n")).collect();
        let map_file = obj.with_extension("syms");
        std::fs::write(&map_file, map).unwrap();
        let arg = format!("--redefine-syms={}", map_file.display());
        tools.run(&tools.objcopy, &[&arg], obj);
    }
    globals
}

/// The soundness checks of the renamed variants (each failure names the symbol or section).
fn check_variants(
    tools: &Binutils,
    variants: &[VariantSpec],
    variant_objects: &[Vec<PathBuf>],
    renamed: &[BTreeSet<String>],
    base_objects: &[PathBuf],
) {
    let all_renamed: BTreeSet<&String> = renamed.iter().flatten().collect();
    let sanitized = env::var("CARGO_CFG_SANITIZE").is_ok_and(|v| !v.is_empty());
    for ((v, objs), old_names) in variants.iter().zip(variant_objects).zip(renamed) {
        let prefix = symbol_prefix(v.name);
        for obj in objs {
            // Every definition carries the prefix: no CPU-backend symbol exists unprefixed, so
            // none is defined twice, and no variant's copy can stand in for another's.
            for (name, _) in tools.defined(obj) {
                assert!(
                    name.starts_with(&prefix),
                    "llamabus: {} defines {name} without the prefix {prefix}",
                    obj.display()
                );
            }
            // References stay inside the variant or go to names no variant defines.
            for name in tools.undefined(obj) {
                assert!(
                    !old_names.contains(&name)
                        && !variants
                            .iter()
                            .any(|o| o.name != v.name && name.starts_with(&symbol_prefix(o.name))),
                    "llamabus: {} still references {name}, which belongs to a variant",
                    obj.display()
                );
            }
            // Nothing of a variant runs unless the selector calls into it. Sanitizer builds
            // (cc adds -fsanitize=address when rustc sanitizes, CARGO_CFG_SANITIZE) get an
            // instrumentation constructor per object, which only registers the object's globals
            // with the runtime; they are test builds run on the machine that built them.
            if sanitized {
                continue;
            }
            for s in tools.sections(obj) {
                assert!(
                    !STARTUP_SECTIONS.iter().any(|x| s == *x || s.starts_with(&format!("{x}."))),
                    "llamabus: {} has a {s} section: code of variant {} would run before it is selected",
                    obj.display(),
                    v.name
                );
            }
        }
    }
    // ggml-base calls no CPU-backend symbol (it would have no variant to go to).
    for obj in base_objects {
        for name in tools.undefined(obj) {
            assert!(
                !all_renamed.contains(&name),
                "llamabus: ggml-base {} references the CPU-backend symbol {name}",
                obj.display()
            );
        }
    }
}

/// Writes `cpu_variants.rs`: one `cpu_variant!` entry per variant (name, the features it needs,
/// its flags), expanded by src/ggml/cpu_api.rs into prefixed extern declarations.
fn write_variant_table(
    out: &Path,
    variants: &[VariantSpec],
    build: &dyn Fn(bool, &[String]) -> cc::Build,
) {
    let mut rs =
        String::from("// Generated by build.rs: the CPU variants linked into this binary.\n[\n");
    for v in variants {
        let features = compiled_simd_features(&build(false, &v.flags), out, v.name);
        assert!(
            !features.is_empty(),
            "llamabus: variant {} enables no SIMD feature",
            v.name
        );
        rs.push_str(&format!(
            "    cpu_variant!({:?}, {:?}, [{}], {:?}),\n",
            v.name,
            symbol_prefix(v.name),
            features
                .iter()
                .map(|f| format!("{f:?}"))
                .collect::<Vec<_>>()
                .join(", "),
            v.flags.join(" "),
        ));
    }
    rs.push_str("]\n");
    std::fs::write(out.join("cpu_variants.rs"), rs).unwrap();
}

/// Asks the compiler which SIMD macros the flags define: the honest list of what ggml uses.
fn compiled_simd_features(build: &cc::Build, out: &Path, name: &str) -> Vec<String> {
    let probe = out.join(format!("simd-probe-{name}.c"));
    std::fs::write(&probe, "int llamabus_probe;\n").unwrap();
    let compiler = build.get_compiler();
    let mut cmd: Command = compiler.to_command();
    cmd.arg("-dM").arg("-E").arg(&probe);
    let output = cmd
        .output()
        .expect("running the C compiler to list SIMD macros");
    assert!(
        output.status.success(),
        "C compiler failed listing SIMD macros: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    SIMD_MACROS
        .iter()
        .filter(|(m, _)| text.lines().any(|l| l.split_whitespace().nth(1) == Some(m)))
        .map(|(_, name)| (*name).to_string())
        .collect()
}

/// The bindings: the committed file for a known target (src/ggml/bindings/, one file per ABI, kept
/// equal to bindgen's output by `scripts/gen-bindings.sh --check` in the test command), so a build
/// needs no libclang. bindgen runs only when asked (`LLAMABUS_BINDGEN=1`) or for a target with no
/// committed file. Either way the file carries bindgen's layout tests, which `cargo test` runs.
fn bindings(manifest: &Path, ggml: &Path, target: &str, out: &Path) {
    println!("cargo:rerun-if-env-changed=LLAMABUS_BINDGEN");
    let dest = out.join("ggml_bindings.rs");
    let forced = env::var("LLAMABUS_BINDGEN").is_ok_and(|v| v == "1");
    if let Some(file) = bindgen_builder::committed_file(target).filter(|_| !forced) {
        let committed = manifest.join("src/ggml/bindings").join(file);
        println!("cargo:rerun-if-changed={}", committed.display());
        std::fs::copy(&committed, &dest).unwrap_or_else(|e| {
            panic!(
                "llamabus: reading committed bindings {}: {e}",
                committed.display()
            )
        });
        return;
    }
    let builder = bindgen_builder::builder(&ggml.join("include"), target)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    match bindgen_builder::generate(builder, target) {
        Ok(text) => std::fs::write(&dest, text).expect("writing ggml bindings"),
        Err(e) => {
            eprintln!("llamabus: {e}");
            std::process::exit(1);
        }
    }
}

fn has_patches(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
}
