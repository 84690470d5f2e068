//! The `llamabus` binary: parse the command line, check the CPU, hand over to the library
//! (each command is one library call), and turn errors into exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};
use llamabus::commands;
use llamabus::ggml::cpu;
use llamabus::service::config;

#[derive(Parser, Debug)]
#[command(name = "llamabus", version, long_version = long_version(), about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the build target, the ggml CPU variants compiled in, and the one this CPU runs.
    Sysinfo,
    /// Complete a prompt, streaming the text to stdout and timings to stderr.
    Complete(llamabus::commands::CompleteArgs),
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
    /// The answer's format: a name from the daemon's [formats], `json` (any JSON object), or
    /// `@file` holding a JSON Schema or a tagged format (sends JSON).
    #[arg(long)]
    format: Option<String>,
    /// Print publish->first/last token latency and the daemon's share of it to stderr.
    #[arg(long)]
    timings: bool,
    /// The prompt.
    prompt: String,
}

fn long_version() -> &'static str {
    let s = format!("{}\n{}", env!("CARGO_PKG_VERSION"), cpu::summary());
    Box::leak(s.into_boxed_str())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    llamabus::service::logging::init();
    // Before any ggml kernel runs: a CPU that runs no compiled-in variant (or lacks the one
    // LLAMABUS_CPU_VARIANT forces) must fail with a message, not with SIGILL in the middle of
    // a matrix product. `serve` applies `[model] cpu_variant` once the configuration is read;
    // sysinfo reports even on a CPU that runs no variant.
    if !matches!(cli.command, Command::Sysinfo) {
        if let Err(e) = cpu::check() {
            eprintln!("llamabus: {e}");
            return ExitCode::from(3);
        }
    }
    let result = match cli.command {
        Command::Sysinfo => return sysinfo(),
        Command::Complete(args) => commands::complete(&args).map_err(Into::into),
        Command::Bench(args) => llamabus::bench::main(&args).map_err(Into::into),
        Command::Inspect { path } => commands::inspect(&path).map_err(Into::into),
        Command::Tokenize {
            model,
            special,
            bos,
            text,
        } => commands::tokenize(&model, special, bos, &text).map_err(Into::into),
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

fn sysinfo() -> ExitCode {
    println!("llamabus {}", env!("CARGO_PKG_VERSION"));
    println!("target:        {}", cpu::TARGET);
    println!(
        "ggml:          {} (vendored, CPU backend)",
        llamabus::ggml::GGML_VERSION
    );
    let all = cpu::variants();
    let names = |vs: &[cpu::Variant]| vs.iter().map(|v| v.name()).collect::<Vec<_>>().join(" ");
    let (runs, lacks): (Vec<_>, Vec<_>) = all.iter().partition(|v| v.runs_here());
    println!("variants:      {}", names(&all));
    println!("runs here:     {}", names(&runs));
    for v in lacks {
        println!(
            "cannot run:    {} (lacks {})",
            v.name(),
            v.missing().join(" ")
        );
    }
    let code = match cpu::active_variant() {
        Ok(v) => {
            println!("variant:       {}", v.describe());
            println!("ggml flags:    {}", v.flags());
            println!(
                "ggml reports:  {}",
                llamabus::ggml::ggml_reported_features().join(" ")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("variant:       none: {e}");
            ExitCode::from(3)
        }
    };
    println!("cpu threads:   {}", default_threads());
    code
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
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
        let cleared =
            llamabus::service::daemon::runtime()?.block_on(remove::remove(&s.mqtt, &s.node, ha))?;
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
    print!("{}", config::effective_toml(&settings));
    Ok(())
}

fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let overrides = overrides(a.overrides);
    Ok(llamabus::service::daemon::serve(
        a.config,
        overrides,
        debug_stall(),
    )?)
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
        format: a
            .format
            .as_deref()
            .map(llamabus::format::FormatArg::parse)
            .transpose()
            .context("--format")?,
        timeout: std::time::Duration::from_secs_f64(a.timeout),
        max_packet_bytes: config::DEFAULT_MAX_PACKET_BYTES,
        timings: a.timings,
        prompt: a.prompt,
    };
    let mut stdout = std::io::stdout().lock();
    llamabus::service::daemon::runtime()?
        .block_on(llamabus::mqtt::client::ask(&opts, &mut stdout))?;
    Ok(())
}
