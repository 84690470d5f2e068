//! The Llama forward pass as a ggml graph, in paper order.
//!
//! Shapes use ggml order (ne0 first). `T` = tokens in the batch, `E` = n_embd, `D` = head
//! width, `H` = query heads, `Hkv` = key/value heads, `N` = attended KV cells, `O` = output rows.
//! Every node is named `"{stage}-{layer}"` so intermediate tensors can be found and dumped.
//!
//! Matches llama.cpp's `llm_build_llama` (src/models/llama.cpp): pre-norm blocks with RMSNorm,
//! RoPE in normal (adjacent-pair) mode, grouped-query attention via flash attention over an f16
//! KV cache, SwiGLU feed-forward, and output rows selected before the last block's FFN.

use crate::ggml::{Context, Graph, Tensor, Type};
use crate::model::kv_cache::KvCache;
use crate::model::weights::{Layer, Weights};
use crate::model::HParams;

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

/// The sizes one graph is built for.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shape {
    /// Tokens in the batch (`T`).
    pub n_tokens: usize,
    /// KV cells attended (`N`).
    pub n_kv: usize,
    /// Rows whose logits are computed (`O`).
    pub n_outputs: usize,
}

/// One batch's graph under construction: the arena, the model's numbers, the cache and the
/// inputs every stage reads.
pub(crate) struct Llama<'g> {
    ctx: &'g Context,
    graph: Graph<'g>,
    hp: &'g HParams,
    kv: &'g KvCache,
    inp: Inputs<'g>,
    rope_freqs: Option<Tensor<'g>>,
    n_kv: usize,
}

/// A built graph: compute it after allocation and filling the inputs.
pub(crate) struct Built<'g> {
    pub graph: Graph<'g>,
    pub inputs: Inputs<'g>,
    /// F32 [n_vocab, O].
    pub logits: Tensor<'g>,
}

impl<'g> Llama<'g> {
    /// Builds the graph for one batch of `shape` in `ctx` (room for `graph_nodes` nodes).
    pub fn build(
        ctx: &'g Context,
        graph_nodes: usize,
        hp: &'g HParams,
        w: &Weights<'g>,
        kv: &'g KvCache,
        shape: Shape,
    ) -> Built<'g> {
        let mut f = Llama {
            ctx,
            graph: ctx.new_graph(graph_nodes),
            hp,
            kv,
            inp: Inputs::new(ctx, shape),
            rope_freqs: w.rope_freqs,
            n_kv: shape.n_kv,
        };
        // x: [E, T]
        let mut x = ctx.get_rows(w.tok_embd, f.inp.tokens).set_name("inp_embd");
        for (il, layer) in w.layers.iter().enumerate() {
            let last = il + 1 == w.layers.len();
            x = f.block(layer, x, il, last);
        }
        // Final norm and vocabulary projection over the selected rows only: [n_vocab, O].
        let x = f.rms_norm(x, w.output_norm).set_name("result_norm");
        let logits = ctx
            .mul_mat(w.output, x)
            .set_name("result_output")
            .set_output();
        f.graph.build_forward_expand(logits);
        Built {
            graph: f.graph,
            inputs: f.inp,
            logits,
        }
    }

    /// One transformer block: x + attention(norm(x)), then + ffn(norm(·)).
    fn block(&mut self, w: &Layer<'g>, x: Tensor<'g>, il: usize, last: bool) -> Tensor<'g> {
        let ctx = self.ctx;
        let h = self
            .rms_norm(x, w.attn_norm)
            .set_name_fmt(format_args!("attn_norm-{il}"));
        let attn = self.attention(w, h, il);
        // In the last block only the output rows matter from here on: [E, O].
        let (attn, x) = if last {
            let rows = self.inp.out_ids;
            (ctx.get_rows(attn, rows), ctx.get_rows(x, rows))
        } else {
            (attn, x)
        };
        let x = ctx.add(attn, x).set_name_fmt(format_args!("ffn_inp-{il}"));
        let h = self
            .rms_norm(x, w.ffn_norm)
            .set_name_fmt(format_args!("ffn_norm-{il}"));
        let ffn = self.feed_forward(w, h, il);
        ctx.add(ffn, x).set_name_fmt(format_args!("l_out-{il}"))
    }

    /// RMSNorm then element-wise scale by the norm weight.
    fn rms_norm(&self, x: Tensor<'g>, weight: Tensor<'g>) -> Tensor<'g> {
        let n = self.ctx.rms_norm(x, self.hp.rms_eps);
        self.ctx.mul(n, weight)
    }

    /// Rotary position embedding of `x` [D, heads, T] at the batch's positions.
    fn rope(&self, x: Tensor<'g>) -> Tensor<'g> {
        let hp = self.hp;
        self.ctx.rope_ext(
            x,
            self.inp.pos,
            self.rope_freqs,
            hp.n_rot as i32,
            hp.n_ctx_train as i32,
            hp.rope_freq_base,
            hp.rope_freq_scale,
        )
    }

    /// Self-attention: project, rotate, store K/V in the cache, attend, project back. h: [E, T].
    fn attention(&mut self, w: &Layer<'g>, h: Tensor<'g>, il: usize) -> Tensor<'g> {
        let ctx = self.ctx;
        let hp = self.hp;
        let (d, nh, nkv) = (
            i64::from(hp.head_dim),
            i64::from(hp.n_head),
            i64::from(hp.n_head_kv),
        );
        let t = h.ne()[1];
        // q: [D, H, T], k: [D, Hkv, T], v: [D*Hkv, T]
        let q = ctx.reshape(ctx.mul_mat(w.wq, h), &[d, nh, t]);
        let k = ctx.reshape(ctx.mul_mat(w.wk, h), &[d, nkv, t]);
        let v = ctx.mul_mat(w.wv, h).set_name_fmt(format_args!("Vcur-{il}"));
        let q = self.rope(q).set_name_fmt(format_args!("Qcur-{il}"));
        let k = self.rope(k).set_name_fmt(format_args!("Kcur-{il}"));

        // Write this batch's keys and values into their cells; read back the first N cells
        // of each as [D, N, Hkv].
        let (k_all, v_all) =
            self.kv
                .store(ctx, &mut self.graph, il, (k, v), self.inp.slots, self.n_kv);

        // softmax(q·k / sqrt(D) + mask)·v per head; result [D, H, T] -> [D*H, T].
        let q = ctx.permute(q, [0, 2, 1, 3]);
        let scale = 1.0 / (hp.head_dim as f32).sqrt();
        let out = ctx.flash_attn_ext(q, k_all, v_all, Some(self.inp.mask), scale);
        let out = ctx
            .reshape(out, &[d * nh, t])
            .set_name_fmt(format_args!("kqv_out-{il}"));
        ctx.mul_mat(w.wo, out)
            .set_name_fmt(format_args!("attn_out-{il}"))
    }

    /// SwiGLU feed-forward: down(silu(gate(h)) * up(h)).
    fn feed_forward(&self, w: &Layer<'g>, h: Tensor<'g>, il: usize) -> Tensor<'g> {
        let ctx = self.ctx;
        let gate = ctx
            .mul_mat(w.ffn_gate, h)
            .set_name_fmt(format_args!("ffn_gate-{il}"));
        let up = ctx
            .mul_mat(w.ffn_up, h)
            .set_name_fmt(format_args!("ffn_up-{il}"));
        let act = ctx
            .swiglu_split(gate, up)
            .set_name_fmt(format_args!("ffn_swiglu-{il}"));
        ctx.mul_mat(w.ffn_down, act)
            .set_name_fmt(format_args!("ffn_out-{il}"))
    }
}

impl<'g> Inputs<'g> {
    /// The input tensors for a batch of `shape`, named as llama.cpp names them.
    fn new(ctx: &'g Context, shape: Shape) -> Inputs<'g> {
        let t = shape.n_tokens as i64;
        let input = |ty, ne: &[i64], name| ctx.new_tensor(ty, ne).set_name(name).set_input();
        Inputs {
            tokens: input(Type::I32, &[t], "inp_tokens"),
            pos: input(Type::I32, &[t], "inp_pos"),
            slots: input(Type::I64, &[t], "inp_slots"),
            mask: input(Type::F16, &[shape.n_kv as i64, t], "inp_kq_mask"),
            out_ids: input(Type::I32, &[shape.n_outputs as i64], "inp_out_ids"),
        }
    }
}
