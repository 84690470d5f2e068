//! A seeded mutation sweep over a valid file: no mutation may panic.

use crate::Rng;
use llamabus::gguf::{Array, GgmlType, Gguf, GgufError, GgufWriter, Value};

// Mutation sweep

/// A small valid file with every structural feature: strings, arrays, several tensors.
fn fuzz_baseline() -> Vec<u8> {
    let mut rng = Rng(42);
    GgufWriter::new()
        .kv("general.architecture", Value::String("llama".into()))
        .kv("llama.block_count", Value::U32(1))
        .kv(
            "tokenizer.ggml.tokens",
            Value::Array(Array::String(vec!["a".into(), "bc".into()])),
        )
        .kv(
            "tokenizer.ggml.scores",
            Value::Array(Array::F32(vec![0.0, -1.0])),
        )
        .kv(
            "n",
            Value::Array(Array::Array(vec![Array::Bool(vec![true])])),
        )
        .tensor("token_embd.weight", &[32, 2], GgmlType::Q4_1, rng.bytes(40))
        .tensor("output_norm.weight", &[4], GgmlType::F32, rng.bytes(16))
        .to_bytes()
}

/// Parses `bytes`; a panic fails the test with the mutation that caused it.
fn must_not_panic(bytes: Vec<u8>, what: &dyn Fn() -> String) -> Result<Gguf, GgufError> {
    std::panic::catch_unwind(|| Gguf::from_bytes(bytes))
        .unwrap_or_else(|_| panic!("parser panicked on {}", what()))
}

#[test]
fn mutations_never_panic() {
    let base = fuzz_baseline();
    let good = Gguf::from_bytes(base.clone()).unwrap();
    let data_end = good
        .tensors()
        .iter()
        .map(|t| good.data_offset() + t.offset + t.n_bytes)
        .max()
        .unwrap() as usize;
    let header_len = good.data_offset() as usize;

    // Every truncation: an error whenever tensor data is cut.
    for len in 0..base.len() {
        let r = must_not_panic(base[..len].to_vec(), &|| format!("truncation to {len}"));
        if len < data_end {
            assert!(r.is_err(), "truncation to {len} parsed");
        }
    }

    // Every header byte overwritten with a few interesting values.
    let mut n_ok = 0;
    for pos in 0..header_len {
        for v in [
            0x00,
            0x01,
            0x7f,
            0x80,
            0xff,
            base[pos] ^ 0x01,
            base[pos].wrapping_add(32),
        ] {
            let mut m = base.clone();
            m[pos] = v;
            if must_not_panic(m, &|| format!("byte {pos} = {v:#04x}")).is_ok() {
                n_ok += 1;
            }
        }
    }
    assert!(
        n_ok > 0,
        "some benign mutations (e.g. in padding or values) should still parse"
    );

    // Seeded random multi-byte mutations, including 8-byte length fields set to extremes.
    let mut rng = Rng(0xdead_beef);
    for i in 0..20_000 {
        let mut m = base.clone();
        for _ in 0..1 + rng.below(4) {
            let pos = rng.below(header_len as u64) as usize;
            if rng.below(3) == 0 && pos + 8 <= m.len() {
                let v = [u64::MAX, 1 << 63, 1 << 32, 1 << 20, rng.next()][rng.below(5) as usize];
                m[pos..pos + 8].copy_from_slice(&v.to_le_bytes());
            } else {
                m[pos] = rng.next() as u8;
            }
        }
        if rng.below(4) == 0 {
            let cut = rng.below(m.len() as u64) as usize;
            m.truncate(cut);
        }
        let _ = must_not_panic(m, &|| format!("random mutation #{i}"));
    }
}
