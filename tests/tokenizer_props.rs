//! Properties of the tokenizers on arbitrary text (proptest): byte-level BPE and SentencePiece
//! with byte fallback round-trip exactly, special tokens are never produced from user text, and
//! streaming decode equals the lossy decode of all pieces for any token sequence — including
//! ids that split UTF-8 characters.
//!
//! Vocabularies: SmolLM2 (the default model) and llama.cpp's llama-bpe / llama-spm test
//! vocabularies, from `scripts/fetch-test-data.sh`.

use std::path::Path;
use std::sync::OnceLock;

use llamabus::gguf::Gguf;
use llamabus::tokenizer::chat::{ChatMessage, ChatTemplate};
use llamabus::tokenizer::{StreamDecoder, Tokenizer};
use proptest::prelude::*;

fn load(rel: &str) -> Tokenizer {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(rel);
    let gguf = Gguf::open(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/fetch-test-data.sh)", path.display()));
    Tokenizer::from_metadata(gguf.metadata()).expect("vocabulary loads")
}

fn smollm2() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| load("SmolLM2-135M-Instruct.Q4_1.gguf"))
}

fn llama_bpe() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| load("llama.cpp/ggml-vocab-llama-bpe.gguf"))
}

fn llama_spm() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| load("llama.cpp/ggml-vocab-llama-spm.gguf"))
}

/// Text that stresses pre-tokenizers: any Unicode scalar, weighted towards whitespace runs,
/// digits, apostrophes, CJK, emoji and combining marks.
fn text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        any::<char>().prop_map(String::from),
        "[ \t\r\n]{1,4}",
        "[0-9]{1,5}",
        "'(s|t|re|ve|m|ll|d|S|T)",
        "[a-zA-Z]{1,8}",
        "[\u{4e00}-\u{4e20}\u{1f600}-\u{1f610}\u{0300}-\u{0310}]{1,3}",
    ];
    prop::collection::vec(piece, 0..24).prop_map(|v| v.concat())
}

/// Special-token texts that a hostile user may type.
fn special_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("<|im_end|>".to_owned()),
        Just("<|im_start|>".to_owned()),
        Just("<|endoftext|>".to_owned()),
        Just("<|eot_id|>".to_owned()),
        Just("<|begin_of_text|>".to_owned()),
        Just("</s>".to_owned()),
        Just("<s>".to_owned()),
    ]
}

/// SmolLM2's own chat template (with its BOS/EOS texts).
fn smollm2_template() -> &'static ChatTemplate {
    static T: OnceLock<ChatTemplate> = OnceLock::new();
    T.get_or_init(|| {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
        let gguf = Gguf::open(&path).expect("SmolLM2 (run scripts/fetch-test-data.sh)");
        let src = gguf
            .metadata()
            .opt_str("tokenizer.chat_template")
            .unwrap()
            .unwrap();
        ChatTemplate::new(src, "<|im_start|>", "<|im_end|>").unwrap()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn byte_level_bpe_round_trips_exactly(s in text()) {
        let ids = llama_bpe().encode(&s, false);
        prop_assert_eq!(llama_bpe().decode(&ids), s.clone());
        // SmolLM2's vocabulary has no token for the UTF-8 lead bytes F1 and F2 (planes 4-11,
        // all unassigned); llama.cpp drops such bytes, and so do we. Everything else
        // round-trips.
        if !s.chars().any(|c| ('\u{40000}'..'\u{C0000}').contains(&c)) {
            let ids = smollm2().encode(&s, false);
            prop_assert_eq!(smollm2().decode(&ids), s);
        }
    }

    #[test]
    fn sentencepiece_round_trips_exactly(s in text()) {
        // llama-spm prepends "▁" to the text (add_space_prefix) and decode drops that one
        // leading space again; unknown characters go through the <0xNN> byte tokens.
        let tok = llama_spm();
        let ids = tok.encode(&s, false);
        prop_assert_eq!(tok.decode(&ids), s);
    }

    #[test]
    fn user_text_never_yields_control_tokens(
        parts in prop::collection::vec((text(), special_text()), 1..6)
    ) {
        let s: String = parts.iter().map(|(a, b)| format!("{a}{b}")).collect();
        for tok in [smollm2(), llama_bpe(), llama_spm()] {
            for id in tok.encode(&s, false) {
                prop_assert!(!tok.is_eog(id), "end-of-generation token {} from user text", id);
                prop_assert!(Some(id) != tok.bos(), "BOS from user text");
            }
        }
    }

    #[test]
    fn streaming_decode_equals_the_lossy_decode_of_all_pieces(
        ids in prop::collection::vec(0u32..49152, 0..40)
    ) {
        // Arbitrary ids include byte tokens that split characters, and control tokens (which
        // render as nothing in generated output).
        let tok = smollm2();
        let mut d = StreamDecoder::new(tok);
        let mut streamed: String = ids.iter().map(|&id| d.push(id)).collect();
        streamed.push_str(&d.finish());
        let bytes: Vec<u8> = ids.iter().flat_map(|&id| tok.piece_bytes(id).to_vec()).collect();
        prop_assert_eq!(streamed, String::from_utf8_lossy(&bytes).into_owned());
    }

    #[test]
    fn chat_content_never_yields_control_tokens(
        parts in prop::collection::vec((text(), special_text()), 1..6),
        system in any::<bool>(),
    ) {
        // Whatever the user types, SmolLM2's chat prompt holds exactly the template's control
        // tokens: system turn (2), user turn (2), assistant header (1).
        let content: String = parts.iter().map(|(a, b)| format!("{a}{b}")).collect();
        let mut msgs = vec![ChatMessage::new("user", content.clone())];
        if system {
            msgs.insert(0, ChatMessage::new("system", content));
        }
        let tok = smollm2();
        let ids = smollm2_template().encode(tok, &msgs, true).unwrap();
        let start = tok.encode("<|im_start|>", true)[0];
        prop_assert_eq!(ids.iter().filter(|&&i| i == start).count(), 3);
        prop_assert_eq!(ids.iter().filter(|&&i| tok.is_eog(i)).count(), 2);
    }
}
