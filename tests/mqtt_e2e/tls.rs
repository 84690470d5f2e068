//! TLS: mqtts with a client certificate and a password file, an ACL per device, and an
//! untrusted broker certificate refused with a clear error.

use std::process::Command;
use std::time::Duration;

use crate::common::tempdir::TempDir;
use crate::mqtt_support::*;
use crate::{rr_answer, rr_cmd, sub_one_cmd, BIN};
use serde_json::Value;

/// mosquitto_rr/_sub arguments for the TLS broker: its CA, a client certificate and, with a
/// `user`, that user's password.
fn tls_client_args(port: u16, tls: &TlsFiles, user: Option<&str>) -> Vec<String> {
    let mut a: Vec<String> = ["-h", "localhost", "-p", &port.to_string(), "--cafile"]
        .map(String::from)
        .to_vec();
    a.push(tls.ca.display().to_string());
    a.extend(["--cert".into(), tls.client_cert.display().to_string()]);
    a.extend(["--key".into(), tls.client_key.display().to_string()]);
    if let Some(user) = user {
        a.extend(["-u", user, "-P", TlsFiles::PASSWORD].map(String::from));
    }
    a
}

/// `[mqtt]` settings for the TLS broker: `ca_file` (which CA to trust), our client
/// certificate, the daemon's user and its password file.
fn tls_daemon_config(tls: &TlsFiles, ca_file: &std::path::Path) -> String {
    format!(
        "[mqtt]\nusername = \"{}\"\npassword_file = \"{}\"\nca_file = \"{}\"\n\
         client_cert = \"{}\"\nclient_key = \"{}\"\n",
        TlsFiles::USER,
        tls.password_file.display(),
        ca_file.display(),
        tls.client_cert.display(),
        tls.client_key.display()
    )
}

/// mosquitto with TLS, passwords and the ACL, plus an in-process daemon connected to it
/// (online). Returns the daemon user's client arguments for mosquitto_rr/_sub.
async fn tls_setup(node: &str) -> (Mosquitto, TlsFiles, Daemon, Vec<String>) {
    let (mosq, tls) = Mosquitto::start_tls();
    let url = format!("mqtts://localhost:{}", mosq.port);
    let d = Daemon::start(settings(&url, node, &tls_daemon_config(&tls, &tls.ca)));
    let client = tls_client_args(mosq.port, &tls, Some(TlsFiles::USER));
    // The retained status says online once the daemon has connected and subscribed.
    let (code, out, err) = run_cmd(
        &mut sub_one_cmd(&client, &format!("llamabus/status/{node}"), 60),
        Duration::from_secs(70),
    );
    assert_eq!(code, Some(0), "{out} {err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["state"],
        "online"
    );
    (mosq, tls, d, client)
}

/// mosquitto_rr with `client` args: prompt on `prompt/{device}`, reply on `reply/{device}`.
fn tls_rr(client: &[String], device: &str, prompt: &str) -> String {
    rr_answer(
        client,
        &format!("llamabus/prompt/{device}"),
        &format!("llamabus/reply/{device}"),
        prompt,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtts_with_a_client_certificate_and_a_password_file() {
    let (mosq, tls, _d, client) = tls_setup("tls").await;
    tls_rr(&client, "tls", "14 + 16 =");

    // The same broker refuses a client without the password: authentication is really on.
    let anon = tls_client_args(mosq.port, &tls, None);
    let (code, _, _) = run_cmd(
        &mut sub_one_cmd(&anon, "llamabus/status/tls", 5),
        Duration::from_secs(10),
    );
    assert_ne!(code, Some(0), "an anonymous client was let in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_keeps_each_device_to_its_own_replies() {
    let (mosq, tls, _d, _) = tls_setup("acl").await;
    let [kitchen, garage] =
        TlsFiles::DEVICES.map(|user| tls_client_args(mosq.port, &tls, Some(user)));
    // The kitchen listens on every reply topic; the broker's ACL lets through only its own.
    let mut sub_args: Vec<&str> = kitchen.iter().map(String::as_str).collect();
    sub_args.extend(["-t", "llamabus/reply/#", "-C", "1", "-W", "60"]);
    let (mut sub, lines) = mosquitto_sub(&sub_args);
    // The garage is answered first, then the kitchen; the kitchen's first message is its own.
    tls_rr(&garage, "garage", "Hi");
    let own = tls_rr(&kitchen, "kitchen", "Hello");
    let got = sub_payloads(lines, Duration::from_secs(30));
    let _ = sub.wait();
    assert_eq!(
        got,
        vec![own.trim_end().to_owned()],
        "the kitchen saw another reply"
    );
    // And a device cannot publish into another device's prompt topic.
    let (code, out, err) = run_cmd(
        &mut rr_cmd(
            &kitchen,
            "llamabus/prompt/garage",
            "llamabus/reply/kitchen",
            "Hi",
            5,
        ),
        Duration::from_secs(15),
    );
    assert_ne!(
        code,
        Some(0),
        "answered through another device's topic: {out} {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_broker_certificate_is_refused_with_a_clear_error() {
    let (mosq, tls) = Mosquitto::start_tls();
    // A CA of its own that did not sign the broker's certificate.
    let other = TempDir::new();
    let other_ca = other.join("other-ca.pem");
    let (code, out, err) = run_cmd(
        Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .args(["-subj", "/CN=untrusted CA", "-keyout"])
            .arg(other.join("other-ca.key"))
            .arg("-out")
            .arg(&other_ca),
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(0), "{out} {err}");
    let cfg = other.join("llamabus.toml");
    std::fs::write(&cfg, tls_daemon_config(&tls, &other_ca)).unwrap();
    let mut child = Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(&cfg)
        .arg("--model")
        .arg(model_path())
        .arg("--broker")
        .arg(format!("mqtts://localhost:{}", mosq.port))
        .env("LLAMABUS_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("llamabus serve");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let line = loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(l) if l.contains("cannot connect") => break l,
            Ok(_) => {}
            Err(e) => panic!("no connection error logged: {e}"),
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        line.contains(&format!("mqtts://localhost:{}", mosq.port))
            && line.contains("certificate")
            && line.contains("UnknownIssuer"),
        "{line}"
    );
}
