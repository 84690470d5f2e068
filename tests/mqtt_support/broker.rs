//! A real mosquitto on a free loopback port (plain, TLS with generated certificates,
//! persistent), killed on drop.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, run_cmd};

pub const MOSQUITTO: &str = "/usr/sbin/mosquitto";

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

/// Runs `openssl` (apt-get install openssl) with `args` in `dir`, panicking with its stderr on
/// failure.
fn openssl(dir: &Path, args: &[&str]) {
    let (code, _, err) = run_cmd(
        Command::new("openssl").args(args).current_dir(dir),
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(0), "openssl {args:?}: {err}");
}

/// `openssl req` arguments for a new P-256 key without a passphrase.
const EC_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

/// A P-256 CA, a broker certificate for localhost/127.0.0.1 and a client certificate, all
/// signed by the CA, plus mosquitto's password file. Keys are made world-readable because
/// mosquitto started as root drops to its own user before reading them.
fn make_tls_files(dir: &Path) -> TlsFiles {
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "2",
        "-subj",
        "/CN=llamabus test CA",
    ];
    ca.extend(EC_KEY);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    openssl(dir, &ca);
    std::fs::write(
        dir.join("ext.cnf"),
        "[server]\nsubjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n\
         [client]\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    for (name, cn) in [("server", "localhost"), ("client", "llamabus-client")] {
        make_signed_cert(dir, name, cn);
    }
    let password_file = make_passwords_and_acl(dir);
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

/// `{name}.key` and `{name}.pem`: a key and a certificate for `cn`, signed by the CA in `dir`
/// with the `[name]` extensions of ext.cnf.
fn make_signed_cert(dir: &Path, name: &str, cn: &str) {
    let subj = format!("/CN={cn}");
    let (key, csr, pem) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
    );
    let mut req = vec!["req", "-subj", &subj, "-keyout", &key, "-out", &csr];
    req.extend(EC_KEY);
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

/// mosquitto's password file (the daemon's user and the devices) and ACL in `dir`, and the
/// daemon's password file; returns the latter's path.
fn make_passwords_and_acl(dir: &Path) -> PathBuf {
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
    password_file
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
