//! The service around the daemon: configuration (parse → merge → validate into immutable
//! [`config::Settings`]). systemd notify/watchdog, signals and logging setup join it later.

pub mod config;
