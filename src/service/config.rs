//! Configuration of `llamabus serve`: a TOML file, then command-line overrides, validated into
//! an immutable [`Settings`] (CONVENTIONS practice 4: parse → merge → validate).
//!
//! Every error names where the value came from (the file, or the flag) and the key, e.g.
//! `llamabus.toml: mqtt.prefix: must not contain '+' or '#'`. Unknown keys are errors, so a typo
//! never silently falls back to a default.
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
//!
//! [limits]
//! max_payload_bytes = 65536
//! max_prompt_tokens = 1536
//! max_tokens_cap = 1024
//! default_max_tokens = 128
//! queue_capacity = 8
//! shutdown_drain_s = 10
//!
//! [model]
//! path = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
//! name = "smollm2"                      # default: the file stem
//! threads = 4                           # default: every core
//! context = 2048
//! mode = "auto"                         # "chat" | "complete" | "auto"
//! [model.sampling]
//! temperature = 0.8
//! top_k = 40
//! top_p = 0.95
//! min_p = 0.05
//! repeat_penalty = 1.0
//! seed = 42
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::engine::worker::{EngineConfig, PromptMode};
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
        /// The file path, or the command-line flag that supplied the value.
        origin: String,
        key: &'static str,
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
    #[serde(default)]
    model: ModelFile,
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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelFile {
    name: Option<String>,
    path: Option<PathBuf>,
    threads: Option<u32>,
    context: Option<u32>,
    mode: Option<String>,
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
#[derive(Clone, Debug)]
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
}

/// One model (the `[model]` section). A later `[[models]]` list holds several of these.
#[derive(Clone, Debug)]
pub struct ModelSettings {
    pub name: String,
    pub path: PathBuf,
    pub threads: usize,
    pub context: usize,
    pub mode: PromptMode,
    pub sampling: SamplingParams,
}

/// Everything `llamabus serve` needs; immutable once built.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where the settings came from, for messages: the file path or `(defaults)`.
    pub source: String,
    pub node: String,
    pub mqtt: MqttSettings,
    pub limits: Limits,
    /// The served models; exactly one for now, the first is the default.
    pub models: Vec<ModelSettings>,
}

impl Settings {
    /// The default (first) model.
    pub fn model(&self) -> &ModelSettings {
        &self.models[0]
    }

    /// The engine configuration for the default model.
    pub fn engine_config(&self) -> EngineConfig {
        let m = self.model();
        let mut c = EngineConfig::new(m.name.clone(), m.path.clone());
        c.n_ctx = m.context;
        c.n_threads = m.threads;
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
// Loading

/// Reads `file` (when given), applies `overrides`, validates.
pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Settings, ConfigError> {
    let (parsed, source) = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
                path: path.to_owned(),
                error,
            })?;
            (parse(&text, path)?, path.display().to_string())
        }
        None => (FileConfig::default(), "(defaults)".to_owned()),
    };
    build(parsed, &source, overrides)
}

/// Parses TOML text (`path` only names it in errors), applies `overrides`, validates.
pub fn from_str(text: &str, path: &Path, overrides: &Overrides) -> Result<Settings, ConfigError> {
    let parsed = parse(text, path)?;
    build(parsed, &path.display().to_string(), overrides)
}

fn parse(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        error: Box::new(e),
    })
}

fn default_node_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty() && topics::is_topic_level(s))
        .unwrap_or_else(|| "llamabus".to_owned())
}

fn build(f: FileConfig, file: &str, o: &Overrides) -> Result<Settings, ConfigError> {
    let err = |origin: &str, key: &'static str, why: String| ConfigError::Invalid {
        origin: origin.to_owned(),
        key,
        why,
    };

    // [node]
    let node = f.node.name.unwrap_or_else(default_node_name);
    if !topics::is_topic_level(&node) {
        return Err(err(
            file,
            "node.name",
            format!("`{node}` must be one non-empty topic level (no '/', '+', '#')"),
        ));
    }

    // [mqtt]
    let m = f.mqtt;
    let (prefix, prefix_src) = match &o.prefix {
        Some(p) => (p.clone(), "--prefix"),
        None => (m.prefix.unwrap_or_else(|| "llamabus".into()), file),
    };
    topics::check_prefix(&prefix).map_err(|why| err(prefix_src, "mqtt.prefix", why))?;

    let broker = match (&o.broker, m.broker) {
        (Some(url), _) => BrokerSettings::External(
            BrokerUrl::parse(url).map_err(|why| err("--broker", "mqtt.broker", why))?,
        ),
        (None, Some(url)) => BrokerSettings::External(
            BrokerUrl::parse(&url).map_err(|why| err(file, "mqtt.broker", why))?,
        ),
        (None, None) => {
            let listen = m.embedded_listen.as_deref().unwrap_or("127.0.0.1:1883");
            let listen = listen
                .parse()
                .map_err(|e| err(file, "mqtt.embedded_listen", format!("`{listen}`: {e}")))?;
            BrokerSettings::Embedded { listen }
        }
    };

    let client_id = m.client_id.unwrap_or_else(|| format!("llamabus-{node}"));
    if client_id.is_empty() || client_id.len() > 128 {
        return Err(err(file, "mqtt.client_id", "must be 1 to 128 bytes".into()));
    }
    let keep_alive_s = m.keep_alive_s.unwrap_or(30);
    if !(5..=65535).contains(&keep_alive_s) {
        return Err(err(
            file,
            "mqtt.keep_alive_s",
            format!("{keep_alive_s} is outside 5..=65535"),
        ));
    }
    let password = match m.password_file {
        Some(p) => {
            let text = std::fs::read_to_string(&p)
                .map_err(|e| err(file, "mqtt.password_file", format!("{}: {e}", p.display())))?;
            let text = text
                .strip_suffix("\r\n")
                .or_else(|| text.strip_suffix('\n'))
                .unwrap_or(&text);
            Some(Secret(text.to_owned()))
        }
        None => None,
    };
    if password.is_some() && m.username.is_none() {
        return Err(err(
            file,
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
                return Err(err(
                    file,
                    key,
                    format!("{} is not a readable file", p.display()),
                ));
            }
        }
    }
    if m.client_cert.is_some() != m.client_key.is_some() {
        return Err(err(
            file,
            "mqtt.client_cert",
            "client_cert and client_key go together".into(),
        ));
    }
    let tls = matches!(&broker, BrokerSettings::External(u) if u.tls);
    if !tls && (m.ca_file.is_some() || m.client_cert.is_some()) {
        return Err(err(
            file,
            "mqtt.ca_file",
            "TLS files are set but the broker URL is not mqtts://".into(),
        ));
    }
    if let Some(g) = &m.share_group {
        if !topics::is_topic_level(g) {
            return Err(err(
                file,
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
            .map_err(|why| err(file, "mqtt.allowed_reply_prefixes", format!("`{f}`: {why}")))?;
    }
    let max_packet_bytes = m.max_packet_bytes.unwrap_or(DEFAULT_MAX_PACKET_BYTES);
    if !(MIN_MAX_PACKET_BYTES..=MQTT_MAX_PACKET_BYTES).contains(&max_packet_bytes) {
        return Err(err(
            file,
            "mqtt.max_packet_bytes",
            format!(
                "{max_packet_bytes} is outside {MIN_MAX_PACKET_BYTES}..={MQTT_MAX_PACKET_BYTES}"
            ),
        ));
    }
    let status_interval_s = m.status_interval_s.unwrap_or(30);
    if !(1..=86_400).contains(&status_interval_s) {
        return Err(err(
            file,
            "mqtt.status_interval_s",
            format!("{status_interval_s} is outside 1..=86400"),
        ));
    }

    // [limits]
    let l = f.limits;
    let max_payload_bytes = l.max_payload_bytes.unwrap_or(64 * 1024);
    if max_payload_bytes == 0 || max_payload_bytes > max_packet_bytes {
        return Err(err(
            file,
            "limits.max_payload_bytes",
            format!(
                "{max_payload_bytes} is outside 1..={max_packet_bytes} (mqtt.max_packet_bytes)"
            ),
        ));
    }
    let positive = |key: &'static str, v: Option<u32>, default: u32| match v.unwrap_or(default) {
        0 => Err(err(file, key, "must be at least 1".into())),
        n => Ok(n),
    };
    let max_prompt_tokens = positive("limits.max_prompt_tokens", l.max_prompt_tokens, 1536)?;
    let max_tokens_cap = positive("limits.max_tokens_cap", l.max_tokens_cap, 1024)?;
    let default_max_tokens = positive("limits.default_max_tokens", l.default_max_tokens, 128)?;
    let queue_capacity = positive("limits.queue_capacity", l.queue_capacity, 8)?;
    if default_max_tokens > max_tokens_cap {
        return Err(err(
            file,
            "limits.default_max_tokens",
            format!("{default_max_tokens} exceeds limits.max_tokens_cap ({max_tokens_cap})"),
        ));
    }
    if u64::from(max_tokens_cap) * BYTES_PER_TOKEN_BOUND + 4096 > u64::from(max_packet_bytes) {
        return Err(err(
            file,
            "limits.max_tokens_cap",
            format!(
                "{max_tokens_cap} tokens may not fit one reply of mqtt.max_packet_bytes \
                 ({max_packet_bytes}); allow {BYTES_PER_TOKEN_BOUND} bytes per token plus 4096"
            ),
        ));
    }
    let shutdown_drain = Duration::from_secs(l.shutdown_drain_s.unwrap_or(10));

    // [model]
    let md = f.model;
    let (path, path_src) = match (&o.model, md.path) {
        (Some(p), _) => (p.clone(), "--model"),
        (None, Some(p)) => (p, file),
        (None, None) => {
            return Err(err(
                file,
                "model.path",
                "required: set [model] path or pass --model".into(),
            ))
        }
    };
    if !path.is_file() {
        return Err(err(
            path_src,
            "model.path",
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
    if name.is_empty() || name.len() > crate::mqtt::wire::MAX_MODEL_BYTES {
        return Err(err(file, "model.name", "must be 1 to 128 bytes".into()));
    }
    let threads = match md.threads {
        Some(0) => return Err(err(file, "model.threads", "must be at least 1".into())),
        Some(n) => n as usize,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let context = positive("model.context", md.context, 2048)? as usize;
    if max_prompt_tokens as usize >= context {
        return Err(err(
            file,
            "limits.max_prompt_tokens",
            format!("{max_prompt_tokens} leaves no room to generate in model.context ({context})"),
        ));
    }
    let mode = match md.mode.as_deref() {
        None | Some("auto") => PromptMode::Auto,
        Some("chat") => PromptMode::Chat,
        Some("complete") => PromptMode::Complete,
        Some(other) => {
            return Err(err(
                file,
                "model.mode",
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
        .map_err(|e| err(file, "model.sampling", e.to_string()))?;

    Ok(Settings {
        source: file.to_owned(),
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
        },
        limits: Limits {
            max_payload_bytes,
            max_prompt_tokens,
            max_tokens_cap,
            default_max_tokens,
            queue_capacity,
            shutdown_drain,
        },
        models: vec![ModelSettings {
            name,
            path,
            threads,
            context,
            mode,
            sampling,
        }],
    })
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
            assert!(e.starts_with(&format!("test.toml: {key}:")), "{toml}: {e}");
        }
        for (toml, key) in [
            ("mode = \"chatty\"", "model.mode"),
            ("threads = 0", "model.threads"),
            ("[model.sampling]\ntemperature = -1.0", "model.sampling"),
        ] {
            let text = format!("[model]\npath = \"{m}\"\n{toml}\n");
            let e = load_str(&text).unwrap_err().to_string();
            assert!(e.starts_with(&format!("test.toml: {key}:")), "{toml}: {e}");
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
