//! Byte-level BPE (`tokenizer.ggml.model = "gpt2"`), merging as llama.cpp's
//! `llm_tokenizer_bpe_session` does.
//!
//! Each pre-tokenized word is byte-encoded (GPT-2's byte-to-unicode map), split into
//! characters, and the adjacent pair with the lowest merge rank is merged first (ties: leftmost).
//! Symbols live in a linked list and candidate pairs in a binary heap, so a word of n characters
//! costs O(n log n) rather than the O(n²) of rescanning for the best pair after every merge.
//! Stale heap entries are recognised by their length, which is equivalent to llama.cpp's
//! string comparison because symbols only ever grow.
//! <https://github.com/ggml-org/llama.cpp/blob/master/src/llama-vocab.cpp>

use super::fxhash::FxHashMap;
use super::pretokenize::{self, Step};
use super::symbols::{merge, pair_is_current, Symbol};
use super::unicode::BYTE_TO_CHAR;
use super::vocab::Vocab;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Sentinel for "this string is neither a token nor part of any merge".
const NO_PIECE: u32 = u32::MAX;

/// Merge table and pre-tokenizer of one byte-level BPE vocabulary.
#[derive(Debug)]
pub(crate) struct Bpe {
    /// (left piece, right piece) -> (rank, merged piece). Pieces are token ids where the string
    /// is in the vocabulary, otherwise ids from `extra_pieces`.
    merges: FxHashMap<(u32, u32), (u32, u32)>,
    /// Merge strings that are not vocabulary tokens, numbered from `n_vocab` upwards.
    extra_pieces: FxHashMap<Box<str>, u32>,
    steps: &'static [Step],
    /// Llama-3 style: a word that is itself a token is emitted without merging.
    ignore_merges: bool,
    /// Piece of each byte's byte-level character.
    byte_pieces: [u32; 256],
}

impl Bpe {
    /// Builds the rank map from `tokenizer.ggml.merges` (`"left right"` strings, best first).
    /// A repeated pair keeps its first (best) rank, as llama.cpp's `emplace` does.
    pub(crate) fn new(
        vocab: &Vocab,
        merges: &[String],
        steps: &'static [Step],
        ignore_merges: bool,
    ) -> Bpe {
        let mut bpe = Bpe {
            merges: FxHashMap::default(),
            extra_pieces: FxHashMap::default(),
            steps,
            ignore_merges,
            byte_pieces: [NO_PIECE; 256],
        };
        bpe.merges.reserve(merges.len());
        let mut joined = String::new();
        for (rank, line) in merges.iter().enumerate() {
            // llama.cpp splits at the first space after the first byte, so a merge whose left
            // side starts with a space still parses.
            let Some(split) = line
                .char_indices()
                .skip(1)
                .find(|&(_, c)| c == ' ')
                .map(|(i, _)| i)
            else {
                continue;
            };
            let (left, right) = (&line[..split], &line[split + 1..]);
            if left.is_empty() || right.is_empty() {
                continue;
            }
            joined.clear();
            joined.push_str(left);
            joined.push_str(right);
            let l = bpe.intern(vocab, left);
            let r = bpe.intern(vocab, right);
            let m = bpe.intern(vocab, &joined);
            let rank = u32::try_from(rank).unwrap_or(u32::MAX);
            bpe.merges.entry((l, r)).or_insert((rank, m));
        }
        for (b, c) in BYTE_TO_CHAR.iter().enumerate() {
            bpe.byte_pieces[b] = bpe.piece_of(vocab, c.encode_utf8(&mut [0; 4]));
        }
        bpe
    }

    fn intern(&mut self, vocab: &Vocab, s: &str) -> u32 {
        if let Some(id) = vocab.id_of(s) {
            return id;
        }
        let next = u32::try_from(vocab.n_tokens() + self.extra_pieces.len()).unwrap_or(NO_PIECE);
        *self.extra_pieces.entry(s.into()).or_insert(next)
    }

    fn piece_of(&self, vocab: &Vocab, s: &str) -> u32 {
        vocab
            .id_of(s)
            .or_else(|| self.extra_pieces.get(s).copied())
            .unwrap_or(NO_PIECE)
    }

    /// Appends the tokens of one raw-text fragment (no special tokens inside) to `out`.
    pub(crate) fn encode(&self, vocab: &Vocab, text: &str, out: &mut Vec<u32>) {
        let mut session = Session::default();
        for range in pretokenize::split(text, self.steps) {
            self.encode_word(vocab, text[range].as_bytes(), &mut session, out);
        }
    }

    /// Merges one word. Each byte of the word is one initial symbol (byte-level BPE maps every
    /// byte to one character), so symbols are byte ranges of the raw word and the byte-encoded
    /// string is only built where a string lookup is unavoidable.
    fn encode_word(&self, vocab: &Vocab, word: &[u8], s: &mut Session, out: &mut Vec<u32>) {
        if self.ignore_merges {
            encode_bytes(word, &mut s.encoded);
            if let Some(id) = vocab.id_of(&s.encoded) {
                out.push(id);
                return;
            }
        }

        s.symbols.clear();
        s.heap.clear();
        for (i, &b) in word.iter().enumerate() {
            s.symbols.push(Symbol {
                start: i,
                end: i + 1,
                prev: i.checked_sub(1),
                next: (i + 1 < word.len()).then_some(i + 1),
                piece: self.byte_pieces[usize::from(b)],
            });
        }
        for i in 1..s.symbols.len() {
            self.push_pair(s, i - 1, i);
        }

        while let Some(Reverse(cand)) = s.heap.pop() {
            if !pair_is_current(&s.symbols, cand.left, cand.right, cand.len) {
                continue;
            }
            let (prev, next) = merge(&mut s.symbols, cand.left, cand.right, cand.merged);
            if let Some(p) = prev {
                self.push_pair(s, p, cand.left);
            }
            if let Some(n) = next {
                self.push_pair(s, cand.left, n);
            }
        }

        for i in 0..s.symbols.len() {
            let sym = s.symbols[i];
            if sym.is_dead() {
                continue;
            }
            if (sym.piece as usize) < vocab.n_tokens() {
                out.push(sym.piece);
                continue;
            }
            // Not a token (no merge made it one): look the string up, else fall back to one
            // token per byte of the byte-encoded string, each looked up as a one-byte string
            // (llama.cpp does this; bytes that are not tokens are dropped).
            encode_bytes(&word[sym.start..sym.end], &mut s.encoded);
            match vocab.id_of(&s.encoded) {
                Some(id) => out.push(id),
                None => out.extend(s.encoded.bytes().filter_map(|b| vocab.single_byte_token(b))),
            }
        }
    }

    fn push_pair(&self, s: &mut Session, left: usize, right: usize) {
        let (l, r) = (s.symbols[left], s.symbols[right]);
        if l.piece == NO_PIECE || r.piece == NO_PIECE {
            return;
        }
        if let Some(&(rank, merged)) = self.merges.get(&(l.piece, r.piece)) {
            s.heap.push(Reverse(Candidate {
                rank,
                left,
                right,
                len: r.end - l.start,
                merged,
            }));
        }
    }
}

/// A queued merge; ordered by rank, then by leftmost position (llama.cpp's comparator).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Candidate {
    rank: u32,
    left: usize,
    right: usize,
    len: usize,
    merged: u32,
}

/// Buffers reused across the words of one call.
#[derive(Default)]
struct Session {
    /// The word being merged: byte ranges of the raw word and their pieces.
    symbols: Vec<Symbol<u32>>,
    heap: BinaryHeap<Reverse<Candidate>>,
    encoded: String,
}

/// GPT-2 byte-to-unicode encoding of `bytes` into `out`.
fn encode_bytes(bytes: &[u8], out: &mut String) {
    out.clear();
    out.extend(bytes.iter().map(|&b| BYTE_TO_CHAR[usize::from(b)]));
}
