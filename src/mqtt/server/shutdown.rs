//! The shutdown sequence, one named step per method, in the order [`Shutdown::run`] takes
//! them. The event loop keeps polling throughout, so replies finished while draining still go
//! out.

use std::time::Duration;

use log::info;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::event_loop::Loop;
use super::messages::{json_props, Msg, Outgoing};
use super::status::offline_status;

/// How long a clean shutdown waits for the broker to take the last messages.
const DISCONNECT_GRACE: Duration = Duration::from_secs(3);

/// The tasks started beside the event loop.
pub(super) struct Tasks {
    pub publisher: JoinHandle<()>,
    pub status: JoinHandle<()>,
    pub watchdog: JoinHandle<()>,
}

/// A server whose event loop has stopped serving, on its way out.
pub(super) struct Shutdown {
    lp: Loop,
    client: AsyncClient,
    status_topic: String,
    tasks: Tasks,
    /// How long running and queued jobs may still finish (`limits.shutdown_drain`).
    drain: Duration,
}

impl Shutdown {
    pub fn new(lp: Loop, client: AsyncClient, status_topic: String, tasks: Tasks) -> Shutdown {
        let drain = lp.settings.limits.shutdown_drain;
        Shutdown {
            lp,
            client,
            status_topic,
            tasks,
            drain,
        }
    }

    /// Every step, in order.
    pub async fn run(mut self) {
        self.announce();
        self.stop_taking_prompts();
        self.drain_engines().await;
        self.flush().await;
        self.go_offline().await;
        self.disconnect().await;
    }

    /// Says what is left to drain, in the log and to the supervisor.
    fn announce(&self) {
        let drain = self.drain;
        let (in_flight, queue_depth, ..) = self.lp.models.totals();
        info!(
            "shutting down: no new prompts; draining {in_flight} running and {queue_depth} queued for up to {drain:?}"
        );
        self.lp.lifecycle.stopping(&format!(
            "draining {in_flight} running and {queue_depth} queued requests (up to {drain:?})"
        ));
    }

    /// Prompts already delivered are still answered (the engine refuses them as `cancelled`
    /// once it shuts down); later ones are left unacknowledged, so the broker keeps them in our
    /// session and redelivers them after the restart. Only in a share group do we unsubscribe,
    /// so that the other boards take the traffic.
    fn stop_taking_prompts(&mut self) {
        self.lp.draining = true;
        if self.lp.settings.mqtt.share_group.is_some() {
            let _ = self
                .lp
                .tx
                .send(Msg::Unsubscribe(self.lp.topics.prompt_subscriptions()));
        }
    }

    /// Lets the engines finish (bounded by the drain time) while the loop keeps publishing; a
    /// model load started by a reload is abandoned.
    async fn drain_engines(&mut self) {
        let lp = &mut self.lp;
        if let Some((_, task)) = lp.pending.take() {
            task.abort();
        }
        let drain = self.drain;
        let current: Vec<JoinHandle<()>> = lp
            .models
            .engines()
            .cloned()
            .map(|eng| tokio::task::spawn_blocking(move || eng.shutdown(drain)))
            .collect();
        let mut retiring = std::mem::take(&mut lp.retiring);
        let engines_done = async move {
            for c in current {
                let _ = c.await;
            }
            for r in retiring.drain(..) {
                let _ = r.await;
            }
        };
        let _ = lp.pump(engines_done, drain + Duration::from_secs(5)).await;
    }

    /// Everything the engines reported is in the channel: waits until it is handed to rumqttc.
    async fn flush(&mut self) {
        let (ftx, frx) = oneshot::channel();
        let _ = self.lp.tx.send(Msg::Flush(ftx));
        let _ = self.lp.pump(frx, DISCONNECT_GRACE).await;
    }

    /// Publishes the retained `offline` status, once the status task can no longer overwrite
    /// it, and waits until it is handed over.
    async fn go_offline(&mut self) {
        self.tasks.status.abort();
        let _ = (&mut self.tasks.status).await;
        self.tasks.watchdog.abort();
        let _ = self.lp.tx.send(Msg::Publish(Outgoing {
            topic: self.status_topic.clone(),
            qos: QoS::AtLeastOnce,
            retain: true,
            payload: offline_status(&self.lp.settings.node),
            props: json_props(None),
        }));
        self.flush().await;
    }

    /// Sends DISCONNECT, then stops the publisher.
    async fn disconnect(self) {
        let _ = self.client.try_disconnect();
        let mut lp = self.lp;
        lp.until_disconnected(DISCONNECT_GRACE).await;
        let lifecycle = lp.lifecycle.clone();
        // The publisher ends once every sender of its channel is gone.
        drop(lp);
        let _ = self.tasks.publisher.await;
        info!("stopped");
        lifecycle.status("stopped");
    }
}
