//! Model loading refuses what it cannot run, naming the key, tensor or architecture, and never
//! panics: each rule is checked by rewriting a valid tiny model with one thing wrong.

mod common;

use std::sync::Arc;

use common::tiny::{tiny_model_bytes, TinySpec};
use llamabus::ggml::Type;
use llamabus::gguf::{GgmlType, Gguf, GgufWriter, Value};
use llamabus::model::{Model, ModelError, Session};

/// A tensor as [`rewrite`] writes it: dimensions, type and bytes.
type TensorParts = (Vec<u64>, GgmlType, Vec<u8>);

/// Re-serialises `src`, letting `kv` drop or replace metadata and `tensor` drop or change
/// tensors (None drops; Some((dims, type, data)) keeps with those dims, type and bytes).
fn rewrite(
    src: &Gguf,
    kv: impl Fn(&str, &Value) -> Option<Value>,
    tensor: impl Fn(&str, &[u64], GgmlType, &[u8]) -> Option<TensorParts>,
) -> Vec<u8> {
    let mut w = GgufWriter::new();
    for (k, v) in src.metadata().iter() {
        if let Some(v) = kv(k, v) {
            w = w.kv(k, v);
        }
    }
    for t in src.tensors() {
        if let Some((dims, ty, data)) = tensor(&t.name, &t.dims, t.ty, src.tensor_data(t)) {
            w = w.tensor(t.name.clone(), &dims, ty, data);
        }
    }
    w.to_bytes()
}

fn base() -> Gguf {
    Gguf::from_bytes(tiny_model_bytes(&TinySpec::new(Type::F32))).expect("valid tiny model")
}

fn load(bytes: Vec<u8>) -> Result<Model, ModelError> {
    Model::from_gguf(Arc::new(Gguf::from_bytes(bytes)?))
}

fn keep_tensor(_: &str, d: &[u64], ty: GgmlType, b: &[u8]) -> Option<TensorParts> {
    Some((d.to_vec(), ty, b.to_vec()))
}

#[test]
fn the_valid_tiny_model_loads_and_runs() {
    let g = base();
    let model = Model::from_gguf(Arc::new(g)).expect("loads");
    let mut s = Session::new(&model, 64, 1).unwrap();
    let logits = s.eval(&[1, 2, 3]).unwrap();
    assert_eq!(logits.len(), 384);
    assert!(logits.iter().all(|x| x.is_finite()));
}

#[test]
fn other_architectures_are_refused_by_name() {
    let g = base();
    let bytes = rewrite(
        &g,
        |k, v| {
            Some(if k == "general.architecture" {
                Value::String("gpt2".into())
            } else {
                v.clone()
            })
        },
        keep_tensor,
    );
    let err = load(bytes).unwrap_err();
    assert!(
        matches!(err, ModelError::UnsupportedArchitecture(ref a) if a == "gpt2"),
        "{err}"
    );
    assert!(err.to_string().contains("\"gpt2\""), "{err}");
}

#[test]
fn a_missing_required_key_is_named() {
    let g = base();
    for key in [
        "llama.block_count",
        "llama.embedding_length",
        "llama.attention.head_count",
        "llama.feed_forward_length",
        "llama.attention.layer_norm_rms_epsilon",
        "llama.context_length",
    ] {
        let bytes = rewrite(&g, |k, v| (k != key).then(|| v.clone()), keep_tensor);
        let err = load(bytes).unwrap_err();
        assert!(err.to_string().contains(key), "{key}: {err}");
    }
}

#[test]
fn optional_keys_fall_back_to_documented_defaults() {
    let g = base();
    // Without head_count_kv the model has no GQA (n_head_kv = n_head), so the K/V weights of the
    // GQA tiny model no longer fit: the shape error proves the default was applied.
    let bytes = rewrite(
        &g,
        |k, v| (k != "llama.attention.head_count_kv").then(|| v.clone()),
        keep_tensor,
    );
    let err = load(bytes).unwrap_err();
    assert!(
        matches!(err, ModelError::TensorShape { ref name, .. } if name == "blk.0.attn_k.weight"),
        "{err}"
    );
    // Without rope.freq_base and dimension_count the model still loads (10000, head width).
    let bytes = rewrite(
        &g,
        |k, v| {
            (k != "llama.rope.freq_base" && k != "llama.rope.dimension_count").then(|| v.clone())
        },
        keep_tensor,
    );
    let m = load(bytes).unwrap();
    assert_eq!(m.hparams().rope_freq_base, 10_000.0);
    assert_eq!(m.hparams().n_rot, m.hparams().head_dim);
}

#[test]
fn a_missing_tensor_is_named() {
    let g = base();
    let bytes = rewrite(
        &g,
        |_, v| Some(v.clone()),
        |n, d, ty, b| (n != "blk.1.ffn_down.weight").then(|| (d.to_vec(), ty, b.to_vec())),
    );
    let err = load(bytes).unwrap_err();
    assert!(
        matches!(err, ModelError::MissingTensor(ref n) if n == "blk.1.ffn_down.weight"),
        "{err}"
    );
}

#[test]
fn a_wrong_tensor_shape_is_named() {
    let g = base();
    // Same bytes, dimensions swapped: a transposed projection.
    let bytes = rewrite(
        &g,
        |_, v| Some(v.clone()),
        |n, d, ty, b| {
            let dims = if n == "blk.0.attn_output.weight" {
                vec![d[0] * 2, d[1] / 2]
            } else {
                d.to_vec()
            };
            Some((dims, ty, b.to_vec()))
        },
    );
    let err = load(bytes).unwrap_err();
    assert!(
        matches!(err, ModelError::TensorShape { ref name, .. } if name == "blk.0.attn_output.weight"),
        "{err}"
    );
}

#[test]
fn norm_vectors_must_be_f32() {
    let g = base();
    let bytes = rewrite(
        &g,
        |_, v| Some(v.clone()),
        |n, d, ty, b| {
            if n != "output_norm.weight" {
                return Some((d.to_vec(), ty, b.to_vec()));
            }
            let f: Vec<f32> = b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let h = llamabus::ggml::quantize(Type::F16, &f, f.len());
            Some((d.to_vec(), GgmlType::F16, h))
        },
    );
    let err = load(bytes).unwrap_err();
    assert!(
        matches!(err, ModelError::TensorType { ref name, .. } if name == "output_norm.weight"),
        "{err}"
    );
}

#[test]
fn impossible_hyperparameters_are_refused() {
    let g = base();
    for (key, value) in [
        ("llama.attention.head_count_kv", Value::U32(3)), // does not divide 4 heads
        ("llama.attention.head_count", Value::U32(0)),
        ("llama.rope.freq_base", Value::F32(f32::NAN)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(-1.0)),
        ("llama.block_count", Value::U32(1 << 30)),
    ] {
        let bytes = rewrite(
            &g,
            |k, v| Some(if k == key { value.clone() } else { v.clone() }),
            keep_tensor,
        );
        let err = load(bytes).unwrap_err();
        assert!(err.to_string().contains(key), "{key}: {err}");
    }
}

#[test]
fn vocab_only_files_are_not_runnable_models() {
    let g = base();
    let bytes = rewrite(&g, |_, v| Some(v.clone()), |_, _, _, _| None);
    let err = load(bytes).unwrap_err();
    assert!(matches!(err, ModelError::MissingTensor(_)), "{err}");
}

#[test]
fn out_of_vocabulary_tokens_and_overfull_contexts_are_errors() {
    let model = Model::from_gguf(Arc::new(base())).unwrap();
    let mut s = Session::new(&model, 8, 1).unwrap();
    let err = s.eval(&[1, 384]).unwrap_err();
    assert!(matches!(err, ModelError::BadToken { id: 384, .. }), "{err}");
    let err = s.eval(&[1; 9]).unwrap_err();
    assert!(matches!(err, ModelError::ContextFull(8)), "{err}");
    // The session still works after both errors.
    assert!(s.eval(&[1, 2]).is_ok());
    assert!(Session::new(&model, 0, 1).is_err());
}
