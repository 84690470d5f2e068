//! SentencePiece-style tokenization (`tokenizer.ggml.model = "llama"`), as llama.cpp's
//! `llm_tokenizer_spm_session`.
//!
//! The text (spaces already escaped to `▁`) is split into UTF-8 characters; adjacent pairs whose
//! concatenation is a token are queued by that token's score, and the best-scoring pair (ties:
//! leftmost) is merged until none is left. Symbols that are not tokens fall back to `<0xNN>`
//! byte tokens. A heap plus a linked list keeps this O(n log n).
//! <https://github.com/ggml-org/llama.cpp/blob/master/src/llama-vocab.cpp>

use super::symbols::{merge, pair_is_current, Symbol};
use super::vocab::Vocab;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// Appends the tokens of `text` (already whitespace-escaped) to `out`.
pub(crate) fn encode(vocab: &Vocab, text: &str, out: &mut Vec<u32>) {
    // One symbol per character; SentencePiece looks merged text up, so symbols carry no piece.
    let mut symbols: Vec<Symbol<()>> = Vec::with_capacity(text.len());
    for (start, c) in text.char_indices() {
        let end = start + c.len_utf8();
        let n = symbols.len();
        symbols.push(Symbol {
            start,
            end,
            prev: n.checked_sub(1),
            next: (end < text.len()).then_some(n + 1),
            piece: (),
        });
    }

    let mut heap = BinaryHeap::new();
    let try_add =
        |heap: &mut BinaryHeap<Bigram>, symbols: &[Symbol<()>], left: usize, right: usize| {
            let (l, r) = (symbols[left], symbols[right]);
            if let Some(id) = vocab.id_of(&text[l.start..r.end]) {
                heap.push(Bigram {
                    score: vocab.score(id),
                    left,
                    right,
                    len: r.end - l.start,
                });
            }
        };
    for i in 1..symbols.len() {
        try_add(&mut heap, &symbols, i - 1, i);
    }

    while let Some(b) = heap.pop() {
        if !pair_is_current(&symbols, b.left, b.right, b.len) {
            continue;
        }
        let (prev, next) = merge(&mut symbols, b.left, b.right, ());
        if let Some(p) = prev {
            try_add(&mut heap, &symbols, p, b.left);
        }
        if let Some(n) = next {
            try_add(&mut heap, &symbols, b.left, n);
        }
    }

    // Walk the chain from the first symbol (which is never merged away).
    let mut i = if symbols.is_empty() { None } else { Some(0) };
    while let Some(idx) = i {
        let s = symbols[idx];
        let piece = &text[s.start..s.end];
        match vocab.id_of(piece) {
            Some(id) => out.push(id),
            // Only single characters can miss (merges always form tokens): emit their bytes.
            // llama.cpp aborts when a byte has no token; we fall back to UNK, else drop it.
            None => out.extend(
                piece
                    .bytes()
                    .filter_map(|b| vocab.byte_token(b).or(vocab.special.unk)),
            ),
        }
        i = s.next;
    }
}

/// A queued merge. Max-heap order: higher score first, then smaller `left`
/// (llama.cpp's `llm_bigram_spm::comparator`).
#[derive(Clone, Copy, Debug)]
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
}

impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> Ordering {
        // C++ compares with `<` and `==`: NaN and ±0 fall through to the position tie-break.
        self.score
            .partial_cmp(&other.score)
            .unwrap_or(Ordering::Equal)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Bigram {}
