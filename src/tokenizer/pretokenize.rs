//! Hand-written pre-tokenizers: split text into words before byte-level BPE, exactly as
//! llama.cpp's `unicode_regex_split` does for the supported `tokenizer.ggml.pre` types.
//!
//! llama.cpp runs a list of regexes in sequence; each one re-splits every segment the previous
//! one produced, and both matches and the gaps between matches become segments. The GPT-2 and
//! Llama-3/Qwen2 regexes are hand-coded there (`unicode_regex_split_custom_*`); the small
//! helper regexes (`\p{N}`, `\p{N}+`, the punctuation class, `[0-9][0-9][0-9]`) run through
//! `std::regex` on a "collapsed" text where each non-ASCII codepoint becomes one byte naming its
//! category. Every step here reproduces one of those, codepoint for codepoint, including the
//! quirks (for example a lone space before the end of a segment, and ASCII-only contractions).
//! <https://github.com/ggml-org/llama.cpp/blob/master/src/unicode.cpp>

use super::unicode::{flags, CpFlags};
use std::ops::Range;

/// One splitting pass; a pre-tokenizer is a sequence of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
    Gpt2,
    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,max}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
    /// (Llama 3 has `max_digits == 3`, Qwen2 has 1).
    Llama3 { max_digits: usize },
    /// `\p{N}`: every number codepoint becomes its own segment.
    EachNumber,
    /// `\p{N}+`
    NumberRuns,
    /// `[\p{P}\$\+<=>\^~\|]+`
    PunctRuns,
    /// `[0-9][0-9][0-9]`
    AsciiDigitTriples,
}

/// Llama 3 family (`llama3`, `llama-bpe`, `dbrx`, ...).
pub(crate) const LLAMA3: &[Step] = &[Step::Llama3 { max_digits: 3 }];
/// Qwen2 family (`qwen2`, `stablelm2`, ...).
pub(crate) const QWEN2: &[Step] = &[Step::Llama3 { max_digits: 1 }];
/// GPT-2 family (`gpt-2`, `phi-2`, `mpt`, `olmo`, ...).
pub(crate) const GPT2: &[Step] = &[Step::Gpt2];
/// StarCoder family (`smollm`, `starcoder`, `refact`, `command-r`, ...): digits one by one,
/// then GPT-2.
pub(crate) const STARCODER: &[Step] = &[Step::EachNumber, Step::Gpt2];
/// llama.cpp's `LLAMA_VOCAB_PRE_TYPE_DEFAULT` (`default`, or `tokenizer.ggml.pre` missing).
pub(crate) const DEFAULT: &[Step] = &[
    Step::PunctRuns,
    Step::Gpt2,
    Step::NumberRuns,
    Step::AsciiDigitTriples,
];

/// Splits `text` into words (byte ranges into `text`) by running `steps` in order.
pub(crate) fn split(text: &str, steps: &[Step]) -> Vec<Range<usize>> {
    // Codepoints, their flags, and the byte offset of each (plus one past the end).
    let mut cps = Vec::with_capacity(text.len());
    let mut offs = Vec::with_capacity(text.len() + 1);
    for (i, c) in text.char_indices() {
        cps.push(c as u32);
        offs.push(i);
    }
    offs.push(text.len());
    let fl: Vec<CpFlags> = cps.iter().map(|&c| flags(c)).collect();

    // Segments as codepoint ranges; llama.cpp starts with the whole text as one segment.
    let mut segs: Vec<Range<usize>> = Vec::new();
    if !cps.is_empty() {
        segs.push(0..cps.len());
    }
    for &step in steps {
        let mut next = Vec::with_capacity(segs.len() * 2);
        for seg in &segs {
            let s = Segment {
                cps: &cps,
                fl: &fl,
                end: seg.end,
            };
            let mut out = Pieces {
                out: &mut next,
                prev: seg.start,
            };
            match step {
                Step::Gpt2 => s.gpt2(seg.start, &mut out),
                Step::Llama3 { max_digits } => s.llama3(seg.start, max_digits, &mut out),
                Step::EachNumber => s.each_match(seg.start, 1, &mut out, is_collapsed_number),
                Step::NumberRuns => s.runs(seg.start, &mut out, is_collapsed_number),
                Step::PunctRuns => s.runs(seg.start, &mut out, is_collapsed_punct),
                Step::AsciiDigitTriples => s.each_match(seg.start, 3, &mut out, |c, _| {
                    (u32::from(b'0')..=u32::from(b'9')).contains(&c)
                }),
            }
            // Anything after the last match is a segment too.
            out.push(seg.end);
        }
        segs = next;
    }
    segs.into_iter()
        .map(|r| offs[r.start]..offs[r.end])
        .collect()
}

/// `\p{N}` on llama.cpp's collapsed text: ASCII digits, or a non-ASCII non-whitespace
/// codepoint whose category is NUMBER.
fn is_collapsed_number(c: u32, f: CpFlags) -> bool {
    if c < 128 {
        (u32::from(b'0')..=u32::from(b'9')).contains(&c)
    } else {
        !f.is_whitespace() && f.is_number_category()
    }
}

/// `[\p{P}\$\+<=>\^~\|]` on the collapsed text. For ASCII, llama.cpp's `\p{P}` stands for
/// ``!-#%-*,-/:-;?-@[-]_{}``; non-ASCII needs the PUNCTUATION category.
fn is_collapsed_punct(c: u32, f: CpFlags) -> bool {
    if c < 128 {
        matches!(
            c as u8,
            b'!'..=b'#'
                | b'%'..=b'*'
                | b','..=b'/'
                | b':'..=b';'
                | b'?'..=b'@'
                | b'['..=b']'
                | b'_'
                | b'{'
                | b'}'
                | b'$'
                | b'+'
                | b'<'..=b'>'
                | b'^'
                | b'~'
                | b'|'
        )
    } else {
        !f.is_whitespace() && f.is_punctuation_category()
    }
}

/// Collects segment boundaries; empty pieces are dropped, as in llama.cpp's `_add_token`.
struct Pieces<'a> {
    out: &'a mut Vec<Range<usize>>,
    prev: usize,
}

impl Pieces<'_> {
    fn push(&mut self, end: usize) {
        if end > self.prev {
            self.out.push(self.prev..end);
        }
        self.prev = end;
    }
}

/// One segment under the cursor of a splitter; positions past `end` read as "nothing".
struct Segment<'a> {
    cps: &'a [u32],
    fl: &'a [CpFlags],
    end: usize,
}

/// What llama.cpp's `_get_cpt` returns outside the segment.
const OUT_OF_RANGE: u32 = u32::MAX;

impl Segment<'_> {
    fn cpt(&self, pos: usize) -> u32 {
        if pos < self.end {
            self.cps[pos]
        } else {
            OUT_OF_RANGE
        }
    }

    fn flags(&self, pos: usize) -> CpFlags {
        if pos < self.end {
            self.fl[pos]
        } else {
            CpFlags::NONE
        }
    }

    /// `'s|'t|'re|'ve|'m|'ll|'d`, optionally case-insensitive; returns the contraction length.
    fn contraction(&self, pos: usize, fold_case: bool) -> Option<usize> {
        if self.cpt(pos) != u32::from(b'\'') || pos + 1 >= self.end {
            return None;
        }
        // llama.cpp lowercases with its Unicode table; no non-ASCII codepoint lowercases to
        // one of these letters, so ASCII folding is the same thing.
        let lower = |c: u32| {
            if fold_case && (u32::from(b'A')..=u32::from(b'Z')).contains(&c) {
                c + 32
            } else {
                c
            }
        };
        let n1 = lower(self.cpt(pos + 1));
        if [b's', b't', b'm', b'd'].iter().any(|&b| n1 == u32::from(b)) {
            return Some(2);
        }
        if pos + 2 < self.end {
            let n2 = lower(self.cpt(pos + 2));
            let pair = |a: u8, b: u8| n1 == u32::from(a) && n2 == u32::from(b);
            if pair(b'r', b'e') || pair(b'v', b'e') || pair(b'l', b'l') {
                return Some(3);
            }
        }
        None
    }

    /// Where the run of codepoints from `pos` whose flags `class` accepts ends (`pos` if none).
    fn run_end(&self, mut pos: usize, class: fn(CpFlags) -> bool) -> usize {
        while class(self.flags(pos)) {
            pos += 1;
        }
        pos
    }

    /// Length of the whitespace run at `pos`, and the end of its last `\r`/`\n` (0 if none).
    fn whitespace_run(&self, pos: usize) -> (usize, usize) {
        let mut n = 0;
        let mut last_newline_end = 0;
        while self.flags(pos + n).is_whitespace() {
            let c = self.cpt(pos + n);
            if c == u32::from(b'\r') || c == u32::from(b'\n') {
                last_newline_end = pos + n + 1;
            }
            n += 1;
        }
        (n, last_newline_end)
    }

    /// The end of the piece at `pos` for the last alternatives both GPT-2 and Llama 3 share,
    /// given the whitespace run there (`n_ws` codepoints): `\s+(?!\S)` leaves the last
    /// whitespace to prefix the next word, `\s+` takes the run at the end of the text, and
    /// with no match one codepoint stands alone.
    fn whitespace_end(&self, pos: usize, n_ws: usize) -> usize {
        if n_ws > 1 && self.cpt(pos + n_ws) != OUT_OF_RANGE {
            pos + n_ws - 1
        } else if n_ws > 0 {
            pos + n_ws
        } else {
            pos + 1
        }
    }

    /// Cuts from `start` to the end piece by piece, as llama.cpp's custom splitters loop: a
    /// contraction (`'s`, `'t`, ...; either case when `fold_case`) if one starts at the
    /// position, else the piece `next` ends (it may also cut inside it, as digit groups do).
    fn pieces(
        &self,
        start: usize,
        fold_case: bool,
        out: &mut Pieces<'_>,
        next: impl Fn(usize, &mut Pieces<'_>) -> usize,
    ) {
        let mut pos = start;
        while pos < self.end {
            pos = match self.contraction(pos, fold_case) {
                Some(n) => pos + n,
                None => next(pos, out),
            };
            out.push(pos);
        }
    }

    /// llama.cpp `unicode_regex_split_custom_gpt2`.
    fn gpt2(&self, start: usize, out: &mut Pieces<'_>) {
        let space = u32::from(b' ');
        self.pieces(start, false, out, |pos, _| {
            let cpt = self.cpt(pos);
            // <space>?\p{L}+, then <space>?\p{N}+, then <space>?[^\s\p{L}\p{N}]+
            let f2 = self.flags(pos + usize::from(cpt == space));
            let classes: [fn(CpFlags) -> bool; 3] =
                [CpFlags::is_letter, CpFlags::is_number, is_other];
            if let Some(&class) = classes.iter().find(|class| class(f2)) {
                return self.run_end(pos + usize::from(cpt == space), class);
            }
            let (n_ws, _) = self.whitespace_run(pos);
            self.whitespace_end(pos, n_ws)
        });
    }

    /// llama.cpp `unicode_regex_split_custom_llama3` (and `_qwen2` with `max_digits == 1`).
    fn llama3(&self, start: usize, max_digits: usize, out: &mut Pieces<'_>) {
        let space = u32::from(b' ');
        let is_newline = |c: u32| c == u32::from(b'\r') || c == u32::from(b'\n');
        self.pieces(start, true, out, |mut pos, out| {
            let cpt = self.cpt(pos);
            let f = self.flags(pos);

            // [^\r\n\p{L}\p{N}]?\p{L}+
            if !(is_newline(cpt) || f.is_number())
                && (f.is_letter() || self.flags(pos + 1).is_letter())
            {
                return self.run_end(pos + 1, CpFlags::is_letter);
            }

            // \p{N}{1,max_digits}
            if f.is_number() {
                let mut ini = pos;
                while self.flags(pos).is_number() {
                    pos += 1;
                    if pos - ini >= max_digits {
                        out.push(pos);
                        ini = pos;
                    }
                }
                return pos;
            }

            // <space>?[^\s\p{L}\p{N}]+[\r\n]*
            // (llama.cpp tests the *current* codepoint's flags for "in segment" here, so a
            // space at the very end of a segment lands in this branch.)
            let f2 = if cpt == space { self.flags(pos + 1) } else { f };
            if !(f2.is_whitespace() || f2.is_letter() || f2.is_number()) && f.is_any() {
                pos = self.run_end(pos + usize::from(cpt == space), is_other);
                while is_newline(self.cpt(pos)) {
                    pos += 1;
                }
                return pos;
            }

            let (n_ws, last_newline_end) = self.whitespace_run(pos);
            // \s*[\r\n]+
            if last_newline_end > 0 {
                return last_newline_end;
            }
            self.whitespace_end(pos, n_ws)
        });
    }

    /// Maximal runs of codepoints matching `pred` (a `[class]+` regex): each run and each gap
    /// between runs becomes a segment.
    fn runs(&self, start: usize, out: &mut Pieces<'_>, pred: fn(u32, CpFlags) -> bool) {
        let mut pos = start;
        while pos < self.end {
            if pred(self.cps[pos], self.fl[pos]) {
                out.push(pos);
                while pos < self.end && pred(self.cps[pos], self.fl[pos]) {
                    pos += 1;
                }
                out.push(pos);
            } else {
                pos += 1;
            }
        }
    }

    /// Leftmost non-overlapping matches of `len` consecutive codepoints matching `pred`.
    fn each_match(
        &self,
        start: usize,
        len: usize,
        out: &mut Pieces<'_>,
        pred: impl Fn(u32, CpFlags) -> bool,
    ) {
        let mut pos = start;
        while pos + len <= self.end {
            if (pos..pos + len).all(|p| pred(self.cps[p], self.fl[p])) {
                out.push(pos);
                pos += len;
                out.push(pos);
            } else {
                pos += 1;
            }
        }
    }
}

/// `[^\s\p{L}\p{N}]` for a codepoint inside the segment.
fn is_other(f: CpFlags) -> bool {
    !(f.is_whitespace() || f.is_letter() || f.is_number()) && f.is_any()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words<'a>(text: &'a str, steps: &[Step]) -> Vec<&'a str> {
        split(text, steps).into_iter().map(|r| &text[r]).collect()
    }

    #[test]
    fn gpt2_basic() {
        assert_eq!(
            words("Hello world's  end 123!!", GPT2),
            ["Hello", " world", "'s", " ", " end", " 123", "!!"]
        );
        assert_eq!(words("a  \n b", GPT2), ["a", "  \n", " b"]);
        assert_eq!(words("x   ", GPT2), ["x", "   "]);
    }

    #[test]
    fn starcoder_isolates_digits() {
        assert_eq!(
            words("ab 1234x", STARCODER),
            ["ab", " ", "1", "2", "3", "4", "x"]
        );
    }

    #[test]
    fn llama3_rules() {
        assert_eq!(
            words("I'M 12345 ok\n\n  hi", LLAMA3),
            ["I", "'M", " ", "123", "45", " ok", "\n\n", " ", " hi"]
        );
        assert_eq!(words("x?!\n\ny", LLAMA3), ["x", "?!\n\n", "y"]);
    }

    #[test]
    fn default_pipeline() {
        assert_eq!(
            words("a,b 12345", DEFAULT),
            ["a", ",", "b", " ", "123", "45"]
        );
    }

    #[test]
    fn empty_text_has_no_words() {
        assert!(split("", GPT2).is_empty());
    }
}
