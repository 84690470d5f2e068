//! The daemon in-process: settings from TOML fragments, started and stopped with a handle on its
//! engine.

use std::path::Path;
use std::thread::JoinHandle;

use llamabus::engine::Engine;
use llamabus::mqtt::server;
use llamabus::service::config::{self, Overrides, Settings};
use tokio::sync::oneshot;

use super::model_path;

/// Settings for a daemon on `broker_url`, from TOML fragments appended to a base config
/// (1 thread, small limits so tests run fast on 2 cores).
pub fn settings(broker_url: &str, node: &str, extra: &str) -> Settings {
    let text = format!("[node]\nname = \"{node}\"\n{extra}\n",);
    // `extra` may contain any section; the base values go in through the defaults below.
    let text = merge_base(&text);
    config::from_str(
        &text,
        Path::new("e2e.toml"),
        &Overrides {
            model: Some(model_path()),
            broker: Some(broker_url.to_owned()),
            prefix: None,
            homeassistant: None,
        },
    )
    .unwrap_or_else(|e| panic!("test config: {e}\n{text}"))
}

/// Adds `[model] threads = 1`, `context = 1024`, `[limits] max_prompt_tokens = 512` and
/// `default_max_tokens = 16` unless the fragment sets them.
fn merge_base(text: &str) -> String {
    let mut doc: toml::Table = toml::from_str(text).unwrap();
    let model = doc
        .entry("model")
        .or_insert_with(|| toml::Value::Table(Default::default()))
        .as_table_mut()
        .unwrap();
    model.entry("threads").or_insert(toml::Value::Integer(1));
    model.entry("context").or_insert(toml::Value::Integer(1024));
    let limits = doc
        .entry("limits")
        .or_insert_with(|| toml::Value::Table(Default::default()))
        .as_table_mut()
        .unwrap();
    limits
        .entry("max_prompt_tokens")
        .or_insert(toml::Value::Integer(512));
    limits
        .entry("default_max_tokens")
        .or_insert(toml::Value::Integer(16));
    limits
        .entry("shutdown_drain_s")
        .or_insert(toml::Value::Integer(2));
    toml::to_string(&doc).unwrap()
}

/// The daemon running in-process on its own runtime thread.
pub struct Daemon {
    pub engine: Engine,
    pub settings: Settings,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Daemon {
    pub fn start(settings: Settings) -> Daemon {
        let engine = Engine::start(settings.engine_config(), |_| {}).expect("engine start");
        let (stop, stopped) = oneshot::channel::<()>();
        let (s, e) = (settings.clone(), engine.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(server::run(s, e, async {
                let _ = stopped.await;
            }))
            .expect("server::run");
        });
        Daemon {
            engine,
            settings,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Clean shutdown: waits for `run` to return.
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().expect("daemon thread panicked");
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.stop();
        } else if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}
