//! ggml through the safe layer: quantized matrix products against a plain-Rust f32 reference,
//! tensor placement and error paths, and the runtime CPU guard. Runs on every target (x86_64
//! natively, aarch64 and armv7 under qemu-user), so the same tolerances hold on each SIMD path.

mod common;

use std::sync::Arc;

use common::simd::SimdPath;
use llamabus::ggml::{
    cpu, dequantize, quantize, AlignedBytes, AllocatedContext, Context, CpuBackend, GgmlError,
    GraphAllocator, HostBytes, Type,
};

/// Deterministic normal-ish values (sum of uniforms) so every target sees the same inputs.
fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..n)
        .map(|_| (next() + next() + next() + next() - 2.0) * 1.7)
        .collect()
}

/// y[j][i] = sum_k w[i][k] * x[j][k], the plain definition of ggml_mul_mat.
fn reference_matmul(w: &[f32], x: &[f32], k: usize, n: usize, m: usize) -> Vec<f32> {
    let mut y = vec![0f32; n * m];
    for j in 0..m {
        for i in 0..n {
            let mut acc = 0f64;
            for t in 0..k {
                acc += f64::from(w[i * k + t]) * f64::from(x[j * k + t]);
            }
            y[j * n + i] = acc as f32;
        }
    }
    y
}

fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    (num / den).sqrt() as f32
}

/// Runs ggml_mul_mat on the CPU backend: weights of type `ty` ([k, n]) times f32 x ([k, m]).
fn ggml_matmul(
    ty: Type,
    wq: &[u8],
    x: &[f32],
    k: usize,
    n: usize,
    m: usize,
    threads: usize,
) -> Vec<f32> {
    let mut backend = CpuBackend::new(threads).unwrap();
    let ctx = Context::new_metadata(4, 0);
    ctx.new_tensor(ty, &[k as i64, n as i64]).set_name("w");
    ctx.new_tensor(Type::F32, &[k as i64, m as i64])
        .set_name("x");
    let inputs = backend.alloc_context(ctx).unwrap();
    let w = inputs.tensor("w").unwrap();
    let xt = inputs.tensor("x").unwrap();
    w.write_bytes(wq);
    xt.write_f32(x);

    let gctx = Context::new_metadata(8, 16);
    let mut graph = gctx.new_graph(16);
    let y = gctx.mul_mat(w, xt).set_name("y").set_output();
    graph.build_forward_expand(y);
    let mut galloc = GraphAllocator::new_cpu();
    galloc.alloc_graph(&graph).unwrap();
    backend.compute(&graph).unwrap();
    assert_eq!(y.ne(), [n as i64, m as i64, 1, 1]);
    let mut out = vec![0f32; n * m];
    y.read_f32(&mut out);
    out
}

/// Per type: (tolerance against the dequantized weights, i.e. the kernel's own error from
/// quantizing activations; tolerance against the original f32 weights, i.e. kernel plus
/// weight quantization). Relative RMS error. Bounds are about twice what x86 measures.
/// Every type the model loader accepts for a weight matrix is here.
const CASES: &[(Type, f32, f32)] = &[
    (Type::F32, 1e-5, 1e-5),
    (Type::F16, 2e-3, 2e-3),
    (Type::BF16, 8e-3, 8e-3),
    (Type::Q8_0, 1e-2, 1.2e-2),
    (Type::Q4_0, 1.5e-2, 0.15),
    (Type::Q4_1, 1.5e-2, 0.15),
    (Type::Q5_0, 1.5e-2, 8e-2),
    (Type::Q5_1, 1.5e-2, 8e-2),
    (Type::Q2_K, 1.5e-2, 0.5),
    (Type::Q3_K, 1.5e-2, 0.25),
    (Type::Q4_K, 1.5e-2, 0.12),
    (Type::Q5_K, 1.5e-2, 6e-2),
    (Type::Q6_K, 1e-2, 3e-2),
    (Type::IQ4_NL, 1.5e-2, 0.12),
    (Type::IQ4_XS, 1.5e-2, 0.12),
];

fn check_matmul(m: usize, threads: usize) {
    let (k, n) = (512usize, 24usize);
    let w = values(1, k * n);
    let x = values(2, k * m);
    let exact = reference_matmul(&w, &x, k, n, m);
    for &(ty, tol_kernel, tol_total) in CASES {
        let wq = quantize(ty, &w, k);
        let wd = dequantize(ty, &wq, k * n);
        let dequant_ref = reference_matmul(&wd, &x, k, n, m);
        let got = ggml_matmul(ty, &wq, &x, k, n, m, threads);
        let e_kernel = rel_err(&got, &dequant_ref);
        let e_total = rel_err(&got, &exact);
        println!(
            "{:>5} m={m} threads={threads}: vs dequantized {e_kernel:.2e}, vs f32 {e_total:.2e}",
            ty.name()
        );
        assert!(
            e_kernel <= tol_kernel,
            "{}: kernel error {e_kernel} > {tol_kernel}",
            ty.name()
        );
        assert!(
            e_total <= tol_total,
            "{}: total error {e_total} > {tol_total}",
            ty.name()
        );
    }
}

#[test]
fn matrix_vector_products_match_reference() {
    check_matmul(1, 1);
}

#[test]
fn matrix_matrix_products_match_reference() {
    // 7 columns exercises the batched (prompt-processing) kernels; 2 threads split the rows.
    check_matmul(7, 2);
}

/// 64-bit FNV-1a, as scripts/oracle/ggml-kernel-ref.c computes it.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The type named `name` in ggml's table.
fn type_named(name: &str) -> Type {
    (0..64)
        .filter_map(Type::from_id)
        .find(|t| t.name() == name)
        .unwrap_or_else(|| panic!("ggml has no type {name}"))
}

/// The feature beyond its path's that a kernel reference depends on: the AVX-512 reference
/// came from llama.cpp built with `-march=native` on a CPU with AVX512-BF16, where
/// ggml_vec_dot_bf16 uses `vdpbf16ps`; the avx512 variant (no BF16) takes another route.
fn reference_feature(path: &str, ty: Type) -> Option<&'static str> {
    (path == "avx512" && ty == Type::BF16).then_some("avx512bf16")
}

/// ggml as build.rs compiles it must compute, bit for bit, what ggml as llama.cpp's CMake
/// compiles it computes: tests/data/ggml-kernels.PATH.json holds the f32 bits of the same products
/// from scripts/oracle/ggml-kernel-ref.c linked against the oracle build (scripts/build-oracle.sh),
/// per SIMD path, and hashes of the quantized and dequantized weights (the quantize functions
/// must reproduce llama-quantize's bytes: tests/common/formats.rs relies on it). The tolerance tests above cannot see a compile difference such as floating-point
/// contraction (one rounding instead of two in a kernel's scalar tail), yet it flips greedy tokens
/// on a real model: Q5_K's min term, IQ4_NL, Q4_1 and Q5_1 once differed here.
#[test]
fn products_are_bit_identical_to_llama_cpp_build() {
    let Some(simd) = SimdPath::active("kernel reference") else {
        return;
    };
    let (path, compiled) = (simd.name, &simd.compiled);
    let reference = simd
        .data_reference("ggml-kernels")
        .expect("a kernel reference for each x86 SIMD path");
    let k = reference["k"].as_u64().unwrap() as usize;
    let n = reference["n"].as_u64().unwrap() as usize;
    let w = values(1, k * n);
    let mut differ = Vec::new();
    let mut differing_cases = 0;
    let mut skipped = 0;
    let cases = reference["cases"].as_array().unwrap();
    for c in cases {
        let before = differ.len();
        let ty = type_named(c["type"].as_str().unwrap());
        if let Some(feature) = reference_feature(path, ty).filter(|f| !compiled.contains(f)) {
            println!(
                "skipped {} m={}: the {path} reference was made with {feature}, which this \
                 variant lacks (ggml's kernel for the type uses other instructions without it)",
                ty.name(),
                c["m"]
            );
            skipped += 1;
            continue;
        }
        let m = c["m"].as_u64().unwrap() as usize;
        let threads = c["threads"].as_u64().unwrap() as usize;
        let x = values(2, k * m);
        let wq = quantize(ty, &w, k);
        let deq: Vec<u8> = dequantize(ty, &wq, k * n)
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        for (what, bytes, key) in [
            ("quantized", &wq, "quant_fnv"),
            ("dequantized", &deq, "dequant_fnv"),
        ] {
            if format!("{:016x}", fnv1a(bytes)) != c[key].as_str().unwrap() {
                differ.push(format!("{} m={m}: {what} bytes differ", ty.name()));
            }
        }
        let got = ggml_matmul(ty, &wq, &x, k, n, m, threads);
        let want: Vec<u32> = c["bits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap() as u32)
            .collect();
        let bad: Vec<usize> = (0..want.len())
            .filter(|&i| got[i].to_bits() != want[i])
            .collect();
        if let Some(&i) = bad.first() {
            differ.push(format!(
                "{} m={m}: {} of {} values differ, e.g. [{i}] {:e} vs llama.cpp {:e}",
                ty.name(),
                bad.len(),
                want.len(),
                got[i],
                f32::from_bits(want[i])
            ));
        }
        if differ.len() > before {
            differing_cases += 1;
        }
    }
    assert!(cases.len() >= 2 * CASES.len(), "every type, both shapes");
    println!(
        "{path}: {} of {} cases bit-identical to llama.cpp's build ({skipped} skipped)",
        cases.len() - skipped - differing_cases,
        cases.len() - skipped
    );
    assert!(
        differ.is_empty(),
        "{path}: ggml differs from llama.cpp's build:\n{}",
        differ.join("\n")
    );
}

#[test]
fn quantize_roundtrip_is_close() {
    let w = values(3, 1024);
    for &(ty, _, tol) in CASES {
        let d = dequantize(ty, &quantize(ty, &w, 256), w.len());
        assert!(rel_err(&d, &w) <= tol, "{} roundtrip", ty.name());
    }
}

#[test]
fn type_table_agrees_with_ggml() {
    assert_eq!(Type::from_id(3), Some(Type::Q4_1));
    assert_eq!(Type::Q4_1.name(), "q4_1");
    assert_eq!(
        (Type::Q4_K.block_size(), Type::Q4_K.type_size()),
        (256, 144)
    );
    assert_eq!(Type::Q8_0.row_bytes(64), 68);
    // Removed ids (Q4_0_4_4 = 31) and ids past the end are refused, not looked up.
    assert_eq!(Type::from_id(31), None);
    assert_eq!(Type::from_id(4), None);
    assert_eq!(Type::from_id(10_000), None);
    for &(ty, _, _) in CASES {
        assert!(ty.cpu_supports_mul_mat(), "{}", ty.name());
    }
}

/// The same tensors in the GGUF type table and in ggml agree on block and byte sizes.
#[test]
fn gguf_type_table_matches_linked_ggml() {
    use llamabus::gguf::GgmlType;
    for t in GgmlType::ALL {
        let g = Type::from_id(t.id()).unwrap_or_else(|| panic!("ggml lacks {}", t.name()));
        assert_eq!(g.name(), t.name());
        assert_eq!(g.block_size() as u64, t.block_size(), "{}", t.name());
        assert_eq!(g.type_size() as u64, t.type_size(), "{}", t.name());
    }
}

#[test]
fn mapped_weights_are_not_copied_and_bounds_are_checked() {
    // 64 f32 values, placed at byte 16 of a host buffer.
    let vals: Vec<f32> = (0..64).map(|i| i as f32).collect();
    let mut bytes = vec![0u8; 16];
    bytes.extend(vals.iter().flat_map(|v| v.to_le_bytes()));
    let host = Arc::new(AlignedBytes::copy_from(&bytes));

    let ctx = Context::new_metadata(2, 0);
    ctx.new_tensor(Type::F32, &[64]).set_name("w");
    let mapped = AllocatedContext::map_host(ctx, host.clone(), |name| (name == "w").then_some(16))
        .expect("in bounds");
    let w = mapped.tensor("w").unwrap();
    let mut back = vec![0f32; 64];
    w.read_f32(&mut back);
    assert_eq!(back, vals);
    assert_eq!(
        Arc::strong_count(&host),
        2,
        "the mapping keeps the bytes alive"
    );

    // A placement running past the end is refused with the tensor's name.
    let ctx = Context::new_metadata(2, 0);
    ctx.new_tensor(Type::F32, &[64]).set_name("w");
    let err = AllocatedContext::map_host(ctx, host.clone(), |_| Some(17)).unwrap_err();
    assert!(
        matches!(err, GgmlError::OutOfMapping { ref name, .. } if name == "w"),
        "{err}"
    );

    // A tensor with no placement is refused.
    let ctx = Context::new_metadata(2, 0);
    ctx.new_tensor(Type::F32, &[4]).set_name("missing");
    let err = AllocatedContext::map_host(ctx, host.clone(), |_| None).unwrap_err();
    assert!(
        matches!(err, GgmlError::Unplaced(ref n) if n == "missing"),
        "{err}"
    );

    // A base pointer ggml would abort on is refused with an error instead.
    struct Skewed(Arc<AlignedBytes>);
    impl HostBytes for Skewed {
        fn host_bytes(&self) -> &[u8] {
            &self.0[1..]
        }
    }
    let ctx = Context::new_metadata(2, 0);
    ctx.new_tensor(Type::F32, &[4]).set_name("w");
    let err = AllocatedContext::map_host(ctx, Arc::new(Skewed(host)), |_| Some(0)).unwrap_err();
    assert!(matches!(err, GgmlError::Misaligned(_, 32)), "{err}");
}

#[test]
#[should_panic(expected = "mul_mat shape mismatch")]
fn shape_errors_panic_in_rust_before_ggml_aborts() {
    let ctx = Context::new_metadata(4, 0);
    let a = ctx.new_tensor(Type::F32, &[8, 2]);
    let b = ctx.new_tensor(Type::F32, &[4, 2]);
    let _ = ctx.mul_mat(a, b);
}

#[test]
#[should_panic(expected = "view out of bounds")]
fn views_past_the_end_are_refused() {
    let ctx = Context::new_metadata(4, 0);
    let a = ctx.new_tensor(Type::F32, &[8, 2]);
    let _ = ctx.view(a, [8, 3, 1, 1], [32, 96, 96], 0);
}

#[test]
#[should_panic(expected = "arena exhausted")]
fn context_arena_exhaustion_is_a_rust_panic() {
    let ctx = Context::new_metadata(1, 0);
    let _a = ctx.new_tensor(Type::F32, &[8]);
    let _b = ctx.new_tensor(Type::F32, &[8]);
}

#[test]
fn cpu_guard_passes_here_and_reports_simd() {
    // The variant these kernels ran on: the best this CPU runs, or LLAMABUS_CPU_VARIANT's
    // (scripts/test.sh runs this suite once per variant).
    let variant = cpu::active_variant().expect("this machine runs a compiled-in variant");
    let compiled = cpu::compiled_features();
    let ggml = llamabus::ggml::ggml_reported_features();
    println!(
        "target {} variant {} compiled {compiled:?}; ggml reports {ggml:?}",
        cpu::TARGET,
        variant.name()
    );
    if cfg!(target_arch = "x86_64") {
        assert!(compiled.contains(&"sse4.2"), "{compiled:?}");
        assert_eq!(
            compiled.contains(&"avx2"),
            ggml.contains(&"avx2"),
            "ggml's AVX2 path is compiled in exactly when the variant has AVX2: {ggml:?}"
        );
    }
    if cfg!(any(target_arch = "aarch64", target_arch = "arm")) {
        assert!(compiled.contains(&"neon"), "{compiled:?}");
        assert!(
            ggml.contains(&"neon"),
            "ggml's NEON path is compiled in: {ggml:?}"
        );
    }
}

#[test]
fn auxv_parsing_finds_hwcap() {
    // Two 32-bit pairs: (AT_PAGESZ=6, 4096), (AT_HWCAP=16, NEON|VFPv4).
    let mut raw = Vec::new();
    for w in [6u32, 4096, 16, (1 << 12) | (1 << 16)] {
        raw.extend(w.to_ne_bytes());
    }
    assert_eq!(cpu::parse_auxv(&raw, 4, 16), Some((1 << 12) | (1 << 16)));
    assert_eq!(cpu::parse_auxv(&raw, 4, 26), None);
    // A truncated trailing pair is ignored, not read out of bounds.
    assert_eq!(cpu::parse_auxv(&raw[..7], 4, 6), None);
}
