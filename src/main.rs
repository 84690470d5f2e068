//! The `llamabus` binary: parse the command line, check the CPU, hand over to the library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};
use llamabus::engine::{generate, GenerateRequest};
use llamabus::ggml::cpu;
use llamabus::gguf::Gguf;
use llamabus::model::{Model, Session};
use llamabus::sampler::SamplingParams;
use llamabus::service::config;
use llamabus::tokenizer::chat::ChatMessage;
use llamabus::tokenizer::Tokenizer;

#[derive(Parser, Debug)]
#[command(name = "llamabus", version, long_version = long_version(), about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the build target, the SIMD features ggml was compiled with, and what this CPU has.
    Sysinfo,
    /// Complete a prompt, streaming the text to stdout and timings to stderr.
    Complete(CompleteArgs),
    /// Measure throughput like llama-bench (pp/tg tokens per second, load, first token, RSS).
    Bench(llamabus::bench::BenchArgs),
    /// Describe a GGUF model: architecture, hyperparameters, tokenizer, tensor types.
    Inspect {
        /// The GGUF file.
        path: PathBuf,
    },
    /// Print the token ids of a text as a JSON array.
    Tokenize {
        /// The GGUF file (vocab-only files work too).
        #[arg(long)]
        model: PathBuf,
        /// Parse special-token text such as <|im_start|> (off by default: user text must not
        /// be able to inject control tokens).
        #[arg(long)]
        special: bool,
        /// Prepend BOS when the model's metadata asks for it.
        #[arg(long)]
        bos: bool,
        text: String,
    },
    /// Run the MQTT daemon: answer prompts published to {prefix}/prompt/+.
    Serve(ServeArgs),
    /// Validate the configuration and print the effective settings (secrets redacted).
    CheckConfig(CheckConfigArgs),
    /// Ask a running daemon over MQTT 5 and print the answer as it streams.
    Ask(AskArgs),
    /// Print the Home Assistant discovery messages `serve` publishes (JSON lines), or remove
    /// the device from Home Assistant with --remove.
    Homeassistant(HomeAssistantArgs),
}

#[derive(Args, Debug)]
struct HomeAssistantArgs {
    /// The configuration file, as for `serve` (node name, broker, prefixes).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Publish empty retained configs so that Home Assistant removes the device (stop the
    /// daemon or disable [homeassistant] first, or it announces itself again).
    #[arg(long)]
    remove: bool,
    #[command(flatten)]
    overrides: OverrideArgs,
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// The TOML configuration file (default /etc/llamabus/config.toml when it exists); drop-ins
    /// are read from <stem>.d/*.toml beside it.
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: OverrideArgs,
}

#[derive(Args, Debug)]
struct CheckConfigArgs {
    /// The configuration file (default /etc/llamabus/config.toml).
    path: Option<PathBuf>,
    #[command(flatten)]
    overrides: OverrideArgs,
}

/// Flags that override every other configuration source.
#[derive(Args, Debug)]
struct OverrideArgs {
    /// The GGUF model (overrides [model] path).
    #[arg(long)]
    model: Option<PathBuf>,
    /// mqtt://HOST:PORT or mqtts://HOST:PORT (overrides [mqtt] broker; without either, an
    /// embedded broker is started).
    #[arg(long)]
    broker: Option<String>,
    /// Topic prefix (overrides [mqtt] prefix).
    #[arg(long)]
    prefix: Option<String>,
    /// Announce the daemon to Home Assistant (overrides [homeassistant] enabled).
    #[arg(long)]
    homeassistant: bool,
}

#[derive(Args, Debug)]
struct AskArgs {
    /// The broker.
    #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
    broker: String,
    /// The device level of the request topic.
    #[arg(long, default_value = "ask")]
    device: String,
    /// Send a JSON request and print the JSON replies, one per line.
    #[arg(long)]
    json: bool,
    /// Ask for a streamed answer.
    #[arg(long)]
    stream: bool,
    /// Topic prefix.
    #[arg(long, default_value = "llamabus")]
    prefix: String,
    /// Seconds to wait for the complete answer.
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,
    /// Maximum new tokens (sends JSON).
    #[arg(long)]
    max_tokens: Option<u32>,
    /// Sampling temperature; 0 is greedy (sends JSON).
    #[arg(long)]
    temperature: Option<f32>,
    /// Print publish->first/last token latency and the daemon's share of it to stderr.
    #[arg(long)]
    timings: bool,
    /// The prompt.
    prompt: String,
}

#[derive(Args, Debug)]
struct CompleteArgs {
    /// The GGUF model file.
    #[arg(long)]
    model: PathBuf,
    /// The prompt (raw completion, or the user message with --chat).
    prompt: String,
    /// Apply the model's chat template to the prompt as a single user message.
    #[arg(long)]
    chat: bool,
    /// Maximum new tokens.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    #[arg(long, default_value_t = 40)]
    top_k: u32,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Stop strings (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Compute threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Context size in tokens.
    #[arg(long, default_value_t = 2048)]
    ctx: usize,
}

fn long_version() -> &'static str {
    let s = format!("{}\n{}", env!("CARGO_PKG_VERSION"), cpu::summary());
    Box::leak(s.into_boxed_str())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    llamabus::service::logging::init();
    // Before any ggml kernel runs: a binary built for a newer CPU must fail with a message,
    // not with SIGILL in the middle of a matrix product.
    if let Err(e) = cpu::check() {
        eprintln!("llamabus: {e}");
        return ExitCode::from(3);
    }
    let result = match cli.command {
        Command::Sysinfo => {
            sysinfo();
            Ok(())
        }
        Command::Complete(args) => complete(args),
        Command::Bench(args) => llamabus::bench::main(&args).map_err(Into::into),
        Command::Inspect { path } => inspect(&path),
        Command::Tokenize {
            model,
            special,
            bos,
            text,
        } => tokenize(&model, special, bos, &text),
        Command::Serve(args) => serve(args),
        Command::CheckConfig(args) => check_config(args),
        Command::Ask(args) => ask(args),
        Command::Homeassistant(args) => homeassistant(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("llamabus: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn sysinfo() {
    println!("llamabus {}", env!("CARGO_PKG_VERSION"));
    println!("target:        {}", cpu::TARGET);
    println!(
        "ggml:          {} (vendored, CPU backend)",
        llamabus::ggml::GGML_VERSION
    );
    println!("ggml flags:    {}", cpu::SIMD_FLAGS);
    println!("compiled SIMD: {}", cpu::compiled_features().join(" "));
    println!(
        "ggml reports:  {}",
        llamabus::ggml::ggml_reported_features().join(" ")
    );
    println!("cpu threads:   {}", default_threads());
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn complete(a: CompleteArgs) -> anyhow::Result<()> {
    use llamabus::engine::memory;
    // Refuse with the numbers rather than be OOM-killed mid-load (no budget key here).
    let need = memory::need("complete", &a.model, a.ctx, 1)?;
    memory::check(&[need], &memory::available())?;
    let model = Model::load(&a.model).with_context(|| format!("loading {}", a.model.display()))?;
    let tok = model.tokenizer();
    let prompt = if a.chat {
        let msgs = [ChatMessage::new("user", a.prompt.as_str())];
        // Special tokens are parsed only in the template's own text, never in the prompt;
        // the template decides whether it starts with BOS.
        match model.chat_template() {
            Some(t) => t.encode(tok, &msgs, true)?,
            None => {
                eprintln!("llamabus: model has no chat template; using ChatML");
                let bos = tok.bos().and_then(|t| tok.token_text(t)).unwrap_or("");
                let eos = tok.eos().and_then(|t| tok.token_text(t)).unwrap_or("");
                llamabus::tokenizer::chat::ChatTemplate::chatml_fallback(bos, eos)
                    .encode(tok, &msgs, true)?
            }
        }
    } else {
        with_bos(tok, tok.encode(&a.prompt, false))
    };
    if prompt.is_empty() {
        bail!("the prompt is empty after tokenization");
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
    let threads = a.threads.unwrap_or_else(default_threads);
    let mut session = Session::new(&model, a.ctx, threads)?;
    let req = GenerateRequest {
        prompt,
        max_tokens: a.max_tokens,
        sampling,
        stop: a.stop,
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
        "\nload {:.0} ms | first token {:.1} ms, last token {:.1} ms | prompt {} tokens, {:.1} tok/s | generated {} tokens, {:.1} tok/s | {} threads | finish: {:?}",
        model.load_time().as_secs_f64() * 1e3,
        first.unwrap_or(last).as_secs_f64() * 1e3,
        last.as_secs_f64() * 1e3,
        gen.prompt_tokens,
        gen.prompt_tps(),
        gen.tokens.len(),
        gen.generate_tps(),
        threads,
        gen.finish_reason
    );
    Ok(())
}

fn with_bos(tok: &Tokenizer, mut ids: Vec<u32>) -> Vec<u32> {
    if tok.add_bos() {
        if let Some(b) = tok.bos() {
            ids.insert(0, b);
        }
    }
    ids
}

fn inspect(path: &std::path::Path) -> anyhow::Result<()> {
    let gguf = Gguf::open(path).with_context(|| format!("reading {}", path.display()))?;
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
    match llamabus::model::HParams::from_metadata(md, tokenizer.n_vocab()) {
        Ok(hp) => {
            println!(
                "hparams:       n_embd {} n_layer {} n_head {} n_head_kv {} head_dim {} n_ff {} n_ctx_train {}",
                hp.n_embd, hp.n_layer, hp.n_head, hp.n_head_kv, hp.head_dim, hp.n_ff, hp.n_ctx_train
            );
            println!(
                "rope:          n_rot {} freq_base {} freq_scale {}; rms_eps {}",
                hp.n_rot, hp.rope_freq_base, hp.rope_freq_scale, hp.rms_eps
            );
        }
        Err(e) => println!("hparams:       not runnable: {e}"),
    }
    let mut by_type: std::collections::BTreeMap<&str, (usize, u64)> = Default::default();
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

fn tokenize(model: &std::path::Path, special: bool, bos: bool, text: &str) -> anyhow::Result<()> {
    let gguf = Gguf::open(model).with_context(|| format!("reading {}", model.display()))?;
    let tok = Tokenizer::from_metadata(gguf.metadata())?;
    let mut ids = tok.encode(text, special);
    if bos {
        ids = with_bos(&tok, ids);
    }
    println!("{}", serde_json::to_string(&ids)?);
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn overrides(a: OverrideArgs) -> config::Overrides {
    config::Overrides {
        model: a.model,
        broker: a.broker,
        prefix: a.prefix,
        homeassistant: a.homeassistant.then_some(true),
    }
}

fn homeassistant(a: HomeAssistantArgs) -> anyhow::Result<()> {
    use llamabus::mqtt::homeassistant::{discovery, remove, topics::HaTopics};

    let sources = config::Sources::from_process(a.config, overrides(a.overrides));
    let s = config::load_sources(&sources)?;
    let ha = &s.homeassistant;
    if a.remove {
        let cleared = runtime()?.block_on(remove::remove(&s.mqtt, &s.node, ha))?;
        for t in &cleared {
            println!("cleared {t}");
        }
        return Ok(());
    }
    if !ha.enabled {
        eprintln!("llamabus: [homeassistant] enabled = false: `serve` publishes none of these");
    }
    let topics = HaTopics::new(&s.mqtt.prefix, &s.node, &ha.discovery_prefix);
    for m in discovery::messages(ha, &s.node, &topics) {
        let line = serde_json::json!({"topic": m.topic, "payload": m.payload});
        println!("{line}");
    }
    Ok(())
}

fn check_config(a: CheckConfigArgs) -> anyhow::Result<()> {
    let sources = config::Sources::from_process(a.path, overrides(a.overrides));
    let settings = config::load_sources(&sources)?;
    println!(
        "# llamabus check-config: valid; read from {}",
        settings.source
    );
    print!("{}", settings.effective_toml());
    Ok(())
}

fn serve(a: ServeArgs) -> anyhow::Result<()> {
    use llamabus::mqtt::server::{serve_service, Service};
    use llamabus::service::{logging, notify::Notifier, signals};

    let sources = config::Sources::from_process(a.config, overrides(a.overrides));
    let settings = config::load_sources(&sources)?;
    logging::apply_config_level(settings.log_level);
    let paths: Vec<String> = settings
        .models
        .iter()
        .map(|m| format!("{} ({})", m.name, m.path.display()))
        .collect();
    log::info!(
        "llamabus {} serving {} as node {} (config: {})",
        env!("CARGO_PKG_VERSION"),
        paths.join(", "),
        settings.node,
        settings.source
    );
    let rt = runtime()?;
    let result = rt.block_on(async {
        let control = signals::install()?;
        let shutdown = control.shutdown();
        let svc = Service {
            notifier: Notifier::from_env(),
            control,
            reload: Some(Box::new(move || {
                let s = config::load_sources(&sources)?;
                logging::apply_config_level(s.log_level);
                Ok(s)
            })),
            stall_after_ready: debug_stall(),
        };
        anyhow::Ok(serve_service(settings, shutdown, svc).await?)
    });
    // A model load abandoned by a shutdown must not hold up the exit.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

/// Debug builds only: `LLAMABUS_DEBUG_STALL=AFTER_MS,FOR_MS` stalls the inference thread
/// FOR_MS after readiness + AFTER_MS, which is how the lifecycle tests prove that a hung
/// compute stops the watchdog pings. Release builds (the packages) have no such switch.
fn debug_stall() -> Option<(std::time::Duration, std::time::Duration)> {
    #[cfg(debug_assertions)]
    {
        let v = std::env::var("LLAMABUS_DEBUG_STALL").ok()?;
        let (a, b) = v.split_once(',')?;
        let ms = |s: &str| s.trim().parse().ok().map(std::time::Duration::from_millis);
        Some((ms(a)?, ms(b)?))
    }
    #[cfg(not(debug_assertions))]
    None
}

fn ask(a: AskArgs) -> anyhow::Result<()> {
    let broker =
        config::BrokerUrl::parse(&a.broker).map_err(|e| anyhow::anyhow!("--broker: {e}"))?;
    if !(a.timeout > 0.0 && a.timeout.is_finite()) {
        bail!("--timeout must be a positive number of seconds");
    }
    let opts = llamabus::mqtt::client::AskOptions {
        broker,
        prefix: a.prefix,
        device: a.device,
        json: a.json,
        stream: a.stream,
        max_tokens: a.max_tokens,
        temperature: a.temperature,
        timeout: std::time::Duration::from_secs_f64(a.timeout),
        max_packet_bytes: config::DEFAULT_MAX_PACKET_BYTES,
        timings: a.timings,
        prompt: a.prompt,
    };
    let mut stdout = std::io::stdout().lock();
    runtime()?.block_on(llamabus::mqtt::client::ask(&opts, &mut stdout))?;
    Ok(())
}
