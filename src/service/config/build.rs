//! The configuration file as parsed (every field optional, unknown keys refused: one layer is
//! checked against these types alone before it is merged), and its validation: the merged
//! file becomes the typed [`Settings`], every error naming the key and the layer that set it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::layers::Origins;
use super::{ConfigError, PASSWORD_CREDENTIAL};
use crate::engine::{PromptMode, DEFAULT_STEP_TOKENS};
use crate::format::spec::FormatEntry;
use crate::format::{FormatCompiler, FormatLimits, FormatSpec};
use crate::model::session::MAX_UBATCH;
use crate::mqtt::homeassistant::{HomeAssistantSettings, DEFAULT_DISCOVERY_PREFIX};
use crate::mqtt::settings::*;
use crate::mqtt::topics;
use crate::sampler::SamplingParams;

/// Bytes a generated token may take in a final reply, for the packet-size sanity check.
const BYTES_PER_TOKEN_BOUND: u64 = 96;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
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
    /// `[formats.NAME]`: named formats a request can use by name.
    #[serde(default)]
    formats: BTreeMap<String, FormatEntry>,
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
    kv_cells: Option<u32>,
    repack: Option<bool>,
    prefix_cache: Option<bool>,
    step_tokens: Option<u32>,
    mode: Option<String>,
    cpu_variant: Option<String>,
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

/// Reports `why` for `key`, naming the layer that set it.
type Err<'a> = &'a dyn Fn(&str, String) -> ConfigError;

/// The merged file as [`Settings`], checked section by section in file order.
pub(super) fn build(
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
    let log_level = log_level(f.log.level.as_deref(), &err)?;
    let node = node_name(f.node.name, &err)?;
    let mqtt = mqtt(f.mqtt, &node, credentials, &err)?;
    let limits = limits(f.limits, mqtt.max_packet_bytes, &err)?;
    let (models, default_model) = models(f.model, f.models, origins, &limits, &err)?;
    let formats = formats(f.formats, &err)?;
    Ok(Settings {
        source,
        log_level,
        node,
        mqtt,
        limits,
        models,
        default_model,
        formats,
        homeassistant: homeassistant(f.homeassistant, &err)?,
    })
}

/// `[formats.NAME]`: each name one topic level (it appears in `format/{name}/prompt/...`), each
/// format compiled here without a model, so `check-config` and a reload refuse a format that
/// would fail every request; the engines compile them again for their vocabulary.
fn formats(
    entries: BTreeMap<String, FormatEntry>,
    err: Err<'_>,
) -> Result<BTreeMap<String, FormatSpec>, ConfigError> {
    let mut formats = BTreeMap::new();
    if entries.is_empty() {
        return Ok(formats);
    }
    let compiler = FormatCompiler::model_free(FormatLimits::default())
        .map_err(|e| err("formats", e.to_string()))?;
    for (name, entry) in entries {
        let key = format!("formats.{name}");
        if name.len() > crate::mqtt::wire::MAX_FORMAT_NAME_BYTES || !topics::is_topic_level(&name) {
            return Err(err(
                &key,
                format!(
                    "`{name}` must be one non-empty topic level (no '/', '+', '#') of at most {} bytes",
                    crate::mqtt::wire::MAX_FORMAT_NAME_BYTES
                ),
            ));
        }
        let spec = entry.to_spec().map_err(|e| err(&key, e.to_string()))?;
        compiler
            .compile(&spec)
            .map_err(|e| err(&key, e.to_string()))?;
        formats.insert(name, spec);
    }
    Ok(formats)
}

/// `[homeassistant]`: the discovery prefix is a topic prefix like `mqtt.prefix`; the name,
/// when set, is not empty.
fn homeassistant(h: HomeAssistantFile, err: Err<'_>) -> Result<HomeAssistantSettings, ConfigError> {
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

/// `[log] level`.
fn log_level(level: Option<&str>, err: Err<'_>) -> Result<log::LevelFilter, ConfigError> {
    match level {
        None => Ok(log::LevelFilter::Info),
        Some(l) => l.parse().map_err(|_| {
            err(
                "log.level",
                format!("`{l}`: expected error, warn, info, debug, trace or off"),
            )
        }),
    }
}

/// `[node] name`: one topic level, by default the host name.
fn node_name(name: Option<String>, err: Err<'_>) -> Result<String, ConfigError> {
    let node = name.unwrap_or_else(default_node_name);
    if !topics::is_topic_level(&node) {
        return Err(err(
            "node.name",
            format!("`{node}` must be one non-empty topic level (no '/', '+', '#')"),
        ));
    }
    Ok(node)
}

fn default_node_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty() && topics::is_topic_level(s))
        .unwrap_or_else(|| "llamabus".to_owned())
}

/// `[mqtt]`: the connection, then topics, then packet size, timers and the duplicate window.
fn mqtt(
    m: MqttFile,
    node: &str,
    credentials: Option<&Path>,
    err: Err<'_>,
) -> Result<MqttSettings, ConfigError> {
    let prefix = m.prefix.clone().unwrap_or_else(|| "llamabus".into());
    topics::check_prefix(&prefix).map_err(|why| err("mqtt.prefix", why))?;
    let broker = broker(&m, err)?;
    let client_id = m
        .client_id
        .clone()
        .unwrap_or_else(|| format!("llamabus-{node}"));
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
    let password = password(&m, credentials, err)?;
    tls_files(&m, &broker, err)?;
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
        .clone()
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
    let timers = timers(&m, err)?;
    let dedup = dedup(&m, err)?;
    Ok(MqttSettings {
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
        status_interval: timers.status_interval,
        session_expiry: timers.session_expiry,
        dedup_window: dedup.window,
        dedup_capacity: dedup.capacity,
        dedup_max_bytes: dedup.max_bytes,
        state_dir: m.state_dir,
    })
}

/// `mqtt.broker`, or the embedded broker on `mqtt.embedded_listen`.
fn broker(m: &MqttFile, err: Err<'_>) -> Result<BrokerSettings, ConfigError> {
    Ok(match &m.broker {
        Some(url) => {
            BrokerSettings::External(BrokerUrl::parse(url).map_err(|why| err("mqtt.broker", why))?)
        }
        None => {
            let listen = m.embedded_listen.as_deref().unwrap_or("127.0.0.1:1883");
            let listen = listen
                .parse()
                .map_err(|e| err("mqtt.embedded_listen", format!("`{listen}`: {e}")))?;
            BrokerSettings::Embedded { listen }
        }
    })
}

/// The broker password: `mqtt.password_file`, else a non-empty systemd credential.
fn password(
    m: &MqttFile,
    credentials: Option<&Path>,
    err: Err<'_>,
) -> Result<Option<Secret>, ConfigError> {
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
    Ok(password)
}

/// The TLS files exist, go together, and come with an `mqtts://` broker.
fn tls_files(m: &MqttFile, broker: &BrokerSettings, err: Err<'_>) -> Result<(), ConfigError> {
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
    let tls = matches!(broker, BrokerSettings::External(u) if u.tls);
    if !tls && (m.ca_file.is_some() || m.client_cert.is_some()) {
        return Err(err(
            "mqtt.ca_file",
            "TLS files are set but the broker URL is not mqtts://".into(),
        ));
    }
    Ok(())
}

/// `mqtt.status_interval_s` and `mqtt.session_expiry_s`.
struct Timers {
    status_interval: Duration,
    session_expiry: Duration,
}

fn timers(m: &MqttFile, err: Err<'_>) -> Result<Timers, ConfigError> {
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
    Ok(Timers {
        status_interval: Duration::from_secs(status_interval_s),
        session_expiry: Duration::from_secs(session_expiry_s),
    })
}

/// The duplicate window: `mqtt.dedup_window_s`, `dedup_capacity`, `dedup_max_bytes`.
struct Dedup {
    window: Duration,
    capacity: usize,
    max_bytes: usize,
}

fn dedup(m: &MqttFile, err: Err<'_>) -> Result<Dedup, ConfigError> {
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
    Ok(Dedup {
        window: Duration::from_secs(dedup_window_s),
        capacity: dedup_capacity as usize,
        max_bytes: dedup_max_bytes as usize,
    })
}

/// `[limits]`, checked against the packet limit.
fn limits(l: LimitsFile, max_packet_bytes: u32, err: Err<'_>) -> Result<Limits, ConfigError> {
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
    let memory_limit = match l.memory_limit_mb {
        Some(0) => return Err(err("limits.memory_limit_mb", "must be at least 1".into())),
        Some(mb) => Some(mb.saturating_mul(1 << 20)),
        None => None,
    };
    Ok(Limits {
        max_payload_bytes,
        max_prompt_tokens,
        max_tokens_cap,
        default_max_tokens,
        queue_capacity,
        shutdown_drain: Duration::from_secs(l.shutdown_drain_s.unwrap_or(10)),
        memory_limit,
    })
}

/// `[model]` or `[[models]]` (not both): the models and the index of the default one.
fn models(
    model: Option<ModelFile>,
    list: Option<Vec<ModelFile>>,
    origins: &Origins,
    limits: &Limits,
    err: Err<'_>,
) -> Result<(Vec<ModelSettings>, usize), ConfigError> {
    let model_limits = ModelLimits {
        max_prompt_tokens: limits.max_prompt_tokens,
        err,
    };
    match (model, list) {
        (Some(_), Some(_)) => Err(err(
            "model",
            format!(
                "[model] and [[models]] ({}) cannot both be set: with several models, \
                 give each its own [[models]] entry",
                origins.of("models")
            ),
        )),
        (None, None) => Err(err(
            "model.path",
            "required: set [model] path or pass --model".into(),
        )),
        (Some(md), None) => {
            if md.default.is_some() {
                return Err(err(
                    "model.default",
                    "only [[models]] entries take `default`".into(),
                ));
            }
            Ok((vec![model_limits.build(md, "model")?], 0))
        }
        (None, Some(list)) => model_limits.build_list(list),
    }
}

/// Builds and checks model entries; `key` is `model` or `models[i]`, for error messages.
struct ModelLimits<'a> {
    max_prompt_tokens: u32,
    err: Err<'a>,
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
            // One variant computes for the whole process.
            if let Some(v) = &m.cpu_variant {
                let other = |o: &ModelSettings| o.cpu_variant.as_ref().is_some_and(|w| w != v);
                if let Some(j) = models.iter().position(other) {
                    return Err(err(
                        &format!("{key}.cpu_variant"),
                        format!(
                            "`{v}` differs from models[{j}]'s; the CPU variant is process-wide, \
                             so set it on one model or the same on all"
                        ),
                    ));
                }
            }
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
        let parallel = match md.parallel.unwrap_or(DEFAULT_PARALLEL) {
            n @ 1..=MAX_PARALLEL => n as usize,
            n => {
                return Err(err(
                    "parallel",
                    format!("{n} is outside 1..={MAX_PARALLEL}"),
                ))
            }
        };
        let kv_cells = match md.kv_cells.map_or(context, |n| n as usize) {
            n if n >= context => n,
            n => {
                return Err(err(
                    "kv_cells",
                    format!("{n} cells cannot hold one context of {context} tokens"),
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
        // The name must exist in this build and run on this CPU (forcing a variant the CPU
        // lacks would SIGILL).
        if let Some(v) = &md.cpu_variant {
            crate::ggml::cpu::choose(Some((v, "the configuration")), &crate::ggml::cpu::cpu_has)
                .map_err(|e| err("cpu_variant", e.to_string()))?;
        }
        Ok(ModelSettings {
            name,
            path,
            threads,
            context,
            parallel,
            kv_cells,
            repack: md.repack.unwrap_or(true),
            prefix_cache: md.prefix_cache.unwrap_or(true),
            step_tokens,
            mode,
            sampling,
            cpu_variant: md.cpu_variant,
        })
    }
}
