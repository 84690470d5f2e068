//! `llamabus bench`: throughput figures in llama-bench's terms, so the two tools can be compared
//! by one script.
//!
//! The method follows llama.cpp's `tools/llama-bench/llama-bench.cpp`: a fresh session per
//! (test, threads) with a context of `n_prompt + n_gen` cells, one warm-up run, then
//! `repetitions` timed runs, each starting from an empty cache. Prompts are random token ids
//! (BOS first when the model adds one) decoded in micro-batches; generation decodes one random
//! token per step and reads its logits, without sampling, exactly as llama-bench does. Sampling
//! is timed separately (`sample_us`), as are model load and time to first token.
//!
//! The JSON output is an array with one object per test; the common fields carry llama-bench's
//! names (`n_prompt`, `n_gen`, `n_threads`, `avg_ts`, `stddev_ts`, `samples_ts`, ...).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::ggml::cpu;
use crate::model::session::MAX_UBATCH;
use crate::model::{LoadOptions, Model, ModelError, Session};
use crate::sampler::{argmax, Sampler, SamplingParams};

/// One test: `n_prompt` prompt tokens, then `n_gen` generated ones (either may be 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Test {
    pub n_prompt: usize,
    pub n_gen: usize,
}

impl Test {
    /// llama-bench's label: `pp512`, `tg128` or `pp512+tg128`.
    pub fn label(&self) -> String {
        match (self.n_prompt, self.n_gen) {
            (p, 0) => format!("pp{p}"),
            (0, g) => format!("tg{g}"),
            (p, g) => format!("pp{p}+tg{g}"),
        }
    }
}

/// `llamabus bench` arguments (llama-bench's flag names where they exist).
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// The GGUF model file.
    #[arg(long, short = 'm')]
    pub model: PathBuf,
    /// Prompt lengths to test, comma-separated (0 for none).
    #[arg(
        long = "n-prompt",
        short = 'p',
        value_delimiter = ',',
        default_value = "64,512"
    )]
    pub n_prompt: Vec<usize>,
    /// Generation lengths to test, comma-separated (0 for none).
    #[arg(
        long = "n-gen",
        short = 'n',
        value_delimiter = ',',
        default_value = "128"
    )]
    pub n_gen: Vec<usize>,
    /// Combined prompt+generation tests as PROMPT,GEN (repeatable).
    #[arg(long = "n-pg", default_value = "512,128")]
    pub n_pg: Vec<String>,
    /// Thread counts, comma-separated (default: all cores).
    #[arg(long, short = 't', value_delimiter = ',')]
    pub threads: Vec<usize>,
    /// Timed runs per test.
    #[arg(long, short = 'r', default_value_t = 5)]
    pub repetitions: usize,
    /// Print a JSON array, one object per test, instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also measure memory read bandwidth per thread count and report generation speed as a
    /// fraction of the limit it sets.
    #[arg(long)]
    pub bandwidth: bool,
    /// Weight repacking (`[model] repack`): 1 copies the weights ggml has a faster layout for
    /// into it, 0 keeps every weight in the mapping (llama-bench's `--repack`).
    #[arg(long, default_value = "1", value_parser = ["0", "1"])]
    pub repack: String,
}

/// Runs `llamabus bench`: the table (or JSON) on stdout, progress on stderr.
pub fn main(args: &BenchArgs) -> Result<(), BenchError> {
    let mut tests = Vec::new();
    for &p in args.n_prompt.iter().filter(|&&p| p > 0) {
        tests.push(Test {
            n_prompt: p,
            n_gen: 0,
        });
    }
    for &g in args.n_gen.iter().filter(|&&g| g > 0) {
        tests.push(Test {
            n_prompt: 0,
            n_gen: g,
        });
    }
    for pg in &args.n_pg {
        let parsed = pg
            .split_once(',')
            .and_then(|(p, g)| Some((p.trim().parse().ok()?, g.trim().parse().ok()?)));
        match parsed {
            Some((0, 0)) => {}
            Some((n_prompt, n_gen)) => tests.push(Test { n_prompt, n_gen }),
            None => return Err(BenchError::BadArg(format!("--n-pg {pg}: want PROMPT,GEN"))),
        }
    }
    let threads = if args.threads.is_empty() {
        vec![std::thread::available_parallelism().map_or(1, |n| n.get())]
    } else {
        args.threads.clone()
    };
    let opts = BenchOptions {
        model: args.model.clone(),
        load: LoadOptions {
            repack: args.repack == "1",
        },
        tests,
        threads,
        repetitions: args.repetitions,
        seed: 1,
    };
    let mut results = run(&opts, |r| {
        eprintln!(
            "llamabus bench: {} t={} {:.2} ± {:.2} t/s",
            r.test, r.n_threads, r.avg_ts, r.stddev_ts
        );
    })?;
    if args.bandwidth {
        let model = Model::load_with(&args.model, opts.load)?;
        let per_token = weight_bytes_per_token(&model);
        let mut measured: Vec<(usize, f64)> = Vec::new();
        for r in &mut results {
            let bw = match measured.iter().find(|(t, _)| *t == r.n_threads) {
                Some(&(_, bw)) => bw,
                None => {
                    let bw = memory_read_bandwidth(r.n_threads, BANDWIDTH_BUFFER);
                    eprintln!(
                        "llamabus bench: memory read bandwidth, {} threads: {:.2} GB/s",
                        r.n_threads,
                        bw / 1e9
                    );
                    measured.push((r.n_threads, bw));
                    bw
                }
            };
            r.mem_bw = Some(bw);
            if r.n_prompt == 0 {
                r.bytes_per_token = Some(per_token);
                r.bw_fraction = Some(r.avg_ts * per_token as f64 / bw);
            }
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&results).expect("plain data serialises")
        );
    } else {
        if let Some(r) = results.first() {
            println!(
                "model {} | load {:.1} ms | RSS after load {:.1} MiB | CPU variant {} ({})",
                r.model_filename,
                r.load_ms,
                r.rss_after_load as f64 / (1 << 20) as f64,
                r.cpu_variant,
                r.simd.join(",")
            );
        }
        print!("{}", markdown(&results));
        for r in results.iter().filter(|r| r.bw_fraction.is_some()) {
            println!(
                "{} t={}: {:.1} MB/token at {:.2} GB/s -> limit {:.1} t/s; measured {:.1} t/s = {:.0}% of the limit",
                r.test,
                r.n_threads,
                r.bytes_per_token.unwrap_or(0) as f64 / 1e6,
                r.mem_bw.unwrap_or(0.0) / 1e9,
                r.mem_bw.unwrap_or(0.0) / r.bytes_per_token.unwrap_or(1) as f64,
                r.avg_ts,
                r.bw_fraction.unwrap_or(0.0) * 100.0
            );
        }
    }
    Ok(())
}

/// Buffer for the bandwidth measurement: far larger than any last-level cache.
const BANDWIDTH_BUFFER: usize = 512 << 20;

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub model: PathBuf,
    pub tests: Vec<Test>,
    pub threads: Vec<usize>,
    pub repetitions: usize,
    /// How the weights are placed (repacked or not).
    pub load: LoadOptions,
    /// Seed of the random prompt tokens.
    pub seed: u64,
}

/// Figures of one (test, threads) pair. Fields up to `samples_ts` mirror llama-bench's JSON.
#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    pub model_filename: String,
    pub model_type: String,
    pub model_size: u64,
    pub model_n_params: u64,
    pub n_batch: usize,
    pub n_ubatch: usize,
    pub n_threads: usize,
    pub type_k: &'static str,
    pub type_v: &'static str,
    pub flash_attn: bool,
    pub use_mmap: bool,
    /// Weights ggml has a faster layout for were repacked into it (llama-bench's `repack`).
    pub repack: bool,
    pub n_prompt: usize,
    pub n_gen: usize,
    pub n_depth: usize,
    pub test_time: String,
    pub avg_ns: u64,
    pub stddev_ns: u64,
    pub avg_ts: f64,
    pub stddev_ts: f64,
    pub samples_ns: Vec<u64>,
    pub samples_ts: Vec<f64>,
    // llamabus' own figures.
    /// The test's label (`pp512`, `tg128`, `pp512+tg128`).
    pub test: String,
    /// Context size of the session (KV cells).
    pub n_ctx: usize,
    /// `Model::load` wall time: map, parse, validate, repack (once per bench run).
    pub load_ms: f64,
    /// Bytes of weights copied into repacked layouts (anonymous memory).
    pub repacked_bytes: u64,
    /// Mean time from an empty cache to the first token chosen (prompt decode + argmax; one
    /// token for generation-only tests).
    pub ttft_ms: f64,
    /// Mean time of one `Sampler::sample` call with the default parameters, on this test's
    /// last logits (includes repeat-penalty bookkeeping, top-k, top-p, min-p, temperature).
    pub sample_us: f64,
    /// Resident set after the model was loaded, and after this test (bytes).
    pub rss_after_load: u64,
    pub rss_after: u64,
    /// Peak resident set of the process so far (VmHWM, bytes).
    pub peak_rss: u64,
    /// SIMD features of the ggml CPU variant in use.
    pub simd: Vec<&'static str>,
    /// The ggml CPU variant in use (`avx2`, `dotprod`, ...).
    pub cpu_variant: &'static str,
    /// With `--bandwidth`: memory read bandwidth at `n_threads` threads (bytes/s), the
    /// weight bytes one generated token reads, and generation speed as a fraction of the
    /// limit these two set (`avg_ts * bytes_per_token / mem_bw`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem_bw: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_per_token: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bw_fraction: Option<f64>,
}

/// Why a bench could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("nothing to run: {0}")]
    Empty(&'static str),
    #[error("{0}")]
    BadArg(String),
}

/// Loads the model and runs every (test, threads) pair, calling `on_result` as each finishes.
pub fn run(
    opts: &BenchOptions,
    mut on_result: impl FnMut(&BenchResult),
) -> Result<Vec<BenchResult>, BenchError> {
    if opts.tests.is_empty() {
        return Err(BenchError::Empty("no tests"));
    }
    if opts.threads.is_empty() || opts.threads.contains(&0) {
        return Err(BenchError::Empty("thread counts must be at least 1"));
    }
    if opts.repetitions == 0 {
        return Err(BenchError::Empty("repetitions must be at least 1"));
    }
    let model = Model::load_with(&opts.model, opts.load)?;
    let rss_after_load = memory_status("VmRSS:").unwrap_or(0);
    let mut rng = Lcg(opts.seed);
    let mut out = Vec::new();
    for &n_threads in &opts.threads {
        for &test in &opts.tests {
            let r = run_one(&model, test, n_threads, opts, &mut rng, rss_after_load)?;
            on_result(&r);
            out.push(r);
        }
    }
    Ok(out)
}

fn run_one(
    model: &Model,
    test: Test,
    n_threads: usize,
    opts: &BenchOptions,
    rng: &mut Lcg,
    rss_after_load: u64,
) -> Result<BenchResult, BenchError> {
    if test.n_prompt + test.n_gen == 0 {
        return Err(BenchError::Empty(
            "a test with neither prompt nor generation",
        ));
    }
    // llama.cpp pads the context to 256 cells.
    let n_ctx = (test.n_prompt + test.n_gen).next_multiple_of(256);
    let mut session = Session::new(model, n_ctx, n_threads)?;
    let tok = model.tokenizer();
    let n_vocab = tok.n_vocab() as u64;
    let bos = tok.bos().filter(|_| tok.add_bos());
    let mut prompt = Vec::with_capacity(test.n_prompt);
    let random_prompt = |rng: &mut Lcg, n: usize, out: &mut Vec<u32>| {
        out.clear();
        out.extend((0..n).map(|i| match (i, bos) {
            (0, Some(b)) => b,
            _ => rng.below(n_vocab) as u32,
        }));
    };

    // One warm-up run: pages in the weights and sizes the compute buffers.
    if test.n_prompt > 0 {
        random_prompt(rng, test.n_prompt, &mut prompt);
        eval_prompt(&mut session, &prompt)?;
    }
    if test.n_gen > 0 {
        session.eval(&[bos.unwrap_or(0)])?;
    }

    let mut samples_ns = Vec::with_capacity(opts.repetitions);
    let mut ttft = Duration::ZERO;
    for _ in 0..opts.repetitions {
        session.clear();
        random_prompt(rng, test.n_prompt, &mut prompt);
        let start = Instant::now();
        let mut first = None;
        if test.n_prompt > 0 {
            eval_prompt(&mut session, &prompt)?;
            std::hint::black_box(argmax(session.logits(0)));
            first = Some(start.elapsed());
        }
        let mut token = bos.unwrap_or_else(|| rng.below(n_vocab) as u32);
        for _ in 0..test.n_gen {
            let logits = session.eval(&[token])?;
            if first.is_none() {
                std::hint::black_box(argmax(logits));
                first = Some(start.elapsed());
            }
            token = rng.below(n_vocab) as u32;
        }
        samples_ns.push(start.elapsed().as_nanos() as u64);
        ttft += first.unwrap_or_default();
    }
    let sample_us = time_sampling(&session, rng);

    let n_tokens = (test.n_prompt + test.n_gen) as f64;
    let samples_ts: Vec<f64> = samples_ns
        .iter()
        .map(|&ns| n_tokens * 1e9 / ns.max(1) as f64)
        .collect();
    let ns_f: Vec<f64> = samples_ns.iter().map(|&n| n as f64).collect();
    let hp = model.hparams();
    let path = model.path().unwrap_or(Path::new(""));
    Ok(BenchResult {
        model_filename: path.display().to_string(),
        model_type: format!(
            "llama {}L {}E {}",
            hp.n_layer,
            hp.n_embd,
            dominant_type(model)
        ),
        model_size: model.weight_bytes(),
        model_n_params: model.n_params(),
        n_batch: MAX_UBATCH,
        n_ubatch: MAX_UBATCH,
        n_threads,
        type_k: "f16",
        type_v: "f16",
        flash_attn: true,
        use_mmap: true,
        repack: opts.load.repack,
        n_prompt: test.n_prompt,
        n_gen: test.n_gen,
        n_depth: 0,
        test_time: rfc3339_now(),
        avg_ns: mean(&ns_f) as u64,
        stddev_ns: stddev(&ns_f) as u64,
        avg_ts: mean(&samples_ts),
        stddev_ts: stddev(&samples_ts),
        samples_ns,
        samples_ts,
        test: test.label(),
        n_ctx,
        load_ms: model.load_time().as_secs_f64() * 1e3,
        repacked_bytes: model.repacked_bytes(),
        ttft_ms: ttft.as_secs_f64() * 1e3 / opts.repetitions as f64,
        sample_us,
        rss_after_load,
        rss_after: memory_status("VmRSS:").unwrap_or(0),
        peak_rss: memory_status("VmHWM:").unwrap_or(0),
        simd: cpu::compiled_features(),
        cpu_variant: cpu::active_variant().map_or("none", |v| v.name()),
        mem_bw: None,
        bytes_per_token: None,
        bw_fraction: None,
    })
}

/// The prompt in micro-batches, logits for the last token only (llama-bench's `test_prompt`).
fn eval_prompt(session: &mut Session<'_>, prompt: &[u32]) -> Result<(), ModelError> {
    for chunk in prompt.chunks(MAX_UBATCH) {
        session.eval_seq(0, chunk)?;
    }
    Ok(())
}

/// Mean microseconds per `Sampler::sample` with the default parameters on the session's
/// current logits, with a 64-token history for the repeat penalty.
fn time_sampling(session: &Session<'_>, rng: &mut Lcg) -> f64 {
    let n_vocab = session.model().tokenizer().n_vocab();
    let params = SamplingParams {
        repeat_penalty: 1.1,
        ..SamplingParams::default()
    };
    let Ok(mut sampler) = Sampler::new(params, n_vocab) else {
        return 0.0;
    };
    let history: Vec<u32> = (0..64).map(|_| rng.below(n_vocab as u64) as u32).collect();
    let logits = session.logits(0);
    const N: u32 = 200;
    let start = Instant::now();
    for _ in 0..N {
        std::hint::black_box(sampler.sample(logits, &history));
    }
    start.elapsed().as_secs_f64() * 1e6 / f64::from(N)
}

/// The weight type holding the most bytes (`Q4_1` for a Q4_1 file with F32 norms).
fn dominant_type(model: &Model) -> &'static str {
    let mut by_type: Vec<(&'static str, u64)> = Vec::new();
    for t in model.gguf().tensors() {
        match by_type.iter_mut().find(|(n, _)| *n == t.ty.name()) {
            Some(e) => e.1 += t.n_bytes,
            None => by_type.push((t.ty.name(), t.n_bytes)),
        }
    }
    by_type
        .into_iter()
        .max_by_key(|&(_, b)| b)
        .map_or("?", |(n, _)| n)
}

/// A field of `/proc/self/status` in bytes (`VmRSS:`, `VmHWM:`); None off Linux.
pub fn memory_status(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Memory read bandwidth in bytes per second with `n_threads` threads: the best of a few
/// passes summing a buffer far larger than any cache. The sum is a plain loop the compiler
/// vectorises, so this is a streaming read rate, the same access pattern as a matrix-vector
/// product over the weights.
pub fn memory_read_bandwidth(n_threads: usize, bytes: usize) -> f64 {
    let n_threads = n_threads.max(1);
    let words = (bytes / 8).max(n_threads * 64);
    // Non-zero contents, so the pages are really backed (zero pages would all map one frame).
    let buf: Vec<u64> = (0..words as u64).collect();
    let chunk = words.div_ceil(n_threads);
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let start = Instant::now();
        let total: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = buf
                .chunks(chunk)
                .map(|c| s.spawn(move || sum_words(c)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(0))
                .fold(0, u64::wrapping_add)
        });
        std::hint::black_box(total);
        best = best.min(start.elapsed().as_secs_f64());
    }
    (words * 8) as f64 / best
}

fn sum_words(c: &[u64]) -> u64 {
    // Eight independent lanes so the loop is not one long dependency chain.
    let mut acc = [0u64; 8];
    let mut it = c.chunks_exact(8);
    for w in &mut it {
        for (a, &x) in acc.iter_mut().zip(w) {
            *a = a.wrapping_add(x);
        }
    }
    let tail: u64 = it.remainder().iter().fold(0, |a, &x| a.wrapping_add(x));
    acc.iter().fold(tail, |a, &x| a.wrapping_add(x))
}

/// Bytes of weights one generated token reads: every matrix in full, except the token
/// embedding table, of which only one row is read, unless it is also the output projection.
pub fn weight_bytes_per_token(model: &Model) -> u64 {
    let embd = model
        .gguf()
        .tensor("token_embd.weight")
        .map_or(0, |t| t.n_bytes);
    let tied = model.gguf().tensor("output.weight").is_none();
    if tied {
        model.weight_bytes()
    } else {
        model.weight_bytes() - embd
    }
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// Sample standard deviation (n - 1), as llama-bench computes it.
fn stddev(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let m = mean(v);
    (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SSZ`.
fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    crate::tokenizer::chat::strftime("%Y-%m-%dT%H:%M:%SZ", secs).unwrap_or_default()
}

/// Deterministic token ids for the prompts (llama-bench uses `rand()`; any uniform source
/// serves).
#[derive(Debug)]
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n.max(1)
    }
}

/// llama-bench's markdown table, one row per result.
pub fn markdown(results: &[BenchResult]) -> String {
    let mut s = String::from(
        "| model | size | repacked | params | threads | test | t/s | ttft ms | sample µs | peak RSS MiB |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for r in results {
        s.push_str(&format!(
            "| {} | {:.2} MiB | {:.2} MiB | {:.2} M | {} | {} | {:.2} ± {:.2} | {:.2} | {:.1} | {:.1} |\n",
            r.model_type,
            r.model_size as f64 / (1 << 20) as f64,
            r.repacked_bytes as f64 / (1 << 20) as f64,
            r.model_n_params as f64 / 1e6,
            r.n_threads,
            r.test,
            r.avg_ts,
            r.stddev_ts,
            r.ttft_ms,
            r.sample_us,
            r.peak_rss as f64 / (1 << 20) as f64,
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_llama_bench() {
        let t = |p, g| Test {
            n_prompt: p,
            n_gen: g,
        };
        assert_eq!(t(512, 0).label(), "pp512");
        assert_eq!(t(0, 128).label(), "tg128");
        assert_eq!(t(512, 128).label(), "pp512+tg128");
    }

    #[test]
    fn stddev_is_the_sample_deviation() {
        assert_eq!(stddev(&[1.0]), 0.0);
        assert!((stddev(&[1.0, 2.0, 3.0, 4.0]) - 1.290_994_4).abs() < 1e-6);
    }

    #[test]
    fn time_format_is_rfc3339_utc() {
        let s = rfc3339_now();
        assert_eq!(s.len(), 20, "{s}");
        assert!(s.ends_with('Z') && s.as_bytes()[10] == b'T', "{s}");
    }

    #[test]
    fn bandwidth_is_positive_and_words_sum() {
        assert_eq!(sum_words(&(1..=20).collect::<Vec<u64>>()), 210);
        assert!(memory_read_bandwidth(2, 1 << 20) > 0.0);
    }
}
