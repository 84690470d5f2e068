//! `llamabus serve` wired together: the configuration, logging level, signals, systemd
//! notifications and reloads around the MQTT server.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::ggml::cpu::{self, CpuError};
use crate::mqtt::lifecycle::Reload;
use crate::mqtt::server::{self, Hooks, ServeError};
use crate::service::config::{self, ConfigError, Overrides, Sources};
use crate::service::{logging, notify::Notifier, signals};

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("runtime: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error(transparent)]
    Cpu(#[from] CpuError),
}

/// Runs the daemon until SIGTERM/SIGINT: reads the configuration from `file` (or the default)
/// with its drop-ins, the environment and `overrides`, then serves as a systemd service.
/// `stall_after_ready` is the debug builds' watchdog test hook (see `main.rs`).
pub fn serve(
    file: Option<PathBuf>,
    overrides: Overrides,
    stall_after_ready: Option<(Duration, Duration)>,
) -> Result<(), DaemonError> {
    let sources = Sources::from_process(file, overrides);
    let settings = config::load_sources(&sources)?;
    logging::apply_config_level(settings.log_level);
    let variant = cpu::select(settings.cpu_variant())?;
    let paths: Vec<String> = settings
        .models
        .iter()
        .map(|m| format!("{} ({})", m.name, m.path.display()))
        .collect();
    log::info!(
        "llamabus {} serving {} as node {} (config: {}; ggml CPU variant {})",
        env!("CARGO_PKG_VERSION"),
        paths.join(", "),
        settings.node,
        settings.source,
        variant.describe()
    );
    let rt = runtime()?;
    let result = rt.block_on(async {
        let control = signals::install()?;
        let shutdown = control.shutdown();
        let hooks = Hooks {
            lifecycle: Arc::new(Notifier::from_env()),
            reloads: reload_on_sighup(control.reload, sources),
            stall_after_ready,
        };
        Ok(server::serve(settings, shutdown, hooks).await?)
    });
    // A model load abandoned by a shutdown must not hold up the exit.
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

/// The runtime of the daemon and of `ask`: two workers are plenty, since inference runs on its
/// own threads.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

/// On each SIGHUP, reads every configuration source again (applying its log level at once)
/// and hands the result to the server.
fn reload_on_sighup(
    mut sighup: mpsc::UnboundedReceiver<()>,
    sources: Sources,
) -> mpsc::UnboundedReceiver<Reload> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while sighup.recv().await.is_some() {
            let new = config::load_sources(&sources)
                .map_err(|e| e.to_string())
                .and_then(|s| {
                    // The variant is chosen once per process: a reload cannot change it.
                    cpu::select(s.cpu_variant())
                        .map_err(|e| format!("{}: model.cpu_variant: {e}", s.source))?;
                    Ok(s)
                });
            if let Ok(s) = &new {
                logging::apply_config_level(s.log_level);
            }
            if tx.send(new).is_err() {
                return;
            }
        }
    });
    rx
}
