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
//! context = 2048                        # tokens of one job (prompt + answer)
//! parallel = 8                          # jobs decoded together (continuous batching)
//! kv_cells = 2048                       # KV cache cells shared by all jobs; default: context
//! repack = true                         # copy weights into ggml's faster layouts (anon memory)
//! prefix_cache = true                   # reuse cached KV of shared prompt prefixes
//! step_tokens = 256                     # prompt tokens per decode step (watchdog: one step < 30 s)
//! mode = "auto"                         # "chat" | "complete" | "auto"
//! cpu_variant = "avx2"                  # force a lower ggml CPU variant; default: the best this
//!                                       # CPU runs (LLAMABUS_CPU_VARIANT wins over this key)
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
//! [formats.light]                       # named formats (README "Structured answers")
//! schema = '{"type": "object", "properties": {"on": {"type": "boolean"}}, "required": ["on"]}'
//! [formats.percent]                     # exactly one of schema | json = true | regex | lark
//! regex = "[0-9]{1,3}%"
//!
//! [homeassistant]                       # MQTT discovery (README "Home Assistant")
//! enabled = false                       # also LLAMABUS_HOMEASSISTANT_ENABLED, serve --homeassistant
//! discovery_prefix = "homeassistant"
//! name = "Kitchen LLM"                  # the device's name; default "llamabus {node}"
//! ```

mod build;
mod effective;
mod layers;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use crate::mqtt::settings::{
    BrokerSettings, BrokerUrl, Limits, ModelSettings, MqttSettings, Secret, Settings,
    DEFAULT_MAX_PACKET_BYTES, DEFAULT_PARALLEL, MAX_PARALLEL, MIN_MAX_PACKET_BYTES,
    MQTT_MAX_PACKET_BYTES,
};
use build::build;
use build::FileConfig;
pub use effective::{effective_toml, REDACTED};
pub use layers::dropin_dir;
use layers::{dropins, Layers};

/// The main configuration file when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "/etc/llamabus/config.toml";
/// The systemd credential holding the broker password (`LoadCredential=mqtt-password:...`).
pub const PASSWORD_CREDENTIAL: &str = "mqtt-password";

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

/// Command-line values that override the file (`llamabus serve --model ... --broker ...`).
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub model: Option<PathBuf>,
    pub broker: Option<String>,
    pub prefix: Option<String>,
    /// `serve --homeassistant`: Home Assistant discovery on.
    pub homeassistant: Option<bool>,
}

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
