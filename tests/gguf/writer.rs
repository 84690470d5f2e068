//! The writer: every value type round-trips, through bytes and through a file, and the
//! metadata accessors read what was written.

use crate::Rng;
use llamabus::gguf::{Array, GgmlType, Gguf, GgufError, GgufWriter, Value};
use std::path::Path;

fn every_value() -> Vec<(&'static str, Value)> {
    vec![
        ("t.u8", Value::U8(200)),
        ("t.i8", Value::I8(-5)),
        ("t.u16", Value::U16(60000)),
        ("t.i16", Value::I16(-30000)),
        ("t.u32", Value::U32(4_000_000_000)),
        ("t.i32", Value::I32(-7)),
        ("t.u64", Value::U64(u64::MAX)),
        ("t.i64", Value::I64(i64::MIN)),
        ("t.f32", Value::F32(1e-5)),
        ("t.f64", Value::F64(10000.0)),
        ("t.bool", Value::Bool(true)),
        ("t.str", Value::String("héllo ✓".into())),
        ("t.a.u8", Value::Array(Array::U8(vec![1, 2, 3]))),
        ("t.a.i8", Value::Array(Array::I8(vec![-1, 2]))),
        ("t.a.u16", Value::Array(Array::U16(vec![1, 65535]))),
        ("t.a.i16", Value::Array(Array::I16(vec![-1]))),
        ("t.a.u32", Value::Array(Array::U32(vec![]))),
        ("t.a.i32", Value::Array(Array::I32(vec![1, 2, 3, -4]))),
        ("t.a.u64", Value::Array(Array::U64(vec![u64::MAX]))),
        ("t.a.i64", Value::Array(Array::I64(vec![i64::MIN, 0]))),
        ("t.a.f32", Value::Array(Array::F32(vec![0.5, -0.25]))),
        ("t.a.f64", Value::Array(Array::F64(vec![1e300]))),
        ("t.a.bool", Value::Array(Array::Bool(vec![true, false]))),
        (
            "t.a.str",
            Value::Array(Array::String(vec!["<s>".into(), "".into(), "Ġthe".into()])),
        ),
        (
            "t.a.nested",
            Value::Array(Array::Array(vec![
                Array::U32(vec![1]),
                Array::String(vec!["x".into()]),
            ])),
        ),
    ]
}

#[test]
fn writer_round_trip() {
    let mut rng = Rng(0x5eed);
    let tensors: Vec<(&str, Vec<u64>, GgmlType)> = vec![
        ("token_embd.weight", vec![64, 3], GgmlType::Q4_1),
        ("output_norm.weight", vec![7], GgmlType::F32),
        ("blk.0.attn_q.weight", vec![256, 2, 1, 2], GgmlType::Q6_K),
        ("blk.0.ffn_down.weight", vec![32, 5], GgmlType::Q8_0),
        ("x.f16", vec![3], GgmlType::F16),
    ];
    for alignment in [32u32, 64, 8] {
        let mut w = GgufWriter::new();
        for (k, v) in every_value() {
            w = w.kv(k, v);
        }
        w = w.alignment(alignment);
        let mut datas = Vec::new();
        for (name, dims, ty) in &tensors {
            let n = ty.row_bytes(dims[0]).unwrap() * dims[1..].iter().product::<u64>();
            let data = rng.bytes(n as usize);
            datas.push(data.clone());
            w = w.tensor(*name, dims, *ty, data);
        }
        let g = Gguf::from_bytes(w.to_bytes()).unwrap();
        assert_eq!(g.version(), 3);
        assert_eq!(g.alignment(), u64::from(alignment));
        assert_eq!(g.data_offset() % u64::from(alignment), 0);
        let mut expected = every_value();
        expected.push(("general.alignment", Value::U32(alignment)));
        let got: Vec<_> = g
            .metadata()
            .iter()
            .map(|(k, v)| (k.to_owned(), v.clone()))
            .collect();
        let want: Vec<_> = expected
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        assert_eq!(got, want);
        assert_eq!(g.tensors().len(), tensors.len());
        for ((t, (name, dims, ty)), data) in g.tensors().iter().zip(&tensors).zip(&datas) {
            assert_eq!((&t.name[..], &t.dims, t.ty), (*name, dims, *ty));
            assert_eq!(t.offset % u64::from(alignment), 0);
            assert_eq!(g.tensor_data(t), &data[..], "{name}");
            assert_eq!(g.tensor(name), Some(t));
        }
    }
}

#[test]
fn writer_file_round_trip_via_open() {
    let dir = std::env::temp_dir().join(format!("llamabus-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tiny.gguf");
    let w = GgufWriter::new()
        .kv("general.architecture", Value::String("llama".into()))
        .tensor("w", &[4], GgmlType::F32, vec![1; 16]);
    w.write(&path).unwrap();
    let g = Gguf::open(&path).unwrap();
    assert_eq!(
        g.metadata().req_str("general.architecture").unwrap(),
        "llama"
    );
    assert_eq!(g.tensor_data(&g.tensors()[0]), &[1; 16]);
    std::fs::remove_dir_all(&dir).unwrap();
    // A parse error through `open` names the path and keeps the rule.
    let bad = dir.with_extension("bad.gguf");
    std::fs::write(&bad, b"GGUF\x01\0\0\0").unwrap();
    let e = Gguf::open(&bad).unwrap_err();
    std::fs::remove_file(&bad).unwrap();
    assert!(e.to_string().contains("bad.gguf"), "{e}");
    assert!(
        matches!(e.root(), GgufError::UnsupportedVersion { version: 1, .. }),
        "{e:?}"
    );
    let e = Gguf::open(Path::new("/nonexistent/x.gguf")).unwrap_err();
    assert!(matches!(e, GgufError::Io { .. }), "{e:?}");
}

#[test]
fn metadata_accessors() {
    let mut w = GgufWriter::new()
        .kv("u32", Value::U32(7))
        .kv("i32", Value::I32(30))
        .kv("neg", Value::I32(-1))
        .kv("u64big", Value::U64(1 << 40))
        .kv("f64", Value::F64(1e-6))
        .kv("f64huge", Value::F64(1e300))
        .kv("s", Value::String("llama".into()));
    for (k, v) in every_value() {
        w = w.kv(k, v);
    }
    let g = Gguf::from_bytes(w.to_bytes()).unwrap();
    let m = g.metadata();
    assert_eq!(m.req_u32("u32").unwrap(), 7);
    assert_eq!(m.req_u32("i32").unwrap(), 30);
    assert_eq!(m.req_u64("u64big").unwrap(), 1 << 40);
    assert_eq!(m.opt_i64("neg").unwrap(), Some(-1));
    assert_eq!(m.opt_u32("absent").unwrap(), None);
    assert_err!(
        m.req_u32("absent").unwrap_err(),
        GgufError::MissingKey(_),
        "'absent'"
    );
    assert_err!(
        m.req_u32("u64big").unwrap_err(),
        GgufError::OutOfRange { .. },
        "'u64big'",
        "u32"
    );
    assert_err!(
        m.opt_u64("neg").unwrap_err(),
        GgufError::OutOfRange { .. },
        "'neg'"
    );
    assert_err!(
        m.opt_u32("s").unwrap_err(),
        GgufError::WrongType {
            found: "string",
            ..
        },
        "'s'"
    );
    assert_eq!(m.req_f32("f64").unwrap(), 1e-6_f32);
    assert_err!(
        m.opt_f32("f64huge").unwrap_err(),
        GgufError::OutOfRange { .. },
        "'f64huge'"
    );
    assert_err!(
        m.opt_f32("u32").unwrap_err(),
        GgufError::WrongType { .. },
        "'u32'"
    );
    assert_eq!(m.req_str("s").unwrap(), "llama");
    assert_eq!(m.opt_bool("t.bool").unwrap(), Some(true));
    assert_eq!(m.opt_str_array("t.a.str").unwrap().unwrap().len(), 3);
    assert_eq!(m.opt_f32_array("t.a.f32").unwrap(), Some(&[0.5, -0.25][..]));
    assert_eq!(
        m.opt_i32_array("t.a.i32").unwrap(),
        Some(&[1, 2, 3, -4][..])
    );
    assert_err!(
        m.opt_i32_array("t.a.u32").unwrap_err(),
        GgufError::WrongType {
            found: "array[u32]",
            ..
        },
        "array[i32]"
    );
    assert!(!m.is_empty());
    assert_eq!(m.len(), m.iter().count());
}
