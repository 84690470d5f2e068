//! One hand-built file per rejection rule: the header and every field cut short, caps on
//! counts and lengths, UTF-8 and empty keys, unknown types, dimensions and their overflow,
//! duplicates, the alignment, and where tensor data may lie in the file.

use crate::{Raw, F32, Q4_1};
use llamabus::gguf::{
    value_type, Array, Gguf, GgufError, Value, MAX_ARRAY_DEPTH, MAX_ARRAY_LEN, MAX_KEY_LEN,
    MAX_KVS, MAX_STRING_LEN, MAX_TENSORS, MAX_TENSOR_NAME_LEN,
};

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
