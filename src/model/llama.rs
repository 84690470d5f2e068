//! The Llama forward pass as a ggml graph, in paper order.
//!
//! Shapes use ggml order (ne0 first). `T` = tokens in the batch, `E` = n_embd, `D` = head
//! width, `H` = query heads, `Hkv` = key/value heads, `N` = attended KV cells, `O` = output rows.
//! Every node is named `"{stage}-{layer}"` so intermediate tensors can be found and dumped.
//!
//! Matches llama.cpp's `llm_build_llama` (src/models/llama.cpp): pre-norm blocks with RMSNorm,
//! RoPE in normal (adjacent-pair) mode, grouped-query attention via flash attention over an f16
//! KV cache, SwiGLU feed-forward, and output rows selected before the last block's FFN.

use crate::ggml::{Context, Tensor, Type};
use crate::model::kv_cache::KvCache;
use crate::model::{HParams, LayerWeights, Model};

/// The graph's input tensors, filled after allocation.
pub(crate) struct Inputs<'g> {
    /// I32 [T]: token ids.
    pub tokens: Tensor<'g>,
    /// I32 [T]: positions within each token's sequence.
    pub pos: Tensor<'g>,
    /// I64 [T]: KV cell each token is written to.
    pub slots: Tensor<'g>,
    /// F16 [N, T]: attention mask.
    pub mask: Tensor<'g>,
    /// I32 [O]: batch rows whose logits are wanted.
    pub out_ids: Tensor<'g>,
}

/// Builds the graph for one batch. Returns the inputs and the logits node, F32 [n_vocab, O].
#[allow(clippy::too_many_arguments)]
pub(crate) fn build<'g>(
    ctx: &'g Context,
    graph: &mut crate::ggml::Graph<'g>,
    model: &'g Model,
    weights: &[Tensor<'g>],
    kv: &'g KvCache,
    n_tokens: usize,
    n_kv: usize,
    n_outputs: usize,
) -> (Inputs<'g>, Tensor<'g>) {
    let hp = model.hparams();
    let idx = model.index();
    let t = n_tokens as i64;
    let inputs = Inputs {
        tokens: ctx
            .new_tensor(Type::I32, &[t])
            .set_name("inp_tokens")
            .set_input(),
        pos: ctx
            .new_tensor(Type::I32, &[t])
            .set_name("inp_pos")
            .set_input(),
        slots: ctx
            .new_tensor(Type::I64, &[t])
            .set_name("inp_slots")
            .set_input(),
        mask: ctx
            .new_tensor(Type::F16, &[n_kv as i64, t])
            .set_name("inp_kq_mask")
            .set_input(),
        out_ids: ctx
            .new_tensor(Type::I32, &[n_outputs as i64])
            .set_name("inp_out_ids")
            .set_input(),
    };
    let rope_freqs = idx.rope_freqs.map(|i| weights[i]);

    // x: [E, T]
    let mut x = ctx
        .get_rows(weights[idx.tok_embd], inputs.tokens)
        .set_name("inp_embd");
    for (il, lw) in idx.layers.iter().enumerate() {
        let last = il + 1 == idx.layers.len();
        x = block(
            ctx, graph, hp, weights, lw, kv, &inputs, rope_freqs, x, il, n_kv, last,
        );
    }
    // Final norm and vocabulary projection over the selected rows only: [n_vocab, O].
    let x = rms_norm(ctx, hp, x, weights[idx.output_norm], "result_norm", None);
    let logits = ctx
        .mul_mat(weights[idx.output], x)
        .set_name("result_output")
        .set_output();
    graph.build_forward_expand(logits);
    (inputs, logits)
}

/// One transformer block: x + attention(norm(x)), then + ffn(norm(·)).
#[allow(clippy::too_many_arguments)]
fn block<'g>(
    ctx: &'g Context,
    graph: &mut crate::ggml::Graph<'g>,
    hp: &HParams,
    w: &[Tensor<'g>],
    lw: &LayerWeights,
    kv: &'g KvCache,
    inp: &Inputs<'g>,
    rope_freqs: Option<Tensor<'g>>,
    x: Tensor<'g>,
    il: usize,
    n_kv: usize,
    last: bool,
) -> Tensor<'g> {
    let h = rms_norm(ctx, hp, x, w[lw.attn_norm], "attn_norm", Some(il));
    let attn = attention(ctx, graph, hp, w, lw, kv, inp, rope_freqs, h, il, n_kv);
    // In the last block only the output rows matter from here on: [E, O].
    let (attn, x) = if last {
        (
            ctx.get_rows(attn, inp.out_ids),
            ctx.get_rows(x, inp.out_ids),
        )
    } else {
        (attn, x)
    };
    let x = ctx.add(attn, x).set_name_fmt(format_args!("ffn_inp-{il}"));
    let h = rms_norm(ctx, hp, x, w[lw.ffn_norm], "ffn_norm", Some(il));
    let ffn = feed_forward(ctx, w, lw, h, il);
    ctx.add(ffn, x).set_name_fmt(format_args!("l_out-{il}"))
}

/// RMSNorm then element-wise scale by the norm weight.
fn rms_norm<'g>(
    ctx: &'g Context,
    hp: &HParams,
    x: Tensor<'g>,
    weight: Tensor<'g>,
    stage: &str,
    il: Option<usize>,
) -> Tensor<'g> {
    let n = ctx.rms_norm(x, hp.rms_eps);
    let out = ctx.mul(n, weight);
    match il {
        Some(il) => out.set_name_fmt(format_args!("{stage}-{il}")),
        None => out.set_name(stage),
    }
}

/// Self-attention: project, rotate, store K/V in the cache, attend, project back. h: [E, T].
#[allow(clippy::too_many_arguments)]
fn attention<'g>(
    ctx: &'g Context,
    graph: &mut crate::ggml::Graph<'g>,
    hp: &HParams,
    w: &[Tensor<'g>],
    lw: &LayerWeights,
    kv: &'g KvCache,
    inp: &Inputs<'g>,
    rope_freqs: Option<Tensor<'g>>,
    h: Tensor<'g>,
    il: usize,
    n_kv: usize,
) -> Tensor<'g> {
    let (d, nh, nkv) = (
        i64::from(hp.head_dim),
        i64::from(hp.n_head),
        i64::from(hp.n_head_kv),
    );
    let t = h.ne()[1];
    let rope = |x: Tensor<'g>| {
        ctx.rope_ext(
            x,
            inp.pos,
            rope_freqs,
            hp.n_rot as i32,
            hp.n_ctx_train as i32,
            hp.rope_freq_base,
            hp.rope_freq_scale,
        )
    };
    // q: [D, H, T], k and v: [D, Hkv, T]
    let q = ctx.reshape(ctx.mul_mat(w[lw.wq], h), &[d, nh, t]);
    let k = ctx.reshape(ctx.mul_mat(w[lw.wk], h), &[d, nkv, t]);
    let v = ctx
        .mul_mat(w[lw.wv], h)
        .set_name_fmt(format_args!("Vcur-{il}"));
    let q = rope(q).set_name_fmt(format_args!("Qcur-{il}"));
    let k = rope(k).set_name_fmt(format_args!("Kcur-{il}"));

    // Write this batch's keys and values into their cells: cache rows are [D*Hkv] per cell.
    let (cache_k, cache_v) = kv.layer(il);
    let k_store = ctx.set_rows(cache_k, ctx.reshape(k, &[d * nkv, t]), inp.slots);
    let v_store = ctx.set_rows(cache_v, v, inp.slots);
    graph.build_forward_expand(k_store);
    graph.build_forward_expand(v_store);

    // Views of the first N cells as [D, N, Hkv] (cell stride = one cache row).
    let row = Type::F16.row_bytes(d * nkv);
    let head = Type::F16.row_bytes(d);
    let k_all = ctx.view(
        k_store,
        [d, n_kv as i64, nkv, 1],
        [row, head, head * nkv as usize],
        0,
    );
    let v_all = ctx.view(
        v_store,
        [d, n_kv as i64, nkv, 1],
        [row, head, head * nkv as usize],
        0,
    );

    // softmax(q·k / sqrt(D) + mask)·v per head; result [D, H, T] -> [D*H, T].
    let q = ctx.permute(q, [0, 2, 1, 3]);
    let scale = 1.0 / (hp.head_dim as f32).sqrt();
    let out = ctx.flash_attn_ext(q, k_all, v_all, Some(inp.mask), scale);
    let out = ctx
        .reshape(out, &[d * nh, t])
        .set_name_fmt(format_args!("kqv_out-{il}"));
    ctx.mul_mat(w[lw.wo], out)
        .set_name_fmt(format_args!("attn_out-{il}"))
}

/// SwiGLU feed-forward: down(silu(gate(h)) * up(h)).
fn feed_forward<'g>(
    ctx: &'g Context,
    w: &[Tensor<'g>],
    lw: &LayerWeights,
    h: Tensor<'g>,
    il: usize,
) -> Tensor<'g> {
    let gate = ctx
        .mul_mat(w[lw.ffn_gate], h)
        .set_name_fmt(format_args!("ffn_gate-{il}"));
    let up = ctx
        .mul_mat(w[lw.ffn_up], h)
        .set_name_fmt(format_args!("ffn_up-{il}"));
    let act = ctx
        .swiglu_split(gate, up)
        .set_name_fmt(format_args!("ffn_swiglu-{il}"));
    ctx.mul_mat(w[lw.ffn_down], act)
        .set_name_fmt(format_args!("ffn_out-{il}"))
}
