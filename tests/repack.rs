//! Repacked weights (`[model] repack`): ggml's CPU "extra" buffer types.
//!
//! - which weights ggml offers a repacked layout for on this CPU, asked as llama.cpp asks;
//! - a matrix product with repacked weights against the same product with the weights in place
//!   (GEMV and GEMM paths);
//! - a model's placement: every `ggml_mul_mat` weight ggml offers a layout for is repacked,
//!   the token embeddings never (they are read by `ggml_get_rows`, also when tied), and
//!   `repack = false` repacks nothing;
//! - the memory guard counts the repacked bytes, which loading reports.
//!
//! Which types have a layout depends on the CPU (AVX2: Q4_0, Q4_K, IQ4_NL; ARM dotprod/i8mm:
//! also Q5_K, Q6_K, Q8_0; AVX-512: Q2_K). Expectations that need one print why they are skipped
//! elsewhere. The tiny-model oracle with repack on and off is in `tests/tiny_model.rs`.

mod common;

use std::sync::Arc;

use common::tempdir::TempDir;
use common::tiny::{write_tiny_model, TinySpec};
use llamabus::engine::memory::{self, Shape};
use llamabus::ggml::{
    ggml_reported_features, quantize, AlignedBytes, AllocatedContext, Context, CpuBackend,
    ExtraBufferType, GraphAllocator, HostBytes, Type,
};
use llamabus::gguf::Gguf;
use llamabus::model::{LoadOptions, Model};

/// Whether ggml's repack offers Q4_0 and Q4_K layouts on this CPU (AVX2 on x86; dotprod or
/// i8mm on ARM), per `ggml_repack_get_optimal_repack_type`.
fn cpu_repacks_q4() -> bool {
    let f = ggml_reported_features();
    f.contains(&"avx2") || f.contains(&"dotprod")
}

fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn choice(ty: Type, ne: [i64; 2]) -> Option<ExtraBufferType> {
    let ctx = Context::new_metadata(1, 0);
    ExtraBufferType::for_mul_mat(ctx.new_tensor(ty, &ne))
}

#[test]
fn ggml_offers_layouts_by_type_and_shape() {
    let names: Vec<String> = ExtraBufferType::cpu_all()
        .iter()
        .map(|b| b.name())
        .collect();
    println!(
        "extra buffer types: {names:?}; ggml reports {:?}",
        ggml_reported_features()
    );
    // No layout for Q4_1 or F32 on any CPU.
    assert_eq!(choice(Type::Q4_1, [256, 64]), None);
    assert_eq!(choice(Type::F32, [256, 64]), None);
    if !cpu_repacks_q4() {
        println!("skipped: this CPU has neither AVX2 nor ARM dotprod, so no Q4 layouts");
        assert_eq!(choice(Type::Q4_0, [256, 64]), None);
        return;
    }
    assert!(names.iter().any(|n| n == "CPU_REPACK"), "{names:?}");
    let q4_0 = choice(Type::Q4_0, [256, 64]).expect("Q4_0 has a repacked layout here");
    assert_eq!(q4_0.name(), "CPU_REPACK");
    assert!(choice(Type::Q4_K, [256, 64]).is_some());
    // Rows are interleaved in groups of 8 (4 on some ARM layouts): 6 rows cannot be.
    assert_eq!(choice(Type::Q4_0, [256, 6]), None);
}

/// `ggml_mul_mat(w, x)` with `w` ([k, n] of `ty`) placed as `place` says.
fn matmul(ty: Type, wq: &[u8], x: &[f32], k: usize, n: usize, m: usize, repack: bool) -> Vec<f32> {
    let mut backend = CpuBackend::new(2).unwrap();
    let wctx = Context::new_metadata(2, 0);
    let wt = wctx.new_tensor(ty, &[k as i64, n as i64]).set_name("w");
    let weights = if repack {
        let buft = ExtraBufferType::for_mul_mat(wt).expect("a layout");
        AllocatedContext::load_into(wctx, buft, |_| Some(wq))
            .unwrap()
            .expect("one tensor")
    } else {
        let host: Arc<dyn HostBytes> = Arc::new(AlignedBytes::copy_from(wq));
        AllocatedContext::map_host(wctx, host, |_| Some(0)).unwrap()
    };
    let w = weights.tensor("w").unwrap();
    let ictx = Context::new_metadata(2, 0);
    ictx.new_tensor(Type::F32, &[k as i64, m as i64])
        .set_name("x");
    let inputs = backend.alloc_context(ictx).unwrap();
    let xt = inputs.tensor("x").unwrap();
    xt.write_f32(x);
    let gctx = Context::new_metadata(8, 16);
    let mut graph = gctx.new_graph(16);
    let y = gctx.mul_mat(w, xt).set_output();
    graph.build_forward_expand(y);
    let mut galloc = GraphAllocator::new_cpu();
    galloc.alloc_graph(&graph).unwrap();
    backend.compute(&graph).unwrap();
    let mut out = vec![0f32; n * m];
    y.read_f32(&mut out);
    out
}

#[test]
fn repacked_products_match_products_in_place() {
    if !cpu_repacks_q4() {
        println!("skipped: no repacked Q4 layouts on this CPU");
        return;
    }
    let (k, n) = (512usize, 64usize);
    let w = values(3, k * n);
    for ty in [Type::Q4_0, Type::Q4_K] {
        let wq = quantize(ty, &w, k);
        // 1 column: the GEMV kernels; 4 and 13: GEMM in blocks of 4 plus a remainder.
        for m in [1usize, 4, 13] {
            let x = values(10 + m as u64, k * m);
            let plain = matmul(ty, &wq, &x, k, n, m, false);
            let packed = matmul(ty, &wq, &x, k, n, m, true);
            let num: f64 = plain
                .iter()
                .zip(&packed)
                .map(|(a, b)| f64::from(a - b).powi(2))
                .sum();
            let den: f64 = plain.iter().map(|a| f64::from(*a).powi(2)).sum();
            let rel = (num / den).sqrt();
            println!(
                "{} m={m}: repacked vs in place, rel RMS {rel:.2e}",
                ty.name()
            );
            // Both quantize x the same way and sum integer dot products; only the order of the
            // float accumulation of blocks differs (measured ≤ 1e-6 on AVX-512).
            assert!(rel < 1e-4, "{} m={m}: rel RMS {rel}", ty.name());
        }
    }
}

#[test]
#[should_panic(expected = "is repacked")]
fn repacked_bytes_are_not_read_back() {
    if !cpu_repacks_q4() {
        panic!("is repacked (skipped: no repacked layouts on this CPU)");
    }
    let wq = quantize(Type::Q4_0, &values(5, 256 * 8), 256);
    let ctx = Context::new_metadata(1, 0);
    let t = ctx.new_tensor(Type::Q4_0, &[256, 8]).set_name("w");
    let buft = ExtraBufferType::for_mul_mat(t).unwrap();
    let loaded = AllocatedContext::load_into(ctx, buft, |_| Some(&wq[..]))
        .unwrap()
        .unwrap();
    let mut out = vec![0u8; wq.len()];
    loaded.tensor("w").unwrap().read_bytes(&mut out);
}

/// Bytes of the weights ggml would give a layout: every matrix multiplied by `ggml_mul_mat`
/// (blocks' and `output.weight`), never `token_embd.weight`.
fn expected_repacked(gguf: &Gguf) -> u64 {
    gguf.tensors()
        .iter()
        .filter(|t| t.name != "token_embd.weight" && t.dims.len() == 2)
        .map(|t| t.n_bytes)
        .sum()
}

#[test]
fn models_repack_their_matrices_but_not_the_embeddings() {
    let dir = TempDir::new();
    for ty in [Type::Q4_0, Type::Q4_K, Type::Q4_1] {
        for tied in [false, true] {
            let mut spec = TinySpec::new(ty);
            spec.tied_embeddings = tied;
            let path = dir.join(&format!("{}-{tied}.gguf", ty.name()));
            write_tiny_model(&spec, &path);
            let gguf = Gguf::open(&path).unwrap();
            let on = Model::load_with(&path, LoadOptions { repack: true }).unwrap();
            let off = Model::load_with(&path, LoadOptions { repack: false }).unwrap();
            let label = format!("{} tied={tied}", ty.name());
            println!("{label}: repacked {} bytes", on.repacked_bytes());
            assert_eq!(off.repacked_bytes(), 0, "{label}: repack = false");
            assert_eq!(on.weight_bytes(), off.weight_bytes(), "{label}");
            let want = if ty != Type::Q4_1 && cpu_repacks_q4() {
                expected_repacked(&gguf)
            } else {
                0
            };
            assert!(ty == Type::Q4_1 || !cpu_repacks_q4() || want > 0);
            assert_eq!(on.repacked_bytes(), want, "{label}");

            // The memory guard reads the same choice from the header alone.
            let shape = |repack| Shape {
                kv_cells: 64,
                parallel: 1,
                repack,
            };
            let file = std::fs::metadata(&path).unwrap().len();
            let need_on = memory::need("m", &path, shape(true)).unwrap();
            let need_off = memory::need("m", &path, shape(false)).unwrap();
            assert_eq!(need_on.repacked, want, "{label}");
            assert_eq!(need_on.file, file - want, "{label}");
            assert_eq!((need_off.repacked, need_off.file), (0, file), "{label}");
            assert_eq!(
                need_on.total(),
                need_off.total(),
                "{label}: same bytes, other kind"
            );
        }
    }
}
