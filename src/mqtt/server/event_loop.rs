//! The event-loop task: polls rumqttc, routes, and never waits on inference.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use log::{error, info, warn};
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet};
use rumqttc::v5::{Event, EventLoop};
use rumqttc::Outgoing as OutgoingEvent;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

use super::formats::FormatCache;
use super::messages::{Cancels, Msg};
use super::status::{LINK_RETRYING, LINK_UP};
use super::ServeError;
use crate::engine::{Engine, StartError};
use crate::mqtt::conn::Backoff;
use crate::mqtt::dedup::DedupStore;
use crate::mqtt::homeassistant::bridge::HaBridge;
use crate::mqtt::lifecycle::{Lifecycle, Reload};
use crate::mqtt::models::Models;
use crate::mqtt::settings::Settings;
use crate::mqtt::topics::Topics;

/// The engines loaded for a reload (or why they were not), each with its model name.
pub(super) type Loaded = Result<Vec<(String, Result<Engine, StartError>)>, String>;
/// Model loads started by a reload, with the settings they belong to.
pub(super) type PendingEngine = (Box<Settings>, JoinHandle<Loaded>);

/// The event loop's state: what it serves, the broker link, and the channels to the
/// publisher.
pub(super) struct Loop {
    pub(super) settings: Arc<Settings>,
    /// The engines serving now, one per model.
    pub(super) models: Models,
    /// Tells the status and watchdog tasks which engines serve.
    pub(super) engines: watch::Sender<Models>,
    /// Engines replaced by a reload, draining their jobs.
    pub(super) retiring: Vec<JoinHandle<()>>,
    /// A reload waiting for its new model.
    pub(super) pending: Option<PendingEngine>,
    /// Where the lifecycle is reported (systemd in the daemon).
    pub(super) lifecycle: Arc<dyn Lifecycle>,
    /// Job ids are the server's, not an engine's, so they stay unique across engine swaps.
    pub(super) next_job: u64,
    pub(super) topics: Topics,
    pub(super) eventloop: EventLoop,
    pub(super) tx: mpsc::UnboundedSender<Msg>,
    pub(super) cancels: Cancels,
    pub(super) out_limit: Arc<AtomicU32>,
    pub(super) status_now: Arc<Notify>,
    pub(super) link: Arc<AtomicU8>,
    pub(super) backoff: Backoff,
    pub(super) broker: String,
    pub(super) connected: bool,
    pub(super) dedup: Arc<Mutex<DedupStore>>,
    /// Counts connections: bumped on every ConnAck and every connection loss.
    pub(super) epoch: Arc<AtomicU64>,
    /// Shutting down: new requests are left for the broker to redeliver.
    pub(super) draining: bool,
    /// Named formats compiled for a model's vocabulary; emptied whenever the settings or the
    /// engines change.
    pub(super) formats: FormatCache,
    /// Home Assistant discovery, when enabled.
    pub(super) ha: Option<HaBridge>,
    /// Set while a reload loads models: the status says `reloading`.
    pub(super) reloading: Arc<AtomicBool>,
}

impl Loop {
    /// Polls until `shutdown`, applying each new configuration from `reloads`.
    pub(super) async fn serve(
        &mut self,
        shutdown: impl Future<Output = ()>,
        reloads: &mut mpsc::UnboundedReceiver<Reload>,
    ) -> Result<(), ServeError> {
        tokio::pin!(shutdown);
        loop {
            let pending = async {
                match &mut self.pending {
                    Some((_, task)) => task.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                Some(new) = reloads.recv() => self.reload(new),
                loaded = pending => {
                    let (settings, _) = self.pending.take().expect("polled above");
                    let loaded = loaded.unwrap_or_else(|e| Err(format!("the load task failed: {e}")));
                    self.swap_engine(*settings, loaded);
                    // After the swap, so that an `online` status names the new models.
                    self.reloading.store(false, Ordering::Relaxed);
                    self.status_now.notify_one();
                }
                ev = self.eventloop.poll() => {
                    if let Some(wait) = self.handle(ev, Duration::MAX) {
                        tokio::select! {
                            _ = &mut shutdown => return Ok(()),
                            _ = tokio::time::sleep(wait) => {}
                        }
                    }
                }
            }
        }
    }

    /// Polls until `fut` completes or `limit` passes.
    pub(super) async fn pump<F: Future>(&mut self, fut: F, limit: Duration) -> Option<F::Output> {
        tokio::pin!(fut);
        let deadline = tokio::time::sleep(limit);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                out = &mut fut => return Some(out),
                _ = &mut deadline => return None,
                ev = self.eventloop.poll() => {
                    // Draining: retry often, so that finished replies go out as soon as the
                    // broker is back.
                    if let Some(wait) = self.handle(ev, Duration::from_millis(500)) {
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
    }

    /// Polls until rumqttc has sent DISCONNECT (or the connection is gone, or `limit`).
    pub(super) async fn until_disconnected(&mut self, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            loop {
                match self.eventloop.poll().await {
                    Ok(Event::Outgoing(OutgoingEvent::Disconnect)) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }

    /// Handles one event-loop result; `Some(wait)` (the backoff, at most `cap`) after a
    /// connection failure.
    fn handle(
        &mut self,
        ev: Result<Event, rumqttc::v5::ConnectionError>,
        cap: Duration,
    ) -> Option<Duration> {
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                self.epoch.fetch_add(1, Ordering::AcqRel);
                if !ack.session_present {
                    info!(
                        "{}: new session (no requests were queued for us, or the broker lost them)",
                        self.broker
                    );
                }
                self.backoff.reset();
                self.connected = true;
                self.link.store(LINK_UP, Ordering::Relaxed);
                if let Some(max) = ack.properties.as_ref().and_then(|p| p.max_packet_size) {
                    let ours = self.settings.mqtt.max_packet_bytes;
                    self.out_limit.store(max.min(ours), Ordering::Relaxed);
                }
                info!(
                    "connected to {} as {}; subscribing to {}",
                    self.broker,
                    self.settings.mqtt.client_id,
                    self.topics.subscriptions().join(", ")
                );
                let mut filters = self.topics.subscriptions();
                if let Some(ha) = &self.ha {
                    filters.extend(ha.topics.subscriptions());
                    self.publish_all(ha.discovery());
                }
                let _ = self.tx.send(Msg::Subscribe(filters));
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                for code in &ack.return_codes {
                    if !matches!(
                        code,
                        rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(_)
                    ) {
                        error!("the broker refused a subscription: {code:?}");
                    }
                }
                // "online" only once prompts can be received (and again after every
                // reconnect, since a Last Will may have replaced it).
                self.status_now.notify_one();
            }
            Ok(Event::Incoming(Packet::Publish(p))) => self.on_publish(p),
            Ok(Event::Incoming(Packet::Disconnect(d))) => {
                warn!("the broker disconnected us: {:?}", d.reason_code);
            }
            Ok(_) => {}
            Err(rumqttc::v5::ConnectionError::ConnectionRefused(code))
                if matches!(
                    code,
                    ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized
                ) =>
            {
                // Wrong credentials rarely fix themselves, but the broker's user database may
                // change: keep retrying with backoff, and say so as an error.
                error!("{}: connection refused: {code:?}", self.broker);
                self.link.store(LINK_RETRYING, Ordering::Relaxed);
                return Some(self.backoff.next_delay().min(cap));
            }
            Err(e) => {
                let wait = self.backoff.next_delay().min(cap);
                if self.connected {
                    warn!("connection to {} lost: {e}; reconnecting", self.broker);
                } else {
                    warn!(
                        "cannot connect to {}: {e}; retrying in {wait:.1?}",
                        self.broker
                    );
                }
                self.connected = false;
                self.epoch.fetch_add(1, Ordering::AcqRel);
                self.link.store(LINK_RETRYING, Ordering::Relaxed);
                return Some(wait);
            }
        }
        None
    }
}
