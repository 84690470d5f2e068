//! Structured-output overhead on SmolLM2-135M-Instruct Q4_1: generation tokens/s with and
//! without a typical object schema, and the mask time per token (median, p99).
//!
//! `cargo bench --bench format [-- THREADS ROUNDS]` (defaults 2 and 5). A benchmark that prints
//! figures, never a timed test: on a shared machine the numbers move with the load.

use std::path::PathBuf;
use std::time::Duration;

use llamabus::engine::{generate, GenerateRequest, Generation};
use llamabus::format::{FormatCompiler, FormatLimits, FormatSpec};
use llamabus::model::{Model, Session};
use llamabus::sampler::SamplingParams;
use llamabus::tokenizer::chat::ChatMessage;
use serde_json::json;

const PROMPTS: &[&str] = &[
    "Turn the kitchen light off.",
    "Set the hall light to 30 percent brightness.",
    "The bedroom is too cold, heat it to 22 degrees.",
    "Switch on the garden pump for ten minutes.",
];

fn main() {
    // `cargo test` runs benches without `--bench`: one round then, as a smoke test.
    let benching = std::env::args().any(|a| a == "--bench");
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let threads: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(2);
    let rounds: usize = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(if benching { 5 } else { 1 });
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let model = Model::load(&path)
        .expect("models/SmolLM2-135M-Instruct.Q4_1.gguf (scripts/fetch-test-data.sh)");
    let t = std::time::Instant::now();
    let compiler = FormatCompiler::new(model.tokenizer(), FormatLimits::default()).unwrap();
    let trie_ms = t.elapsed().as_secs_f64() * 1e3;
    let schema = json!({
        "type": "object",
        "properties": {
            "device": {"type": "string", "enum": ["light", "heater", "pump", "blind"]},
            "room": {"type": "string", "maxLength": 16},
            "action": {"enum": ["on", "off", "set"]},
            "level": {"type": "integer", "minimum": 0, "maximum": 100},
            "minutes": {"type": "integer", "minimum": 0, "maximum": 240}
        },
        "required": ["device", "room", "action"],
        "additionalProperties": false
    });
    let t = std::time::Instant::now();
    let grammar = compiler
        .compile(&FormatSpec::JsonSchema { schema })
        .unwrap();
    let compile_ms = t.elapsed().as_secs_f64() * 1e3;

    let tok = model.tokenizer();
    let template = model.chat_template().expect("chat template");
    let (mut plain, mut constrained) = (Rate::default(), Rate::default());
    let mut masks: Vec<Duration> = Vec::new();
    for _ in 0..rounds {
        for p in PROMPTS {
            let prompt = template
                .encode(tok, &[ChatMessage::new("user", *p)], true)
                .unwrap();
            for with_format in [false, true] {
                let mut session = Session::new(&model, 512, threads).unwrap();
                let req = GenerateRequest {
                    prompt: prompt.clone(),
                    max_tokens: 48,
                    sampling: SamplingParams::greedy(),
                    stop: Vec::new(),
                    format: with_format.then(|| grammar.clone()),
                };
                let g = generate(&mut session, 0, &req, |_| {}, || false).unwrap();
                if with_format {
                    masks.extend(&g.format.as_ref().unwrap().mask_times);
                    constrained.add(&g);
                } else {
                    plain.add(&g);
                }
            }
        }
    }
    masks.sort();
    let pct = |q: f64| masks[((masks.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e6;
    let (a, b) = (plain.tps(), constrained.tps());
    println!("structured output, SmolLM2-135M-Instruct Q4_1, {threads} threads, {rounds} rounds x {} prompts, greedy", PROMPTS.len());
    println!("token trie + factory build: {trie_ms:.1} ms (once per model); schema compile: {compile_ms:.1} ms");
    println!(
        "generation without format: {a:.1} tok/s ({} tokens)",
        plain.tokens
    );
    println!(
        "generation with schema:    {b:.1} tok/s ({} tokens)",
        constrained.tokens
    );
    println!("slowdown: {:.1} %", (1.0 - b / a) * 100.0);
    println!(
        "mask time per token: median {:.0} us, p99 {:.0} us, max {:.0} us ({} masks)",
        pct(0.5),
        pct(0.99),
        pct(1.0),
        masks.len()
    );
}

#[derive(Default)]
struct Rate {
    tokens: usize,
    time: Duration,
}

impl Rate {
    /// Generation phase only (after the first token), as `Generation::generate_tps`.
    fn add(&mut self, g: &Generation) {
        self.tokens += g.tokens.len().saturating_sub(1);
        self.time += g.timings.generate;
    }

    fn tps(&self) -> f64 {
        self.tokens as f64 / self.time.as_secs_f64()
    }
}
