//! The tokenizers on arbitrary text: llama.cpp's llama-bpe (byte-level BPE, Llama 3) and
//! llama-spm (SentencePiece with byte fallback, Llama 2) vocabularies from `models/llama.cpp`
//! (scripts/fetch-test-data.sh). Byte-level BPE is lossless, so decode(encode(s)) == s must
//! hold when special tokens are not parsed; with special parsing on, it must not crash.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use llamabus::model::gguf::Gguf;
use llamabus::tokenizer::Tokenizer;

fn load(name: &str) -> Tokenizer {
    let path = format!("{}/../models/llama.cpp/{name}", env!("CARGO_MANIFEST_DIR"));
    let gguf = Gguf::open(std::path::Path::new(&path))
        .unwrap_or_else(|e| panic!("{path}: {e} (run scripts/fetch-test-data.sh)"));
    Tokenizer::from_metadata(gguf.metadata()).expect("vocabulary loads")
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
});
