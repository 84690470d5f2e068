//! The format-matrix model files: SmolLM2-135M-Instruct Q4_1 in each type llama-quantize makes.
//!
//! The files are rebuilt here from the Q4_1 model, tensor by tensor, with ggml's own
//! dequantize/quantize functions (`ggml_get_type_traits()->to_float`, `ggml_quantize_chunk`, as
//! llama-quantize calls them, no importance matrix). Nothing is decided here: the type of every
//! tensor comes from `tests/data/format-matrix/recipe.json`, which scripts/make-format-reference.py
//! wrote from llama-quantize's own output, together with the sha256 of each tensor's bytes. A file
//! is only kept when every tensor hashes to what llama-quantize wrote, so the tests run on
//! llama-quantize's bytes without needing llama.cpp in CI. Files are cached in models/formats/.

use std::path::PathBuf;
use std::sync::Mutex;

use llamabus::ggml::{dequantize, quantize, Type};
use llamabus::gguf::{GgmlType, Gguf, GgufWriter, Value};
use serde_json::Value as Json;

use super::tiny::models_dir;

/// The committed recipe and references.
pub fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/format-matrix")
}

pub fn read_json(name: &str) -> Json {
    let p = data_dir().join(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn ggml_type_named(name: &str) -> GgmlType {
    GgmlType::ALL
        .into_iter()
        .find(|t| t.name() == name)
        .unwrap_or_else(|| panic!("unknown ggml type {name}"))
}

/// Serialises file creation across the test threads of one binary.
static MAKING: Mutex<()> = Mutex::new(());

/// The path of the `format` file (`"Q5_K_M"`, ...), made from the Q4_1 model if absent.
pub fn format_model(format: &str) -> PathBuf {
    let _guard = MAKING.lock().unwrap_or_else(|e| e.into_inner());
    let dir = models_dir().join("formats");
    let path = dir.join(format!("SmolLM2-135M-Instruct.{format}.gguf"));
    if path.exists() {
        return path;
    }
    let recipe = read_json("recipe.json");
    let entry = recipe["formats"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["type"] == format)
        .unwrap_or_else(|| panic!("recipe.json has no {format}"));
    let base_path = models_dir().join(recipe["base_model"].as_str().unwrap());
    assert!(
        base_path.exists(),
        "missing {}: run scripts/fetch-test-data.sh",
        base_path.display()
    );
    let base = Gguf::open(&base_path).expect("open the base model");

    let mut w = GgufWriter::new();
    for (key, value) in base.metadata().iter() {
        let value = if key == "general.file_type" {
            Value::U32(entry["file_type"].as_u64().unwrap() as u32)
        } else {
            value.clone()
        };
        w = w.kv(key, value);
    }
    let mut mismatched = Vec::new();
    for t in entry["tensors"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        let info = base
            .tensor(name)
            .unwrap_or_else(|| panic!("base model lacks {name}"));
        let to = ggml_type_named(t["type"].as_str().unwrap());
        let src = base.tensor_data(info);
        let data = if to == info.ty {
            src.to_vec()
        } else {
            let from = Type::from_id(info.ty.id()).unwrap();
            let f32s = dequantize(from, src, info.n_elements() as usize);
            quantize(
                Type::from_id(to.id()).unwrap(),
                &f32s,
                info.dims[0] as usize,
            )
        };
        if sha256_hex(&data) != t["sha256"].as_str().unwrap() {
            mismatched.push(format!("{name} ({})", to.name()));
        }
        w = w.tensor(name, &info.dims, to, data);
    }
    assert!(
        mismatched.is_empty(),
        "{format}: ggml's quantize functions did not reproduce llama-quantize's bytes for {} \
         tensors (is ggml compiled as llama.cpp's CMake compiles it?): {}",
        mismatched.len(),
        mismatched.join(", ")
    );
    std::fs::create_dir_all(&dir).unwrap();
    let part = path.with_extension("gguf.part");
    w.write(&part).unwrap();
    std::fs::rename(&part, &path).unwrap();
    path
}
