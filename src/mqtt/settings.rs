//! The settings the server runs on, validated and immutable: broker, topics, limits and the
//! served models. `service::config` builds them from the configuration layers; tests build
//! them from TOML text the same way.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::engine::{EngineConfig, PromptMode};
use crate::format::FormatSpec;
use crate::mqtt::homeassistant::HomeAssistantSettings;
use crate::sampler::SamplingParams;

/// Default MQTT packet limit, both directions (rumqttc's own default is 10 KiB).
pub const DEFAULT_MAX_PACKET_BYTES: u32 = 256 * 1024;
/// The smallest packet limit accepted: room for a status message and a useful chunk.
pub const MIN_MAX_PACKET_BYTES: u32 = 4 * 1024;
/// The MQTT protocol's own limit (remaining length of 268,435,455 bytes).
pub const MQTT_MAX_PACKET_BYTES: u32 = 268_435_455;

/// A password that never shows in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Where the daemon connects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BrokerSettings {
    /// An external broker.
    External(BrokerUrl),
    /// The in-process broker ([`crate::mqtt::broker`]), MQTT 5 only, on `listen`.
    Embedded { listen: SocketAddr },
}

/// A parsed `mqtt://host:port` or `mqtts://host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl BrokerUrl {
    /// Parses `mqtt://HOST[:PORT]` (port 1883) or `mqtts://HOST[:PORT]` (port 8883); IPv6
    /// hosts in brackets. No path, user info or query.
    pub fn parse(url: &str) -> Result<BrokerUrl, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else {
            return Err(format!("`{url}` must start with mqtt:// or mqtts://"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '@', '?', '#']) {
            return Err(format!(
                "`{url}`: only mqtt[s]://HOST[:PORT] is supported (no path, user or query)"
            ));
        }
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("`{url}`: unclosed '[' in the host"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => parse_port(url, p)?,
                None if after.is_empty() => default_port,
                None => return Err(format!("`{url}`: unexpected `{after}` after the host")),
            };
            (host.to_owned(), port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), parse_port(url, p)?),
                None => (rest.to_owned(), default_port),
            }
        };
        if host.is_empty() {
            return Err(format!("`{url}` has no host"));
        }
        Ok(BrokerUrl { tls, host, port })
    }
}

fn parse_port(url: &str, p: &str) -> Result<u16, String> {
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("`{url}`: bad port `{p}`")),
        Ok(n) => Ok(n),
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// The validated `[mqtt]` section.
#[derive(Clone, Debug, PartialEq)]
pub struct MqttSettings {
    pub broker: BrokerSettings,
    pub client_id: String,
    pub keep_alive: Duration,
    pub username: Option<String>,
    /// Read from `password_file` (one trailing line ending removed).
    pub password: Option<Secret>,
    /// mqtts: trust anchors (PEM); `None` means the system bundle.
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Topic prefix: one or more levels, no wildcards, no trailing `/`.
    pub prefix: String,
    pub share_group: Option<String>,
    /// MQTT topic filters a reply topic must match.
    pub allowed_reply_prefixes: Vec<String>,
    /// Largest MQTT packet the daemon accepts and sends.
    pub max_packet_bytes: u32,
    pub status_interval: Duration,
    /// MQTT 5 Session Expiry Interval: how long the broker keeps our subscriptions and the
    /// requests queued for us while we are away.
    pub session_expiry: Duration,
    /// How long a finished request's reply is kept to answer duplicates.
    pub dedup_window: Duration,
    /// At most this many stored replies.
    pub dedup_capacity: usize,
    /// At most this many bytes of stored keys and replies (a device level can be long).
    pub dedup_max_bytes: usize,
    /// Where stored replies persist across restarts; `None`: memory only.
    pub state_dir: Option<PathBuf>,
}

/// The validated `[limits]` section.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Larger payloads are refused with `too_long` before any parsing.
    pub max_payload_bytes: u32,
    pub max_prompt_tokens: u32,
    pub max_tokens_cap: u32,
    pub default_max_tokens: u32,
    pub queue_capacity: u32,
    /// On shutdown, how long running and queued jobs may still finish.
    pub shutdown_drain: Duration,
    /// `memory_limit_mb` in bytes: a budget for all models together, checked by the memory
    /// guard besides the machine's and the cgroup's limits ([`crate::engine::memory`]).
    pub memory_limit: Option<u64>,
}

/// Largest `parallel` accepted: sequences decoded together by one model.
pub const MAX_PARALLEL: u32 = 64;

/// Default `parallel`: jobs decoded together. Eight share one weight pass per step (a batch of
/// eight costs little more than one token on a CPU), and the KV pool they share is one
/// context's worth by default, so batching costs no extra KV memory.
pub const DEFAULT_PARALLEL: u32 = 8;

/// One model: the `[model]` section or one `[[models]]` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSettings {
    pub name: String,
    pub path: PathBuf,
    pub threads: usize,
    pub context: usize,
    /// Jobs decoded together (`EngineConfig::parallel`).
    pub parallel: usize,
    /// KV cells shared by the running jobs and the prefix cache (`EngineConfig::kv_cells`);
    /// at least `context`.
    pub kv_cells: usize,
    /// Repack weights into ggml's faster layouts (`EngineConfig::repack`).
    pub repack: bool,
    /// `EngineConfig::prefix_cache`.
    pub prefix_cache: bool,
    /// `EngineConfig::step_tokens`: the most prompt tokens one decode step computes. The
    /// watchdog heartbeat advances between steps, so one step must fit in its half interval.
    pub step_tokens: usize,
    pub mode: PromptMode,
    pub sampling: SamplingParams,
    /// A ggml CPU variant to force (`None` or `"auto"`: the best this CPU runs). Process-wide:
    /// models that set it must agree.
    pub cpu_variant: Option<String>,
}

/// Everything `llamabus serve` needs; immutable once built.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where the settings came from, for messages: the files, or `(defaults)`.
    pub source: String,
    /// `[log] level`.
    pub log_level: log::LevelFilter,
    pub node: String,
    pub mqtt: MqttSettings,
    pub limits: Limits,
    /// The served models, in configuration order; at least one, names unique.
    pub models: Vec<ModelSettings>,
    /// Index in `models` of the default model.
    pub default_model: usize,
    /// `[formats.NAME]`, each checked and compiled (without a model) at load.
    pub formats: BTreeMap<String, FormatSpec>,
    /// `[homeassistant]`: MQTT discovery for Home Assistant.
    pub homeassistant: HomeAssistantSettings,
}

impl Settings {
    /// The default model.
    pub fn model(&self) -> &ModelSettings {
        &self.models[self.default_model]
    }

    /// The ggml CPU variant the models force (they agree; validated), if any.
    pub fn cpu_variant(&self) -> Option<&str> {
        self.models.iter().find_map(|m| m.cpu_variant.as_deref())
    }

    /// The engine configuration for the default model.
    pub fn engine_config(&self) -> EngineConfig {
        self.engine_config_for(self.model())
    }

    /// The engine configuration for `m` (one of `models`) with the shared limits.
    pub fn engine_config_for(&self, m: &ModelSettings) -> EngineConfig {
        let mut c = EngineConfig::new(m.name.clone(), m.path.clone());
        c.n_ctx = m.context;
        c.n_threads = m.threads;
        c.parallel = m.parallel;
        c.kv_cells = Some(m.kv_cells);
        c.repack = m.repack;
        c.prefix_cache = m.prefix_cache;
        c.step_tokens = m.step_tokens;
        c.queue_capacity = self.limits.queue_capacity as usize;
        c.max_tokens_cap = self.limits.max_tokens_cap;
        c.default_max_tokens = self.limits.default_max_tokens;
        c.max_prompt_tokens = self.limits.max_prompt_tokens as usize;
        c.default_sampling = m.sampling.clone();
        c.default_mode = m.mode;
        c
    }
}
