//! How the server reports its lifecycle to whatever supervises it. The server defines the
//! trait and calls it; `service::notify` implements it for systemd, and tests use `()`, which
//! reports nothing. The server itself knows nothing of systemd.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use crate::mqtt::settings::Settings;

/// A task the supervisor runs beside the server; it never needs to complete.
pub type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The inference threads' oldest sign of life.
pub type Heartbeat = Arc<dyn Fn() -> Instant + Send + Sync>;

/// A new configuration from a reload request (SIGHUP), or why it could not be read.
pub type Reload = Result<Settings, String>;

/// What the server reports while it loads, serves, reloads and stops.
pub trait Lifecycle: Send + Sync {
    /// A one-line status: load progress, the broker link, what is served.
    fn status(&self, text: &str);
    /// The server can serve now (also after a reload, with what it serves).
    fn ready(&self, text: &str);
    /// A configuration reload has started.
    fn reloading(&self, text: &str);
    /// Shutdown has started.
    fn stopping(&self, text: &str);
    /// Runs while the models load, for example to keep extending a start timeout.
    fn while_loading(&self) -> Task {
        Box::pin(std::future::pending())
    }
    /// Runs while the server serves, watching the inference threads' `heartbeat`.
    fn watch(&self, heartbeat: Heartbeat) -> Task {
        let _ = heartbeat;
        Box::pin(std::future::pending())
    }
}

/// Reports nothing: a server run by tests or without a supervisor.
impl Lifecycle for () {
    fn status(&self, _: &str) {}
    fn ready(&self, _: &str) {}
    fn reloading(&self, _: &str) {}
    fn stopping(&self, _: &str) {}
}
