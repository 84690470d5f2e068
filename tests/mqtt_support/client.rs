//! A small MQTT 5 test client that collects what it receives, and request properties.

use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::{mpsc, oneshot};

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
