//! GGUF reader tests: one hand-built file per rejection rule, writer round trips, the real
//! model and llama.cpp's vocab files, and a seeded mutation sweep that must never panic.

use std::path::{Path, PathBuf};

use llamabus::gguf::GgmlType;
use llamabus::gguf::GgufWriter;
use llamabus::gguf::{
    value_type, Array, Gguf, GgufError, Value, MAX_ARRAY_DEPTH, MAX_ARRAY_LEN, MAX_KEY_LEN,
    MAX_KVS, MAX_STRING_LEN, MAX_TENSORS, MAX_TENSOR_NAME_LEN,
};

// ---------------------------------------------------------------------------------------------
// Hand-built bytes

/// A little-endian byte builder for crafting GGUF files field by field.
#[derive(Default, Clone)]
struct Raw(Vec<u8>);

impl Raw {
    /// Magic, version and the two counts.
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> Raw {
        Raw::default()
            .bytes(b"GGUF")
            .u32(version)
            .u64(n_tensors)
            .u64(n_kv)
    }
    fn bytes(mut self, b: &[u8]) -> Raw {
        self.0.extend_from_slice(b);
        self
    }
    fn u8(self, v: u8) -> Raw {
        self.bytes(&[v])
    }
    fn u32(self, v: u32) -> Raw {
        self.bytes(&v.to_le_bytes())
    }
    fn u64(self, v: u64) -> Raw {
        self.bytes(&v.to_le_bytes())
    }
    /// A GGUF string: u64 length, then the bytes.
    fn str(self, s: &str) -> Raw {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }
    /// A u32 metadata pair.
    fn kv_u32(self, key: &str, v: u32) -> Raw {
        self.str(key).u32(value_type::U32).u32(v)
    }
    /// A tensor info record.
    fn tensor(self, name: &str, dims: &[u64], ty: u32, offset: u64) -> Raw {
        let mut r = self.str(name).u32(dims.len() as u32);
        for &d in dims {
            r = r.u64(d);
        }
        r.u32(ty).u64(offset)
    }
    /// Zero padding up to a multiple of `align`.
    fn pad(mut self, align: usize) -> Raw {
        let n = self.0.len().next_multiple_of(align);
        self.0.resize(n, 0);
        self
    }
    fn zeros(mut self, n: usize) -> Raw {
        self.0.resize(self.0.len() + n, 0);
        self
    }
    fn parse(self) -> Result<Gguf, GgufError> {
        Gguf::from_bytes(self.0)
    }
    fn err(self) -> GgufError {
        match self.parse() {
            Ok(g) => panic!("expected an error, parsed {g:?}"),
            Err(e) => e,
        }
    }
}

const F32: u32 = 0;
const Q4_1: u32 = 3;

/// Asserts `e` matches `pat` and its message contains every string in `needles`.
macro_rules! assert_err {
    ($e:expr, $pat:pat $(if $guard:expr)?, $($needle:expr),* $(,)?) => {{
        let e = $e;
        assert!(matches!(e, $pat $(if $guard)?), "wrong variant: {e:?}");
        let msg = e.to_string();
        $( assert!(msg.contains($needle), "message {msg:?} lacks {:?}", $needle); )*
    }};
}

// ---------------------------------------------------------------------------------------------
// One test per rejection rule

#[test]
fn rejects_bad_magic() {
    let e = Raw::default().bytes(b"GGML").u32(3).u64(0).u64(0).err();
    assert_err!(e, GgufError::BadMagic { found } if &found == b"GGML", "magic");
}

#[test]
fn rejects_unsupported_versions() {
    for (v, why) in [
        (0, "invalid"),
        (1, "v1"),
        (4, "newer"),
        (0x0300_0000, "big-endian"),
    ] {
        let e = Raw::header(v, 0, 0).err();
        assert_err!(e, GgufError::UnsupportedVersion { version, .. } if version == v, why);
    }
    // v2 shares v3's layout and is accepted.
    assert_eq!(Raw::header(2, 0, 0).parse().unwrap().version(), 2);
}

#[test]
fn rejects_truncated_header() {
    let full = Raw::header(3, 0, 0).0;
    for (len, what) in [
        (0, "magic"),
        (3, "magic"),
        (6, "version"),
        (12, "tensor count"),
        (23, "metadata key/value count"),
    ] {
        let e = Gguf::from_bytes(full[..len].to_vec()).unwrap_err();
        assert_err!(e, GgufError::Truncated { .. }, what);
    }
    assert!(Gguf::from_bytes(full).is_ok());
}

#[test]
fn rejects_truncated_key() {
    // The key's length says 30 bytes; 20 follow.
    let e = Raw::header(3, 0, 1)
        .u64(30)
        .bytes(b"general.architecture")
        .err();
    assert_err!(
        e,
        GgufError::Truncated {
            needed: 30,
            available: 20,
            ..
        },
        "key #0"
    );
    // The key is complete but its value type is missing.
    let e = Raw::header(3, 0, 1).str("general.architecture").err();
    assert_err!(
        e,
        GgufError::Truncated { .. },
        "value type of key 'general.architecture'"
    );
}

#[test]
fn rejects_truncated_value() {
    let e = Raw::header(3, 0, 1)
        .str("llama.block_count")
        .u32(value_type::U64)
        .bytes(&[1, 2, 3])
        .err();
    assert_err!(
        e,
        GgufError::Truncated {
            needed: 8,
            available: 3,
            ..
        },
        "value of key 'llama.block_count'"
    );
    let e = Raw::header(3, 0, 1)
        .str("general.name")
        .u32(value_type::STRING)
        .u64(100)
        .bytes(b"Smol")
        .err();
    assert_err!(e, GgufError::Truncated { .. }, "key 'general.name'");
}

#[test]
fn rejects_truncated_array() {
    // Header of the array cut short.
    let e = Raw::header(3, 0, 1)
        .str("tokenizer.ggml.scores")
        .u32(value_type::ARRAY)
        .u32(value_type::F32)
        .bytes(&[3, 0])
        .err();
    assert_err!(
        e,
        GgufError::Truncated { .. },
        "array length of key 'tokenizer.ggml.scores'"
    );
    // 4 elements announced, 3 present.
    let e = Raw::header(3, 0, 1)
        .str("tokenizer.ggml.scores")
        .u32(value_type::ARRAY)
        .u32(value_type::F32)
        .u64(4)
        .zeros(12)
        .err();
    assert_err!(
        e,
        GgufError::Truncated {
            needed: 16,
            available: 12,
            ..
        },
        "tokenizer.ggml.scores"
    );
    // A string element cut short.
    let e = Raw::header(3, 0, 1)
        .str("tokenizer.ggml.tokens")
        .u32(value_type::ARRAY)
        .u32(value_type::STRING)
        .u64(2)
        .str("<s>")
        .u64(5)
        .bytes(b"ab")
        .err();
    assert_err!(
        e,
        GgufError::Truncated { .. },
        "element 1 of key 'tokenizer.ggml.tokens'"
    );
}

#[test]
fn rejects_truncated_tensor_info() {
    // A long name keeps every cut above the tensor-count plausibility check (32 bytes/tensor).
    let name = "blk.0.attn_output.weight.with.a.long.name";
    let full = Raw::header(3, 1, 0).tensor(name, &[64, 2], F32, 0).0;
    let name_end = 24 + 8 + name.len();
    for (cut, what) in [
        (name_end - 1, "name of tensor #0".to_owned()),
        (name_end, format!("dimension count of tensor '{name}'")),
        (name_end + 4 + 3, format!("dimension 0 of tensor '{name}'")),
        (
            name_end + 4 + 8 + 5,
            format!("dimension 1 of tensor '{name}'"),
        ),
        (name_end + 4 + 16 + 2, format!("type of tensor '{name}'")),
        (full.len() - 1, format!("data offset of tensor '{name}'")),
    ] {
        let e = Gguf::from_bytes(full[..cut].to_vec()).unwrap_err();
        assert_err!(e, GgufError::Truncated { .. }, &what);
    }
}

#[test]
fn rejects_truncated_data() {
    // One f32 tensor of 16 elements (64 bytes), data cut to 40 bytes.
    let e = Raw::header(3, 1, 0)
        .tensor("output_norm.weight", &[16], F32, 0)
        .pad(32)
        .zeros(40)
        .err();
    assert_err!(
        e,
        GgufError::TensorOutOfBounds { n_bytes: 64, .. },
        "output_norm.weight"
    );
    // Header ends but the padding to the data section is missing.
    let e = Raw::header(3, 1, 0)
        .tensor("output_norm.weight", &[16], F32, 0)
        .err();
    assert_err!(e, GgufError::Truncated { .. }, "padding");
}

#[test]
fn caps_tensor_count() {
    let e = Raw::header(3, MAX_TENSORS + 1, 0).zeros(64).err();
    assert_err!(e, GgufError::TooMany { what: "tensor", .. }, "65537");
    // Under the cap but impossible for the bytes left: rejected before allocating.
    let e = Raw::header(3, 1000, 0).zeros(100).err();
    assert_err!(
        e,
        GgufError::CountExceedsFile {
            what: "tensor",
            count: 1000,
            ..
        },
        "1000"
    );
}

#[test]
fn caps_kv_count() {
    let e = Raw::header(3, 0, MAX_KVS + 1).err();
    assert_err!(
        e,
        GgufError::TooMany {
            what: "metadata key/value",
            ..
        },
        "exceeds the cap"
    );
    let e = Raw::header(3, 0, u64::MAX).err();
    assert_err!(e, GgufError::TooMany { .. }, "18446744073709551615");
    let e = Raw::header(3, 0, 1000).zeros(100).err();
    assert_err!(
        e,
        GgufError::CountExceedsFile { count: 1000, .. },
        "cannot fit"
    );
}

#[test]
fn caps_string_length() {
    // Over the cap: rejected on the length alone, whatever follows.
    let e = Raw::header(3, 0, 1)
        .str("tokenizer.chat_template")
        .u32(value_type::STRING)
        .u64(MAX_STRING_LEN + 1)
        .zeros(16)
        .err();
    assert_err!(
        e,
        GgufError::StringTooLong { .. },
        "key 'tokenizer.chat_template'",
        "over the cap"
    );
    let e = Raw::header(3, 0, 1)
        .str("k")
        .u32(value_type::STRING)
        .u64(u64::MAX)
        .err();
    assert_err!(e, GgufError::StringTooLong { len: u64::MAX, .. }, "key 'k'");
    // Under the cap but longer than the file: truncation, no allocation.
    let e = Raw::header(3, 0, 1)
        .str("k")
        .u32(value_type::STRING)
        .u64(MAX_STRING_LEN)
        .bytes(b"abc")
        .err();
    assert_err!(e, GgufError::Truncated { available: 3, .. }, "key 'k'");
    // Exactly at the cap is fine.
    let big = "x".repeat(MAX_STRING_LEN as usize);
    let g = Raw::header(3, 0, 1)
        .str("k")
        .u32(value_type::STRING)
        .str(&big)
        .parse()
        .unwrap();
    assert_eq!(
        g.metadata().opt_str("k").unwrap().map(str::len),
        Some(big.len())
    );
}

#[test]
fn caps_key_length() {
    let long = "a".repeat(MAX_KEY_LEN as usize + 1);
    let e = Raw::header(3, 0, 1)
        .str(&long)
        .u32(value_type::U8)
        .u8(0)
        .err();
    assert_err!(e, GgufError::StringTooLong { len, .. } if len == MAX_KEY_LEN + 1, "key #0");
}

#[test]
fn caps_tensor_name_length() {
    let ok = "n".repeat(MAX_TENSOR_NAME_LEN as usize);
    let g = Raw::header(3, 1, 0)
        .tensor(&ok, &[8], F32, 0)
        .pad(32)
        .zeros(32)
        .parse()
        .unwrap();
    assert_eq!(g.tensors()[0].name, ok);
    let long = "n".repeat(MAX_TENSOR_NAME_LEN as usize + 1);
    let e = Raw::header(3, 1, 0)
        .tensor(&long, &[8], F32, 0)
        .pad(32)
        .zeros(32)
        .err();
    assert_err!(
        e,
        GgufError::StringTooLong { len: 64, .. },
        "name of tensor #0"
    );
}

#[test]
fn rejects_invalid_utf8_key() {
    let e = Raw::header(3, 0, 1)
        .u64(4)
        .bytes(&[b'a', 0xff, 0xfe, b'b'])
        .u32(value_type::U8)
        .u8(1)
        .err();
    assert_err!(e, GgufError::InvalidUtf8 { .. }, "key #0");
}

#[test]
fn rejects_invalid_utf8_value() {
    let e = Raw::header(3, 0, 1)
        .str("general.name")
        .u32(value_type::STRING)
        .u64(2)
        .bytes(&[0xc3, 0x28])
        .err();
    assert_err!(e, GgufError::InvalidUtf8 { .. }, "key 'general.name'");
    // Also inside a string array, naming the element.
    let e = Raw::header(3, 0, 1)
        .str("tokenizer.ggml.tokens")
        .u32(value_type::ARRAY)
        .u32(value_type::STRING)
        .u64(2)
        .str("ok")
        .u64(1)
        .u8(0x80)
        .err();
    assert_err!(
        e,
        GgufError::InvalidUtf8 { .. },
        "element 1 of key 'tokenizer.ggml.tokens'"
    );
}

#[test]
fn rejects_empty_key() {
    let e = Raw::header(3, 0, 1)
        .str("")
        .u32(value_type::U8)
        .u8(0)
        .zeros(4)
        .err();
    assert_err!(e, GgufError::EmptyKey { index: 0, .. }, "empty");
}

#[test]
fn caps_array_length() {
    let e = Raw::header(3, 0, 1)
        .str("tokenizer.ggml.merges")
        .u32(value_type::ARRAY)
        .u32(value_type::STRING)
        .u64(MAX_ARRAY_LEN + 1)
        .err();
    assert_err!(
        e,
        GgufError::ArrayTooLong { .. },
        "key 'tokenizer.ggml.merges'"
    );
    let e = Raw::header(3, 0, 1)
        .str("a")
        .u32(value_type::ARRAY)
        .u32(value_type::U64)
        .u64(u64::MAX)
        .err();
    assert_err!(e, GgufError::ArrayTooLong { len: u64::MAX, .. }, "key 'a'");
}

#[test]
fn checks_array_bytes_against_file() {
    // Under the cap, but len × 8 bytes cannot be in the file: rejected before allocating.
    let e = Raw::header(3, 0, 1)
        .str("tokenizer.ggml.tokens")
        .u32(value_type::ARRAY)
        .u32(value_type::STRING)
        .u64(MAX_ARRAY_LEN)
        .zeros(64)
        .err();
    assert_err!(
        e,
        GgufError::Truncated { needed, available: 64, .. } if needed == MAX_ARRAY_LEN * 8,
        "tokenizer.ggml.tokens"
    );
}

#[test]
fn limits_array_nesting() {
    fn nested(depth: usize) -> Raw {
        let mut r = Raw::header(3, 0, 1).str("deep").u32(value_type::ARRAY);
        for _ in 1..depth {
            r = r.u32(value_type::ARRAY).u64(1);
        }
        r.u32(value_type::U8).u64(1).u8(7)
    }
    let g = nested(MAX_ARRAY_DEPTH).parse().unwrap();
    assert!(matches!(
        g.metadata().get("deep"),
        Some(Value::Array(Array::Array(_)))
    ));
    let e = nested(MAX_ARRAY_DEPTH + 1).err();
    assert_err!(e, GgufError::ArrayTooDeep { .. }, "key 'deep'");
    // A hostile file nesting far deeper does not overflow the stack.
    let e = nested(100_000).err();
    assert_err!(e, GgufError::ArrayTooDeep { .. }, "deep");
}

#[test]
fn rejects_unknown_value_type() {
    let e = Raw::header(3, 0, 1)
        .str("general.weird")
        .u32(13)
        .zeros(8)
        .err();
    assert_err!(
        e,
        GgufError::UnknownValueType { type_id: 13, .. },
        "key 'general.weird'"
    );
    let e = Raw::header(3, 0, 1)
        .str("general.weird")
        .u32(value_type::ARRAY)
        .u32(0xdead)
        .u64(1)
        .zeros(8)
        .err();
    assert_err!(
        e,
        GgufError::UnknownValueType {
            type_id: 0xdead,
            ..
        },
        "key 'general.weird'"
    );
}

#[test]
fn rejects_invalid_bool() {
    let e = Raw::header(3, 0, 1)
        .str("general.flag")
        .u32(value_type::BOOL)
        .u8(2)
        .zeros(4)
        .err();
    assert_err!(
        e,
        GgufError::InvalidBool { value: 2, .. },
        "key 'general.flag'"
    );
}

#[test]
fn rejects_unknown_tensor_type() {
    for id in [4, 31, 38, 43, u32::MAX] {
        let e = Raw::header(3, 1, 0)
            .tensor("blk.0.attn_q.weight", &[32], id, 0)
            .pad(32)
            .zeros(256)
            .err();
        assert_err!(e, GgufError::UnknownTensorType { type_id, .. } if type_id == id, "tensor 'blk.0.attn_q.weight'");
    }
}

#[test]
fn rejects_bad_dim_count() {
    for n in [0u32, 5, u32::MAX] {
        let e = Raw::header(3, 1, 0).str("t").u32(n).zeros(64).err();
        assert_err!(e, GgufError::BadDimCount { n_dims, .. } if n_dims == n, "tensor 't'");
    }
}

#[test]
fn rejects_zero_dim() {
    let e = Raw::header(3, 1, 0)
        .tensor("t", &[32, 0], F32, 0)
        .pad(32)
        .zeros(32)
        .err();
    assert_err!(e, GgufError::ZeroDim { index: 1, .. }, "tensor 't'");
}

#[test]
fn rejects_element_count_overflow() {
    let e = Raw::header(3, 1, 0)
        .tensor("t", &[1 << 32, 1 << 32], F32, 0)
        .pad(32)
        .err();
    assert_err!(e, GgufError::ElementCountOverflow { .. }, "tensor 't'");
    // A single dim above i64::MAX (ggml's ne[] is int64_t).
    let e = Raw::header(3, 1, 0)
        .tensor("t", &[1 << 63], F32, 0)
        .pad(32)
        .err();
    assert_err!(e, GgufError::ElementCountOverflow { .. }, "tensor 't'");
}

#[test]
fn rejects_byte_size_overflow() {
    // 2^62 f64 elements fit in i64, but 2^65 bytes do not fit in u64.
    let e = Raw::header(3, 1, 0)
        .tensor("t", &[1 << 31, 1 << 31], 28, 0)
        .pad(32)
        .err();
    assert_err!(e, GgufError::ByteSizeOverflow { .. }, "tensor 't'");
}

#[test]
fn rejects_row_not_block_multiple() {
    let e = Raw::header(3, 1, 0)
        .tensor("blk.0.ffn_up.weight", &[33, 2], Q4_1, 0)
        .pad(32)
        .zeros(64)
        .err();
    assert_err!(
        e,
        GgufError::RowNotBlockMultiple {
            ne0: 33,
            block: 32,
            ..
        },
        "tensor 'blk.0.ffn_up.weight'",
        "q4_1"
    );
}

#[test]
fn rejects_duplicate_key() {
    let e = Raw::header(3, 0, 2)
        .kv_u32("llama.block_count", 1)
        .kv_u32("llama.block_count", 2)
        .err();
    assert_err!(e, GgufError::DuplicateKey { .. }, "'llama.block_count'");
}

#[test]
fn rejects_duplicate_tensor() {
    let e = Raw::header(3, 2, 0)
        .tensor("output.weight", &[8], F32, 0)
        .tensor("output.weight", &[8], F32, 32)
        .pad(32)
        .zeros(64)
        .err();
    assert_err!(e, GgufError::DuplicateTensor { .. }, "'output.weight'");
}

#[test]
fn rejects_bad_alignment() {
    for a in [0u32, 48, 3] {
        let e = Raw::header(3, 0, 1).kv_u32("general.alignment", a).err();
        assert_err!(
            e,
            GgufError::BadAlignment { .. },
            "general.alignment",
            "power of two"
        );
    }
    let e = Raw::header(3, 0, 1)
        .str("general.alignment")
        .u32(value_type::STRING)
        .str("32")
        .err();
    assert_err!(e, GgufError::WrongType { .. }, "general.alignment");
    // Absent: 32. Present: honoured, also for the data section start.
    assert_eq!(Raw::header(3, 0, 0).parse().unwrap().alignment(), 32);
    let g = Raw::header(3, 1, 1)
        .kv_u32("general.alignment", 256)
        .tensor("t", &[8], F32, 0)
        .pad(256)
        .zeros(32)
        .parse()
        .unwrap();
    assert_eq!((g.alignment(), g.data_offset()), (256, 256));
}

#[test]
fn rejects_misaligned_tensor() {
    let e = Raw::header(3, 1, 0)
        .tensor("t", &[8], F32, 16)
        .pad(32)
        .zeros(64)
        .err();
    assert_err!(
        e,
        GgufError::MisalignedTensor {
            offset: 16,
            alignment: 32,
            ..
        },
        "tensor 't'"
    );
}

#[test]
fn rejects_tensor_out_of_bounds() {
    // Starts past the end.
    let e = Raw::header(3, 1, 0)
        .tensor("t", &[8], F32, 1 << 20)
        .pad(32)
        .zeros(32)
        .err();
    assert_err!(e, GgufError::TensorOutOfBounds { .. }, "tensor 't'");
    // data_offset + offset + n_bytes overflows u64.
    let e = Raw::header(3, 1, 0)
        .tensor("t", &[8], F32, u64::MAX - 31)
        .pad(32)
        .zeros(32)
        .err();
    assert_err!(e, GgufError::TensorOutOfBounds { .. }, "tensor 't'");
}

#[test]
fn rejects_overlapping_tensors() {
    let e = Raw::header(3, 2, 0)
        .tensor("a", &[16], F32, 0) // bytes 0..64
        .tensor("b", &[8], F32, 32) // bytes 32..64
        .pad(32)
        .zeros(128)
        .err();
    assert_err!(
        e,
        GgufError::OverlappingTensors {
            offset: 32,
            first_end: 64,
            ..
        },
        "'a'",
        "'b'"
    );
}

// ---------------------------------------------------------------------------------------------
// Writer round trip and accessors

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

/// Deterministic pseudo-random bytes (xorshift64*), so tests need no `rand`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
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

// ---------------------------------------------------------------------------------------------
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

/// A small SentencePiece vocabulary with the given special-id metadata.
fn spm_vocab_with(ids: &[(&str, u32)]) -> Gguf {
    let tokens: Vec<String> = ["<unk>", "<s>", "</s>", "\u{2581}a", "b"]
        .map(String::from)
        .to_vec();
    let mut w = GgufWriter::new()
        .kv("general.architecture", Value::String("llama".into()))
        .kv("tokenizer.ggml.model", Value::String("llama".into()))
        .kv("tokenizer.ggml.tokens", Value::Array(Array::String(tokens)))
        .kv(
            "tokenizer.ggml.scores",
            Value::Array(Array::F32(vec![0.0, 0.0, 0.0, -1.0, -2.0])),
        )
        .kv(
            "tokenizer.ggml.token_type",
            Value::Array(Array::I32(vec![2, 3, 3, 1, 1])),
        );
    for &(key, id) in ids {
        w = w.kv(format!("tokenizer.ggml.{key}"), Value::U32(id));
    }
    Gguf::from_bytes(w.to_bytes()).unwrap()
}

/// Vocabulary special ids past the end of the token list are rejected, naming the key, the id
/// and the vocabulary size (llama.cpp only warns and ignores them); -1 (u32::MAX), which
/// converters write for "no such token", means none.
#[test]
fn vocabulary_special_ids_out_of_range_are_rejected_by_name() {
    let n = 5u32;
    for (key, id) in [
        ("eos_token_id", n),
        ("eot_token_id", 1 << 20),
        ("padding_token_id", u32::MAX - 1),
    ] {
        let g = spm_vocab_with(&[("bos_token_id", 1), (key, id)]);
        let err = llamabus::tokenizer::Tokenizer::from_metadata(g.metadata())
            .expect_err(&format!("{key} = {id} accepted"))
            .to_string();
        assert_eq!(
            err,
            format!("tokenizer.ggml.{key} = {id} is out of range: the vocabulary has {n} tokens")
        );
    }
    // -1 means "none": SentencePiece's default (<s> = 1) stands in for BOS.
    let g = spm_vocab_with(&[("bos_token_id", u32::MAX), ("eos_token_id", 2)]);
    let tok = llamabus::tokenizer::Tokenizer::from_metadata(g.metadata()).unwrap();
    assert_eq!((tok.bos(), tok.eos(), tok.eot()), (None, Some(2), None));
    let ids = tok.encode("ab", false);
    assert!(ids.iter().all(|&id| id < n), "{ids:?}");
    assert_eq!(tok.decode(&ids), "ab");
    // Generated ids past the vocabulary decode to nothing rather than indexing out of range.
    assert_eq!(tok.decode(&[u32::MAX, n, 1 << 20]), "");
    assert!(!tok.is_eog(u32::MAX));
}

// ---------------------------------------------------------------------------------------------
// Real files

fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
}

fn require(path: &Path) {
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-test-data.sh first (tests never download)",
        path.display()
    );
}

#[test]
fn reads_the_real_model() {
    let path = models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    require(&path);
    let g = Gguf::open(&path).unwrap();
    let m = g.metadata();
    assert_eq!(g.version(), 3);
    assert_eq!(m.req_str("general.architecture").unwrap(), "llama");
    assert_eq!(m.req_u32("llama.block_count").unwrap(), 30);
    assert_eq!(
        m.opt_str_array("tokenizer.ggml.tokens")
            .unwrap()
            .unwrap()
            .len(),
        49152
    );
    assert_eq!(g.tensors().len(), 272);
    assert_eq!(g.alignment(), 32);
    let embd = g.tensor("token_embd.weight").unwrap();
    assert_eq!(embd.dims, [576, 49152]);
    let file = g.bytes().as_ptr_range();
    for t in g.tensors() {
        let d = g.tensor_data(t);
        assert_eq!(d.len() as u64, t.n_bytes, "{}", t.name);
        // The slice borrows the file buffer: nothing was copied per tensor.
        let r = d.as_ptr_range();
        assert!(file.start <= r.start && r.end <= file.end, "{}", t.name);
    }
}

/// Opening must map the file, not read the ~100 MB of tensor data into memory.
#[test]
fn open_maps_instead_of_copying() {
    let path = models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    require(&path);
    let g = Gguf::open(&path).unwrap();
    assert!(
        g.is_mapped(),
        "Gguf::open copied the file instead of mapping it"
    );
}

#[test]
fn reads_llama_cpp_vocab_files() {
    let dir = models_dir().join("llama.cpp");
    require(&dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 10,
        "only {} vocab files in {}",
        files.len(),
        dir.display()
    );
    for path in &files {
        let g = Gguf::open(path).unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
        let tokens = g.metadata().opt_str_array("tokenizer.ggml.tokens").unwrap();
        assert!(
            tokens.is_some_and(|t| !t.is_empty()),
            "{}: no tokens",
            path.display()
        );
        for t in g.tensors() {
            assert_eq!(g.tensor_data(t).len() as u64, t.n_bytes);
        }
    }
}
