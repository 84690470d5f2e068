//! The effective configuration, as `llamabus check-config` prints it.

use std::collections::BTreeMap;
use std::path::Path;

use crate::engine::PromptMode;
use crate::format::FormatSpec;
use crate::mqtt::settings::{BrokerSettings, ModelSettings, Settings};

/// What `check-config` prints in place of a secret.
pub const REDACTED: &str = "(redacted)";

/// The effective configuration as TOML, every key spelled out, the password (read from
/// `password_file` or the credential) shown as `password = "(redacted)"`.
pub fn effective_toml(settings: &Settings) -> String {
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
    let m = &settings.mqtt;
    let (broker, embedded) = match &m.broker {
        BrokerSettings::External(u) => (s(&u.to_string()), None),
        BrokerSettings::Embedded { listen } => (None, s(&listen.to_string())),
    };
    let l = &settings.limits;
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
            ("kv_cells", int(md.kv_cells as u64)),
            ("repack", Some(V::Boolean(md.repack))),
            ("prefix_cache", Some(V::Boolean(md.prefix_cache))),
            ("step_tokens", int(md.step_tokens as u64)),
            ("mode", s(mode)),
            ("cpu_variant", md.cpu_variant.as_deref().and_then(s)),
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
    let (single, list) = match settings.models.as_slice() {
        [only] => (Some(model(only, None)), None),
        all => (
            None,
            Some(V::Array(
                all.iter()
                    .enumerate()
                    .map(|(i, m)| model(m, Some(i == settings.default_model)))
                    .collect(),
            )),
        ),
    };
    let doc = table([
        ("node", Some(table([("name", s(&settings.node))]))),
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
        ("formats", formats_toml(&settings.formats)),
        (
            "homeassistant",
            Some(table([
                ("enabled", Some(V::Boolean(settings.homeassistant.enabled))),
                (
                    "discovery_prefix",
                    s(&settings.homeassistant.discovery_prefix),
                ),
                ("name", settings.homeassistant.name.as_deref().and_then(s)),
            ])),
        ),
        (
            "log",
            Some(table([(
                "level",
                s(&settings.log_level.to_string().to_lowercase()),
            )])),
        ),
    ]);
    toml::to_string(&doc).expect("a table of plain values serializes")
}

/// `[formats.NAME]` as the config states them; `None` when there are none.
fn formats_toml(formats: &BTreeMap<String, FormatSpec>) -> Option<toml::Value> {
    use toml::Value as V;
    if formats.is_empty() {
        return None;
    }
    let entry = |spec: &FormatSpec| {
        let (key, value) = match spec {
            FormatSpec::JsonSchema { schema } => ("schema", V::String(schema.to_string())),
            FormatSpec::Json => ("json", V::Boolean(true)),
            FormatSpec::Regex { pattern } => ("regex", V::String(pattern.clone())),
            FormatSpec::Lark { grammar } => ("lark", V::String(grammar.clone())),
        };
        V::Table([(key.to_owned(), value)].into_iter().collect())
    };
    Some(V::Table(
        formats
            .iter()
            .map(|(name, spec)| (name.clone(), entry(spec)))
            .collect(),
    ))
}
