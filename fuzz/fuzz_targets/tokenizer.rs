//! The tokenizers on arbitrary text: llama.cpp's llama-bpe (byte-level BPE, Llama 3) and
//! llama-spm (SentencePiece with byte fallback, Llama 2) vocabularies from `models/llama.cpp`
//! (scripts/fetch-test-data.sh). Byte-level BPE is lossless, so decode(encode(s)) == s must
//! hold when special tokens are not parsed; with special parsing on, it must not crash.
//! The same text as a chat message through SmolLM2's template must give exactly the
//! template's own control tokens, whatever special-token text it holds.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use llamabus::gguf::Gguf;
use llamabus::tokenizer::chat::{ChatError, ChatMessage, ChatTemplate};
use llamabus::tokenizer::Tokenizer;

fn open(rel: &str) -> Gguf {
    let path = format!("{}/../models/{rel}", env!("CARGO_MANIFEST_DIR"));
    Gguf::open(std::path::Path::new(&path))
        .unwrap_or_else(|e| panic!("{path}: {e} (run scripts/fetch-test-data.sh)"))
}

fn load(name: &str) -> Tokenizer {
    let gguf = open(&format!("llama.cpp/{name}"));
    Tokenizer::from_metadata(gguf.metadata()).expect("vocabulary loads")
}

/// SmolLM2's tokenizer and chat template (ChatML).
fn smollm2() -> &'static (Tokenizer, ChatTemplate) {
    static T: OnceLock<(Tokenizer, ChatTemplate)> = OnceLock::new();
    T.get_or_init(|| {
        let gguf = open("SmolLM2-135M-Instruct.Q4_1.gguf");
        let md = gguf.metadata();
        let src = md.opt_str("tokenizer.chat_template").unwrap().unwrap();
        let t = ChatTemplate::new(src, "<|im_start|>", "<|im_end|>").unwrap();
        (Tokenizer::from_metadata(md).unwrap(), t)
    })
}

fn vocabs() -> &'static [Tokenizer; 2] {
    static V: OnceLock<[Tokenizer; 2]> = OnceLock::new();
    V.get_or_init(|| {
        [
            load("ggml-vocab-llama-bpe.gguf"),
            load("ggml-vocab-llama-spm.gguf"),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let [bpe, spm] = vocabs();
    let ids = bpe.encode(text, false);
    assert_eq!(bpe.decode(&ids), text, "llama-bpe round trip");
    let _ = bpe.encode(text, true);
    let ids = spm.encode(text, false);
    let _ = spm.decode(&ids);
    let _ = spm.encode(text, true);
    if !text.is_empty() {
        // System turn, user turn, assistant header: 3 starts, 2 ends (the EOG tokens).
        let (tok, template) = smollm2();
        match template.encode(tok, &[ChatMessage::new("user", text)], true) {
            Ok(ids) => assert_eq!(
                ids.iter().filter(|&&id| tok.is_eog(id)).count(),
                2,
                "{text:?}"
            ),
            // Refused rather than injected: only when the text holds 64 of the marker pairs.
            Err(ChatError::SpecialTextInAlteredContent(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
});
