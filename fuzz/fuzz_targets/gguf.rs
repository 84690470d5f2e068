//! The GGUF reader and model loader on hostile bytes: parsing, metadata, hyperparameters,
//! tokenizer construction and the zero-copy weight mapping that hands tensors to ggml. Every
//! input must end in `Ok` or a clean error; ASan catches any out-of-bounds access on the way.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use llamabus::gguf::Gguf;
use llamabus::model::Model;

fuzz_target!(|data: &[u8]| {
    let Ok(gguf) = Gguf::from_bytes(data.to_vec()) else {
        return;
    };
    // Everything a loader would read, so lazily decoded values are exercised too.
    let _ = gguf.metadata().opt_str("general.architecture");
    if let Ok(model) = Model::from_gguf(Arc::new(gguf)) {
        let tok = model.tokenizer();
        let ids = tok.encode("Hello, world! 14 + 16 =", true);
        let _ = tok.decode(&ids);
    }
});
