//! The systemd notification protocol (`sd_notify(3)`): readiness, status text, watchdog pings,
//! start-timeout extensions, reload and stop announcements.
//!
//! A plain `AF_UNIX` datagram to `$NOTIFY_SOCKET` (a path, or `@name` in the abstract
//! namespace), written with std: no C library, no `unsafe`. Without `NOTIFY_SOCKET` every call is
//! a no-op, so the daemon behaves the same outside systemd.
//!
//! The watchdog (CONVENTIONS practice 3, after coreos/zincati and omnect-device-service) is
//! pinged every half `WATCHDOG_USEC`, but only while the inference thread's heartbeat is fresh:
//! a hung compute stops the pings and systemd restarts the service.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};

use crate::mqtt::lifecycle::{Heartbeat, Lifecycle, Task};

/// How long a model load may keep extending the start timeout: a load that takes longer is
/// treated as hung, and systemd's start timeout fires.
pub const MAX_LOAD: Duration = Duration::from_secs(15 * 60);
/// Interval of the load guard's messages when systemd runs no watchdog.
const LOAD_TICK: Duration = Duration::from_secs(10);

/// A handle on the service manager's notification socket; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Notifier {
    inner: Option<Arc<Socket>>,
    watchdog: Option<Duration>,
}

#[derive(Debug)]
struct Socket {
    sock: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// From `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` (the watchdog applies only when
    /// `WATCHDOG_PID` is unset or ours). A socket that cannot be used is logged and ignored.
    pub fn from_env() -> Notifier {
        let watchdog = watchdog_from(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
        );
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return Notifier::default();
        };
        match open(&path.to_string_lossy()) {
            Ok(s) => Notifier {
                inner: Some(Arc::new(s)),
                watchdog,
            },
            Err(e) => {
                warn!("NOTIFY_SOCKET {path:?}: {e}; not notifying systemd");
                Notifier::default()
            }
        }
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier::default()
    }

    /// True when `NOTIFY_SOCKET` was usable.
    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The `WATCHDOG_USEC` interval, when systemd runs a watchdog for us.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.filter(|_| self.enabled())
    }

    /// Sends raw `KEY=VALUE` lines. Failures are logged, never fatal: systemd going away must
    /// not take the daemon down.
    pub fn send(&self, msg: &str) {
        let Some(s) = &self.inner else { return };
        if let Err(e) = s.sock.send_to_addr(msg.as_bytes(), &s.addr) {
            debug!("sd_notify {msg:?}: {e}");
        }
    }

    /// `STATUS=`: one line of human-readable text (`systemctl status` shows it).
    pub fn status(&self, text: &str) {
        self.send(&format!("STATUS={}", one_line(text)));
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, text: &str) {
        self.send(&format!("READY=1\nSTATUS={}", one_line(text)));
    }

    /// `RELOADING=1` with a status line; [`Notifier::ready`] ends the reload.
    pub fn reloading(&self, text: &str) {
        self.send(&format!("RELOADING=1\nSTATUS={}", one_line(text)));
    }

    /// `STOPPING=1` with a status line.
    pub fn stopping(&self, text: &str) {
        self.send(&format!("STOPPING=1\nSTATUS={}", one_line(text)));
    }

    /// `EXTEND_TIMEOUT_USEC=`: the current start/stop timeout is extended to `by` from now.
    pub fn extend_timeout(&self, by: Duration) {
        self.send(&format!("EXTEND_TIMEOUT_USEC={}", by.as_micros()));
    }

    /// `WATCHDOG=1`.
    pub fn watchdog_ping(&self) {
        self.send("WATCHDOG=1");
    }

    /// Keeps systemd waiting while a model loads (slow SD cards): at once and then every tick
    /// (half the watchdog interval, or 10 s), `EXTEND_TIMEOUT_USEC` of three ticks, plus a
    /// watchdog ping, for at most [`MAX_LOAD`]. Run it alongside the load and drop it after.
    pub async fn load_guard(self) {
        if !self.enabled() {
            return std::future::pending().await;
        }
        let tick = self.watchdog_interval().map_or(LOAD_TICK, |w| w / 2);
        let t0 = Instant::now();
        let mut every = tokio::time::interval(tick);
        while t0.elapsed() < MAX_LOAD {
            every.tick().await;
            self.extend_timeout(tick * 3);
            self.watchdog_ping();
        }
        warn!("the model has been loading for {MAX_LOAD:?}; no longer extending the start timeout");
        std::future::pending().await
    }

    /// Pings the watchdog every half interval while `heartbeat()` (the inference thread's last
    /// sign of life) is younger than half the interval. Runs forever; without a watchdog it
    /// just waits.
    pub async fn watchdog_task(self, heartbeat: impl Fn() -> Instant) {
        let Some(interval) = self.watchdog_interval() else {
            return std::future::pending().await;
        };
        let half = interval / 2;
        info!("systemd watchdog: {interval:?}; pinging every {half:?} while the inference thread is alive");
        let mut every = tokio::time::interval(half);
        let mut stale = false;
        loop {
            every.tick().await;
            let age = heartbeat().elapsed();
            if age <= half {
                if stale {
                    info!("the inference thread is alive again; watchdog pings resume");
                    stale = false;
                }
                self.watchdog_ping();
            } else if !stale {
                warn!(
                    "no heartbeat from the inference thread for {age:.1?}: withholding the \
                     watchdog ping, so systemd restarts the service if it stays hung"
                );
                stale = true;
            }
        }
    }
}

fn open(path: &str) -> io::Result<Socket> {
    let addr = match path.strip_prefix('@') {
        // Abstract namespace (systemd in some containers).
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())?
        }
        None if path.starts_with('/') => SocketAddr::from_pathname(path)?,
        None => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not an absolute path or @abstract name",
            ))
        }
    };
    Ok(Socket {
        sock: UnixDatagram::unbound()?,
        addr,
    })
}

/// The server's lifecycle as systemd notifications: the load guard while models load, the
/// heartbeat-gated watchdog while serving.
impl Lifecycle for Notifier {
    fn status(&self, text: &str) {
        Notifier::status(self, text);
    }

    fn ready(&self, text: &str) {
        Notifier::ready(self, text);
    }

    fn reloading(&self, text: &str) {
        Notifier::reloading(self, text);
    }

    fn stopping(&self, text: &str) {
        Notifier::stopping(self, text);
    }

    fn while_loading(&self) -> Task {
        Box::pin(self.clone().load_guard())
    }

    fn watch(&self, heartbeat: Heartbeat) -> Task {
        Box::pin(self.clone().watchdog_task(move || heartbeat()))
    }
}

/// The watchdog interval from `WATCHDOG_USEC`, unless `WATCHDOG_PID` names another process.
fn watchdog_from(usec: Option<&str>, pid: Option<&str>) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    match pid.map(|p| p.trim().parse::<u32>()) {
        Some(Ok(p)) if p != std::process::id() => None,
        Some(Err(_)) => None,
        _ => Some(Duration::from_micros(usec)),
    }
}

/// Status text is one line: a newline would start a new `KEY=VALUE` assignment.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Notifier, UnixDatagram, tempdir::Dir) {
        let dir = tempdir::Dir::new();
        let path = dir.0.join("notify.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            inner: Some(Arc::new(open(path.to_str().unwrap()).unwrap())),
            watchdog: Some(Duration::from_millis(200)),
        };
        (n, rx, dir)
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                let p = std::env::temp_dir().join(format!(
                    "llamabus-notify-{}-{:?}",
                    std::process::id(),
                    std::thread::current().id()
                ));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn recv(rx: &UnixDatagram) -> String {
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 4096];
        let n = rx.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn messages_on_the_wire() {
        let (n, rx, _dir) = pair();
        n.ready("serving\nmodel");
        assert_eq!(recv(&rx), "READY=1\nSTATUS=serving model");
        n.extend_timeout(Duration::from_secs(30));
        assert_eq!(recv(&rx), "EXTEND_TIMEOUT_USEC=30000000");
        n.stopping("bye");
        assert_eq!(recv(&rx), "STOPPING=1\nSTATUS=bye");
        n.reloading("r");
        assert_eq!(recv(&rx), "RELOADING=1\nSTATUS=r");
    }

    #[test]
    fn abstract_socket_names() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("llamabus-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        let n = Notifier {
            inner: Some(Arc::new(open(&format!("@{name}")).unwrap())),
            watchdog: None,
        };
        n.watchdog_ping();
        assert_eq!(recv(&rx), "WATCHDOG=1");
        assert!(open("relative/path").is_err());
    }

    #[test]
    fn disabled_is_silent_and_has_no_watchdog() {
        let n = Notifier::disabled();
        n.ready("x");
        assert!(!n.enabled());
        assert_eq!(n.watchdog_interval(), None);
    }

    #[test]
    fn watchdog_pid_must_be_ours() {
        let me = std::process::id().to_string();
        assert_eq!(
            watchdog_from(Some("2000000"), None),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            watchdog_from(Some("2000000"), Some(&me)),
            Some(Duration::from_secs(2))
        );
        assert_eq!(watchdog_from(Some("2000000"), Some("1")), None);
        assert_eq!(watchdog_from(Some("0"), None), None);
        assert_eq!(watchdog_from(Some("x"), None), None);
        assert_eq!(watchdog_from(None, None), None);
    }

    #[tokio::test(start_paused = true)]
    async fn watchdog_pings_only_while_the_heartbeat_is_fresh() {
        let (n, rx, _dir) = pair();
        rx.set_nonblocking(true).unwrap();
        let beat = Arc::new(std::sync::Mutex::new(Instant::now()));
        let b = beat.clone();
        let task = tokio::spawn(n.watchdog_task(move || *b.lock().unwrap()));
        let count = |rx: &UnixDatagram| {
            let mut buf = [0u8; 64];
            let mut n = 0;
            while let Ok(len) = rx.recv(&mut buf) {
                assert_eq!(&buf[..len], b"WATCHDOG=1");
                n += 1;
            }
            n
        };
        // Fresh heartbeats (std time does not pause: refresh it by hand).
        for _ in 0..4 {
            *beat.lock().unwrap() = Instant::now();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(count(&rx) >= 3);
        // Stale: older than half the interval.
        *beat.lock().unwrap() = Instant::now() - Duration::from_millis(150);
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(count(&rx), 0);
        task.abort();
    }
}
