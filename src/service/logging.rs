//! Logging setup: the systemd journal with structured fields when stderr is connected to it
//! (`JOURNAL_STREAM`), else a readable stderr logger.
//!
//! Structured fields ride on `log`'s key-values (`info!(request_id = id; "...")`); the
//! journal logger upper-cases them into journal fields (`REQUEST_ID=`, `DEVICE=`, `MODEL=`,
//! `PROMPT_TOKENS=`, `COMPLETION_TOKENS=`, `TOKENS_PER_S=`, `ERROR_CODE=`), so
//! `journalctl -u llamabus REQUEST_ID=42` finds one request; the stderr logger appends them as
//! `key=value`.
//!
//! Levels: llamabus' own messages at the configured level; other crates' from warn up; the
//! embedded broker's (rumqttd, whose tracing spans reach `log` as error records) only at debug
//! and trace. The level comes from `RUST_LOG` when set (a bare level, or `llamabus=LEVEL`
//! among comma-separated directives), else `[log] level` of the configuration.
//!
//! Prompts and answers are user data: they are never logged at info level or above.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};

use log::kv::{Key, Value, VisitSource};
use log::{LevelFilter, Log, Metadata, Record};

/// llamabus' own level, changeable after start (the configuration is read after the logger is
/// installed, and again on reload).
static LEVEL: AtomicUsize = AtomicUsize::new(LevelFilter::Info as usize);

/// Where the records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Journal,
    Stderr,
}

/// Installs the logger: the journal when stderr is connected to it, else stderr. The level is
/// `RUST_LOG`'s, else `LLAMABUS_LOG`'s (before the configuration is read), else info.
pub fn init() -> Sink {
    let level = env_level()
        .or_else(|| {
            std::env::var("LLAMABUS_LOG")
                .ok()
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(LevelFilter::Info);
    set(level);
    if systemd_journal_logger::connected_to_journal() {
        if let Ok(j) = systemd_journal_logger::JournalLog::new() {
            let j = j.with_syslog_identifier("llamabus".into());
            if log::set_boxed_logger(Box::new(Filtered(j))).is_ok() {
                return Sink::Journal;
            }
        }
    }
    let _ = log::set_boxed_logger(Box::new(Filtered(StderrLog)));
    Sink::Stderr
}

/// Applies the configured level, unless `RUST_LOG` sets it (the environment wins).
pub fn apply_config_level(configured: LevelFilter) {
    if env_level().is_none() {
        set(configured);
    }
}

fn set(level: LevelFilter) {
    LEVEL.store(level as usize, Ordering::Relaxed);
    log::set_max_level(level.max(LevelFilter::Warn));
}

fn level() -> LevelFilter {
    match LEVEL.load(Ordering::Relaxed) {
        0 => LevelFilter::Off,
        1 => LevelFilter::Error,
        2 => LevelFilter::Warn,
        3 => LevelFilter::Info,
        4 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    }
}

/// llamabus' level from `RUST_LOG`: `debug`, or `llamabus=debug` among directives.
fn env_level() -> Option<LevelFilter> {
    parse_rust_log(&std::env::var("RUST_LOG").ok()?)
}

fn parse_rust_log(v: &str) -> Option<LevelFilter> {
    let mut found = None;
    for d in v.split(',').map(str::trim) {
        match d.split_once('=') {
            Some(("llamabus", l)) => return l.parse().ok(),
            Some(_) => {}
            None => found = d.parse().ok().or(found),
        }
    }
    found
}

/// Whether a record passes, by target (see the module doc).
pub fn enabled(m: &Metadata<'_>) -> bool {
    let ours = level();
    let t = m.target();
    if t.starts_with("llamabus") {
        m.level() <= ours
    } else if t.starts_with("tracing") || t.starts_with("rumqttd") {
        ours >= LevelFilter::Debug && m.level() <= ours
    } else {
        m.level() <= log::Level::Warn && m.level() <= ours
    }
}

/// Applies [`enabled`] in front of a sink (the journal logger takes everything it is given).
struct Filtered<L>(L);

impl<L: Log> Log for Filtered<L> {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        enabled(m)
    }

    fn log(&self, r: &Record<'_>) {
        if enabled(r.metadata()) {
            self.0.log(r);
        }
    }

    fn flush(&self) {
        self.0.flush();
    }
}

/// `llamabus: LEVEL: message key=value ...` on stderr.
struct StderrLog;

impl Log for StderrLog {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn log(&self, r: &Record<'_>) {
        eprintln!("{}", format_line(r));
    }

    fn flush(&self) {}
}

/// One stderr line: the message, then the structured fields as `key=value`.
pub fn format_line(r: &Record<'_>) -> String {
    let level = r.level().as_str().to_lowercase();
    let mut line = if r.target().starts_with("llamabus") {
        format!("llamabus: {level}: {}", r.args())
    } else {
        format!("llamabus: {level}: [{}] {}", r.target(), r.args())
    };
    struct Append<'a>(&'a mut String);
    impl<'kvs> VisitSource<'kvs> for Append<'_> {
        fn visit_pair(&mut self, k: Key<'kvs>, v: Value<'kvs>) -> Result<(), log::kv::Error> {
            let _ = write!(self.0, " {k}={v}");
            Ok(())
        }
    }
    let _ = r.key_values().visit(&mut Append(&mut line));
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_directives() {
        assert_eq!(parse_rust_log("debug"), Some(LevelFilter::Debug));
        assert_eq!(
            parse_rust_log("rumqttc=trace,llamabus=warn"),
            Some(LevelFilter::Warn)
        );
        assert_eq!(
            parse_rust_log("info,llamabus=trace"),
            Some(LevelFilter::Trace)
        );
        assert_eq!(parse_rust_log("rumqttc=trace"), None);
        assert_eq!(parse_rust_log("nonsense"), None);
    }

    #[test]
    fn stderr_lines_carry_the_fields() {
        let line = format_line(
            &Record::builder()
                .args(format_args!("answered"))
                .level(log::Level::Info)
                .target("llamabus::mqtt::server")
                .key_values(&[("request_id", "r1"), ("completion_tokens", "7")])
                .build(),
        );
        assert_eq!(
            line,
            "llamabus: info: answered request_id=r1 completion_tokens=7"
        );
    }
}
