//! Tokenizers built from GGUF metadata (`tokenizer.ggml.*`) that reproduce llama.cpp token for
//! token, and chat templates ([`chat`]).
//!
//! Two algorithms, chosen by `tokenizer.ggml.model`:
//! - `gpt2`: byte-level BPE ([`bpe`]) after a pre-tokenizer chosen by `tokenizer.ggml.pre`
//!   ([`pretokenize`]);
//! - `llama`: SentencePiece-style merges by score with `<0xNN>` byte fallback ([`spm`]).
//!
//! Before either runs, special tokens are cut out of the text (llama.cpp's
//! `tokenizer_st_partition`): user-defined tokens always, control tokens only when
//! `parse_special` is set, which only the chat template's output may use.
//!
//! # Pre-tokenizer: hand-written rather than `fancy-regex` or `tokenizers`
//! The pre-tokenizer regexes need look-ahead (`\s+(?!\S)`), so the `regex` crate alone cannot
//! run them; the candidates were `fancy-regex` (backtracking on top of `regex`) or Hugging
//! Face's `tokenizers`. We hand-wrote the splitters instead, as llama.cpp itself does for these
//! patterns (`unicode_regex_split_custom_gpt2/llama3/qwen2`):
//! - correctness: what must match is llama.cpp, not the regex. llama.cpp classifies codepoints
//!   with its own Unicode table and runs its helper regexes on a category-collapsed text, which
//!   a regex engine with its own (different-version) Unicode tables would not reproduce on
//!   every codepoint; `tokenizers` follows Hugging Face semantics, which llama.cpp deviates from
//!   in places. Here one table copied from llama.cpp ([`unicode_data`], 2272 ranges, ~11 KB in
//!   the binary) drives every class, and differential runs against llama.cpp agree on every
//!   string tried.
//! - speed on a Pi: one forward pass over codepoints with a table lookup each, no backtracking.
//!   Measured on x86 (release): `fancy-regex` needs ~260 µs just to split 4 KB of English with
//!   the GPT-2 pattern; our whole split is ~30 µs even at opt-level 1.
//! - binary size: `fancy-regex` (with `regex`'s Unicode tables) adds ~2.1 MB to a stripped
//!   release binary; `tokenizers` adds more and pulls in onig/rayon/serde machinery.
//!
//! The cost is that each supported `tokenizer.ggml.pre` needs its splitter: we support the
//! families whose patterns reduce to GPT-2, Llama 3, Qwen2, StarCoder (SmolLM) and llama.cpp's
//! `default`. An unknown `pre` is an error ([`TokenizerError::UnsupportedPre`]), as in
//! llama.cpp: tokenizing with the wrong splitter silently degrades a model, which is worse than
//! refusing to load it. A *missing* `pre` falls back to `default` with a warning, as llama.cpp.

pub mod chat;

mod bpe;
mod fxhash;
mod pretokenize;
mod spm;
mod symbols;
mod unicode;
mod unicode_data;
mod vocab;

#[cfg(test)]
mod tests;

use crate::gguf::{Array, GgufError, Metadata, Value};
use pretokenize::Step;
use std::borrow::Cow;
use std::ops::Range;
use vocab::{attr, Algo, SpecialIds, Vocab, VocabSpec};

/// Why a tokenizer could not be built from metadata.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A required key is absent.
    #[error("missing tokenizer metadata key {0}")]
    MissingKey(&'static str),
    /// A key has the wrong type or an out-of-range value.
    #[error("bad tokenizer metadata key {key}")]
    Metadata {
        key: &'static str,
        #[source]
        source: GgufError,
    },
    /// `tokenizer.ggml.model` names an algorithm we do not implement.
    #[error("unsupported tokenizer.ggml.model '{0}' (supported: gpt2, llama)")]
    UnsupportedModel(String),
    /// `tokenizer.ggml.pre` names a pre-tokenizer we do not implement.
    #[error("unsupported tokenizer.ggml.pre '{0}'")]
    UnsupportedPre(String),
    /// `tokenizer.ggml.tokens` is empty.
    #[error("tokenizer.ggml.tokens is empty")]
    EmptyVocab,
    /// More tokens than ids can address.
    #[error("tokenizer.ggml.tokens has {0} entries, more than u32 ids allow")]
    TooManyTokens(usize),
    /// A special-token id (BOS, EOS, …) names a token the vocabulary does not have.
    #[error("{key} = {id} is out of range: the vocabulary has {n_tokens} tokens")]
    SpecialIdOutOfRange {
        key: String,
        id: u32,
        n_tokens: usize,
    },
    /// A per-token array is shorter than the vocabulary.
    #[error("{key} has {len} entries but there are {n_tokens} tokens")]
    ShortArray {
        key: &'static str,
        len: usize,
        n_tokens: usize,
    },
}

/// Which tokenizer a model uses (for `llamabus inspect`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenizerKind {
    /// Byte-level BPE with the named pre-tokenizer (`tokenizer.ggml.pre`, or `default`).
    Bpe { pre: String },
    /// SentencePiece-style (`tokenizer.ggml.model = "llama"`).
    Spm,
}

#[derive(Debug)]
enum Engine {
    // Boxed: the BPE state is large and Spm carries none.
    Bpe(Box<bpe::Bpe>),
    Spm,
}

/// A tokenizer built once per model; immutable, so it is `Send + Sync` and can be shared.
#[derive(Debug)]
pub struct Tokenizer {
    vocab: Vocab,
    engine: Engine,
    kind: TokenizerKind,
    add_bos: bool,
    add_space_prefix: bool,
    warnings: Vec<String>,
}

/// Pre-tokenizer families: `tokenizer.ggml.pre` names -> (splitter, ignore_merges, add_bos
/// default), per llama.cpp's `llama_vocab::impl::load` and `llm_tokenizer_bpe`.
fn pre_tokenizer(pre: &str) -> Option<(&'static [Step], bool, bool)> {
    Some(match pre {
        "default" => (pretokenize::DEFAULT, false, false),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" => (pretokenize::LLAMA3, true, true),
        "dbrx" | "smaug-bpe" => (pretokenize::LLAMA3, false, false),
        "gpt-2" | "phi-2" | "gigachat" | "a.x-4.0" | "mellum" | "exaone4" | "mpt" | "olmo"
        | "jais" | "trillion" | "granite-docling" => (pretokenize::GPT2, false, false),
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b"
        | "mellum2" => (pretokenize::STARCODER, false, false),
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" | "stablelm2" | "hunyuan"
        | "solar-open" | "grok-2" => (pretokenize::QWEN2, false, false),
        _ => return None,
    })
}

const KEY_MODEL: &str = "tokenizer.ggml.model";
const KEY_PRE: &str = "tokenizer.ggml.pre";
const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
const KEY_SCORES: &str = "tokenizer.ggml.scores";
const KEY_TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
const KEY_MERGES: &str = "tokenizer.ggml.merges";
const KEY_ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
const KEY_ADD_SPACE_PREFIX: &str = "tokenizer.ggml.add_space_prefix";

fn meta<T>(key: &'static str, r: Result<T, GgufError>) -> Result<T, TokenizerError> {
    r.map_err(|source| TokenizerError::Metadata { key, source })
}

/// The raw facts of one tokenizer, independent of where they come from.
#[derive(Debug)]
pub(crate) struct TokenizerSpec<'a> {
    pub model: &'a str,
    pub pre: Option<&'a str>,
    pub tokens: &'a [String],
    pub scores: Option<Vec<f32>>,
    pub token_types: Option<&'a [i32]>,
    pub merges: Option<&'a [String]>,
    pub ids: SpecialIds,
    pub add_bos: Option<bool>,
    pub add_space_prefix: Option<bool>,
    pub name: &'a str,
    pub arch: &'a str,
}

impl<'a> TokenizerSpec<'a> {
    /// A spec with only the required parts; everything else absent.
    #[cfg(test)]
    pub(crate) fn new(model: &'a str, tokens: &'a [String]) -> Self {
        TokenizerSpec {
            model,
            pre: None,
            tokens,
            scores: None,
            token_types: None,
            merges: None,
            ids: SpecialIds::default(),
            add_bos: None,
            add_space_prefix: None,
            name: "",
            arch: "",
        }
    }
}

/// The algorithm of `tokenizer.ggml.model`, with its default special ids, `add_bos` and
/// `add_space_prefix` (llama.cpp's `load`).
fn algorithm_defaults(model: &str) -> Result<(Algo, SpecialIds, bool, bool), TokenizerError> {
    match model {
        "llama" => Ok((
            Algo::Spm,
            SpecialIds {
                bos: Some(1),
                eos: Some(2),
                unk: Some(0),
                ..SpecialIds::default()
            },
            true,
            true,
        )),
        "gpt2" => Ok((
            Algo::Bpe,
            SpecialIds {
                bos: Some(11),
                eos: Some(11),
                ..SpecialIds::default()
            },
            false,
            false,
        )),
        other => Err(TokenizerError::UnsupportedModel(other.to_owned())),
    }
}

impl From<vocab::BuildProblem> for TokenizerError {
    fn from(p: vocab::BuildProblem) -> Self {
        match p {
            vocab::BuildProblem::Empty => TokenizerError::EmptyVocab,
            vocab::BuildProblem::TooMany(n) => TokenizerError::TooManyTokens(n),
            vocab::BuildProblem::SpecialIdOutOfRange { key, id, n_tokens } => {
                TokenizerError::SpecialIdOutOfRange { key, id, n_tokens }
            }
            vocab::BuildProblem::ShortArray { key, len, n_tokens } => {
                TokenizerError::ShortArray { key, len, n_tokens }
            }
        }
    }
}

impl Tokenizer {
    /// Builds the tokenizer from a model's metadata (vocab-only GGUFs work too).
    pub fn from_metadata(md: &Metadata) -> Result<Tokenizer, TokenizerError> {
        let model =
            meta(KEY_MODEL, md.opt_str(KEY_MODEL))?.ok_or(TokenizerError::MissingKey(KEY_MODEL))?;
        let tokens = meta(KEY_TOKENS, md.opt_str_array(KEY_TOKENS))?
            .ok_or(TokenizerError::MissingKey(KEY_TOKENS))?;
        // llama.cpp accepts float or integer scores.
        let scores = match md.get(KEY_SCORES) {
            None => None,
            Some(Value::Array(Array::F32(v))) => Some(v.clone()),
            Some(Value::Array(Array::I32(v))) => Some(v.iter().map(|&x| x as f32).collect()),
            Some(_) => Some(
                meta(KEY_SCORES, md.opt_f32_array(KEY_SCORES))?
                    .unwrap_or(&[])
                    .to_vec(),
            ),
        };
        let id = |key: &'static str| meta(key, md.opt_u32(key));
        let ids = SpecialIds {
            bos: id("tokenizer.ggml.bos_token_id")?,
            eos: id("tokenizer.ggml.eos_token_id")?,
            eot: id("tokenizer.ggml.eot_token_id")?,
            eom: id("tokenizer.ggml.eom_token_id")?,
            unk: id("tokenizer.ggml.unknown_token_id")?,
            sep: id("tokenizer.ggml.seperator_token_id")?,
            pad: id("tokenizer.ggml.padding_token_id")?,
            mask: id("tokenizer.ggml.mask_token_id")?,
            fim_pre: id("tokenizer.ggml.fim_pre_token_id")?
                .or(id("tokenizer.ggml.prefix_token_id")?),
            fim_suf: id("tokenizer.ggml.fim_suf_token_id")?
                .or(id("tokenizer.ggml.suffix_token_id")?),
            fim_mid: id("tokenizer.ggml.fim_mid_token_id")?
                .or(id("tokenizer.ggml.middle_token_id")?),
            fim_pad: id("tokenizer.ggml.fim_pad_token_id")?,
            fim_rep: id("tokenizer.ggml.fim_rep_token_id")?,
            fim_sep: id("tokenizer.ggml.fim_sep_token_id")?,
        };
        let spec = TokenizerSpec {
            model,
            pre: meta(KEY_PRE, md.opt_str(KEY_PRE))?,
            tokens,
            scores,
            token_types: meta(KEY_TOKEN_TYPE, md.opt_i32_array(KEY_TOKEN_TYPE))?,
            merges: meta(KEY_MERGES, md.opt_str_array(KEY_MERGES))?,
            ids,
            add_bos: meta(KEY_ADD_BOS, md.opt_bool(KEY_ADD_BOS))?,
            add_space_prefix: meta(KEY_ADD_SPACE_PREFIX, md.opt_bool(KEY_ADD_SPACE_PREFIX))?,
            name: meta("general.name", md.opt_str("general.name"))?.unwrap_or(""),
            arch: meta("general.architecture", md.opt_str("general.architecture"))?.unwrap_or(""),
        };
        Tokenizer::from_spec(spec)
    }

    pub(crate) fn from_spec(spec: TokenizerSpec<'_>) -> Result<Tokenizer, TokenizerError> {
        let mut warnings = Vec::new();
        let (algo, defaults, add_bos_default, add_space_prefix_default) =
            algorithm_defaults(spec.model)?;

        let mut pre_name = String::new();
        let mut bpe_setup = None;
        let mut add_bos = add_bos_default;
        if algo == Algo::Bpe {
            let pre = match spec.pre {
                Some(p) => p,
                None => {
                    warnings.push(
                        "missing tokenizer.ggml.pre, using llama.cpp's 'default' pre-tokenizer; \
                         generation quality may be degraded"
                            .to_owned(),
                    );
                    "default"
                }
            };
            let (steps, ignore_merges, bos) =
                pre_tokenizer(pre).ok_or_else(|| TokenizerError::UnsupportedPre(pre.to_owned()))?;
            let merges = spec.merges.ok_or(TokenizerError::MissingKey(KEY_MERGES))?;
            add_bos = bos;
            pre_name = pre.to_owned();
            bpe_setup = Some((merges, steps, ignore_merges));
        }

        let vspec = VocabSpec {
            algo,
            tokens: spec.tokens,
            scores: spec.scores,
            token_types: spec.token_types,
            ids: spec.ids,
            model_name: spec.name.to_lowercase(),
            pre: spec.pre.unwrap_or("").to_owned(),
            arch: spec.arch.to_owned(),
        };
        let vocab = Vocab::build(&vspec, defaults, &mut warnings)?;

        let (engine, kind) = match bpe_setup {
            Some((merges, steps, ignore_merges)) => (
                Engine::Bpe(Box::new(bpe::Bpe::new(
                    &vocab,
                    merges,
                    steps,
                    ignore_merges,
                ))),
                TokenizerKind::Bpe { pre: pre_name },
            ),
            None => (Engine::Spm, TokenizerKind::Spm),
        };
        Ok(Tokenizer {
            vocab,
            engine,
            kind,
            add_bos: spec.add_bos.unwrap_or(add_bos),
            add_space_prefix: spec.add_space_prefix.unwrap_or(add_space_prefix_default),
            warnings,
        })
    }

    /// Tokenizes `text`. No BOS is added here (see [`Tokenizer::add_bos`]).
    ///
    /// `parse_special = true` turns control-token text such as `<|im_start|>` into those
    /// tokens. Use it ONLY on chat-template output, never on user content, so clients cannot
    /// inject control tokens. User-defined tokens are matched either way, as in llama.cpp.
    pub fn encode(&self, text: &str, parse_special: bool) -> Vec<u32> {
        let gate = if parse_special {
            SpecialGate::Parse { plain: &[] }
        } else {
            SpecialGate::Off
        };
        self.encode_fragments(text, self.partition(text, gate))
    }

    /// Tokenizes chat-template output: control-token text is parsed as in
    /// `encode(text, true)`, except where an occurrence overlaps one of the `plain` byte ranges
    /// (the message contents), which stays plain text. The text is otherwise tokenized as one
    /// piece, so where no content holds control-token text the ids equal
    /// `encode(text, true)` (llama.cpp's result). See [`chat::ChatTemplate::encode`].
    pub fn encode_with_plain_spans(&self, text: &str, plain: &[Range<usize>]) -> Vec<u32> {
        self.encode_fragments(text, self.partition(text, SpecialGate::Parse { plain }))
    }

    /// The text of a control token that occurs in `text` (which `encode(text, true)` would
    /// turn into that token), if any.
    pub fn find_control_text(&self, text: &str) -> Option<&str> {
        self.vocab.special_cache().iter().find_map(|&id| {
            let t = self.vocab.text(id)?;
            (self.vocab.attr(id) & (attr::CONTROL | attr::UNKNOWN) != 0 && text.contains(t))
                .then_some(t)
        })
    }

    fn encode_fragments(&self, text: &str, fragments: Vec<Fragment>) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        match &self.engine {
            Engine::Bpe(bpe) => {
                for f in fragments {
                    match f {
                        Fragment::Text(r) => bpe.encode(&self.vocab, &text[r], &mut out),
                        Fragment::Token(id) => out.push(id),
                    }
                }
            }
            Engine::Spm => {
                // A space is prefixed to the first text and to text after a special token.
                let mut prev_special = true;
                let mut buf = String::new();
                for f in fragments {
                    match f {
                        Fragment::Text(r) => {
                            buf.clear();
                            if self.add_space_prefix && prev_special {
                                buf.push('\u{2581}');
                            }
                            for c in text[r].chars() {
                                buf.push(if c == ' ' { '\u{2581}' } else { c });
                            }
                            spm::encode(&self.vocab, &buf, &mut out);
                            prev_special = false;
                        }
                        Fragment::Token(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                    }
                }
            }
        }
        out
    }

    /// llama.cpp's `tokenizer_st_partition`: cut special-token text out of `text`, longest
    /// token first, honouring the tokens' LSTRIP/RSTRIP attributes.
    fn partition(&self, text: &str, gate: SpecialGate<'_>) -> Vec<Fragment> {
        let mut frags = Vec::new();
        if text.is_empty() {
            return frags;
        }
        frags.push(Fragment::Text(0..text.len()));
        for &id in self.vocab.special_cache() {
            let a = self.vocab.attr(id);
            let gated = a & (attr::CONTROL | attr::UNKNOWN) != 0;
            let plain: &[Range<usize>] = match gate {
                SpecialGate::Off if gated => continue,
                SpecialGate::Parse { plain } if gated => plain,
                _ => &[],
            };
            let Some(tok) = self.vocab.text(id) else {
                continue;
            };
            if !text.contains(tok) {
                continue;
            }
            let mut next = Vec::with_capacity(frags.len() + 2);
            for f in frags {
                let Fragment::Text(r) = f else {
                    next.push(f);
                    continue;
                };
                let mut pos = r.start;
                // `search` runs ahead of `pos` past occurrences that must stay plain text.
                let mut search = r.start;
                while let Some(found) = text[search..r.end].find(tok) {
                    let m = search + found;
                    if plain.iter().any(|p| m < p.end && p.start < m + tok.len()) {
                        search = m + tok.chars().next().map_or(1, char::len_utf8);
                        continue;
                    }
                    let mut left_end = m;
                    if a & attr::LSTRIP != 0 {
                        while left_end > pos && is_c_space(text.as_bytes()[left_end - 1]) {
                            left_end -= 1;
                        }
                    }
                    if left_end > pos {
                        next.push(Fragment::Text(pos..left_end));
                    }
                    next.push(Fragment::Token(id));
                    pos = m + tok.len();
                    if a & attr::RSTRIP != 0 {
                        while pos < r.end && is_c_space(text.as_bytes()[pos]) {
                            pos += 1;
                        }
                    }
                    search = pos;
                }
                if pos < r.end {
                    next.push(Fragment::Text(pos..r.end));
                }
            }
            frags = next;
        }
        frags
    }

    /// Vocabulary size.
    pub fn n_vocab(&self) -> usize {
        self.vocab.n_tokens()
    }

    /// Beginning-of-sequence token.
    pub fn bos(&self) -> Option<u32> {
        self.vocab.special.bos
    }

    /// End-of-sequence token.
    pub fn eos(&self) -> Option<u32> {
        self.vocab.special.eos
    }

    /// End-of-turn token: `tokenizer.ggml.eot_token_id`, else found by text as llama.cpp does
    /// (`<|eot_id|>`, `<|im_end|>`, `<|end|>`, ...). Where several match, llama.cpp's pick
    /// depends on hash-map order; we take the highest id, which is the chat-turn terminator in
    /// the models we know. [`Tokenizer::is_eog`] covers all of them either way.
    pub fn eot(&self) -> Option<u32> {
        self.vocab.special.eot
    }

    /// Whether prompts start with BOS: `tokenizer.ggml.add_bos_token`, else llama.cpp's default
    /// (true for SPM and the Llama 3 pre-tokenizer family, false for other BPE).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// `ids` with BOS in front when the model wants one (`tokenizer.ggml.add_bos_token`).
    pub fn with_bos(&self, mut ids: Vec<u32>) -> Vec<u32> {
        if self.add_bos() {
            if let Some(b) = self.bos() {
                ids.insert(0, b);
            }
        }
        ids
    }

    /// Whether `id` ends generation: EOS, EOT, EOM and llama.cpp's text-detected EOG set
    /// (`<|im_end|>`, `<|eot_id|>`, `<|endoftext|>`, ...).
    pub fn is_eog(&self, id: u32) -> bool {
        self.vocab.is_eog(id)
    }

    /// The raw vocabulary string of `id` (e.g. for a chat template's `bos_token`).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.vocab.text(id)
    }

    /// The bytes `id` stands for in generated output: byte-level BPE characters mapped back to
    /// bytes, SPM `▁` as space and `<0xNN>` as the byte. Control and unknown tokens render as
    /// nothing, like llama.cpp's `token_to_piece(special = false)`; unknown ids too.
    pub fn piece_bytes(&self, id: u32) -> &[u8] {
        if self.vocab.attr(id) & (attr::CONTROL | attr::UNKNOWN) != 0 {
            return &[];
        }
        self.vocab.piece(id)
    }

    /// Decodes a whole sequence to text, as llama.cpp's `llama_detokenize` with special tokens
    /// rendered (so `encode(decode(ids), true) == ids` for sequences the tokenizer produces)
    /// and with SPM's prefix space removed from the first token. Invalid UTF-8 (a sequence cut
    /// inside a character) becomes U+FFFD.
    ///
    /// Unlike [`StreamDecoder`] (which is for generated output), control tokens appear here.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for (i, &id) in ids.iter().enumerate() {
            let mut p = self.vocab.piece(id);
            if i == 0 && self.add_space_prefix {
                p = p.strip_prefix(b" ").unwrap_or(p);
            }
            bytes.extend_from_slice(p);
        }
        match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }

    /// Which tokenizer this is.
    pub fn kind(&self) -> TokenizerKind {
        self.kind.clone()
    }

    /// Non-fatal problems found while building (the caller logs them).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }
}

/// Which control tokens [`Tokenizer::partition`] cuts out of the text.
#[derive(Clone, Copy)]
enum SpecialGate<'a> {
    /// None: control-token text is plain text.
    Off,
    /// Every occurrence, except those overlapping a `plain` byte range.
    Parse { plain: &'a [Range<usize>] },
}

/// A piece of the input after special-token partitioning.
#[derive(Debug)]
enum Fragment {
    Text(Range<usize>),
    Token(u32),
}

/// C `isspace` in the "C" locale.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r')
}

/// Turns generated token ids into text incrementally, emitting only complete UTF-8.
///
/// Byte-level tokens can split a character (an emoji is often 2-4 tokens); the partial bytes are
/// held back until the character completes. Bytes that can never form a character become
/// U+FFFD as soon as that is certain, and [`StreamDecoder::finish`] replaces a dangling partial
/// character the same way, so the concatenation of all outputs equals
/// `String::from_utf8_lossy` of all pieces. Pieces follow [`Tokenizer::piece_bytes`] (control
/// tokens render as nothing).
#[derive(Debug)]
pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    pending: Vec<u8>,
}

impl<'a> StreamDecoder<'a> {
    /// A decoder with nothing pending.
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        StreamDecoder {
            tokenizer,
            pending: Vec::new(),
        }
    }

    /// Adds one token; returns the text that is now complete (possibly empty).
    pub fn push(&mut self, id: u32) -> String {
        self.pending
            .extend_from_slice(self.tokenizer.piece_bytes(id));
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    match e.error_len() {
                        // Invalid bytes: replace them now and keep going.
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                        // An incomplete character at the end: wait for more bytes.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                    }
                }
            }
        }
    }

    /// Ends the stream: a dangling partial character becomes U+FFFD.
    pub fn finish(&mut self) -> String {
        let out = match String::from_utf8_lossy(&self.pending) {
            Cow::Borrowed(s) => s.to_owned(),
            Cow::Owned(s) => s,
        };
        self.pending.clear();
        out
    }
}
