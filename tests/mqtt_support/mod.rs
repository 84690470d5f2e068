//! Helpers of the MQTT end-to-end tests: a real mosquitto on a free loopback port, the daemon
//! in-process (with a handle on its engine) or as the built binary, and a small MQTT 5 test
//! client that collects what it receives.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use llamabus::engine::Engine;
use llamabus::mqtt::server;
use llamabus::service::config::{self, Overrides, Settings};
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::{mpsc, oneshot};

pub const MOSQUITTO: &str = "/usr/sbin/mosquitto";

pub fn model_path() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.is_file(),
        "{} is missing: run scripts/fetch-test-data.sh",
        p.display()
    );
    p
}

/// A loopback port nothing listens on now, never handed out before in this process: the tests
/// of one binary run concurrently, and the kernel may offer a port just released by another
/// test's probe, so two brokers could otherwise be given the same port.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A mosquitto process on a loopback port, killed on drop.
pub struct Mosquitto {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// Listener options after `listener PORT 127.0.0.1` (TLS, authentication).
    listener_conf: String,
}

/// Files for a TLS broker that requires client certificates and a password: a test CA, the
/// broker's certificate (for `localhost` and 127.0.0.1), a client certificate, and a
/// mosquitto password file. Users: `USER` (the daemon: all of `llamabus/#`) and the devices
/// in `DEVICES`, which the ACL limits to publishing on `llamabus/prompt/{user}` and reading
/// `llamabus/reply/{user}`. Every user's password is `PASSWORD`.
pub struct TlsFiles {
    pub ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A file holding [`TlsFiles::PASSWORD`] (the daemon reads passwords from files).
    pub password_file: PathBuf,
}

impl TlsFiles {
    pub const USER: &'static str = "board";
    pub const PASSWORD: &'static str = "s3cret-pw";
    pub const DEVICES: [&'static str; 2] = ["kitchen", "garage"];
}

impl Mosquitto {
    pub fn start() -> Mosquitto {
        Mosquitto::start_with(|_| String::new())
    }

    /// mosquitto with TLS only (mutual: a client certificate is required) and password
    /// authentication, no anonymous access. Certificates come from the `openssl` CLI.
    pub fn start_tls() -> (Mosquitto, TlsFiles) {
        let mut files = None;
        let m = Mosquitto::start_with(|dir| {
            let f = make_tls_files(dir);
            let conf = format!(
                "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n\
                 allow_anonymous false\npassword_file {}\nacl_file {}\n",
                f.ca.display(),
                dir.join("server.pem").display(),
                dir.join("server.key").display(),
                dir.join("passwd").display(),
                dir.join("acl").display()
            );
            files = Some(f);
            conf
        });
        (m, files.unwrap())
    }

    /// mosquitto with `conf` (e.g. `max_packet_size 262144\n`) added to its configuration.
    pub fn start_with_conf(conf: &str) -> Mosquitto {
        Mosquitto::start_with(|_| conf.to_owned())
    }

    fn start_with(listener_conf: impl FnOnce(&Path) -> String) -> Mosquitto {
        assert!(
            Path::new(MOSQUITTO).exists(),
            "{MOSQUITTO} is missing: apt-get install mosquitto mosquitto-clients"
        );
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("llamabus-mosq-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let listener_conf = listener_conf(&dir);
        let mut m = Mosquitto {
            port,
            dir,
            child: None,
            listener_conf,
        };
        // The port may have been taken (by another program's connection) since it was probed:
        // mosquitto then exits at once, and the broker moves to another port.
        for _ in 0..5 {
            if m.try_spawn() {
                return m;
            }
            m.port = free_port();
        }
        panic!("mosquitto did not start on five ports in a row");
    }

    /// Starts mosquitto on `self.port` (again after [`Mosquitto::kill`]).
    fn spawn(&mut self) {
        assert!(
            self.try_spawn(),
            "mosquitto exited: port {} taken",
            self.port
        );
    }

    /// Starts mosquitto and waits until it listens; false if it exited first (port taken).
    fn try_spawn(&mut self) -> bool {
        let conf = self.dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {} 127.0.0.1\nallow_anonymous true\npersistence false\n{}",
                self.port, self.listener_conf
            ),
        )
        .unwrap();
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        let t0 = Instant::now();
        loop {
            // Our own process must be the one listening: it exits when the bind fails.
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                eprintln!("mosquitto on port {} exited: {status}", self.port);
                self.child = None;
                return false;
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "nothing listens on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// mosquitto that keeps sessions and queued messages across a restart, even a SIGKILL:
    /// the database is saved after every change (`autosave_on_changes` with a count of 1).
    pub fn start_persistent() -> Mosquitto {
        Mosquitto::start_with(|dir| {
            let db = dir.join("db");
            std::fs::create_dir_all(&db).unwrap();
            // mosquitto started as root drops to its own user before writing.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o777)).unwrap();
            format!(
                "persistence true\npersistence_location {}/\nautosave_on_changes true\n\
                 autosave_interval 1\n",
                db.display()
            )
        })
    }

    /// Sends `sig` (e.g. `STOP`, `CONT`) to the broker process.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("mosquitto runs").id();
        let (code, _, err) = run_cmd(
            Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]),
            Duration::from_secs(5),
        );
        assert_eq!(code, Some(0), "kill -{sig}: {err}");
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills and restarts on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

/// Runs `openssl` with `args` in `dir`, panicking with its stderr on failure.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A P-256 CA, a broker certificate for localhost/127.0.0.1 and a client certificate, all
/// signed by the CA, plus mosquitto's password file. Keys are made world-readable because
/// mosquitto started as root drops to its own user before reading them.
fn make_tls_files(dir: &Path) -> TlsFiles {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "2",
        "-subj",
        "/CN=llamabus test CA",
    ];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    openssl(dir, &ca);
    let exts = dir.join("ext.cnf");
    std::fs::write(
        &exts,
        "[server]\nsubjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n\
         [client]\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    for (name, cn) in [("server", "localhost"), ("client", "llamabus-client")] {
        let subj = format!("/CN={cn}");
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        let mut req = vec!["req", "-subj", &subj, "-keyout", &key, "-out", &csr];
        req.extend(ec);
        openssl(dir, &req);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-days",
                "2",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-extfile",
                "ext.cnf",
                "-extensions",
                name,
                "-out",
                &pem,
            ],
        );
    }
    let passwd = dir.join("passwd");
    for (i, user) in std::iter::once(TlsFiles::USER)
        .chain(TlsFiles::DEVICES)
        .enumerate()
    {
        let create = if i == 0 { "-c" } else { "-b" };
        let (code, out, err) = run_cmd(
            Command::new("mosquitto_passwd").args([
                "-b",
                create,
                passwd.to_str().unwrap(),
                user,
                TlsFiles::PASSWORD,
            ]),
            Duration::from_secs(10),
        );
        assert_eq!(code, Some(0), "mosquitto_passwd: {out} {err}");
    }
    // Patterns apply to every user; the daemon's user block adds the whole tree.
    std::fs::write(
        dir.join("acl"),
        format!(
            "pattern write llamabus/prompt/%u\npattern read llamabus/reply/%u\n\
             user {}\ntopic readwrite llamabus/#\n",
            TlsFiles::USER
        ),
    )
    .unwrap();
    let password_file = dir.join("password");
    std::fs::write(&password_file, format!("{}\n", TlsFiles::PASSWORD)).unwrap();
    for f in std::fs::read_dir(dir).unwrap() {
        use std::os::unix::fs::PermissionsExt;
        let p = f.unwrap().path();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    TlsFiles {
        ca: dir.join("ca.pem"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
        password_file,
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Settings for a daemon on `broker_url`, from TOML fragments appended to a base config
/// (1 thread, small limits so tests run fast on 2 cores).
pub fn settings(broker_url: &str, node: &str, extra: &str) -> Settings {
    let text = format!("[node]\nname = \"{node}\"\n{extra}\n",);
    // `extra` may contain any section; the base values go in through the defaults below.
    let text = merge_base(&text);
    config::from_str(
        &text,
        Path::new("e2e.toml"),
        &Overrides {
            model: Some(model_path()),
            broker: Some(broker_url.to_owned()),
            prefix: None,
            homeassistant: None,
        },
    )
    .unwrap_or_else(|e| panic!("test config: {e}\n{text}"))
}

/// Adds `[model] threads = 1`, `context = 1024`, `[limits] max_prompt_tokens = 512` and
/// `default_max_tokens = 16` unless the fragment sets them.
fn merge_base(text: &str) -> String {
    let mut doc: toml::Table = toml::from_str(text).unwrap();
    let model = doc
        .entry("model")
        .or_insert_with(|| toml::Value::Table(Default::default()))
        .as_table_mut()
        .unwrap();
    model.entry("threads").or_insert(toml::Value::Integer(1));
    model.entry("context").or_insert(toml::Value::Integer(1024));
    let limits = doc
        .entry("limits")
        .or_insert_with(|| toml::Value::Table(Default::default()))
        .as_table_mut()
        .unwrap();
    limits
        .entry("max_prompt_tokens")
        .or_insert(toml::Value::Integer(512));
    limits
        .entry("default_max_tokens")
        .or_insert(toml::Value::Integer(16));
    limits
        .entry("shutdown_drain_s")
        .or_insert(toml::Value::Integer(2));
    toml::to_string(&doc).unwrap()
}

/// The daemon running in-process on its own runtime thread.
pub struct Daemon {
    pub engine: Engine,
    pub settings: Settings,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Daemon {
    pub fn start(settings: Settings) -> Daemon {
        let engine = Engine::start(settings.engine_config(), |_| {}).expect("engine start");
        let (stop, stopped) = oneshot::channel::<()>();
        let (s, e) = (settings.clone(), engine.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(server::run(s, e, async {
                let _ = stopped.await;
            }))
            .expect("server::run");
        });
        Daemon {
            engine,
            settings,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Clean shutdown: waits for `run` to return.
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().expect("daemon thread panicked");
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.stop();
        } else if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// A received message.
#[derive(Clone, Debug)]
pub struct Msg {
    pub topic: String,
    pub payload: Bytes,
    pub props: PublishProperties,
    pub retain: bool,
    pub qos: QoS,
}

impl Msg {
    pub fn text(&self) -> String {
        String::from_utf8(self.payload.to_vec()).expect("UTF-8 payload")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload)
            .unwrap_or_else(|e| panic!("JSON payload on {}: {e}: {:?}", self.topic, self.payload))
    }

    pub fn correlation(&self) -> Option<&[u8]> {
        self.props.correlation_data.as_deref()
    }
}

/// An MQTT 5 test client that subscribes to `filters` and collects every message.
pub struct TestClient {
    pub client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Msg>,
    task: tokio::task::JoinHandle<()>,
}

impl TestClient {
    pub async fn connect(port: u16, filters: &[&str]) -> TestClient {
        let id = format!("test-{}", llamabus::mqtt::conn::random_hex(6));
        TestClient::connect_with(MqttOptions::new(id, "127.0.0.1", port), filters).await
    }

    /// A client with a persistent session (`clean_start = false`, one hour): the broker
    /// queues its messages while it (or the broker, with persistence) is restarting.
    pub async fn connect_persistent(port: u16, client_id: &str, filters: &[&str]) -> TestClient {
        let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(3600));
        TestClient::connect_with(o, filters).await
    }

    /// Connects with `o` (packet limit and keep-alive set here) and subscribes to `filters`
    /// after every ConnAck.
    pub async fn connect_with(mut o: MqttOptions, filters: &[&str]) -> TestClient {
        o.set_max_packet_size(Some(1 << 20));
        o.set_keep_alive(Duration::from_secs(30));
        let (client, mut el) = AsyncClient::new(o, 64);
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel::<()>();
        let filters: Vec<Filter> = filters
            .iter()
            .map(|f| Filter::new(*f, QoS::AtLeastOnce))
            .collect();
        let c = client.clone();
        let task = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if filters.is_empty() {
                            if let Some(r) = ready.take() {
                                let _ = r.send(());
                            }
                        } else {
                            c.try_subscribe_many(filters.clone()).unwrap();
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send(to_msg(p));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .expect("test client connect")
            .unwrap();
        TestClient { client, rx, task }
    }

    pub async fn publish(&self, topic: &str, payload: impl Into<Bytes>, props: PublishProperties) {
        self.client
            .publish_with_properties(topic, QoS::AtLeastOnce, false, payload.into(), props)
            .await
            .unwrap();
    }

    /// Publishes at `qos` (no properties).
    pub async fn publish_qos(&self, topic: &str, qos: QoS, payload: impl Into<Bytes>) {
        self.client
            .publish(topic, qos, false, payload.into())
            .await
            .unwrap();
    }

    /// The next message, or a panic after `secs`.
    pub async fn recv(&mut self, secs: u64) -> Msg {
        tokio::time::timeout(Duration::from_secs(secs), self.rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no message within {secs} s"))
            .unwrap()
    }

    /// The next message within `ms`, if any.
    pub async fn try_recv(&mut self, ms: u64) -> Option<Msg> {
        tokio::time::timeout(Duration::from_millis(ms), self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Waits for a message matching `pred` (others are dropped).
    pub async fn recv_where(&mut self, secs: u64, pred: impl Fn(&Msg) -> bool) -> Msg {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = tokio::time::timeout(left, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("no matching message within {secs} s"))
                .unwrap();
            if pred(&m) {
                return m;
            }
        }
    }
}

impl Drop for TestClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn to_msg(p: Publish) -> Msg {
    Msg {
        topic: String::from_utf8(p.topic.to_vec()).unwrap(),
        payload: p.payload,
        props: p.properties.unwrap_or_default(),
        retain: p.retain,
        qos: p.qos,
    }
}

/// Properties of a request: response topic, correlation data, optional content type.
pub fn rr(response_topic: &str, corr: &str, content_type: Option<&str>) -> PublishProperties {
    PublishProperties {
        response_topic: Some(response_topic.to_owned()),
        correlation_data: Some(Bytes::from(corr.as_bytes().to_vec())),
        content_type: content_type.map(str::to_owned),
        ..Default::default()
    }
}

/// Waits for the retained status of `node` with `state`.
pub async fn wait_status(port: u16, prefix: &str, node: &str, state: &str) -> serde_json::Value {
    let topic = format!("{prefix}/status/{node}");
    let mut c = TestClient::connect(port, &[topic.as_str()]).await;
    c.recv_where(60, |m| m.json()["state"] == state)
        .await
        .json()
}

/// Runs a command to completion with a time limit, returning (status code, stdout, stderr).
pub fn run_cmd(cmd: &mut Command, limit: Duration) -> (Option<i32>, String, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let (otx, orx) = std_mpsc::channel();
    let (etx, erx) = std_mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(out), &mut s);
        let _ = otx.send(s);
    });
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(err), &mut s);
        let _ = etx.send(s);
    });
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.code();
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status,
        orx.recv().unwrap_or_default(),
        erx.recv().unwrap_or_default(),
    )
}

/// `mosquitto_sub -d` that is known to be subscribed: returns the child once SUBACK is seen,
/// with its remaining stdout lines arriving on the receiver.
pub fn mosquitto_sub(args: &[&str]) -> (Child, std_mpsc::Receiver<String>) {
    // stdbuf: mosquitto_sub's stdout is block-buffered when piped.
    let mut child = Command::new("stdbuf")
        .args(["-oL", "mosquitto_sub", "-d"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto_sub");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std_mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let t0 = Instant::now();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("mosquitto_sub subscribed");
        if line.contains("SUBACK") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10));
    }
    (child, rx)
}

/// Collects `mosquitto_sub -d` output until it exits: the payload lines of PUBLISH messages.
pub fn sub_payloads(rx: std_mpsc::Receiver<String>, limit: Duration) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_payload = false;
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            break;
        };
        if line.starts_with("Client ") {
            in_payload = line.contains("received PUBLISH");
            if in_payload {
                out.push(String::new());
            }
            continue;
        }
        if in_payload {
            let last = out.last_mut().unwrap();
            if !last.is_empty() {
                last.push('\n');
            }
            last.push_str(&line);
        }
    }
    out
}

// ---- systemd service tests: a test-owned NOTIFY_SOCKET and the daemon binary ----

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
