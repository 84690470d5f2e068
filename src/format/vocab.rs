//! The model's vocabulary as llguidance's token trie: built once per model from the bytes each
//! token stands for in generated output.
//!
//! - Text tokens are their output bytes ([`Tokenizer::piece_bytes`]: byte-level BPE characters
//!   mapped back to bytes, SPM `▁` as a space, `<0xNN>` as the byte).
//! - Control, unknown and end-of-generation tokens are *special*: llguidance marks them with a
//!   leading 0xFF byte (a byte no UTF-8 text contains), so no regex, schema or grammar text can
//!   produce them.
//! - The end-of-generation tokens are the trie's EOS set: llguidance allows them exactly where
//!   the grammar accepts, so a constrained reply cannot end half-way.

use std::sync::Arc;

use llguidance::toktrie::{ApproximateTokEnv, TokEnv, TokRxInfo, TokTrie};

use super::error::FormatError;
use crate::tokenizer::Tokenizer;

/// llguidance's token environment for `tokenizer`.
///
/// Its tokenization (used by llguidance only to force tokens, which we do not do) is greedy over
/// the trie; masks and commits depend only on the trie.
pub fn token_env(tokenizer: &Tokenizer) -> Result<TokEnv, FormatError> {
    let n = tokenizer.n_vocab();
    let n32 = u32::try_from(n)
        .map_err(|_| FormatError::Compile(format!("vocabulary of {n} tokens is too large")))?;
    let eog: Vec<u32> = (0..n32).filter(|&id| tokenizer.is_eog(id)).collect();
    let Some(&first_eog) = eog.first() else {
        return Err(FormatError::Compile(
            "the model has no end-of-generation token, so no format can end".into(),
        ));
    };
    let words: Vec<Vec<u8>> = (0..n32).map(|id| token_word(tokenizer, id)).collect();
    let info = TokRxInfo {
        tok_bos: tokenizer.bos(),
        ..TokRxInfo::new(n32, first_eog)
    };
    let trie = TokTrie::from(&info, &words).with_eos_tokens(&eog);
    Ok(Arc::new(ApproximateTokEnv::new(trie)))
}

/// The trie's bytes for one token: its output bytes, or 0xFF + its name for special tokens.
fn token_word(tokenizer: &Tokenizer, id: u32) -> Vec<u8> {
    let piece = tokenizer.piece_bytes(id);
    if tokenizer.is_eog(id) || piece.is_empty() {
        let name = tokenizer.token_text(id).unwrap_or_default();
        let mut w = Vec::with_capacity(1 + name.len());
        w.push(TokTrie::SPECIAL_TOKEN_MARKER);
        w.extend_from_slice(name.as_bytes());
        w
    } else {
        piece.to_vec()
    }
}
