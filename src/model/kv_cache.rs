//! The KV cache: one f16 K and V tensor per layer, shared by any number of sequences.
//!
//! The cache is a pool of *cells*. Each cell holds one token's keys and values for every layer,
//! tagged with the sequence it belongs to and its position in that sequence. A batch may mix
//! tokens of several sequences: each token is written to a free cell (`ggml_set_rows` with the
//! cell indices), and the attention mask lets a token see exactly the cells of its own sequence
//! at positions up to its own. That is what continuous batching and prefix sharing build on.
//!
//! A cell may belong to several sequences at once (a set of up to [`MAX_SEQS`] ids): a
//! sequence that starts with another's tokens shares their cells ([`KvCache::copy_prefix`],
//! llama.cpp's `seq_cp`) instead of recomputing them, and a cell is free once no sequence
//! holds it.

use crate::ggml::{AllocatedContext, Context, CpuBackend, Graph, Tensor, Type};
use crate::model::{HParams, ModelError};

/// Identifies a sequence (one conversation / request) within a cache: `0..MAX_SEQS`.
pub type SeqId = u32;

/// Sequences one cache can tell apart (the width of a cell's sequence set).
pub const MAX_SEQS: SeqId = 64;

/// What a cell holds: the position of its token and the set of sequences sharing it
/// (bit `s` for sequence `s`); free when the set is empty.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Cell {
    pos: i32,
    seqs: u64,
}

impl Cell {
    fn is_free(self) -> bool {
        self.seqs == 0
    }

    fn has(self, seq: SeqId) -> bool {
        self.seqs & bit(seq) != 0
    }
}

fn bit(seq: SeqId) -> u64 {
    debug_assert!(seq < MAX_SEQS);
    1u64 << seq
}

/// Bytes of the f16 keys and values of `cells` cells for `hp`'s layers: what
/// [`KvCache::new`] allocates (alignment padding aside).
pub fn kv_cache_bytes(hp: &HParams, cells: usize) -> u64 {
    let per_cell = 2 * u64::from(hp.n_layer) * u64::from(hp.n_embd_kv()) * 2;
    per_cell.saturating_mul(cells as u64)
}

/// f16 keys and values for `size` cells.
pub(crate) struct KvCache {
    tensors: AllocatedContext,
    cells: Vec<Cell>,
    n_layer: usize,
    /// Width of one key/value head (`D`).
    head_dim: i64,
    /// Key/value heads (`Hkv`); a cell's row is `D * Hkv` wide.
    n_head_kv: i64,
}

/// Reused buffers for [`KvCache::fill_mask`].
#[derive(Debug, Default)]
pub(crate) struct MaskBuf {
    /// The f16 mask bits, row-major [n_kv, n_rows].
    pub bits: Vec<u16>,
    /// What each attended cell will hold once the batch is written.
    view: Vec<Cell>,
}

impl std::fmt::Debug for KvCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvCache")
            .field("size", &self.cells.len())
            .field("used", &self.used())
            .finish()
    }
}

impl KvCache {
    /// A cache of `size` cells for `hp`'s layers, in backend memory.
    pub fn new(hp: &HParams, size: usize, backend: &CpuBackend) -> Result<KvCache, ModelError> {
        let n_layer = hp.n_layer as usize;
        let ctx = Context::new_metadata(2 * n_layer, 0);
        let row = i64::from(hp.n_embd_kv());
        for il in 0..n_layer {
            ctx.new_tensor(Type::F16, &[row, size as i64])
                .set_name(&format!("cache_k-{il}"));
            ctx.new_tensor(Type::F16, &[row, size as i64])
                .set_name(&format!("cache_v-{il}"));
        }
        let tensors = backend.alloc_context(ctx)?;
        // Zero the cache so masked-out cells never hold NaN bit patterns.
        tensors.clear(0);
        Ok(KvCache {
            tensors,
            cells: vec![Cell::default(); size],
            n_layer,
            head_dim: i64::from(hp.head_dim),
            n_head_kv: i64::from(hp.n_head_kv),
        })
    }

    /// Number of cells.
    pub fn size(&self) -> usize {
        self.cells.len()
    }

    /// Cells in use.
    pub fn used(&self) -> usize {
        self.cells.iter().filter(|c| !c.is_free()).count()
    }

    /// (K, V) tensors of layer `il`, each [n_embd_kv, size].
    fn layer(&self, il: usize) -> (Tensor<'_>, Tensor<'_>) {
        assert!(il < self.n_layer);
        let mut it = self.tensors.tensors().skip(2 * il);
        let k = it.next().expect("k tensor");
        let v = it.next().expect("v tensor");
        (k, v)
    }

    /// Adds to `graph` the writes of this batch's keys `k` [D, Hkv, T] and values `v`
    /// [D*Hkv, T] of layer `il` into the cells `slots` (I64 [T]), and returns the keys and
    /// values of the first `n_kv` cells as views [D, N, Hkv] for the attention.
    pub fn store<'g>(
        &'g self,
        ctx: &'g Context,
        graph: &mut Graph<'g>,
        il: usize,
        (k, v): (Tensor<'g>, Tensor<'g>),
        slots: Tensor<'g>,
        n_kv: usize,
    ) -> (Tensor<'g>, Tensor<'g>) {
        let (d, nkv) = (self.head_dim, self.n_head_kv);
        let t = k.ne()[2];
        // Cache rows are [D*Hkv] per cell.
        let (cache_k, cache_v) = self.layer(il);
        let k_store = ctx.set_rows(cache_k, ctx.reshape(k, &[d * nkv, t]), slots);
        let v_store = ctx.set_rows(cache_v, v, slots);
        graph.build_forward_expand(k_store);
        graph.build_forward_expand(v_store);
        (
            self.cells_view(ctx, k_store, n_kv),
            self.cells_view(ctx, v_store, n_kv),
        )
    }

    /// A view of the first `n_kv` cells of a layer's K or V as [D, N, Hkv]: the cell stride is
    /// one cache row, the head stride one head.
    fn cells_view<'g>(&self, ctx: &'g Context, cache: Tensor<'g>, n_kv: usize) -> Tensor<'g> {
        let (d, nkv) = (self.head_dim, self.n_head_kv);
        let row = Type::F16.row_bytes(d * nkv);
        let head = Type::F16.row_bytes(d);
        ctx.view(
            cache,
            [d, n_kv as i64, nkv, 1],
            [row, head, head * nkv as usize],
            0,
        )
    }

    /// Picks free cells for `n` tokens into `slots` (lowest indices first, so the attended
    /// range stays compact). Does not mark them: [`KvCache::commit`] does, once the batch is
    /// computed.
    pub fn find_slots(&self, n: usize, slots: &mut Vec<usize>) -> Result<(), ModelError> {
        slots.clear();
        slots.extend(
            self.cells
                .iter()
                .enumerate()
                .filter(|(_, c)| c.is_free())
                .map(|(i, _)| i)
                .take(n),
        );
        if slots.len() < n {
            return Err(ModelError::ContextFull(self.size()));
        }
        Ok(())
    }

    /// Records that `slots[i]` now holds token `i` of sequence `seqs[i]` at `pos[i]`.
    pub fn commit(&mut self, slots: &[usize], seqs: &[SeqId], pos: &[i32]) {
        for ((&s, &q), &p) in slots.iter().zip(seqs).zip(pos) {
            self.cells[s] = Cell {
                pos: p,
                seqs: bit(q),
            };
        }
    }

    /// Takes `seq` out of every cell at position >= `from`; cells no sequence holds are free.
    pub fn remove(&mut self, seq: SeqId, from: i32) {
        for c in &mut self.cells {
            if c.has(seq) && c.pos >= from {
                c.seqs &= !bit(seq);
            }
        }
    }

    /// Adds `dst` to every cell of `src` at position < `until`: `dst` then starts with those
    /// tokens without recomputing them.
    pub fn copy_prefix(&mut self, src: SeqId, dst: SeqId, until: i32) {
        for c in &mut self.cells {
            if c.has(src) && c.pos < until {
                c.seqs |= bit(dst);
            }
        }
    }

    /// Frees every cell.
    pub fn clear(&mut self) {
        self.cells.fill(Cell::default());
    }

    /// Next position of `seq` (one past its highest cached position; 0 when empty).
    pub fn next_pos(&self, seq: SeqId) -> i32 {
        self.cells
            .iter()
            .filter(|c| c.has(seq))
            .map(|c| c.pos + 1)
            .max()
            .unwrap_or(0)
    }

    /// Cells the attention must cover to see every used cell and the new `slots`: the highest
    /// index in use plus one, rounded up to 32 so graph shapes change rarely.
    pub fn n_kv(&self, slots: &[usize]) -> usize {
        let used_max = self
            .cells
            .iter()
            .rposition(|c| !c.is_free())
            .map_or(0, |i| i + 1);
        let slot_max = slots.iter().max().map_or(0, |&s| s + 1);
        used_max.max(slot_max).next_multiple_of(32).min(self.size())
    }

    /// Fills the f16 attention mask [n_kv, n_rows] (row-major, row per token; rows past the
    /// batch are fully masked): a token sees a cell iff the cell is of its sequence at a
    /// position not after its own, or is one of this batch's own earlier-or-equal tokens.
    pub fn fill_mask(
        &self,
        buf: &mut MaskBuf,
        n_kv: usize,
        n_rows: usize,
        slots: &[usize],
        seqs: &[SeqId],
        pos: &[i32],
    ) {
        const ZERO: u16 = 0x0000; // f16 +0.0
        const NEG_INF: u16 = 0xFC00; // f16 -inf
        let MaskBuf { bits: mask, view } = buf;
        mask.clear();
        mask.resize(n_kv * n_rows, NEG_INF);
        // What each cell will hold once this batch is written.
        view.clear();
        view.extend_from_slice(&self.cells[..n_kv]);
        for ((&s, &q), &p) in slots.iter().zip(seqs).zip(pos) {
            view[s] = Cell {
                pos: p,
                seqs: bit(q),
            };
        }
        for (t, (&q, &p)) in seqs.iter().zip(pos).enumerate() {
            let row = &mut mask[t * n_kv..(t + 1) * n_kv];
            for (m, cell) in row.iter_mut().zip(view.iter()) {
                if cell.has(q) && cell.pos <= p {
                    *m = ZERO;
                }
            }
        }
    }
}
