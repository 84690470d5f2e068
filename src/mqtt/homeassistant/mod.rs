//! Home Assistant MQTT discovery: llamabus appears in Home Assistant as one device with sensors
//! (status, speed, queue, requests served, model), an "Ask" text box and its answer, and a
//! button that cancels the running Home Assistant request.
//!
//! One job per file; all but the last two are pure:
//! - [`ids`]: discovery ids sanitised to Home Assistant's `[a-zA-Z0-9_-]`;
//! - [`topics`]: the Home Assistant topics of one node and what an incoming topic is;
//! - [`discovery`]: the retained per-entity discovery messages (and their removal);
//! - [`answer`]: the answer sensor's state (at most 255 characters) and its JSON attributes;
//! - [`bridge`]: what the event loop ([`crate::mqtt::server`]) publishes for Home Assistant
//!   (keeping the last answer for Home Assistant's restarts), and the topics replies avoid;
//! - [`remove`]: `llamabus homeassistant --remove`, a short-lived client clearing it all.
//!
//! Per-entity discovery (`<prefix>/<component>/<node_id>/<object_id>/config`), not the
//! device-based form (`<prefix>/device/<id>/config` with `cmps`): Home Assistant reads the
//! per-entity form in every release that has the `text` platform (2022.12 on), and so do the
//! other hubs that read Home Assistant discovery, while the device-based form needs 2024.11
//! or later. The price is eight small retained messages instead of one.

pub mod answer;
pub mod bridge;
pub mod discovery;
pub mod ids;
pub mod remove;
pub mod topics;

/// The default discovery prefix, Home Assistant's own default.
pub const DEFAULT_DISCOVERY_PREFIX: &str = "homeassistant";

/// `[homeassistant]`: whether and how the daemon announces itself to Home Assistant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HomeAssistantSettings {
    /// Off by default: nothing is published under the discovery prefix.
    pub enabled: bool,
    /// Where Home Assistant listens for discovery (and publishes its birth message,
    /// `<prefix>/status`).
    pub discovery_prefix: String,
    /// The device's name in Home Assistant; default `llamabus {node}`.
    pub name: Option<String>,
}

impl Default for HomeAssistantSettings {
    fn default() -> Self {
        HomeAssistantSettings {
            enabled: false,
            discovery_prefix: DEFAULT_DISCOVERY_PREFIX.to_owned(),
            name: None,
        }
    }
}
