//! The service around the daemon (CONVENTIONS practice 3 and 4):
//! - [`config`]: layered configuration (defaults, file, drop-ins, environment, flags), parsed,
//!   merged and validated into an immutable [`config::Settings`];
//! - [`daemon`]: `llamabus serve` wired together: configuration, signals, reloads, the server;
//! - [`notify`]: the systemd notification protocol (readiness, status, watchdog);
//! - [`signals`]: SIGTERM/SIGINT drain, SIGHUP reload;
//! - [`logging`]: journald with structured fields, or a readable stderr logger.

pub mod config;
pub mod daemon;
pub mod logging;
pub mod notify;
pub mod signals;
