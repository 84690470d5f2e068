//! The systemd service tests' parts: a test-owned NOTIFY_SOCKET, the daemon binary as a
//! process, and its config.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use super::{model_path, run_cmd};

pub use crate::common::tempdir::TempDir;

/// A unix datagram socket standing in for systemd's notification socket: every datagram,
/// with the time it arrived, goes to a channel.
pub struct NotifySocket {
    pub path: PathBuf,
    rx: std_mpsc::Receiver<(Instant, String)>,
    _dir: TempDir,
}

impl NotifySocket {
    pub fn new() -> NotifySocket {
        let dir = TempDir::tagged("notify");
        let path = dir.join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let (tx, rx) = std_mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                if tx.send((Instant::now(), msg)).is_err() {
                    break;
                }
            }
        });
        NotifySocket {
            path,
            rx,
            _dir: dir,
        }
    }

    /// The next datagram within `limit`.
    pub fn next(&self, limit: Duration) -> Option<(Instant, String)> {
        self.rx.recv_timeout(limit).ok()
    }

    /// Datagrams until one satisfies `pred` (returned last), or a panic after `limit`.
    pub fn until(&self, limit: Duration, pred: impl Fn(&str) -> bool) -> Vec<(Instant, String)> {
        let deadline = Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(m) => {
                    let done = pred(&m.1);
                    seen.push(m);
                    if done {
                        return seen;
                    }
                }
                Err(_) => panic!(
                    "no matching notification within {limit:?}; got {:?}",
                    seen.iter().map(|m| &m.1).collect::<Vec<_>>()
                ),
            }
        }
    }

    /// Everything that arrives during `d`.
    pub fn during(&self, d: Duration) -> Vec<(Instant, String)> {
        let deadline = Instant::now() + d;
        let mut seen = Vec::new();
        while let Ok(m) = self
            .rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            seen.push(m);
        }
        seen
    }
}

/// `llamabus serve --config <config>` with a clean environment (PATH plus `env`), stderr
/// inherited; killed on drop.
pub struct ServeProcess {
    pub child: Child,
    pub config: PathBuf,
    pub dir: TempDir,
}

impl ServeProcess {
    pub fn start(bin: &str, config: &str, env: &[(&str, String)]) -> ServeProcess {
        ServeProcess::start_in(TempDir::tagged("svc"), bin, config, env, Stdio::inherit())
    }

    /// [`ServeProcess::start`] with stderr (the log) going to `{dir}/serve.log`, read with
    /// [`ServeProcess::log`].
    pub fn start_logged(bin: &str, config: &str, env: &[(&str, String)]) -> ServeProcess {
        let dir = TempDir::tagged("svc");
        let log = std::fs::File::create(dir.join("serve.log")).unwrap();
        ServeProcess::start_in(dir, bin, config, env, Stdio::from(log))
    }

    /// The log written so far (see [`ServeProcess::start_logged`]).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("serve.log")).unwrap_or_default()
    }

    fn start_in(dir: TempDir, bin: &str, config: &str, env: &[(&str, String)], err: Stdio) -> Self {
        let cfg = dir.write("config.toml", config);
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--config")
            .arg(&cfg)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.stderr(err).spawn().expect("llamabus serve");
        ServeProcess {
            child,
            config: cfg,
            dir,
        }
    }

    pub fn signal(&self, sig: &str) {
        let (code, _, err) = run_cmd(
            Command::new("kill").args([&format!("-{sig}"), &self.child.id().to_string()]),
            Duration::from_secs(5),
        );
        assert_eq!(code, Some(0), "kill -{sig}: {err}");
    }

    /// The exit status within `limit`, or a panic.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(t0.elapsed() < limit, "serve did not exit within {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A service config for a test broker: one thread, a small context, short greedy answers.
pub fn service_config(broker_url: &str, node: &str, extra_limits: &str, extra: &str) -> String {
    format!(
        "[node]\nname = \"{node}\"\n[mqtt]\nbroker = \"{broker_url}\"\n\
         [limits]\nmax_prompt_tokens = 256\nmax_tokens_cap = 1000\n{extra_limits}\n\
         [model]\npath = \"{}\"\nthreads = 1\ncontext = 1536\n\
         [model.sampling]\ntemperature = 0.0\n{extra}\n",
        model_path().display()
    )
}
