//! The linked list of symbols both merge tokenizers work on (byte-level BPE in `bpe.rs`,
//! SentencePiece in `spm.rs`). Each symbol is a byte range of the text being merged; a merge
//! joins a symbol with its right neighbour and leaves the neighbour in place but empty ("dead"),
//! so the indices of pairs waiting in a heap stay valid and stale pairs can be recognised.

/// One symbol: a byte range and its neighbours; `piece` is what the tokenizer tracks per symbol
/// (BPE: the piece id; SentencePiece: nothing, it looks the text up).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Symbol<P> {
    pub start: usize,
    pub end: usize,
    pub prev: Option<usize>,
    pub next: Option<usize>,
    pub piece: P,
}

impl<P> Symbol<P> {
    /// Merged away into its left neighbour.
    pub fn is_dead(&self) -> bool {
        self.start == self.end
    }
}

/// Whether a pair queued as (`left`, `right`) spanning `len` bytes still stands: neither side
/// was merged away, and neither grew since it was queued (symbols only ever grow, so the length
/// tells; llama.cpp compares the strings instead).
pub(crate) fn pair_is_current<P>(
    symbols: &[Symbol<P>],
    left: usize,
    right: usize,
    len: usize,
) -> bool {
    let (l, r) = (&symbols[left], &symbols[right]);
    !(l.is_dead() || r.is_dead() || r.end - l.start != len)
}

/// Merges `right` into `left`, its next symbol, and gives the result `piece`. Returns the merged
/// symbol's neighbours (previous, next): the new pairs to consider.
pub(crate) fn merge<P: Copy>(
    symbols: &mut [Symbol<P>],
    left: usize,
    right: usize,
    piece: P,
) -> (Option<usize>, Option<usize>) {
    let r = symbols[right];
    let l = &mut symbols[left];
    l.end = r.end;
    l.next = r.next;
    l.piece = piece;
    let prev = l.prev;
    symbols[right].start = r.end; // mark dead
    if let Some(n) = r.next {
        symbols[n].prev = Some(left);
    }
    (prev, r.next)
}
