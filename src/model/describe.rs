//! What a loaded model is, in a few words: architecture, size, quantization. Shared by the
//! status topic and `llamabus bench`.

use std::collections::BTreeMap;

use crate::model::Model;

/// A short description of a model file.
#[derive(Clone, Debug, PartialEq)]
pub struct Description {
    /// `general.architecture` (`llama` when absent).
    pub architecture: String,
    /// Weight elements of every tensor in the file.
    pub n_params: u64,
    /// `general.file_type` as llama.cpp names it (`Q4_1`, `Q4_K_M`, ...), else
    /// [`Model::dominant_type`] (`q4_1`).
    pub quantization: String,
    /// Context length the model was trained with.
    pub n_ctx_train: u32,
    /// Whether the file has its own chat template (else chats render as ChatML).
    pub has_chat_template: bool,
}

impl Model {
    /// Describes the model.
    pub fn describe(&self) -> Description {
        let md = self.gguf().metadata();
        let quantization = md
            .opt_u32("general.file_type")
            .ok()
            .flatten()
            .and_then(file_type_name)
            .map(str::to_owned)
            .unwrap_or_else(|| self.dominant_type().to_owned());
        Description {
            architecture: md
                .opt_str("general.architecture")
                .ok()
                .flatten()
                .unwrap_or("llama")
                .to_owned(),
            n_params: self.n_params(),
            quantization,
            n_ctx_train: self.hparams().n_ctx_train,
            has_chat_template: self.chat_template().is_some(),
        }
    }

    /// Number of weight parameters (elements of every tensor in the file).
    pub fn n_params(&self) -> u64 {
        self.gguf()
            .tensors()
            .iter()
            .fold(0u64, |n, t| n.saturating_add(t.n_elements()))
    }

    /// The tensor type holding the most bytes (ties go to the lower type id), as ggml names it.
    pub fn dominant_type(&self) -> &'static str {
        let mut bytes: BTreeMap<u32, (u64, &'static str)> = BTreeMap::new();
        for t in self.gguf().tensors() {
            let e = bytes.entry(t.ty.id()).or_insert((0, t.ty.name()));
            e.0 = e.0.saturating_add(t.n_bytes);
        }
        bytes
            .values()
            .fold(None::<(u64, &'static str)>, |best, &(n, name)| match best {
                Some((b, _)) if b >= n => best,
                _ => Some((n, name)),
            })
            .map_or("unknown", |(_, name)| name)
    }
}

/// llama.cpp's `llama_ftype` names (`llama_model_ftype_name` in `src/llama-model-loader.cpp`).
fn file_type_name(ftype: u32) -> Option<&'static str> {
    Some(match ftype {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4",
        _ => return None,
    })
}
