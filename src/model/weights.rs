//! The weights: which tensors the Llama graph needs, how they are checked and placed, and the
//! named handles the forward pass reads them through.
//!
//! Loading is three steps, each its own function so one can change without the others (for
//! example where the bytes live):
//! 1. [`plan`]: every tensor the graph uses, checked against the file (present, shape, type);
//! 2. [`place`]: ggml tensors for the plan, placed into the memory-mapped file (zero-copy);
//! 3. [`Weights::resolve`]: named handles, looked up once per session.

use std::collections::HashMap;
use std::sync::Arc;

use crate::ggml::{AllocatedContext, Context, HostBytes, Tensor, Type};
use crate::gguf::{Gguf, TensorInfo};
use crate::model::{HParams, ModelError};

const TOK_EMBD: &str = "token_embd.weight";
const OUTPUT_NORM: &str = "output_norm.weight";
const OUTPUT: &str = "output.weight";
const ROPE_FREQS: &str = "rope_freqs.weight";

/// The GGUF name of block `il`'s tensor `part` (`blk.{il}.{part}.weight`).
fn blk(il: u32, part: &str) -> String {
    format!("blk.{il}.{part}.weight")
}

/// One transformer block's weights. Shapes in ggml order; `E` = n_embd, `Q` = n_embd_q,
/// `KV` = n_embd_kv, `F` = n_ff.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Layer<'w> {
    /// [E]
    pub attn_norm: Tensor<'w>,
    /// [E, Q]
    pub wq: Tensor<'w>,
    /// [E, KV]
    pub wk: Tensor<'w>,
    /// [E, KV]
    pub wv: Tensor<'w>,
    /// [Q, E]
    pub wo: Tensor<'w>,
    /// [E]
    pub ffn_norm: Tensor<'w>,
    /// [E, F]
    pub ffn_gate: Tensor<'w>,
    /// [E, F]
    pub ffn_up: Tensor<'w>,
    /// [F, E]
    pub ffn_down: Tensor<'w>,
}

/// Every weight of the model, by name.
#[derive(Clone, Debug)]
pub(crate) struct Weights<'w> {
    /// [E, n_vocab]
    pub tok_embd: Tensor<'w>,
    /// [E]
    pub output_norm: Tensor<'w>,
    /// [E, n_vocab]: `output.weight`, or `token_embd.weight` when the embeddings are tied.
    pub output: Tensor<'w>,
    /// [n_rot / 2]: per-dimension RoPE frequency factors (Llama 3.1 long context), if any.
    pub rope_freqs: Option<Tensor<'w>>,
    pub layers: Vec<Layer<'w>>,
}

impl<'w> Weights<'w> {
    /// Looks every weight up by its GGUF name through `find`, which searches wherever the
    /// tensors were placed.
    pub fn resolve(
        n_layer: u32,
        find: impl Fn(&str) -> Option<Tensor<'w>>,
    ) -> Result<Weights<'w>, ModelError> {
        let get = |name: &str| find(name).ok_or_else(|| ModelError::MissingTensor(name.into()));
        let layer = |il: u32| -> Result<Layer<'w>, ModelError> {
            let part = |p: &str| get(&blk(il, p));
            Ok(Layer {
                attn_norm: part("attn_norm")?,
                wq: part("attn_q")?,
                wk: part("attn_k")?,
                wv: part("attn_v")?,
                wo: part("attn_output")?,
                ffn_norm: part("ffn_norm")?,
                ffn_gate: part("ffn_gate")?,
                ffn_up: part("ffn_up")?,
                ffn_down: part("ffn_down")?,
            })
        };
        let tok_embd = get(TOK_EMBD)?;
        Ok(Weights {
            tok_embd,
            output_norm: get(OUTPUT_NORM)?,
            output: find(OUTPUT).unwrap_or(tok_embd),
            rope_freqs: find(ROPE_FREQS),
            layers: (0..n_layer).map(layer).collect::<Result<_, _>>()?,
        })
    }
}

/// What a weight is used for, which decides the types it may have.
#[derive(Clone, Copy, PartialEq)]
enum Role {
    /// Multiplied with `ggml_mul_mat`: any type the CPU backend has a dot product for.
    Matrix,
    /// Looked up with `ggml_get_rows` and also possibly a matrix (tied output).
    Embedding,
    /// Element-wise vectors (norm weights, rope frequency factors): F32.
    Vector,
}

/// One weight the graph uses, checked against the file.
#[derive(Debug)]
pub(crate) struct Planned<'f> {
    pub name: String,
    /// ggml order.
    pub shape: Vec<u64>,
    pub ty: Type,
    pub info: &'f TensorInfo,
}

/// The tensors the graph will use, each checked against the hyperparameters: present, of the
/// expected shape and of a type its role allows. In creation order: model-wide, then by block.
pub(crate) fn plan<'f>(gguf: &'f Gguf, hp: &HParams) -> Result<Vec<Planned<'f>>, ModelError> {
    let tied = gguf.tensor(OUTPUT).is_none();
    let has_rope_freqs = gguf.tensor(ROPE_FREQS).is_some();
    wanted(hp, tied, has_rope_freqs)
        .into_iter()
        .map(|(name, shape, role)| {
            let info = gguf
                .tensor(&name)
                .ok_or_else(|| ModelError::MissingTensor(name.clone()))?;
            let ty = check(&name, &shape, role, info)?;
            Ok(Planned {
                name,
                shape,
                ty,
                info,
            })
        })
        .collect()
}

/// Name, shape and role of every weight the graph reads.
fn wanted(hp: &HParams, tied: bool, has_rope_freqs: bool) -> Vec<(String, Vec<u64>, Role)> {
    let (e, q, kv, ff, v) = (
        u64::from(hp.n_embd),
        u64::from(hp.n_embd_q()),
        u64::from(hp.n_embd_kv()),
        u64::from(hp.n_ff),
        u64::from(hp.n_vocab),
    );
    let mut wanted: Vec<(String, Vec<u64>, Role)> = vec![
        (TOK_EMBD.into(), vec![e, v], Role::Embedding),
        (OUTPUT_NORM.into(), vec![e], Role::Vector),
    ];
    if !tied {
        wanted.push((OUTPUT.into(), vec![e, v], Role::Matrix));
    }
    if has_rope_freqs {
        let half_rot = u64::from(hp.n_rot / 2);
        wanted.push((ROPE_FREQS.into(), vec![half_rot], Role::Vector));
    }
    for il in 0..hp.n_layer {
        wanted.extend([
            (blk(il, "attn_norm"), vec![e], Role::Vector),
            (blk(il, "attn_q"), vec![e, q], Role::Matrix),
            (blk(il, "attn_k"), vec![e, kv], Role::Matrix),
            (blk(il, "attn_v"), vec![e, kv], Role::Matrix),
            (blk(il, "attn_output"), vec![q, e], Role::Matrix),
            (blk(il, "ffn_norm"), vec![e], Role::Vector),
            (blk(il, "ffn_gate"), vec![e, ff], Role::Matrix),
            (blk(il, "ffn_up"), vec![e, ff], Role::Matrix),
            (blk(il, "ffn_down"), vec![ff, e], Role::Matrix),
        ]);
    }
    wanted
}

/// The ggml type of `info` if its shape and type suit `role`.
fn check(name: &str, shape: &[u64], role: Role, info: &TensorInfo) -> Result<Type, ModelError> {
    if info.dims != shape {
        return Err(ModelError::TensorShape {
            name: name.into(),
            expected: shape.to_vec(),
            found: info.dims.clone(),
        });
    }
    let bad_type = |why| ModelError::TensorType {
        name: name.into(),
        ty: info.ty.name(),
        why,
    };
    let ty = Type::from_id(info.ty.id()).ok_or_else(|| bad_type("unknown to the linked ggml"))?;
    match role {
        Role::Vector if ty != Type::F32 => Err(bad_type("norm and rope vectors must be f32")),
        Role::Matrix | Role::Embedding if !ty.cpu_supports_mul_mat() => Err(bad_type(
            "the ggml CPU backend has no matrix product for it",
        )),
        _ => Ok(ty),
    }
}

/// Creates a ggml tensor for every planned weight and places it into the GGUF mapping, without
/// copying.
pub(crate) fn place(
    gguf: &Arc<Gguf>,
    plan: &[Planned<'_>],
) -> Result<AllocatedContext, ModelError> {
    let ctx = Context::new_metadata(plan.len() + 1, 0);
    for p in plan {
        let ne: Vec<i64> = p.shape.iter().map(|&d| d as i64).collect();
        ctx.new_tensor(p.ty, &ne).set_name(&p.name);
    }
    let data_offset = gguf.data_offset();
    let offsets: HashMap<&str, usize> = plan
        .iter()
        .map(|p| (p.name.as_str(), (data_offset + p.info.offset) as usize))
        .collect();
    let host: Arc<dyn HostBytes> = gguf.clone();
    Ok(AllocatedContext::map_host(ctx, host, |n| {
        offsets.get(n).copied()
    })?)
}
