//! The weights: which tensors the Llama graph needs, how they are checked and placed, and the
//! named handles the forward pass reads them through.
//!
//! Loading is three steps, each its own function so one can change without the others (for
//! example where the bytes live):
//! 1. [`plan`]: every tensor the graph uses, checked against the file (present, shape, type),
//!    and where it goes: a matrix goes to ggml's repacked layout when [`LoadOptions::repack`]
//!    asks for it and ggml has one for it on this CPU, anything else stays in the mapping;
//! 2. [`place`]: ggml tensors for the plan, placed into the memory-mapped file (zero-copy) or
//!    copied into their extra buffer type ([`Placed`]);
//! 3. [`Weights::resolve`]: named handles, looked up once per session.

use std::collections::HashMap;
use std::sync::Arc;

use crate::ggml::{AllocatedContext, Context, ExtraBufferType, HostBytes, Tensor, Type};
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

/// How weights are placed at load time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// Copy the weights ggml has a faster layout for into that layout (its CPU "extra" buffer
    /// types, e.g. `CPU_REPACK`), as llama.cpp does by default and the daemon does with
    /// `[model] repack = true` (its default). Those copies are anonymous memory; every other
    /// weight stays zero-copy in the file mapping (page cache). `false` keeps everything in the
    /// mapping.
    pub repack: bool,
}

impl LoadOptions {
    /// Every weight zero-copy in the mapping ([`crate::model::Model::load`]).
    pub const ZERO_COPY: LoadOptions = LoadOptions { repack: false };
    /// Weights with a faster layout repacked into it (the daemon's default).
    pub const REPACK: LoadOptions = LoadOptions { repack: true };
}

/// One weight the graph uses, checked against the file.
#[derive(Debug)]
pub(crate) struct Planned<'f> {
    pub name: String,
    /// ggml order.
    pub shape: Vec<u64>,
    pub ty: Type,
    pub info: &'f TensorInfo,
    /// The extra buffer type it is copied into; `None` stays in the mapping.
    pub repack: Option<ExtraBufferType>,
}

/// The tensors the graph will use, each checked against the hyperparameters: present, of the
/// expected shape and of a type its role allows. In creation order: model-wide, then by block.
///
/// With `opts.repack`, where each goes is llama.cpp's choice (`select_weight_buft`) restricted
/// to the CPU: a matrix multiplied with `ggml_mul_mat` goes to the first extra buffer type
/// that supports it; norms, `rope_freqs` and the token embeddings (read by `ggml_get_rows`,
/// also when tied to the output, as llama.cpp keeps them) stay in the mapping.
pub(crate) fn plan<'f>(
    gguf: &'f Gguf,
    hp: &HParams,
    opts: LoadOptions,
) -> Result<Vec<Planned<'f>>, ModelError> {
    let tied = gguf.tensor(OUTPUT).is_none();
    let has_rope_freqs = gguf.tensor(ROPE_FREQS).is_some();
    let wanted = wanted(hp, tied, has_rope_freqs);
    // A scratch context for asking ggml about each matrix's placement.
    let scratch = Context::new_metadata(wanted.len() + 1, 0);
    wanted
        .into_iter()
        .map(|(name, shape, role)| {
            let info = gguf
                .tensor(&name)
                .ok_or_else(|| ModelError::MissingTensor(name.clone()))?;
            let ty = check(&name, &shape, role, info)?;
            let repack = match role {
                Role::Matrix if opts.repack => {
                    ExtraBufferType::for_mul_mat(scratch.new_tensor(ty, &ne(&shape)))
                }
                _ => None,
            };
            Ok(Planned {
                name,
                shape,
                ty,
                info,
                repack,
            })
        })
        .collect()
}

fn ne(shape: &[u64]) -> Vec<i64> {
    shape.iter().map(|&d| d as i64).collect()
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

/// The placed weight tensors: those left in the mapping and those copied into extra buffer
/// types.
pub(crate) struct Placed {
    pub mapped: AllocatedContext,
    pub repacked: Vec<AllocatedContext>,
}

impl Placed {
    /// The weight named `name`, wherever it was placed.
    pub fn tensor(&self, name: &str) -> Option<Tensor<'_>> {
        self.mapped
            .tensor(name)
            .or_else(|| self.repacked.iter().find_map(|c| c.tensor(name)))
    }
}

/// Creates a ggml tensor for every planned weight and places it into the GGUF mapping without
/// copying, or copies it into the extra buffer type the plan chose (which rearranges it).
pub(crate) fn place(gguf: &Arc<Gguf>, plan: &[Planned<'_>]) -> Result<Placed, ModelError> {
    // Contexts: 0 for the mapping, then one per extra buffer type in use.
    let mut bufts: Vec<ExtraBufferType> = Vec::new();
    for b in plan.iter().filter_map(|p| p.repack) {
        if !bufts.contains(&b) {
            bufts.push(b);
        }
    }
    let holder = |p: &Planned<'_>| match p.repack {
        None => 0,
        Some(b) => 1 + bufts.iter().position(|&x| x == b).expect("listed"),
    };
    let ctxs: Vec<Context> = (0..=bufts.len())
        .map(|i| Context::new_metadata(plan.iter().filter(|p| holder(p) == i).count() + 1, 0))
        .collect();
    for p in plan {
        ctxs[holder(p)]
            .new_tensor(p.ty, &ne(&p.shape))
            .set_name(&p.name);
    }
    let data_offset = gguf.data_offset();
    let offsets: HashMap<&str, usize> = plan
        .iter()
        .map(|p| (p.name.as_str(), (data_offset + p.info.offset) as usize))
        .collect();
    let mut ctxs = ctxs.into_iter();
    let host: Arc<dyn HostBytes> = gguf.clone();
    let mapped = AllocatedContext::map_host(ctxs.next().expect("the mapping's"), host, |n| {
        offsets.get(n).copied()
    })?;
    let bytes = gguf.bytes();
    let mut repacked = Vec::new();
    for (ctx, buft) in ctxs.zip(&bufts) {
        let src = |n: &str| {
            let p = plan.iter().find(|p| p.name == n)?;
            let start = *offsets.get(n)?;
            bytes.get(start..start.checked_add(usize::try_from(p.info.n_bytes).ok()?)?)
        };
        repacked.extend(AllocatedContext::load_into(ctx, *buft, src)?);
    }
    Ok(Placed { mapped, repacked })
}
