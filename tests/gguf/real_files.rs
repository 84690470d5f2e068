//! The real model and llama.cpp's vocab files (fetched by scripts/fetch-test-data.sh).

use llamabus::gguf::Gguf;
use std::path::{Path, PathBuf};

fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
}

fn require(path: &Path) {
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-test-data.sh first (tests never download)",
        path.display()
    );
}

#[test]
fn reads_the_real_model() {
    let path = models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    require(&path);
    let g = Gguf::open(&path).unwrap();
    let m = g.metadata();
    assert_eq!(g.version(), 3);
    assert_eq!(m.req_str("general.architecture").unwrap(), "llama");
    assert_eq!(m.req_u32("llama.block_count").unwrap(), 30);
    assert_eq!(
        m.opt_str_array("tokenizer.ggml.tokens")
            .unwrap()
            .unwrap()
            .len(),
        49152
    );
    assert_eq!(g.tensors().len(), 272);
    assert_eq!(g.alignment(), 32);
    let embd = g.tensor("token_embd.weight").unwrap();
    assert_eq!(embd.dims, [576, 49152]);
    let file = g.bytes().as_ptr_range();
    for t in g.tensors() {
        let d = g.tensor_data(t);
        assert_eq!(d.len() as u64, t.n_bytes, "{}", t.name);
        // The slice borrows the file buffer: nothing was copied per tensor.
        let r = d.as_ptr_range();
        assert!(file.start <= r.start && r.end <= file.end, "{}", t.name);
    }
}

/// Opening must map the file, not read the ~100 MB of tensor data into memory.
#[test]
fn open_maps_instead_of_copying() {
    let path = models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    require(&path);
    let g = Gguf::open(&path).unwrap();
    assert!(
        g.is_mapped(),
        "Gguf::open copied the file instead of mapping it"
    );
}

#[test]
fn reads_llama_cpp_vocab_files() {
    let dir = models_dir().join("llama.cpp");
    require(&dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 10,
        "only {} vocab files in {}",
        files.len(),
        dir.display()
    );
    for path in &files {
        let g = Gguf::open(path).unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
        let tokens = g.metadata().opt_str_array("tokenizer.ggml.tokens").unwrap();
        assert!(
            tokens.is_some_and(|t| !t.is_empty()),
            "{}: no tokens",
            path.display()
        );
        for t in g.tensors() {
            assert_eq!(g.tensor_data(t).len() as u64, t.n_bytes);
        }
    }
}
