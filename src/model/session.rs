//! Evaluation sessions: a KV cache, a CPU backend and compute buffers bound to one model.
//!
//! [`Session::decode`] runs a [`Batch`] whose tokens may belong to several sequences, which is
//! the primitive continuous batching needs; [`Session::eval`] is the single-sequence
//! convenience used by `complete` and the tests.

use crate::ggml::{Context, CpuBackend, GraphAllocator};
use crate::model::kv_cache::{KvCache, MaskBuf, SeqId, MAX_SEQS};
use crate::model::llama::{Built, Llama, Shape};
use crate::model::weights::Weights;
use crate::model::{Model, ModelError};

/// Tokens to evaluate together, each with its sequence, position and whether its logits are
/// wanted.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    pub tokens: Vec<u32>,
    pub pos: Vec<i32>,
    pub seq: Vec<SeqId>,
    pub logits: Vec<bool>,
}

impl Batch {
    /// Empties the batch, keeping its allocations.
    pub fn clear(&mut self) {
        self.tokens.clear();
        self.pos.clear();
        self.seq.clear();
        self.logits.clear();
    }

    /// Appends one token.
    pub fn push(&mut self, token: u32, pos: i32, seq: SeqId, logits: bool) {
        self.tokens.push(token);
        self.pos.push(pos);
        self.seq.push(seq);
        self.logits.push(logits);
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// Largest number of tokens computed in one graph; longer batches are split (llama.cpp's
/// default micro-batch).
pub const MAX_UBATCH: usize = 512;

/// A model plus the mutable state needed to run it.
pub struct Session<'m> {
    model: &'m Model,
    backend: CpuBackend,
    kv: KvCache,
    galloc: GraphAllocator,
    /// Logits of the last decode, one row of n_vocab per requested output, in batch order.
    logits: Vec<f32>,
    n_outputs: usize,
    /// The weights by name, resolved once.
    weights: Weights<'m>,
    /// Metadata arena of the per-step graph: reset and reused, never reallocated.
    graph_ctx: Context,
    graph_nodes: usize,
    // Reused per-step scratch, so steady-state decoding allocates nothing on the Rust side.
    scratch: Scratch,
    batch: Batch,
}

/// Per-step buffers kept between decodes.
#[derive(Default)]
struct Scratch {
    mask: MaskBuf,
    slots: Vec<usize>,
    slot_ids: Vec<i64>,
    ids: Vec<i32>,
    out_rows: Vec<i32>,
}

impl std::fmt::Debug for Session<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("kv", &self.kv)
            .finish_non_exhaustive()
    }
}

impl<'m> Session<'m> {
    /// A session with a KV cache of `n_ctx` cells (all sequences together) and `n_threads`
    /// compute threads.
    pub fn new(
        model: &'m Model,
        n_ctx: usize,
        n_threads: usize,
    ) -> Result<Session<'m>, ModelError> {
        let max = model.hparams().n_ctx_train as usize;
        if n_ctx == 0 || n_ctx > max.max(1 << 20) {
            return Err(ModelError::BadContext {
                requested: n_ctx,
                max,
            });
        }
        let backend = CpuBackend::new(n_threads)?;
        let kv = KvCache::new(model.hparams(), n_ctx, &backend)?;
        let graph_nodes = 64 + 40 * model.hparams().n_layer as usize;
        Ok(Session {
            model,
            backend,
            kv,
            galloc: GraphAllocator::new_cpu(),
            logits: Vec::new(),
            n_outputs: 0,
            weights: model.weights()?,
            graph_ctx: Context::new_metadata(graph_nodes, graph_nodes),
            graph_nodes,
            scratch: Scratch::default(),
            batch: Batch::default(),
        })
    }

    /// The model.
    pub fn model(&self) -> &'m Model {
        self.model
    }

    /// Context size in tokens (KV cells).
    pub fn n_ctx(&self) -> usize {
        self.kv.size()
    }

    /// Next position of `seq`.
    pub fn next_pos(&self, seq: SeqId) -> i32 {
        self.kv.next_pos(seq)
    }

    /// Drops `seq`'s cached tokens from position `from` on.
    pub fn remove(&mut self, seq: SeqId, from: i32) {
        self.kv.remove(seq, from);
    }

    /// Makes `dst` start with `src`'s first `n` tokens, sharing their cells (no compute).
    /// `dst` should be empty.
    pub fn copy_prefix(&mut self, src: SeqId, dst: SeqId, n: usize) {
        self.kv
            .copy_prefix(src, dst, i32::try_from(n).unwrap_or(i32::MAX));
    }

    /// KV cells in use (a cell shared by several sequences counts once).
    pub fn used_cells(&self) -> usize {
        self.kv.used()
    }

    /// Forgets every sequence.
    pub fn clear(&mut self) {
        self.kv.clear();
    }

    /// Evaluates `batch`. Afterwards [`Session::logits`] holds one row per token whose
    /// `logits` flag was set, in batch order. Batches longer than [`MAX_UBATCH`] are split.
    pub fn decode(&mut self, batch: &Batch) -> Result<(), ModelError> {
        if batch.is_empty() {
            return Err(ModelError::EmptyBatch);
        }
        let n_vocab = self.model.hparams().n_vocab;
        if let Some((index, &id)) = batch.tokens.iter().enumerate().find(|(_, &t)| t >= n_vocab) {
            return Err(ModelError::BadToken { index, id, n_vocab });
        }
        if let Some(&seq) = batch.seq.iter().find(|&&s| s >= MAX_SEQS) {
            return Err(ModelError::BadSeq { seq, max: MAX_SEQS });
        }
        if batch.len() > self.kv.size() - self.kv.used() {
            return Err(ModelError::ContextFull(self.kv.size()));
        }
        self.logits.clear();
        self.n_outputs = 0;
        let mut start = 0;
        while start < batch.len() {
            let end = (start + MAX_UBATCH).min(batch.len());
            self.decode_ubatch(batch, start..end)?;
            start = end;
        }
        Ok(())
    }

    fn decode_ubatch(&mut self, b: &Batch, r: std::ops::Range<usize>) -> Result<(), ModelError> {
        let n = r.len();
        let (tokens, pos, seq, want) = (
            &b.tokens[r.clone()],
            &b.pos[r.clone()],
            &b.seq[r.clone()],
            &b.logits[r],
        );
        let sc = &mut self.scratch;
        self.kv.find_slots(n, &mut sc.slots)?;
        let n_kv = self.kv.n_kv(&sc.slots);
        sc.out_rows.clear();
        sc.out_rows
            .extend((0..n as i32).filter(|&i| want[i as usize]));
        let n_out = sc.out_rows.len();
        // A graph needs at least one output row; with none wanted, compute row 0 and drop it.
        if n_out == 0 {
            sc.out_rows.push(0);
        }

        self.graph_ctx.reset();
        let ctx = &self.graph_ctx;
        let shape = Shape {
            n_tokens: n,
            n_kv,
            n_outputs: n_out.max(1),
        };
        let Built {
            graph,
            inputs,
            logits,
        } = Llama::build(
            ctx,
            self.graph_nodes,
            self.model.hparams(),
            &self.weights,
            &self.kv,
            shape,
        );
        self.galloc.alloc_graph(&graph)?;

        sc.ids.clear();
        sc.ids.extend(tokens.iter().map(|&t| t as i32));
        inputs.tokens.write_i32(&sc.ids);
        inputs.pos.write_i32(pos);
        sc.slot_ids.clear();
        sc.slot_ids.extend(sc.slots.iter().map(|&s| s as i64));
        inputs.slots.write_i64(&sc.slot_ids);
        self.kv
            .fill_mask(&mut sc.mask, n_kv, n, &sc.slots, seq, pos);
        inputs.mask.write_f16_bits(&sc.mask.bits);
        inputs.out_ids.write_i32(&sc.out_rows);

        self.backend.compute(&graph)?;
        if n_out > 0 {
            let nv = n_vocab_of(self.model);
            let old = self.logits.len();
            self.logits.resize(old + n_out * nv, 0.0);
            logits.read_f32(&mut self.logits[old..]);
            self.n_outputs += n_out;
        }
        self.kv.commit(&self.scratch.slots, seq, pos);
        Ok(())
    }

    /// Logits of output `i` of the last decode.
    pub fn logits(&self, i: usize) -> &[f32] {
        let nv = n_vocab_of(self.model);
        assert!(i < self.n_outputs, "output {i} of {}", self.n_outputs);
        &self.logits[i * nv..(i + 1) * nv]
    }

    /// Number of logit rows from the last decode.
    pub fn n_outputs(&self) -> usize {
        self.n_outputs
    }

    /// Appends `tokens` to sequence 0 and returns the logits of the last one.
    pub fn eval(&mut self, tokens: &[u32]) -> Result<&[f32], ModelError> {
        self.eval_seq(0, tokens)?;
        Ok(self.logits(0))
    }

    /// Appends `tokens` to `seq`, computing logits for the last token only.
    pub fn eval_seq(&mut self, seq: SeqId, tokens: &[u32]) -> Result<(), ModelError> {
        let mut batch = std::mem::take(&mut self.batch);
        batch.clear();
        let p0 = self.kv.next_pos(seq);
        for (i, &t) in tokens.iter().enumerate() {
            batch.push(t, p0 + i as i32, seq, i + 1 == tokens.len());
        }
        let r = self.decode(&batch);
        self.batch = batch;
        r
    }

    /// Appends `tokens` to sequence 0 and returns the logits of every one of them.
    pub fn eval_all(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>, ModelError> {
        let mut batch = Batch::default();
        let p0 = self.kv.next_pos(0);
        for (i, &t) in tokens.iter().enumerate() {
            batch.push(t, p0 + i as i32, 0, true);
        }
        self.decode(&batch)?;
        Ok((0..self.n_outputs)
            .map(|i| self.logits(i).to_vec())
            .collect())
    }
}

fn n_vocab_of(model: &Model) -> usize {
    model.hparams().n_vocab as usize
}
