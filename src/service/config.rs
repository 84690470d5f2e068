//! Configuration of `llamabus serve`, in layers (CONVENTIONS practice 4: parse → merge →
//! validate into an immutable [`Settings`]). Later layers win:
//!
//! 1. built-in defaults;
//! 2. the main file (`--config`, default [`DEFAULT_CONFIG`]);
//! 3. drop-ins beside it, `<stem>.d/*.toml` (`/etc/llamabus/config.d/*.toml`), in file-name
//!    order; tables merge key by key, any other value (arrays too) replaces the earlier one;
//! 4. environment variables `LLAMABUS_<SECTION>_<KEY>`, e.g. `LLAMABUS_MQTT_BROKER`,
//!    `LLAMABUS_MODEL_SAMPLING_TEMPERATURE` (the value as a TOML string, else as a TOML
//!    literal: `8`, `true`, `["a/#"]`); `LLAMABUS_LOG` is short for `LLAMABUS_LOG_LEVEL`;
//!    other `LLAMABUS_*` variables (build knobs) are not configuration and are ignored;
//! 5. command-line flags (`--model`, `--broker`, `--prefix`, `--homeassistant`).
//!
//! Models: one `[model]` table, or a `[[models]]` list of the same keys (plus `default`) to
//! serve several at once; both at once is an error. In the list the first entry is the default
//! model (plain-text requests and requests without `model`) unless one entry says
//! `default = true`. Names must be unique and one topic level, since they appear in
//! `{prefix}/model/{name}/prompt/{device}`. A drop-in that sets `[[models]]` replaces the whole
//! list (arrays are values); the environment cannot set list entries.
//!
//! Each layer is checked alone before merging, so unknown keys and mistyped values are reported
//! with the file and line (or the variable, or the flag) that set them. Errors found after
//! merging name the layer that set the key last, e.g.
//! `/etc/llamabus/config.d/10-broker.toml:3: mqtt.prefix: must not contain '+' or '#'`.
//!
//! The broker password comes from `mqtt.password_file`, else from the systemd credential
//! `mqtt-password` (`LoadCredential=`, in `$CREDENTIALS_DIRECTORY`) when it is non-empty and
//! `mqtt.username` is set.
//!
//! ```toml
//! [node]
//! name = "kitchen"                      # default: /etc/hostname, else "llamabus"
//!
//! [mqtt]
//! broker = "mqtt://10.0.0.2:1883"       # mqtt:// or mqtts://; absent: the embedded broker
//! embedded_listen = "127.0.0.1:1883"    # embedded broker, MQTT 5
//! client_id = "llamabus-kitchen"        # default: "llamabus-{node}"
//! keep_alive_s = 30
//! username = "board"
//! password_file = "/etc/llamabus/password"
//! ca_file = "/etc/llamabus/ca.pem"      # mqtts: default the system bundle
//! client_cert = "/etc/llamabus/client.pem"
//! client_key = "/etc/llamabus/client.key"
//! prefix = "llamabus"
//! share_group = "boards"                # subscribe through $share/boards/...
//! allowed_reply_prefixes = ["llamabus/reply/#"]  # default: ["{prefix}/reply/#"]
//! max_packet_bytes = 262144
//! status_interval_s = 30
//! session_expiry_s = 86400              # the broker keeps our session (queued requests) this long
//! dedup_window_s = 600                  # duplicates of a request within this time are not rerun
//! dedup_capacity = 1024                 # at most this many stored replies
//! dedup_max_bytes = 8388608             # and at most this many bytes of keys and replies
//! state_dir = "/var/lib/llamabus"       # stored replies survive restarts; default: memory only
//!
//! [limits]
//! max_payload_bytes = 65536
//! max_prompt_tokens = 1536
//! max_tokens_cap = 1024
//! default_max_tokens = 128
//! queue_capacity = 8
//! shutdown_drain_s = 10
//! memory_limit_mb = 900                 # memory guard budget for all models; default: none
//!
//! [model]
//! path = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
//! name = "smollm2"                      # default: the file stem
//! threads = 4                           # default: every core
//! context = 2048
//! parallel = 1                          # jobs decoded together (continuous batching)
//! prefix_cache = true                   # reuse cached KV of shared prompt prefixes
//! step_tokens = 256                     # prompt tokens per decode step (watchdog: one step < 30 s)
//! mode = "auto"                         # "chat" | "complete" | "auto"
//! [model.sampling]
//! temperature = 0.8
//! top_k = 40
//! top_p = 0.95
//! min_p = 0.05
//! repeat_penalty = 1.0
//! seed = 42
//!
//! # or, for several models, instead of [model]:
//! [[models]]
//! name = "tiny"
//! path = "models/tiny.gguf"
//! threads = 1
//! [[models]]
//! name = "chat"
//! path = "models/chat.gguf"
//! default = true                        # default: the first entry
//! [models.sampling]
//! temperature = 0.7
//!
//! [log]
//! level = "info"                        # error | warn | info | debug | trace | off; RUST_LOG wins
//!
//! [homeassistant]                       # MQTT discovery (README "Home Assistant")
//! enabled = false                       # also LLAMABUS_HOMEASSISTANT_ENABLED, serve --homeassistant
//! discovery_prefix = "homeassistant"
//! name = "Kitchen LLM"                  # the device's name; default "llamabus {node}"
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::engine::worker::{EngineConfig, PromptMode, DEFAULT_STEP_TOKENS};
use crate::model::session::MAX_UBATCH;
use crate::mqtt::homeassistant::{HomeAssistantSettings, DEFAULT_DISCOVERY_PREFIX};
use crate::mqtt::topics;
use crate::sampler::SamplingParams;

/// Default MQTT packet limit, both directions (rumqttc's own default is 10 KiB).
pub const DEFAULT_MAX_PACKET_BYTES: u32 = 256 * 1024;
/// The smallest packet limit accepted: room for a status message and a useful chunk.
pub const MIN_MAX_PACKET_BYTES: u32 = 4 * 1024;
/// The MQTT protocol's own limit (remaining length of 268,435,455 bytes).
pub const MQTT_MAX_PACKET_BYTES: u32 = 268_435_455;
/// Bytes a generated token may take in a final reply, for the packet-size sanity check.
const BYTES_PER_TOKEN_BOUND: u64 = 96;
/// The main configuration file when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "/etc/llamabus/config.toml";
/// The systemd credential holding the broker password (`LoadCredential=mqtt-password:...`).
pub const PASSWORD_CREDENTIAL: &str = "mqtt-password";
/// The sections, as they appear in `LLAMABUS_<SECTION>_<KEY>` (`model_sampling` before
/// `model`).
const ENV_SECTIONS: [&str; 7] = [
    "model_sampling",
    "limits",
    "model",
    "mqtt",
    "node",
    "log",
    "homeassistant",
];

/// Why the configuration is unusable. `source` is the file path or the flag.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: {error}", path.display())]
    Parse {
        path: PathBuf,
        error: Box<toml::de::Error>,
    },
    #[error("{origin}: {key}: {why}")]
    Invalid {
        /// `file:line`, the environment variable or the command-line flag that set the key.
        origin: String,
        key: String,
        why: String,
    },
}

// ---------------------------------------------------------------------------------------------
// The file, as parsed: every field optional, unknown keys refused.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    node: NodeFile,
    #[serde(default)]
    mqtt: MqttFile,
    #[serde(default)]
    limits: LimitsFile,
    model: Option<ModelFile>,
    models: Option<Vec<ModelFile>>,
    #[serde(default)]
    log: LogFile,
    #[serde(default)]
    homeassistant: HomeAssistantFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HomeAssistantFile {
    enabled: Option<bool>,
    discovery_prefix: Option<String>,
    name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogFile {
    level: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeFile {
    name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MqttFile {
    broker: Option<String>,
    embedded_listen: Option<String>,
    client_id: Option<String>,
    keep_alive_s: Option<u64>,
    username: Option<String>,
    password_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    prefix: Option<String>,
    share_group: Option<String>,
    allowed_reply_prefixes: Option<Vec<String>>,
    max_packet_bytes: Option<u32>,
    status_interval_s: Option<u64>,
    session_expiry_s: Option<u64>,
    dedup_window_s: Option<u64>,
    dedup_capacity: Option<u64>,
    dedup_max_bytes: Option<u64>,
    state_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    max_payload_bytes: Option<u32>,
    max_prompt_tokens: Option<u32>,
    max_tokens_cap: Option<u32>,
    default_max_tokens: Option<u32>,
    queue_capacity: Option<u32>,
    shutdown_drain_s: Option<u64>,
    memory_limit_mb: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelFile {
    name: Option<String>,
    path: Option<PathBuf>,
    threads: Option<u32>,
    context: Option<u32>,
    parallel: Option<u32>,
    prefix_cache: Option<bool>,
    step_tokens: Option<u32>,
    mode: Option<String>,
    /// `[[models]]` only: this entry is the default model.
    default: Option<bool>,
    #[serde(default)]
    sampling: SamplingFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SamplingFile {
    temperature: Option<f32>,
    top_k: Option<u32>,
    top_p: Option<f32>,
    min_p: Option<f32>,
    repeat_penalty: Option<f32>,
    seed: Option<u64>,
}

// ---------------------------------------------------------------------------------------------
// Overrides and the validated result

/// Command-line values that override the file (`llamabus serve --model ... --broker ...`).
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub model: Option<PathBuf>,
    pub broker: Option<String>,
    pub prefix: Option<String>,
    /// `serve --homeassistant`: Home Assistant discovery on.
    pub homeassistant: Option<bool>,
}

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

/// One model: the `[model]` section or one `[[models]]` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSettings {
    pub name: String,
    pub path: PathBuf,
    pub threads: usize,
    pub context: usize,
    /// Jobs decoded together (`EngineConfig::parallel`).
    pub parallel: usize,
    /// `EngineConfig::prefix_cache`.
    pub prefix_cache: bool,
    /// `EngineConfig::step_tokens`: the most prompt tokens one decode step computes. The
    /// watchdog heartbeat advances between steps, so one step must fit in its half interval.
    pub step_tokens: usize,
    pub mode: PromptMode,
    pub sampling: SamplingParams,
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
    /// `[homeassistant]`: MQTT discovery for Home Assistant.
    pub homeassistant: HomeAssistantSettings,
}

impl Settings {
    /// The default model.
    pub fn model(&self) -> &ModelSettings {
        &self.models[self.default_model]
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

// ---------------------------------------------------------------------------------------------
// Loading: the layers

/// Everything the settings are built from; the daemon keeps it so that a reload reads the
/// same sources again.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    /// The main file; `None` means [`DEFAULT_CONFIG`] when it exists (a missing default file
    /// is not an error, a missing `--config` file is).
    pub file: Option<PathBuf>,
    /// `LLAMABUS_*` variables, in the order to apply them.
    pub env: Vec<(String, String)>,
    /// `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=`).
    pub credentials_dir: Option<PathBuf>,
    pub overrides: Overrides,
}

impl Sources {
    /// The sources of this process: `file` (or the default) and its drop-ins, the
    /// `LLAMABUS_*` environment (sorted by name), the systemd credentials, `overrides`.
    pub fn from_process(file: Option<PathBuf>, overrides: Overrides) -> Sources {
        let mut env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with("LLAMABUS_"))
            .collect();
        env.sort();
        Sources {
            file,
            env,
            credentials_dir: std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from),
            overrides,
        }
    }

    /// The main file, and whether it must exist.
    fn main_file(&self) -> (PathBuf, bool) {
        match &self.file {
            Some(p) => (p.clone(), true),
            None => (PathBuf::from(DEFAULT_CONFIG), false),
        }
    }
}

/// The drop-in directory of a main file: `dir/config.toml` → `dir/config.d`.
pub fn dropin_dir(main: &Path) -> PathBuf {
    let stem = main
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config".into());
    main.with_file_name(format!("{stem}.d"))
}

/// The `*.toml` files of a drop-in directory in file-name order (none when it is missing).
fn dropins(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let read_err = |error| ConfigError::Read {
        path: dir.to_owned(),
        error,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(read_err(e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(read_err)?.path();
        if path.extension().is_some_and(|e| e == "toml") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Which layer set each key last: dotted key → `file:line`, variable or flag.
#[derive(Debug, Default)]
struct Origins {
    by_key: BTreeMap<String, String>,
    /// For keys no layer set (a missing required key): the files read, or `(defaults)`.
    fallback: String,
}

impl Origins {
    /// The origin of `key`, else of the nearest table above it that a layer set, else of a key
    /// below it (`model.sampling` → `model.sampling.temperature`). List entries are
    /// `models[1]`, their keys `models[1].threads`.
    fn of(&self, key: &str) -> String {
        let mut k = key;
        loop {
            if let Some(o) = self.by_key.get(k) {
                return o.clone();
            }
            let entry = k.strip_suffix(']').and_then(|e| e.rsplit_once('['));
            match (entry, k.rsplit_once('.')) {
                (Some((list, _)), _) => k = list,
                (None, Some((parent, _))) => k = parent,
                (None, None) => break,
            }
        }
        let below = format!("{key}.");
        self.by_key
            .iter()
            .find(|(k, _)| k.starts_with(&below))
            .map_or_else(|| self.fallback.clone(), |(_, o)| o.clone())
    }
}

/// The layers merged so far.
#[derive(Debug, Default)]
struct Layers {
    table: toml::Table,
    origins: Origins,
    files: Vec<String>,
}

impl Layers {
    /// Checks one TOML file on its own (syntax, unknown keys, value types: the TOML error
    /// carries the line and the key), records where each key is, and merges it.
    fn add_file(&mut self, text: &str, path: &Path) -> Result<(), ConfigError> {
        let parse_err = |e| ConfigError::Parse {
            path: path.to_owned(),
            error: Box::new(e),
        };
        toml::from_str::<FileConfig>(text).map_err(parse_err)?;
        let table: toml::Table = toml::from_str(text).map_err(parse_err)?;
        let name = path.display().to_string();
        if let Ok(doc) = toml::de::DeTable::parse(text) {
            record_lines(doc.get_ref(), "", text, &name, &mut self.origins.by_key);
        }
        merge(&mut self.table, table);
        self.files.push(name);
        Ok(())
    }

    /// One value from outside a file (a variable or a flag), checked on its own.
    fn add_value(
        &mut self,
        key: &str,
        value: toml::Value,
        origin: &str,
    ) -> Result<(), ConfigError> {
        let mut layer = toml::Table::new();
        let mut parts: Vec<&str> = key.split('.').collect();
        let leaf = parts.pop().expect("split yields at least one part");
        let mut t = &mut layer;
        for part in parts {
            t = t
                .entry(part)
                .or_insert_with(|| toml::Value::Table(Default::default()))
                .as_table_mut()
                .expect("just inserted a table");
        }
        t.insert(leaf.to_owned(), value);
        FileConfig::deserialize(layer.clone()).map_err(|e| ConfigError::Invalid {
            origin: origin.to_owned(),
            key: key.to_owned(),
            why: e.message().to_owned(),
        })?;
        merge(&mut self.table, layer);
        self.origins
            .by_key
            .insert(key.to_owned(), origin.to_owned());
        Ok(())
    }

    /// `LLAMABUS_<SECTION>_<KEY>=value`: a string when the key takes one, else a TOML literal.
    fn add_env(&mut self, var: &str, raw: &str) -> Result<(), ConfigError> {
        let Some(key) = env_key(var) else {
            return Ok(());
        };
        let origin = format!("environment {var}");
        let as_string = toml::Value::String(raw.to_owned());
        if self.add_value(&key, as_string.clone(), &origin).is_ok() {
            return Ok(());
        }
        let literal = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"));
        self.add_value(&key, literal.unwrap_or(as_string), &origin)
    }
}

/// `LLAMABUS_MODEL_SAMPLING_TOP_K` → `model.sampling.top_k`; `None` for variables that are not
/// configuration (no known section).
fn env_key(var: &str) -> Option<String> {
    let rest = var.strip_prefix("LLAMABUS_")?.to_ascii_lowercase();
    if rest == "log" {
        return Some("log.level".into());
    }
    ENV_SECTIONS.iter().find_map(|section| {
        let key = rest.strip_prefix(section)?.strip_prefix('_')?;
        (!key.is_empty()).then(|| format!("{}.{key}", section.replace('_', ".")))
    })
}

/// Records `file:line` of every key (tables too) of a parsed document.
fn record_lines(
    table: &toml::de::DeTable<'_>,
    prefix: &str,
    text: &str,
    file: &str,
    out: &mut BTreeMap<String, String>,
) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.get_ref().to_string()
        } else {
            format!("{prefix}.{}", k.get_ref())
        };
        let at = k.span().start.min(text.len());
        let line = text[..at].matches('\n').count() + 1;
        out.insert(key.clone(), format!("{file}:{line}"));
        match v.get_ref() {
            toml::de::DeValue::Table(t) => record_lines(t, &key, text, file, out),
            toml::de::DeValue::Array(items) => {
                // A list replaces an earlier layer's: forget where its old entries were.
                let entries = format!("{key}[");
                out.retain(|k, _| !k.starts_with(&entries));
                for (i, item) in items.iter().enumerate() {
                    if let toml::de::DeValue::Table(t) = item.get_ref() {
                        let at = item.span().start.min(text.len());
                        let line = text[..at].matches('\n').count() + 1;
                        let entry = format!("{key}[{i}]");
                        out.insert(entry.clone(), format!("{file}:{line}"));
                        record_lines(t, &entry, text, file, out);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Merges `src` over `dst`: tables key by key, anything else replaced.
fn merge(dst: &mut toml::Table, src: toml::Table) {
    for (k, v) in src {
        match (dst.get_mut(&k), v) {
            (Some(toml::Value::Table(d)), toml::Value::Table(s)) => merge(d, s),
            (_, v) => {
                dst.insert(k, v);
            }
        }
    }
}

/// Reads every source in order (see the module doc), merges and validates.
pub fn load_sources(src: &Sources) -> Result<Settings, ConfigError> {
    let mut layers = Layers::default();
    let (main, required) = src.main_file();
    match std::fs::read_to_string(&main) {
        Ok(text) => layers.add_file(&text, &main)?,
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(ConfigError::Read { path: main, error }),
    }
    for path in dropins(&dropin_dir(&main))? {
        let text = std::fs::read_to_string(&path).map_err(|error| ConfigError::Read {
            path: path.clone(),
            error,
        })?;
        layers.add_file(&text, &path)?;
    }
    for (var, value) in &src.env {
        layers.add_env(var, value)?;
    }
    finish(layers, &src.overrides, src.credentials_dir.as_deref())
}

/// Parses TOML text (`path` only names it in errors), applies `overrides`, validates; no
/// drop-ins, no environment.
pub fn from_str(text: &str, path: &Path, overrides: &Overrides) -> Result<Settings, ConfigError> {
    let mut layers = Layers::default();
    layers.add_file(text, path)?;
    finish(layers, overrides, None)
}

/// The flags as the last layer, then validation.
fn finish(
    mut layers: Layers,
    o: &Overrides,
    credentials: Option<&Path>,
) -> Result<Settings, ConfigError> {
    if let Some(p) = &o.model {
        let v = toml::Value::String(p.to_string_lossy().into_owned());
        layers.add_value("model.path", v, "--model")?;
    }
    if let Some(b) = &o.broker {
        layers.add_value("mqtt.broker", toml::Value::String(b.clone()), "--broker")?;
    }
    if let Some(p) = &o.prefix {
        layers.add_value("mqtt.prefix", toml::Value::String(p.clone()), "--prefix")?;
    }
    if let Some(on) = o.homeassistant {
        layers.add_value(
            "homeassistant.enabled",
            toml::Value::Boolean(on),
            "--homeassistant",
        )?;
    }
    let source = if layers.files.is_empty() {
        "(defaults)".to_owned()
    } else {
        layers.files.join(", ")
    };
    layers.origins.fallback = source.clone();
    // Each layer passed this check alone; merged tables of valid layers stay valid.
    let parsed = FileConfig::deserialize(layers.table).map_err(|e| ConfigError::Invalid {
        origin: source.clone(),
        key: "(merged)".into(),
        why: e.message().to_owned(),
    })?;
    build(parsed, source, &layers.origins, credentials)
}

fn default_node_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty() && topics::is_topic_level(s))
        .unwrap_or_else(|| "llamabus".to_owned())
}

fn build(
    f: FileConfig,
    source: String,
    origins: &Origins,
    credentials: Option<&Path>,
) -> Result<Settings, ConfigError> {
    let err = |key: &str, why: String| ConfigError::Invalid {
        origin: origins.of(key),
        key: key.to_owned(),
        why,
    };

    // [log]
    let log_level = match f.log.level.as_deref() {
        None => log::LevelFilter::Info,
        Some(l) => l.parse().map_err(|_| {
            err(
                "log.level",
                format!("`{l}`: expected error, warn, info, debug, trace or off"),
            )
        })?,
    };

    // [node]
    let node = f.node.name.unwrap_or_else(default_node_name);
    if !topics::is_topic_level(&node) {
        return Err(err(
            "node.name",
            format!("`{node}` must be one non-empty topic level (no '/', '+', '#')"),
        ));
    }

    // [mqtt]
    let m = f.mqtt;
    let prefix = m.prefix.unwrap_or_else(|| "llamabus".into());
    topics::check_prefix(&prefix).map_err(|why| err("mqtt.prefix", why))?;

    let broker = match m.broker {
        Some(url) => {
            BrokerSettings::External(BrokerUrl::parse(&url).map_err(|why| err("mqtt.broker", why))?)
        }
        None => {
            let listen = m.embedded_listen.as_deref().unwrap_or("127.0.0.1:1883");
            let listen = listen
                .parse()
                .map_err(|e| err("mqtt.embedded_listen", format!("`{listen}`: {e}")))?;
            BrokerSettings::Embedded { listen }
        }
    };

    let client_id = m.client_id.unwrap_or_else(|| format!("llamabus-{node}"));
    if client_id.is_empty() || client_id.len() > 128 {
        return Err(err("mqtt.client_id", "must be 1 to 128 bytes".into()));
    }
    let keep_alive_s = m.keep_alive_s.unwrap_or(30);
    if !(5..=65535).contains(&keep_alive_s) {
        return Err(err(
            "mqtt.keep_alive_s",
            format!("{keep_alive_s} is outside 5..=65535"),
        ));
    }
    let read_password = |p: &Path| {
        let text = std::fs::read_to_string(p)
            .map_err(|e| err("mqtt.password_file", format!("{}: {e}", p.display())))?;
        let text = text
            .strip_suffix("\r\n")
            .or_else(|| text.strip_suffix('\n'))
            .unwrap_or(&text);
        Ok::<_, ConfigError>(Secret(text.to_owned()))
    };
    let password = match (&m.password_file, credentials) {
        (Some(p), _) => Some(read_password(p)?),
        // The unit always loads the credential (the package creates it empty): only a
        // non-empty one is a password, and only with a user name to go with it.
        (None, Some(dir)) if m.username.is_some() => {
            let p = dir.join(PASSWORD_CREDENTIAL);
            if p.is_file() {
                Some(read_password(&p)?).filter(|s| !s.0.is_empty())
            } else {
                None
            }
        }
        (None, _) => None,
    };
    if password.is_some() && m.username.is_none() {
        return Err(err(
            "mqtt.password_file",
            "needs mqtt.username as well".into(),
        ));
    }
    for (key, path) in [
        ("mqtt.ca_file", &m.ca_file),
        ("mqtt.client_cert", &m.client_cert),
        ("mqtt.client_key", &m.client_key),
    ] {
        if let Some(p) = path {
            if !p.is_file() {
                return Err(err(key, format!("{} is not a readable file", p.display())));
            }
        }
    }
    if m.client_cert.is_some() != m.client_key.is_some() {
        return Err(err(
            "mqtt.client_cert",
            "client_cert and client_key go together".into(),
        ));
    }
    let tls = matches!(&broker, BrokerSettings::External(u) if u.tls);
    if !tls && (m.ca_file.is_some() || m.client_cert.is_some()) {
        return Err(err(
            "mqtt.ca_file",
            "TLS files are set but the broker URL is not mqtts://".into(),
        ));
    }
    if let Some(g) = &m.share_group {
        if !topics::is_topic_level(g) {
            return Err(err(
                "mqtt.share_group",
                format!("`{g}` must be one non-empty topic level (no '/', '+', '#')"),
            ));
        }
    }
    let allowed_reply_prefixes = m
        .allowed_reply_prefixes
        .unwrap_or_else(|| vec![format!("{prefix}/reply/#")]);
    for f in &allowed_reply_prefixes {
        topics::check_filter(f)
            .map_err(|why| err("mqtt.allowed_reply_prefixes", format!("`{f}`: {why}")))?;
    }
    let max_packet_bytes = m.max_packet_bytes.unwrap_or(DEFAULT_MAX_PACKET_BYTES);
    if !(MIN_MAX_PACKET_BYTES..=MQTT_MAX_PACKET_BYTES).contains(&max_packet_bytes) {
        return Err(err(
            "mqtt.max_packet_bytes",
            format!(
                "{max_packet_bytes} is outside {MIN_MAX_PACKET_BYTES}..={MQTT_MAX_PACKET_BYTES}"
            ),
        ));
    }
    let status_interval_s = m.status_interval_s.unwrap_or(30);
    if !(1..=86_400).contains(&status_interval_s) {
        return Err(err(
            "mqtt.status_interval_s",
            format!("{status_interval_s} is outside 1..=86400"),
        ));
    }
    // 0 ends the session with each connection (requests sent while away are lost);
    // u32::MAX means "never expires" in MQTT 5.
    let session_expiry_s = m.session_expiry_s.unwrap_or(86_400);
    if session_expiry_s > u64::from(u32::MAX) {
        return Err(err(
            "mqtt.session_expiry_s",
            format!("{session_expiry_s} is outside 0..={}", u32::MAX),
        ));
    }
    let dedup_window_s = m.dedup_window_s.unwrap_or(600);
    if dedup_window_s > 7 * 86_400 {
        return Err(err(
            "mqtt.dedup_window_s",
            format!("{dedup_window_s} is outside 0..=604800"),
        ));
    }
    let dedup_capacity = m.dedup_capacity.unwrap_or(1024);
    if !(1..=1_000_000).contains(&dedup_capacity) {
        return Err(err(
            "mqtt.dedup_capacity",
            format!("{dedup_capacity} is outside 1..=1000000"),
        ));
    }
    let dedup_capacity = dedup_capacity as usize;
    let dedup_max_bytes = m
        .dedup_max_bytes
        .unwrap_or(crate::mqtt::dedup::DEFAULT_MAX_BYTES as u64);
    // At most u32::MAX: `usize` is 32 bits on armv7, where 4 GiB would wrap to 0.
    if !((64 << 10)..=u64::from(u32::MAX)).contains(&dedup_max_bytes) {
        return Err(err(
            "mqtt.dedup_max_bytes",
            format!("{dedup_max_bytes} is outside 65536..=4294967295"),
        ));
    }
    let dedup_max_bytes = dedup_max_bytes as usize;

    // [limits]
    let l = f.limits;
    let max_payload_bytes = l.max_payload_bytes.unwrap_or(64 * 1024);
    if max_payload_bytes == 0 || max_payload_bytes > max_packet_bytes {
        return Err(err(
            "limits.max_payload_bytes",
            format!(
                "{max_payload_bytes} is outside 1..={max_packet_bytes} (mqtt.max_packet_bytes)"
            ),
        ));
    }
    let positive = |key: &str, v: Option<u32>, default: u32| match v.unwrap_or(default) {
        0 => Err(err(key, "must be at least 1".into())),
        n => Ok(n),
    };
    let max_prompt_tokens = positive("limits.max_prompt_tokens", l.max_prompt_tokens, 1536)?;
    let max_tokens_cap = positive("limits.max_tokens_cap", l.max_tokens_cap, 1024)?;
    let default_max_tokens = positive("limits.default_max_tokens", l.default_max_tokens, 128)?;
    let queue_capacity = positive("limits.queue_capacity", l.queue_capacity, 8)?;
    if default_max_tokens > max_tokens_cap {
        return Err(err(
            "limits.default_max_tokens",
            format!("{default_max_tokens} exceeds limits.max_tokens_cap ({max_tokens_cap})"),
        ));
    }
    if u64::from(max_tokens_cap) * BYTES_PER_TOKEN_BOUND + 4096 > u64::from(max_packet_bytes) {
        return Err(err(
            "limits.max_tokens_cap",
            format!(
                "{max_tokens_cap} tokens may not fit one reply of mqtt.max_packet_bytes \
                 ({max_packet_bytes}); allow {BYTES_PER_TOKEN_BOUND} bytes per token plus 4096"
            ),
        ));
    }
    let shutdown_drain = Duration::from_secs(l.shutdown_drain_s.unwrap_or(10));
    let memory_limit = match l.memory_limit_mb {
        Some(0) => return Err(err("limits.memory_limit_mb", "must be at least 1".into())),
        Some(mb) => Some(mb.saturating_mul(1 << 20)),
        None => None,
    };

    // [model] or [[models]]
    let model_limits = ModelLimits {
        max_prompt_tokens,
        err: &err,
    };
    let (models, default_model) = match (f.model, f.models) {
        (Some(_), Some(_)) => {
            return Err(err(
                "model",
                format!(
                    "[model] and [[models]] ({}) cannot both be set: with several models, \
                     give each its own [[models]] entry",
                    origins.of("models")
                ),
            ))
        }
        (None, None) => {
            return Err(err(
                "model.path",
                "required: set [model] path or pass --model".into(),
            ))
        }
        (Some(md), None) => {
            if md.default.is_some() {
                return Err(err(
                    "model.default",
                    "only [[models]] entries take `default`".into(),
                ));
            }
            (vec![model_limits.build(md, "model")?], 0)
        }
        (None, Some(list)) => model_limits.build_list(list)?,
    };

    Ok(Settings {
        source,
        log_level,
        node,
        mqtt: MqttSettings {
            broker,
            client_id,
            keep_alive: Duration::from_secs(keep_alive_s),
            username: m.username,
            password,
            ca_file: m.ca_file,
            client_cert: m.client_cert,
            client_key: m.client_key,
            prefix,
            share_group: m.share_group,
            allowed_reply_prefixes,
            max_packet_bytes,
            status_interval: Duration::from_secs(status_interval_s),
            session_expiry: Duration::from_secs(session_expiry_s),
            dedup_window: Duration::from_secs(dedup_window_s),
            dedup_capacity,
            dedup_max_bytes,
            state_dir: m.state_dir,
        },
        limits: Limits {
            max_payload_bytes,
            max_prompt_tokens,
            max_tokens_cap,
            default_max_tokens,
            queue_capacity,
            shutdown_drain,
            memory_limit,
        },
        models,
        default_model,
        homeassistant: build_homeassistant(f.homeassistant, &err)?,
    })
}

/// `[homeassistant]`: the discovery prefix is a topic prefix like `mqtt.prefix`; the name,
/// when set, is not empty.
fn build_homeassistant(
    h: HomeAssistantFile,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<HomeAssistantSettings, ConfigError> {
    let discovery_prefix = h
        .discovery_prefix
        .unwrap_or_else(|| DEFAULT_DISCOVERY_PREFIX.to_owned());
    topics::check_prefix(&discovery_prefix)
        .map_err(|why| err("homeassistant.discovery_prefix", why))?;
    if h.name.as_deref().is_some_and(|n| n.trim().is_empty()) {
        return Err(err("homeassistant.name", "must not be empty".into()));
    }
    Ok(HomeAssistantSettings {
        enabled: h.enabled.unwrap_or(false),
        discovery_prefix,
        name: h.name,
    })
}

/// Builds and checks model entries; `key` is `model` or `models[i]`, for error messages.
struct ModelLimits<'a> {
    max_prompt_tokens: u32,
    err: &'a dyn Fn(&str, String) -> ConfigError,
}

impl ModelLimits<'_> {
    /// The `[[models]]` list: every entry, unique names, and the index of the default.
    fn build_list(&self, list: Vec<ModelFile>) -> Result<(Vec<ModelSettings>, usize), ConfigError> {
        let err = self.err;
        if list.is_empty() {
            return Err(err(
                "models",
                "the list is empty: add at least one [[models]] entry with a path".into(),
            ));
        }
        let mut models: Vec<ModelSettings> = Vec::with_capacity(list.len());
        let mut default_model = None;
        for (i, md) in list.into_iter().enumerate() {
            let key = format!("models[{i}]");
            if md.default == Some(true) {
                if let Some(d) = default_model {
                    return Err(err(
                        &format!("{key}.default"),
                        format!("models[{d}] is already the default; mark one model only"),
                    ));
                }
                default_model = Some(i);
            }
            let m = self.build(md, &key)?;
            if let Some(j) = models.iter().position(|o| o.name == m.name) {
                return Err(err(
                    &format!("{key}.name"),
                    format!(
                        "duplicate model name `{}` (also models[{j}]); set a unique `name`",
                        m.name
                    ),
                ));
            }
            models.push(m);
        }
        Ok((models, default_model.unwrap_or(0)))
    }

    /// One model entry.
    fn build(&self, md: ModelFile, key: &str) -> Result<ModelSettings, ConfigError> {
        let err = |k: &str, why: String| (self.err)(&format!("{key}.{k}"), why);
        let path = match md.path {
            Some(p) => p,
            None if key == "model" => {
                return Err(err(
                    "path",
                    "required: set [model] path or pass --model".into(),
                ))
            }
            None => {
                return Err(err(
                    "path",
                    "required: every [[models]] entry needs a path".into(),
                ))
            }
        };
        if !path.is_file() {
            return Err(err(
                "path",
                format!("{} is not a readable file", path.display()),
            ));
        }
        let name = match md.name {
            Some(n) => n,
            None => path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "default".into()),
        };
        // Names are topic levels: `{prefix}/model/{name}/prompt/{device}`.
        if name.len() > crate::mqtt::wire::MAX_MODEL_BYTES || !topics::is_topic_level(&name) {
            return Err(err(
                "name",
                format!("`{name}` must be 1 to 128 bytes and one topic level (no '/', '+', '#')"),
            ));
        }
        let threads = match md.threads {
            Some(0) => return Err(err("threads", "must be at least 1".into())),
            Some(n) => n as usize,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let context = match md.context.unwrap_or(2048) {
            0 => return Err(err("context", "must be at least 1".into())),
            n => n as usize,
        };
        if self.max_prompt_tokens as usize >= context {
            return Err((self.err)(
                "limits.max_prompt_tokens",
                format!(
                    "{} leaves no room to generate in {key}.context ({context})",
                    self.max_prompt_tokens
                ),
            ));
        }
        let parallel = match md.parallel.unwrap_or(1) {
            n @ 1..=MAX_PARALLEL => n as usize,
            n => {
                return Err(err(
                    "parallel",
                    format!("{n} is outside 1..={MAX_PARALLEL}"),
                ))
            }
        };
        let step_tokens = match md.step_tokens.map_or(DEFAULT_STEP_TOKENS, |n| n as usize) {
            n if (parallel..=MAX_UBATCH).contains(&n) => n,
            n => {
                return Err(err(
                    "step_tokens",
                    format!(
                        "{n} is outside {parallel}..={MAX_UBATCH} (at least `parallel`, at most \
                         the largest micro-batch)"
                    ),
                ))
            }
        };
        let mode = match md.mode.as_deref() {
            None | Some("auto") => PromptMode::Auto,
            Some("chat") => PromptMode::Chat,
            Some("complete") => PromptMode::Complete,
            Some(other) => {
                return Err(err(
                    "mode",
                    format!("`{other}`: expected \"chat\", \"complete\" or \"auto\""),
                ))
            }
        };
        let s = md.sampling;
        let d = SamplingParams::default();
        let sampling = SamplingParams {
            temperature: s.temperature.unwrap_or(d.temperature),
            top_k: s.top_k.unwrap_or(d.top_k),
            top_p: s.top_p.unwrap_or(d.top_p),
            min_p: s.min_p.unwrap_or(d.min_p),
            repeat_penalty: s.repeat_penalty.unwrap_or(d.repeat_penalty),
            seed: s.seed.unwrap_or(d.seed),
            ..d
        };
        sampling
            .validate()
            .map_err(|e| err("sampling", e.to_string()))?;
        Ok(ModelSettings {
            name,
            path,
            threads,
            context,
            parallel,
            prefix_cache: md.prefix_cache.unwrap_or(true),
            step_tokens,
            mode,
            sampling,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The effective configuration (`llamabus check-config`)

/// What `check-config` prints in place of a secret.
pub const REDACTED: &str = "(redacted)";

impl Settings {
    /// The effective configuration as TOML, every key spelled out, the password (read from
    /// `password_file` or the credential) shown as `password = "(redacted)"`.
    pub fn effective_toml(&self) -> String {
        use toml::Value as V;
        fn table<const N: usize>(items: [(&str, Option<V>); N]) -> V {
            V::Table(
                items
                    .into_iter()
                    .filter_map(|(k, v)| Some((k.to_owned(), v?)))
                    .collect(),
            )
        }
        let s = |v: &str| Some(V::String(v.to_owned()));
        let p = |v: &Path| s(&v.to_string_lossy());
        let int = |v: u64| Some(V::Integer(i64::try_from(v).unwrap_or(i64::MAX)));
        let float = |v: f32| Some(V::Float(f64::from(v)));
        let m = &self.mqtt;
        let (broker, embedded) = match &m.broker {
            BrokerSettings::External(u) => (s(&u.to_string()), None),
            BrokerSettings::Embedded { listen } => (None, s(&listen.to_string())),
        };
        let l = &self.limits;
        let model = |md: &ModelSettings, default: Option<bool>| {
            let sp = &md.sampling;
            let mode = match md.mode {
                PromptMode::Auto => "auto",
                PromptMode::Chat => "chat",
                PromptMode::Complete => "complete",
            };
            table([
                ("name", s(&md.name)),
                ("path", p(&md.path)),
                ("threads", int(md.threads as u64)),
                ("context", int(md.context as u64)),
                ("parallel", int(md.parallel as u64)),
                ("prefix_cache", Some(V::Boolean(md.prefix_cache))),
                ("step_tokens", int(md.step_tokens as u64)),
                ("mode", s(mode)),
                ("default", default.map(V::Boolean)),
                (
                    "sampling",
                    Some(table([
                        ("temperature", float(sp.temperature)),
                        ("top_k", int(sp.top_k.into())),
                        ("top_p", float(sp.top_p)),
                        ("min_p", float(sp.min_p)),
                        ("repeat_penalty", float(sp.repeat_penalty)),
                        ("seed", int(sp.seed)),
                    ])),
                ),
            ])
        };
        // One model prints as [model], several as [[models]] with the default marked.
        let (single, list) = match self.models.as_slice() {
            [only] => (Some(model(only, None)), None),
            all => (
                None,
                Some(V::Array(
                    all.iter()
                        .enumerate()
                        .map(|(i, m)| model(m, Some(i == self.default_model)))
                        .collect(),
                )),
            ),
        };
        let doc = table([
            ("node", Some(table([("name", s(&self.node))]))),
            (
                "mqtt",
                Some(table([
                    ("broker", broker),
                    ("embedded_listen", embedded),
                    ("client_id", s(&m.client_id)),
                    ("keep_alive_s", int(m.keep_alive.as_secs())),
                    ("username", m.username.as_deref().and_then(s)),
                    ("password", m.password.as_ref().and_then(|_| s(REDACTED))),
                    ("ca_file", m.ca_file.as_deref().and_then(p)),
                    ("client_cert", m.client_cert.as_deref().and_then(p)),
                    ("client_key", m.client_key.as_deref().and_then(p)),
                    ("prefix", s(&m.prefix)),
                    ("share_group", m.share_group.as_deref().and_then(s)),
                    (
                        "allowed_reply_prefixes",
                        Some(V::Array(
                            m.allowed_reply_prefixes
                                .iter()
                                .map(|f| V::String(f.clone()))
                                .collect(),
                        )),
                    ),
                    ("max_packet_bytes", int(m.max_packet_bytes.into())),
                    ("status_interval_s", int(m.status_interval.as_secs())),
                    ("session_expiry_s", int(m.session_expiry.as_secs())),
                    ("dedup_window_s", int(m.dedup_window.as_secs())),
                    ("dedup_capacity", int(m.dedup_capacity as u64)),
                    ("dedup_max_bytes", int(m.dedup_max_bytes as u64)),
                    ("state_dir", m.state_dir.as_deref().and_then(p)),
                ])),
            ),
            (
                "limits",
                Some(table([
                    ("max_payload_bytes", int(l.max_payload_bytes.into())),
                    ("max_prompt_tokens", int(l.max_prompt_tokens.into())),
                    ("max_tokens_cap", int(l.max_tokens_cap.into())),
                    ("default_max_tokens", int(l.default_max_tokens.into())),
                    ("queue_capacity", int(l.queue_capacity.into())),
                    ("shutdown_drain_s", int(l.shutdown_drain.as_secs())),
                    ("memory_limit_mb", l.memory_limit.and_then(|b| int(b >> 20))),
                ])),
            ),
            ("model", single),
            ("models", list),
            (
                "homeassistant",
                Some(table([
                    ("enabled", Some(V::Boolean(self.homeassistant.enabled))),
                    ("discovery_prefix", s(&self.homeassistant.discovery_prefix)),
                    ("name", self.homeassistant.name.as_deref().and_then(s)),
                ])),
            ),
            (
                "log",
                Some(table([(
                    "level",
                    s(&self.log_level.to_string().to_lowercase()),
                )])),
            ),
        ]);
        toml::to_string(&doc).expect("a table of plain values serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model_path() -> String {
        // Any existing file passes the `is_file` check; the model is not loaded here.
        concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml").to_owned()
    }

    fn load_str(text: &str) -> Result<Settings, ConfigError> {
        from_str(text, Path::new("test.toml"), &Overrides::default())
    }

    #[test]
    fn defaults_with_a_model() {
        let s = load_str(&format!("[model]\npath = \"{}\"\n", model_path())).unwrap();
        assert_eq!(s.mqtt.prefix, "llamabus");
        assert_eq!(s.mqtt.allowed_reply_prefixes, vec!["llamabus/reply/#"]);
        assert_eq!(s.mqtt.max_packet_bytes, 256 * 1024);
        assert!(matches!(s.mqtt.broker, BrokerSettings::Embedded { .. }));
        assert_eq!(s.model().name, "Cargo");
        assert_eq!(s.limits.queue_capacity, 8);
    }

    #[test]
    fn overrides_win_and_are_named_in_errors() {
        let o = Overrides {
            model: Some(model_path().into()),
            broker: Some("mqtt://127.0.0.1:1999".into()),
            prefix: Some("lb".into()),
            homeassistant: None,
        };
        let s = from_str("[mqtt]\nprefix = \"x\"\n", Path::new("f.toml"), &o).unwrap();
        assert_eq!(s.mqtt.prefix, "lb");
        assert_eq!(s.mqtt.allowed_reply_prefixes, vec!["lb/reply/#"]);
        assert_eq!(
            s.mqtt.broker,
            BrokerSettings::External(BrokerUrl {
                tls: false,
                host: "127.0.0.1".into(),
                port: 1999
            })
        );
        let o = Overrides {
            broker: Some("http://x".into()),
            ..o
        };
        let e = from_str("", Path::new("f.toml"), &o)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--broker: mqtt.broker:"), "{e}");
    }

    #[test]
    fn homeassistant_section_defaults_values_flag_and_errors() {
        let m = model_path();
        let s = load_str(&format!("[model]\npath = \"{m}\"\n")).unwrap();
        assert_eq!(s.homeassistant, HomeAssistantSettings::default());
        assert!(!s.homeassistant.enabled);
        assert_eq!(s.homeassistant.discovery_prefix, "homeassistant");
        let text = format!(
            "[model]\npath = \"{m}\"\n[homeassistant]\nenabled = true\n\
             discovery_prefix = \"ha/test\"\nname = \"Kitchen LLM\"\n"
        );
        let s = load_str(&text).unwrap();
        assert!(s.homeassistant.enabled);
        assert_eq!(s.homeassistant.discovery_prefix, "ha/test");
        assert_eq!(s.homeassistant.name.as_deref(), Some("Kitchen LLM"));
        assert!(s.effective_toml().contains(
            "[homeassistant]\ndiscovery_prefix = \"ha/test\"\nenabled = true\nname = \"Kitchen LLM\"\n"
        ));
        let flag = Overrides {
            homeassistant: Some(true),
            ..Overrides::default()
        };
        let s = from_str(&format!("[model]\npath = \"{m}\"\n"), Path::new("f"), &flag).unwrap();
        assert!(s.homeassistant.enabled);
        for (bad, key) in [
            (
                "discovery_prefix = \"ha/#\"",
                "homeassistant.discovery_prefix",
            ),
            (
                "discovery_prefix = \"$SYS\"",
                "homeassistant.discovery_prefix",
            ),
            ("name = \" \"", "homeassistant.name"),
            ("enabled = \"yes\"", "enabled"),
            ("enable = true", "enable"),
        ] {
            let text = format!("[model]\npath = \"{m}\"\n[homeassistant]\n{bad}\n");
            let e = load_str(&text).unwrap_err().to_string();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn unknown_keys_are_rejected_naming_the_file() {
        let e = load_str("[mqtt]\nprefx = \"a\"\n").unwrap_err().to_string();
        assert!(e.contains("test.toml") && e.contains("prefx"), "{e}");
        let e = load_str("[modle]\n").unwrap_err().to_string();
        assert!(e.contains("modle"), "{e}");
    }

    #[test]
    fn invalid_values_name_the_key() {
        let m = model_path();
        for (toml, key) in [
            ("[mqtt]\nprefix = \"a/#\"", "mqtt.prefix"),
            ("[mqtt]\nprefix = \"\"", "mqtt.prefix"),
            ("[mqtt]\nbroker = \"tcp://x\"", "mqtt.broker"),
            ("[mqtt]\nshare_group = \"a/b\"", "mqtt.share_group"),
            (
                "[mqtt]\nallowed_reply_prefixes = [\"a/#/b\"]",
                "mqtt.allowed_reply_prefixes",
            ),
            ("[mqtt]\nmax_packet_bytes = 100", "mqtt.max_packet_bytes"),
            ("[mqtt]\nkeep_alive_s = 1", "mqtt.keep_alive_s"),
            (
                "[mqtt]\nsession_expiry_s = 4294967296",
                "mqtt.session_expiry_s",
            ),
            ("[mqtt]\ndedup_window_s = 999999", "mqtt.dedup_window_s"),
            ("[mqtt]\ndedup_capacity = 0", "mqtt.dedup_capacity"),
            ("[mqtt]\ndedup_max_bytes = 1000", "mqtt.dedup_max_bytes"),
            (
                "[mqtt]\ndedup_max_bytes = 4294967296",
                "mqtt.dedup_max_bytes",
            ),
            ("[limits]\nqueue_capacity = 0", "limits.queue_capacity"),
            (
                "[limits]\ndefault_max_tokens = 2000",
                "limits.default_max_tokens",
            ),
            (
                "[limits]\nmax_payload_bytes = 999999",
                "limits.max_payload_bytes",
            ),
            ("[node]\nname = \"a/b\"", "node.name"),
        ] {
            let text = format!("{toml}\n[model]\npath = \"{m}\"\n");
            let e = load_str(&text).unwrap_err().to_string();
            // The fragment's key is on line 2, below its table header.
            assert!(
                e.starts_with(&format!("test.toml:2: {key}:")),
                "{toml}: {e}"
            );
        }
        for (toml, key) in [
            ("mode = \"chatty\"", "model.mode"),
            ("threads = 0", "model.threads"),
            ("[model.sampling]\ntemperature = -1.0", "model.sampling"),
        ] {
            let text = format!("[model]\npath = \"{m}\"\n{toml}\n");
            let e = load_str(&text).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("test.toml:3: {key}:")),
                "{toml}: {e}"
            );
        }
        let e = load_str("").unwrap_err().to_string();
        assert!(e.starts_with("test.toml: model.path: required"), "{e}");
    }

    #[test]
    fn broker_urls() {
        let p = |s| BrokerUrl::parse(s);
        assert_eq!(p("mqtt://h").unwrap().port, 1883);
        assert_eq!(p("mqtts://h").unwrap().port, 8883);
        assert_eq!(p("mqtt://[::1]:99").unwrap().host, "::1");
        assert_eq!(p("mqtt://[::1]:99").unwrap().to_string(), "mqtt://[::1]:99");
        assert!(p("mqtt://h:0").is_err());
        assert!(p("mqtt://h/path").is_err());
        assert!(p("mqtt://").is_err());
    }
}
