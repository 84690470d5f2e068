//! `llamabus homeassistant --remove`: empty retained payloads on every discovery topic (and
//! the retained answer), so Home Assistant removes the device and the broker forgets them.
//! A short-lived client of its own (`{client_id}-ha-remove`, clean start), so the daemon's
//! session is left alone.

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event};

use super::discovery::removal_topics;
use super::topics::HaTopics;
use super::HomeAssistantSettings;
use crate::mqtt::conn;
use crate::mqtt::settings::MqttSettings;

/// How long the broker has to acknowledge everything.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Why the removal did not complete.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    #[error(transparent)]
    Tls(#[from] conn::TlsError),
    #[error("connection: {0}")]
    Connection(#[from] rumqttc::v5::ConnectionError),
    #[error("mqtt client: {0}")]
    Client(#[from] rumqttc::v5::ClientError),
    #[error("the broker acknowledged {acked} of {sent} removals within {REMOVE_TIMEOUT:?}")]
    Timeout { acked: usize, sent: usize },
}

/// Publishes the removals for `node` and waits until the broker has acknowledged each (QoS 1);
/// returns the topics cleared.
pub async fn remove(
    m: &MqttSettings,
    node: &str,
    ha: &HomeAssistantSettings,
) -> Result<Vec<String>, RemoveError> {
    let topics = removal_topics(
        ha,
        node,
        &HaTopics::new(&m.prefix, node, &ha.discovery_prefix),
    );
    let mut o = conn::daemon_options(m)?;
    o.set_client_id(format!("{}-ha-remove", m.client_id));
    o.set_clean_start(true);
    o.set_session_expiry_interval(None);
    o.set_manual_acks(false);
    let (client, mut el) = AsyncClient::new(o, topics.len() + 4);
    let mut acked = 0;
    let sent = topics.len();
    let run = async {
        loop {
            match el.poll().await? {
                Event::Incoming(Packet::ConnAck(_)) => {
                    for t in &topics {
                        client
                            .publish(t.clone(), QoS::AtLeastOnce, true, Vec::new())
                            .await?;
                    }
                }
                Event::Incoming(Packet::PubAck(_)) => {
                    acked += 1;
                    if acked == sent {
                        client.disconnect().await?;
                    }
                }
                Event::Outgoing(rumqttc::Outgoing::Disconnect) => return Ok::<(), RemoveError>(()),
                _ => {}
            }
        }
    };
    match tokio::time::timeout(REMOVE_TIMEOUT, run).await {
        Ok(Ok(())) => Ok(topics),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(RemoveError::Timeout { acked, sent }),
    }
}
