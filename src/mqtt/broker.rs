//! The embedded broker: `rumqttd` in-process, for a board with nothing else installed.
//!
//! What it is and is not (rumqttd 0.20, checked against its source and in the e2e tests):
//! - **MQTT 5 only**, on `mqtt.embedded_listen` (default `127.0.0.1:1883`): the daemon itself,
//!   `llamabus ask`, `mosquitto_rr` and `mosquitto_pub/sub -V 5` connect there.
//! - **No MQTT 3.1.1 listener.** rumqttd serves 3.1.1 on a separate listener, but forwarding a
//!   message that carries MQTT 5 properties (every reply and status of the daemon does) to a
//!   3.1.1 subscriber hits an `unreachable!()` in rumqttd's v4 encoder
//!   (`protocol/v4/mod.rs`), which kills that listener's thread. 3.1.1 clients (and the
//!   postcard topic form meant for them) need a real broker such as mosquitto.
//! - PUBLISH properties (Response Topic, Correlation Data, Content Type, Message Expiry) are
//!   stored with the message and forwarded, so MQTT 5 request/response works through it.
//! - Retained messages and a retained Last Will work, so the status topic behaves as with
//!   mosquitto. Shared subscriptions (`$share/...`) are supported (round robin).
//! - No TLS, no authentication, no persistence, no bridging here: it listens on loopback by
//!   default and is meant for one board. Use a real broker for anything more.
//! - rumqttd cannot be stopped in-process: its threads live until the process exits. Its
//!   `tracing` spans reach `log` as error-level records; the binary's logger hides them
//!   unless `LLAMABUS_LOG=debug`.

use std::net::{SocketAddr, TcpListener};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

/// Why the embedded broker did not start; names the address.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("embedded broker: cannot listen on {addr} (mqtt.embedded_listen): {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("embedded broker: cannot start its thread: {0}")]
    Thread(std::io::Error),
}

/// A running embedded broker (lives until the process exits).
#[derive(Debug)]
pub struct EmbeddedBroker {
    pub listen: SocketAddr,
}

fn server(listen: SocketAddr, max_packet_bytes: u32) -> ServerSettings {
    ServerSettings {
        name: "v5".to_owned(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: max_packet_bytes as usize,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    }
}

/// Starts rumqttd on its own threads. It binds within milliseconds; clients that connect
/// earlier are refused and retry (the daemon's backoff starts at 250 ms). No readiness probe:
/// a bare TCP probe makes rumqttd log a failed MQTT handshake.
pub fn start(listen: SocketAddr, max_packet_bytes: u32) -> Result<EmbeddedBroker, BrokerError> {
    // rumqttd reports a bind failure only in a log line of its own thread: check first.
    drop(
        TcpListener::bind(listen).map_err(|error| BrokerError::Bind {
            addr: listen,
            error,
        })?,
    );
    let segment = (max_packet_bytes as usize * 4).max(1 << 20);
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 1000,
            max_outgoing_packet_count: 200,
            max_segment_size: segment,
            max_segment_count: 4,
            ..RouterConfig::default()
        },
        v5: Some([("1".to_owned(), server(listen, max_packet_bytes))].into()),
        ..Config::default()
    };
    std::thread::Builder::new()
        .name("llamabus-broker".into())
        .spawn(move || {
            let mut broker = Broker::new(config);
            if let Err(e) = broker.start() {
                log::error!("embedded broker stopped: {e}");
            }
        })
        .map_err(BrokerError::Thread)?;
    log::info!("embedded broker (rumqttd): MQTT 5 on {listen}");
    Ok(EmbeddedBroker { listen })
}
