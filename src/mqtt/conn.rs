//! Broker connection options shared by the daemon and `llamabus ask`: address, TLS (rustls
//! with the `ring` provider; no C crypto toolchain beyond ring's own), credentials, packet
//! limits, reconnect backoff.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::MqttOptions;
use rumqttc::{TlsConfiguration, Transport};

use crate::mqtt::settings::{BrokerSettings, BrokerUrl, MqttSettings};

/// Where the system's trust anchors live on Debian-family systems (the default `ca_file`).
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Why TLS could not be set up; names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: {why}", path.display())]
    Pem { path: PathBuf, why: String },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The host and port the daemon connects to.
pub fn broker_address(broker: &BrokerSettings) -> (String, u16, bool) {
    match broker {
        BrokerSettings::External(u) => (u.host.clone(), u.port, u.tls),
        BrokerSettings::Embedded { listen, .. } => (listen.ip().to_string(), listen.port(), false),
    }
}

/// MQTT 5 options for the daemon: client id, keep-alive, a persistent session, manual acks,
/// credentials, TLS and the packet limit.
///
/// At-least-once (README "Delivery guarantees"): `clean_start = false` with a Session Expiry
/// Interval makes the broker keep our subscriptions and queue QoS 1 requests while we are
/// away, and resend the unacknowledged ones (same packet id, DUP set) when we return. With
/// manual acks rumqttc leaves the PUBACK of a request to us, sent once its reply is out
/// (`server`). rumqttc keeps its own unacknowledged publishes across a reconnect and resends
/// them when the broker reports the session present (it drops them when not, and drops
/// PUBACKs still queued when the connection broke, so the broker redelivers those requests).
///
/// rumqttc's v5 client takes its *incoming* limit from the Maximum Packet Size we announce in
/// CONNECT (set here explicitly; its default is 10 KiB) and its *outgoing* limit from the
/// broker's CONNACK; the daemon additionally keeps every publish within
/// `max_packet_bytes` itself by chunking.
pub fn daemon_options(m: &MqttSettings) -> Result<MqttOptions, TlsError> {
    let (host, port, tls) = broker_address(&m.broker);
    let mut o = MqttOptions::new(m.client_id.clone(), host, port);
    o.set_keep_alive(m.keep_alive);
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(
        u32::try_from(m.session_expiry.as_secs()).unwrap_or(u32::MAX),
    ));
    o.set_manual_acks(true);
    o.set_max_packet_size(Some(m.max_packet_bytes));
    o.set_connection_timeout(10);
    if let Some(user) = &m.username {
        let pass = m.password.as_ref().map(|p| p.0.clone()).unwrap_or_default();
        o.set_credentials(user.clone(), pass);
    }
    if tls {
        let cfg = rustls_config(
            m.ca_file.as_deref(),
            m.client_cert.as_deref().zip(m.client_key.as_deref()),
        )?;
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(cfg),
        )));
    }
    Ok(o)
}

/// MQTT 5 options for a short-lived client (`llamabus ask`, tests).
pub fn client_options(
    client_id: &str,
    url: &BrokerUrl,
    max_packet_bytes: u32,
) -> Result<MqttOptions, TlsError> {
    let mut o = MqttOptions::new(client_id, url.host.clone(), url.port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_start(true);
    o.set_max_packet_size(Some(max_packet_bytes));
    o.set_connection_timeout(10);
    if url.tls {
        let cfg = rustls_config(None, None)?;
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(cfg),
        )));
    }
    Ok(o)
}

/// A rustls client configuration: trust anchors from `ca_file` (PEM; default the system
/// bundle), optional client certificate and key (PEM).
pub fn rustls_config(
    ca_file: Option<&Path>,
    client_auth: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig, TlsError> {
    let ca = ca_file.unwrap_or(Path::new(SYSTEM_CA_BUNDLE));
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(ca)? {
        roots.add(cert).map_err(|e| TlsError::Pem {
            path: ca.to_owned(),
            why: e.to_string(),
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    Ok(match client_auth {
        Some((cert, key)) => {
            let certs = read_certs(cert)?;
            let mut r = BufReader::new(open(key)?);
            let key_der = rustls_pemfile::private_key(&mut r)
                .map_err(|error| TlsError::Io {
                    path: key.to_owned(),
                    error,
                })?
                .ok_or_else(|| TlsError::Pem {
                    path: key.to_owned(),
                    why: "no private key found".into(),
                })?;
            builder.with_client_auth_cert(certs, key_der)?
        }
        None => builder.with_no_client_auth(),
    })
}

fn open(path: &Path) -> Result<File, TlsError> {
    File::open(path).map_err(|error| TlsError::Io {
        path: path.to_owned(),
        error,
    })
}

fn read_certs(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, TlsError> {
    let mut r = BufReader::new(open(path)?);
    let certs = rustls_pemfile::certs(&mut r)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::Io {
            path: path.to_owned(),
            error,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            why: "no certificates found".into(),
        });
    }
    Ok(certs)
}

/// Exponential backoff with jitter between failed connection attempts: 250 ms doubling to
/// 30 s, each wait drawn uniformly from [d/2, d] so a fleet of boards does not reconnect in
/// lockstep after a broker restart.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    rng: u64,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(250);
    pub const CAP: Duration = Duration::from_secs(30);

    pub fn new() -> Backoff {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()).rotate_left(32);
        Backoff {
            next: Self::FIRST,
            rng: seed | 1,
        }
    }

    /// After a successful connection.
    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    /// The wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Self::CAP);
        let frac = (xorshift64(&mut self.rng) >> 11) as f64 / (1u64 << 53) as f64;
        d.mul_f64(0.5 + 0.5 * frac)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

/// A random hex string of `n` bytes (client ids, correlation data, reply topics); not for
/// secrets.
pub fn random_hex(n: usize) -> String {
    static SALT: AtomicU64 = AtomicU64::new(0);
    let salt = SALT.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    let mut x = (Backoff::new().rng ^ salt) | 1;
    (0..n)
        .map(|_| format!("{:02x}", (xorshift64(&mut x) >> 24) as u8))
        .collect()
}

/// One step of xorshift64 (Marsaglia) on a non-zero `state`: cheap jitter and ids, not secrets.
fn xorshift64(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_with_jitter() {
        let mut b = Backoff::new();
        let mut last = Duration::ZERO;
        for i in 0..20 {
            let d = b.next_delay();
            let nominal = (Backoff::FIRST * 2u32.pow(i.min(10))).min(Backoff::CAP);
            assert!(
                d >= nominal / 2 && d <= nominal,
                "{i}: {d:?} vs {nominal:?}"
            );
            last = d;
        }
        assert!(last >= Backoff::CAP / 2);
        b.reset();
        assert!(b.next_delay() <= Backoff::FIRST);
    }

    #[test]
    fn random_hex_has_the_length() {
        assert_eq!(random_hex(8).len(), 16);
    }
}
