//! The in-process commands: `complete` (one prompt through the model, text streamed to stdout
//! and timings to stderr, the counterpart of `llamabus ask --timings`), `inspect` (what a GGUF
//! file holds) and `tokenize`. `main.rs` parses the command line and calls these.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;

use crate::engine::memory::{self, MemoryError};
use crate::engine::{generate, GenerateError, GenerateRequest};
use crate::format::{FormatArg, FormatCompiler, FormatError, FormatLimits};
use crate::gguf::{Gguf, GgufError};
use crate::model::{HParams, LoadOptions, Model, ModelError, Session};
use crate::sampler::SamplingParams;
use crate::tokenizer::chat::{ChatError, ChatMessage};
use crate::tokenizer::{Tokenizer, TokenizerError};

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("reading {}: {}", path.display(), crate::error_chain(error))]
    Read { path: PathBuf, error: GgufError },
    #[error("loading {}: {}", path.display(), crate::error_chain(error))]
    Load { path: PathBuf, error: ModelError },
    #[error(transparent)]
    Metadata(#[from] GgufError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Chat(#[from] ChatError),
    #[error("the prompt is empty after tokenization")]
    EmptyPrompt,
    #[error(transparent)]
    Generate(#[from] GenerateError),
    #[error("--format: {0}")]
    Format(#[from] FormatError),
    #[error("--format: `{0}` names a format of the daemon's configuration; `complete` takes `json` or `@file`")]
    NamedFormat(String),
    #[error(
        "the reply does not complete the format (finish: {0:?}): the text is not a valid answer"
    )]
    FormatIncomplete(crate::sampler::FinishReason),
}

/// `llamabus complete`: the options.
#[derive(Args, Debug)]
pub struct CompleteArgs {
    /// The GGUF model file.
    #[arg(long)]
    pub model: PathBuf,
    /// The prompt (raw completion, or the user message with --chat).
    pub prompt: String,
    /// Apply the model's chat template to the prompt as a single user message.
    #[arg(long)]
    pub chat: bool,
    /// Maximum new tokens.
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    #[arg(long, default_value_t = 40)]
    pub top_k: u32,
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Stop strings (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Compute threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Context size in tokens.
    #[arg(long, default_value_t = 2048)]
    pub ctx: usize,
    /// Keep every weight in the file mapping instead of repacking the ones ggml has faster
    /// layouts for (`[model] repack = false`; llama.cpp's --no-repack).
    #[arg(long)]
    pub no_repack: bool,
    /// Constrain the reply: `json` for any JSON object, or `@file` holding a JSON Schema or a
    /// tagged format (`{"type": "regex", "pattern": ...}`, `json_schema`, `lark`).
    #[arg(long)]
    pub format: Option<String>,
}

/// Completes `a.prompt`, streaming the text to stdout and the timings to stderr.
pub fn complete(a: &CompleteArgs) -> Result<(), CommandError> {
    // Refuse with the numbers rather than be OOM-killed mid-load (no budget key here).
    let shape = memory::Shape {
        kv_cells: a.ctx,
        parallel: 1,
        repack: !a.no_repack,
    };
    let need = memory::need("complete", &a.model, shape)?;
    memory::check(&[need], &memory::available())?;
    let opts = LoadOptions {
        repack: !a.no_repack,
    };
    let model = Model::load_with(&a.model, opts).map_err(|error| CommandError::Load {
        path: a.model.clone(),
        error,
    })?;
    let tok = model.tokenizer();
    let prompt = if a.chat {
        if model.chat_template().is_none() {
            eprintln!("llamabus: model has no chat template; using ChatML");
        }
        model.encode_chat(&[ChatMessage::new("user", a.prompt.as_str())])?
    } else {
        tok.with_bos(tok.encode(&a.prompt, false))
    };
    if prompt.is_empty() {
        return Err(CommandError::EmptyPrompt);
    }
    let sampling = SamplingParams {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        min_p: a.min_p,
        repeat_penalty: a.repeat_penalty,
        seed: a.seed,
        ..SamplingParams::default()
    };
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // The daemon's path: the model's token trie, then the same compile a request's format gets.
    let format = match a.format.as_deref().map(FormatArg::parse).transpose()? {
        None => None,
        Some(FormatArg::Named(name)) => return Err(CommandError::NamedFormat(name)),
        Some(FormatArg::Spec(spec)) => {
            Some(FormatCompiler::new(tok, FormatLimits::default())?.compile(&spec)?)
        }
    };
    let mut session = Session::new(&model, a.ctx, threads)?;
    let req = GenerateRequest {
        prompt,
        max_tokens: a.max_tokens,
        sampling,
        stop: a.stop.clone(),
        format,
    };
    let mut stdout = std::io::stdout().lock();
    // First and last text emitted, from the start of prompt evaluation: the in-process
    // counterpart of `ask --timings`.
    let start = std::time::Instant::now();
    let mut first = None;
    let gen = generate(
        &mut session,
        0,
        &req,
        |s| {
            if first.is_none() && !s.is_empty() {
                first = Some(start.elapsed());
            }
            let _ = stdout.write_all(s.as_bytes());
            let _ = stdout.flush();
        },
        || false,
    )?;
    let last = start.elapsed();
    let _ = writeln!(stdout);
    eprintln!(
        "\nload {:.0} ms | first token {:.1} ms, last token {:.1} ms | prompt {} tokens, {:.1} tok/s | generated {} tokens, {:.1} tok/s | {} threads, CPU variant {} | finish: {:?}",
        model.load_time().as_secs_f64() * 1e3,
        first.unwrap_or(last).as_secs_f64() * 1e3,
        last.as_secs_f64() * 1e3,
        gen.prompt_tokens,
        gen.prompt_tps(),
        gen.tokens.len(),
        gen.generate_tps(),
        threads,
        crate::ggml::cpu::active_variant().map_or("none", |v| v.name()),
        gen.finish_reason
    );
    if let Some(f) = &gen.format {
        if let Some(e) = &f.error {
            return Err(e.clone().into());
        }
        if !f.complete {
            return Err(CommandError::FormatIncomplete(gen.finish_reason));
        }
    }
    Ok(())
}

/// What `repack = true` (the default) would copy into ggml's faster layouts on this CPU.
fn print_repack(gguf: &Gguf, hp: &HParams) {
    let bufts: Vec<String> = crate::ggml::ExtraBufferType::cpu_all()
        .iter()
        .map(|b| b.name())
        .collect();
    let bufts = if bufts.is_empty() {
        "no extra buffer types".to_owned()
    } else {
        bufts.join(", ")
    };
    match crate::model::repacked_bytes(gguf, hp, LoadOptions::REPACK) {
        Ok(n) => println!(
            "repack:        {:.1} MiB of weights would be repacked on this CPU ({bufts})",
            n as f64 / (1 << 20) as f64,
        ),
        Err(e) => println!("repack:        not loadable: {e}"),
    }
}

/// `llamabus inspect`: prints what a GGUF file holds: architecture, hyperparameters, tokenizer,
/// tensor types.
pub fn inspect(path: &Path) -> Result<(), CommandError> {
    let gguf = open(path)?;
    let md = gguf.metadata();
    println!("file:          {}", path.display());
    println!("gguf version:  {}", gguf.version());
    println!(
        "architecture:  {}",
        md.opt_str("general.architecture")?.unwrap_or("(none)")
    );
    if let Some(name) = md.opt_str("general.name")? {
        println!("name:          {name}");
    }
    let tokenizer = Tokenizer::from_metadata(md)?;
    println!(
        "tokenizer:     {:?}, {} tokens",
        tokenizer.kind(),
        tokenizer.n_vocab()
    );
    println!(
        "special:       bos {:?} eos {:?} eot {:?} add_bos {}",
        tokenizer.bos(),
        tokenizer.eos(),
        tokenizer.eot(),
        tokenizer.add_bos()
    );
    println!(
        "chat template: {}",
        if md.opt_str("tokenizer.chat_template")?.is_some() {
            "yes"
        } else {
            "no (ChatML fallback)"
        }
    );
    match HParams::from_metadata(md, tokenizer.n_vocab()) {
        Ok(hp) => {
            println!(
                "hparams:       n_embd {} n_layer {} n_head {} n_head_kv {} head_dim {} n_ff {} n_ctx_train {}",
                hp.n_embd, hp.n_layer, hp.n_head, hp.n_head_kv, hp.head_dim, hp.n_ff, hp.n_ctx_train
            );
            println!(
                "rope:          n_rot {} freq_base {} freq_scale {}; rms_eps {}",
                hp.n_rot, hp.rope_freq_base, hp.rope_freq_scale, hp.rms_eps
            );
            print_repack(&gguf, &hp);
        }
        Err(e) => println!("hparams:       not runnable: {e}"),
    }
    let mut by_type: BTreeMap<&str, (usize, u64)> = BTreeMap::new();
    for t in gguf.tensors() {
        let e = by_type.entry(t.ty.name()).or_default();
        e.0 += 1;
        e.1 += t.n_bytes;
    }
    println!("tensors:       {}", gguf.tensors().len());
    for (ty, (n, bytes)) in by_type {
        println!(
            "  {ty:<8} {n:>5} tensors {:>10.1} MiB",
            bytes as f64 / (1 << 20) as f64
        );
    }
    Ok(())
}

/// `llamabus tokenize`: prints the token ids of `text` as a JSON array. `special` parses
/// special-token text; `bos` prepends BOS when the model asks for it.
pub fn tokenize(model: &Path, special: bool, bos: bool, text: &str) -> Result<(), CommandError> {
    let gguf = open(model)?;
    let tok = Tokenizer::from_metadata(gguf.metadata())?;
    let mut ids = tok.encode(text, special);
    if bos {
        ids = tok.with_bos(ids);
    }
    let json: Vec<String> = ids.iter().map(u32::to_string).collect();
    println!("[{}]", json.join(","));
    Ok(())
}

fn open(path: &Path) -> Result<Gguf, CommandError> {
    Gguf::open(path).map_err(|error| CommandError::Read {
        path: path.to_owned(),
        error,
    })
}
