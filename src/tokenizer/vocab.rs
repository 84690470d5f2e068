//! The vocabulary: token strings, scores and attributes, special-token ids, the
//! end-of-generation set and the rendered piece of every token, built the way llama.cpp's
//! `llama_vocab::impl::load` builds them from `tokenizer.ggml.*`.
//! <https://github.com/ggml-org/llama.cpp/blob/master/src/llama-vocab.cpp>

use super::fxhash::FxHashMap;
use super::unicode::char_to_byte;

/// Token attributes (llama.cpp `llama_token_attr`), derived from `tokenizer.ggml.token_type`.
pub(crate) mod attr {
    pub const UNKNOWN: u16 = 1 << 0;
    pub const UNUSED: u16 = 1 << 1;
    pub const NORMAL: u16 = 1 << 2;
    pub const CONTROL: u16 = 1 << 3;
    pub const USER_DEFINED: u16 = 1 << 4;
    pub const BYTE: u16 = 1 << 5;
    pub const LSTRIP: u16 = 1 << 7;
    pub const RSTRIP: u16 = 1 << 8;
}

/// `tokenizer.ggml.token_type` values (llama.cpp `llama_token_type`).
fn attr_of_type(t: i32) -> u16 {
    match t {
        2 => attr::UNKNOWN,
        5 => attr::UNUSED,
        1 => attr::NORMAL,
        3 => attr::CONTROL,
        4 => attr::USER_DEFINED,
        6 => attr::BYTE,
        _ => 0, // UNDEFINED
    }
}

/// Which merge algorithm the vocabulary belongs to (it changes how pieces render).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Algo {
    Spm,
    Bpe,
}

/// Special-token ids as found in metadata (already range-checked by the caller or not).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SpecialIds {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub eom: Option<u32>,
    pub unk: Option<u32>,
    pub sep: Option<u32>,
    pub pad: Option<u32>,
    pub mask: Option<u32>,
    pub fim_pre: Option<u32>,
    pub fim_suf: Option<u32>,
    pub fim_mid: Option<u32>,
    pub fim_pad: Option<u32>,
    pub fim_rep: Option<u32>,
    pub fim_sep: Option<u32>,
}

/// Token strings that mark end of generation (llama.cpp's list in `load`).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const EOM_TEXTS: &[&str] = &["<|eom_id|>"];
const FIM_PRE_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
];
const FIM_SUF_TEXTS: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
];
const FIM_MID_TEXTS: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &[
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];

/// Everything the vocabulary is built from; `from_metadata` fills it from `tokenizer.ggml.*`,
/// unit tests fill it by hand.
#[derive(Debug)]
pub(crate) struct VocabSpec<'a> {
    pub algo: Algo,
    pub tokens: &'a [String],
    pub scores: Option<Vec<f32>>,
    pub token_types: Option<&'a [i32]>,
    /// Ids from metadata; `None` where the key is absent.
    pub ids: SpecialIds,
    /// `general.name`, lowercased by the caller (selects per-model token attributes).
    pub model_name: String,
    /// `tokenizer.ggml.pre` and `general.architecture` (select per-model token attributes).
    pub pre: String,
    pub arch: String,
}

/// The built vocabulary.
#[derive(Debug)]
pub(crate) struct Vocab {
    texts: Vec<Box<str>>,
    scores: Vec<f32>,
    attrs: Vec<u16>,
    ids: FxHashMap<Box<str>, u32>,
    /// Rendered pieces (control tokens as their text), flattened: token i is
    /// `piece_bytes[piece_off[i]..piece_off[i + 1]]`.
    piece_bytes: Vec<u8>,
    piece_off: Vec<u32>,
    /// Token of each ASCII character as a one-character string (byte-level BPE fallback).
    ascii_tokens: [Option<u32>; 128],
    /// Byte-fallback token of each byte (`<0xNN>`, else the byte as a string; SPM).
    byte_tokens: [Option<u32>; 256],
    /// Control, user-defined and unknown tokens, longest text first (partitioning order).
    special_cache: Vec<u32>,
    /// End-of-generation ids, sorted.
    eog: Vec<u32>,
    pub(crate) special: SpecialIds,
}

/// Problems found while building; the caller turns them into `TokenizerError`s.
#[derive(Debug)]
pub(crate) enum BuildProblem {
    Empty,
    TooMany(usize),
    ShortArray {
        key: &'static str,
        len: usize,
        n_tokens: usize,
    },
    SpecialIdOutOfRange {
        key: String,
        id: u32,
        n_tokens: usize,
    },
}

/// The number of tokens, once it is known to be usable: at least one, ids that fit in u32, and
/// per-token arrays (scores, token types) at least that long.
fn check_lengths(spec: &VocabSpec<'_>) -> Result<usize, BuildProblem> {
    let n = spec.tokens.len();
    if n == 0 {
        return Err(BuildProblem::Empty);
    }
    if u32::try_from(n).is_err() {
        return Err(BuildProblem::TooMany(n));
    }
    let arrays = [
        ("tokenizer.ggml.scores", spec.scores.as_ref().map(Vec::len)),
        (
            "tokenizer.ggml.token_type",
            spec.token_types.map(<[i32]>::len),
        ),
    ];
    for (key, len) in arrays {
        if let Some(len) = len.filter(|&len| len < n) {
            return Err(BuildProblem::ShortArray {
                key,
                len,
                n_tokens: n,
            });
        }
    }
    Ok(n)
}

/// A special-id value that several converters write for "no such token" (-1 as u32).
const NO_TOKEN: u32 = u32::MAX;

impl Vocab {
    /// Builds the vocabulary. `defaults` are llama.cpp's per-model default ids, overridden by
    /// `spec.ids` when in range. Warnings are appended to `warnings`.
    pub(crate) fn build(
        spec: &VocabSpec<'_>,
        defaults: SpecialIds,
        warnings: &mut Vec<String>,
    ) -> Result<Vocab, BuildProblem> {
        let n = check_lengths(spec)?;
        let mut texts = Vec::with_capacity(n);
        let mut ids = FxHashMap::default();
        ids.reserve(n);
        for (i, t) in spec.tokens.iter().enumerate() {
            let text: Box<str> = if t.is_empty() {
                warnings.push(format!("empty token at index {i}"));
                format!("[EMPTY_{i}]").into()
            } else {
                t.as_str().into()
            };
            // A repeated string maps to its last id, as llama.cpp's `token_to_id[word] = i`.
            ids.insert(text.clone(), i as u32);
            texts.push(text);
        }
        let scores = match &spec.scores {
            Some(s) => s[..n].to_vec(),
            None => vec![0.0; n],
        };
        let attrs: Vec<u16> = match spec.token_types {
            Some(t) => t[..n].iter().map(|&t| attr_of_type(t)).collect(),
            None => vec![attr::NORMAL; n],
        };

        let mut v = Vocab {
            texts,
            scores,
            attrs,
            ids,
            piece_bytes: Vec::new(),
            piece_off: Vec::new(),
            ascii_tokens: [None; 128],
            byte_tokens: [None; 256],
            special_cache: Vec::new(),
            eog: Vec::new(),
            special: SpecialIds::default(),
        };
        v.resolve_special_ids(spec, defaults, warnings)?;
        v.build_eog(warnings);
        v.build_special_cache();
        v.build_pieces(spec.algo);
        v.apply_model_attrs(spec);
        v.build_byte_tokens();
        Ok(v)
    }

    /// The token of each ASCII character, and of each byte: its `<0xNN>` token, else for ASCII
    /// the character's own token.
    fn build_byte_tokens(&mut self) {
        for b in 0..128u8 {
            self.ascii_tokens[usize::from(b)] = self.id_of(char::from(b).encode_utf8(&mut [0; 4]));
        }
        for b in 0..=255u8 {
            self.byte_tokens[usize::from(b)] = self.id_of(&format!("<0x{b:02X}>")).or_else(|| {
                if b < 128 {
                    self.ascii_tokens[usize::from(b)]
                } else {
                    None
                }
            });
        }
    }

    /// Default ids out of range are disabled; a metadata id out of range is an error (a file
    /// that names a token it does not have is corrupt), except -1, which means "none"; then
    /// EOT/EOM/FIM tokens are found by text where metadata has none.
    fn resolve_special_ids(
        &mut self,
        spec: &VocabSpec<'_>,
        defaults: SpecialIds,
        warnings: &mut Vec<String>,
    ) -> Result<(), BuildProblem> {
        let n = self.texts.len();
        let mut bad = None;
        let mut pick = |name: &str, default: Option<u32>, meta: Option<u32>| {
            let default = default.filter(|&id| (id as usize) < n);
            match meta {
                Some(id) if (id as usize) < n => Some(id),
                Some(NO_TOKEN) => None,
                Some(id) => {
                    bad.get_or_insert(BuildProblem::SpecialIdOutOfRange {
                        key: format!("tokenizer.ggml.{name}"),
                        id,
                        n_tokens: n,
                    });
                    None
                }
                None => default,
            }
        };
        let (d, m) = (defaults, spec.ids);
        self.special = SpecialIds {
            bos: pick("bos_token_id", d.bos, m.bos),
            eos: pick("eos_token_id", d.eos, m.eos),
            eot: pick("eot_token_id", d.eot, m.eot),
            eom: pick("eom_token_id", d.eom, m.eom),
            unk: pick("unknown_token_id", d.unk, m.unk),
            sep: pick("seperator_token_id", d.sep, m.sep),
            pad: pick("padding_token_id", d.pad, m.pad),
            mask: pick("mask_token_id", d.mask, m.mask),
            fim_pre: pick("fim_pre_token_id", d.fim_pre, m.fim_pre),
            fim_suf: pick("fim_suf_token_id", d.fim_suf, m.fim_suf),
            fim_mid: pick("fim_mid_token_id", d.fim_mid, m.fim_mid),
            fim_pad: pick("fim_pad_token_id", d.fim_pad, m.fim_pad),
            fim_rep: pick("fim_rep_token_id", d.fim_rep, m.fim_rep),
            fim_sep: pick("fim_sep_token_id", d.fim_sep, m.fim_sep),
        };
        if let Some(problem) = bad {
            return Err(problem);
        }

        // Auto-detection by text. llama.cpp takes the first match in hash-map order, which is
        // unspecified; we take the highest id, which picks the chat-turn terminator over the
        // document terminator in every model we know (<|im_end|>, <|eot_id|>, <|end|>).
        let mut s = self.special;
        for (slot, list) in [
            (&mut s.eot, EOT_TEXTS),
            (&mut s.eom, EOM_TEXTS),
            (&mut s.fim_pre, FIM_PRE_TEXTS),
            (&mut s.fim_suf, FIM_SUF_TEXTS),
            (&mut s.fim_mid, FIM_MID_TEXTS),
            (&mut s.fim_pad, FIM_PAD_TEXTS),
            (&mut s.fim_rep, FIM_REP_TEXTS),
            (&mut s.fim_sep, FIM_SEP_TEXTS),
        ] {
            if slot.is_none() {
                *slot = list.iter().filter_map(|t| self.id_of(t)).max();
                if let Some(id) = *slot {
                    self.force_control(id, warnings);
                }
            }
        }
        self.special = s;
        Ok(())
    }

    fn force_control(&mut self, id: u32, warnings: &mut Vec<String>) {
        let a = &mut self.attrs[id as usize];
        if *a & attr::CONTROL == 0 {
            warnings.push(format!(
                "control-looking token {id} '{}' was not control-type; treating it as control",
                self.texts[id as usize]
            ));
            *a |= attr::CONTROL;
        }
    }

    /// llama.cpp's end-of-generation set: FIM pad/rep/sep, tokens with EOG-looking text, and
    /// EOS/EOT/EOM, with its two model-family exceptions.
    fn build_eog(&mut self, warnings: &mut Vec<String>) {
        let mut eog: Vec<u32> = Vec::new();
        let s = self.special;
        eog.extend([s.fim_pad, s.fim_rep, s.fim_sep].into_iter().flatten());
        for text in EOG_TEXTS {
            if let Some(id) = self.id_of(text) {
                eog.push(id);
                self.force_control(id, warnings);
            }
        }
        // gpt-oss: these always render, so they are user-defined whatever the file says.
        for text in ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"] {
            if let Some(id) = self.id_of(text) {
                self.attrs[id as usize] = attr::USER_DEFINED;
            }
        }
        eog.extend([s.eos, s.eot, s.eom].into_iter().flatten());
        eog.sort_unstable();
        eog.dedup();

        let has = |eog: &[u32], t: &str| {
            eog.iter()
                .find(|&&id| &*self.texts[id as usize] == t)
                .copied()
        };
        // o200k_harmony / solar-open: "<|end|>" ends a message, not generation.
        if let Some(end) = has(&eog, "<|end|>") {
            let ret = has(&eog, "<|return|>").is_some();
            let call = has(&eog, "<|call|>").is_some() || has(&eog, "<|calls|>").is_some();
            let flush = has(&eog, "<|flush|>").is_some();
            if call && (ret || flush) {
                eog.retain(|&id| id != end);
                self.attrs[end as usize] = attr::USER_DEFINED;
            }
        }
        // gemma4 / plamo: "</s>" is an ordinary token there.
        if let Some(s_id) = has(&eog, "</s>") {
            if has(&eog, "<|tool_response>").is_some() || has(&eog, "<|plamo:eos|>").is_some() {
                eog.retain(|&id| id != s_id);
                self.attrs[s_id as usize] = attr::NORMAL;
            }
        }
        self.eog = eog;
    }

    fn build_special_cache(&mut self) {
        let mut cache: Vec<u32> = (0..self.texts.len() as u32)
            .filter(|&id| {
                self.attrs[id as usize] & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0
            })
            .collect();
        // Longest first. llama.cpp's std::sort leaves equal lengths in unspecified order; a
        // stable sort keeps them by id.
        cache.sort_by_key(|&id| std::cmp::Reverse(self.texts[id as usize].len()));
        self.special_cache = cache;
    }

    /// Renders every token once, as llama.cpp's `token_to_piece(special = true)` cache.
    fn build_pieces(&mut self, algo: Algo) {
        let mut bytes = Vec::new();
        let mut off = Vec::with_capacity(self.texts.len() + 1);
        off.push(0u32);
        for (text, &a) in self.texts.iter().zip(&self.attrs) {
            if a & (attr::UNKNOWN | attr::CONTROL | attr::USER_DEFINED) != 0 {
                bytes.extend_from_slice(text.as_bytes());
            } else if a & attr::NORMAL != 0 {
                match algo {
                    Algo::Spm => bytes.extend_from_slice(text.replace('\u{2581}', " ").as_bytes()),
                    Algo::Bpe => decode_byte_level(text, &mut bytes),
                }
            } else if a & attr::BYTE != 0 {
                bytes.push(byte_token_value(text));
            }
            off.push(u32::try_from(bytes.len()).unwrap_or(u32::MAX));
        }
        self.piece_bytes = bytes;
        self.piece_off = off;
    }

    /// Per-model strip attributes llama.cpp sets by name (they are not stored in GGUF).
    fn apply_model_attrs(&mut self, spec: &VocabSpec<'_>) {
        let contains_any = |s: &str, subs: &[&str]| subs.iter().any(|x| s.contains(x));
        let set = |v: &mut Vocab, text: &str, bit: u16, on: bool| {
            if let Some(id) = v.id_of(text) {
                let a = &mut v.attrs[id as usize];
                *a = if on { *a | bit } else { *a & !bit };
            }
        };
        if contains_any(&spec.pre, &["jina-v2-de", "jina-v2-es", "jina-v2-code"])
            || contains_any(&spec.arch, &["nomic-bert-moe", "jina-bert-v3"])
        {
            set(self, "<mask>", attr::LSTRIP, true);
        } else if contains_any(&spec.model_name, &["phi-3", "phi3"]) {
            for &id in &self.special_cache {
                self.attrs[id as usize] |= attr::RSTRIP;
            }
            set(self, "</s>", attr::RSTRIP, true);
            for t in ["<unk>", "<s>", "<|endoftext|>"] {
                set(self, t, attr::RSTRIP, false);
            }
        } else if contains_any(&spec.model_name, &["modern-bert"]) {
            set(self, "[MASK]", attr::LSTRIP, true);
        }
    }

    pub(crate) fn n_tokens(&self) -> usize {
        self.texts.len()
    }

    /// Token id of an exact string.
    pub(crate) fn id_of(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    pub(crate) fn text(&self, id: u32) -> Option<&str> {
        self.texts.get(id as usize).map(|t| &**t)
    }

    pub(crate) fn score(&self, id: u32) -> f32 {
        self.scores[id as usize]
    }

    pub(crate) fn attr(&self, id: u32) -> u16 {
        self.attrs.get(id as usize).copied().unwrap_or(0)
    }

    /// The rendered piece with control tokens as their text (`special = true`).
    pub(crate) fn piece(&self, id: u32) -> &[u8] {
        let i = id as usize;
        if i >= self.texts.len() {
            return &[];
        }
        &self.piece_bytes[self.piece_off[i] as usize..self.piece_off[i + 1] as usize]
    }

    /// The token of a one-byte string (byte-level BPE's last-resort fallback).
    pub(crate) fn single_byte_token(&self, b: u8) -> Option<u32> {
        self.ascii_tokens.get(usize::from(b)).copied().flatten()
    }

    /// SPM byte fallback: `<0xNN>`, else the byte itself as a token.
    pub(crate) fn byte_token(&self, b: u8) -> Option<u32> {
        self.byte_tokens[usize::from(b)]
    }

    pub(crate) fn special_cache(&self) -> &[u32] {
        &self.special_cache
    }

    pub(crate) fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }
}

/// llama.cpp `llama_decode_text`: map each byte-level character back to its byte; characters
/// outside the map are kept visibly as `[UNK_BYTE_0x..<text>]`.
fn decode_byte_level(text: &str, out: &mut Vec<u8>) {
    for c in text.chars() {
        match char_to_byte(c) {
            Some(b) => out.push(b),
            None => {
                out.extend_from_slice(b"[UNK_BYTE_0x");
                for b in c.encode_utf8(&mut [0; 4]).bytes() {
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
                out.extend_from_slice(text.as_bytes());
                out.push(b']');
            }
        }
    }
}

/// The byte of a `<0xNN>` token: `strtol` of the two characters after `<0x`.
fn byte_token_value(text: &str) -> u8 {
    let hex = text.get(3..).unwrap_or("").bytes().take(2);
    let mut v = 0u8;
    for h in hex {
        match char::from(h).to_digit(16) {
            Some(d) => v = v.wrapping_mul(16).wrapping_add(d as u8),
            None => break,
        }
    }
    v
}
