//! The MQTT side of the daemon: wire types and codecs ([`wire`]), the topic tree and the
//! reply-topic rule ([`topics`]), the validated settings ([`settings`]), broker connection
//! options ([`conn`]), the window of duplicate requests ([`dedup`]), the event loop
//! ([`server`]) and how it reports its lifecycle ([`lifecycle`]), the `ask` client
//! ([`client`]), Home Assistant discovery ([`homeassistant`]) and the embedded broker
//! ([`broker`]).
//! Knows nothing of ggml: it talks to the engine through jobs and events only.

#[cfg(feature = "embedded-broker")]
pub mod broker;
pub mod client;
pub mod conn;
pub mod dedup;
pub mod homeassistant;
pub mod lifecycle;
pub mod models;
pub mod server;
pub mod settings;
pub mod topics;
pub mod wire;
