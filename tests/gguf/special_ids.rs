//! Vocabulary special ids out of range are rejected by name.

use llamabus::gguf::{Array, Gguf, GgufWriter, Value};

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
