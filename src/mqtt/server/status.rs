//! The retained status document and the supervisor's status line.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::warn;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use serde_json::json;
use tokio::sync::{watch, Notify};

use super::messages::json_props;
use crate::mqtt::lifecycle::Lifecycle;
use crate::mqtt::models::Models;
use crate::mqtt::settings::Settings;

/// How often the status task looks for changes.
const STATUS_POLL: Duration = Duration::from_millis(250);

/// The broker link, for the supervisor's status line.
pub(super) const LINK_CONNECTING: u8 = 0;
pub(super) const LINK_UP: u8 = 1;
pub(super) const LINK_RETRYING: u8 = 2;

pub(super) fn offline_status(node: &str) -> Vec<u8> {
    json!({"node": node, "version": env!("CARGO_PKG_VERSION"), "state": "offline"})
        .to_string()
        .into_bytes()
}

/// The status document; `uptime_s` is left out so that changes can be compared. Every model
/// has its own entry (queue and counters included); the top-level counters are the sums, and
/// `last_tokens_per_s` is the default model's. `state` is `reloading` while a reload loads
/// models (the running ones keep serving), else `online`.
fn status_doc(node: &str, models: &Models, reloading: bool) -> serde_json::Value {
    let (in_flight, depth, capacity, served, failed) = models.totals();
    let s = models.default_engine().stats();
    json!({
        "node": node,
        "version": env!("CARGO_PKG_VERSION"),
        "state": if reloading { "reloading" } else { "online" },
        "cpu_variant": s.model.cpu_variant,
        "models": models.status_entries(),
        "queue": {"depth": depth, "capacity": capacity},
        "in_flight": in_flight,
        "served": served,
        "failed": failed,
        "last_tokens_per_s": (s.last_tokens_per_s * 10.0).round() / 10.0,
    })
}

/// What the status task reads.
pub(super) struct StatusCtx {
    pub(super) client: AsyncClient,
    /// The engines serving now (replaced by reloads).
    pub(super) engine: watch::Receiver<Models>,
    pub(super) settings: Arc<Settings>,
    pub(super) topic: String,
    pub(super) now: Arc<Notify>,
    /// A reload is loading models.
    pub(super) reloading: Arc<AtomicBool>,
    pub(super) lifecycle: Arc<dyn Lifecycle>,
    pub(super) link: Arc<AtomicU8>,
    pub(super) broker: String,
}

/// The supervisor's status line (systemd `STATUS=`): the broker link, the models, the queues, the counters.
fn status_line(link: u8, broker: &str, models: &Models) -> String {
    let (in_flight, depth, capacity, served, failed) = models.totals();
    let names = models.names().join(", ");
    match link {
        LINK_UP => format!(
            "serving {names} on {broker}: {in_flight} running, queue {depth}/{capacity}, {served} served, {failed} failed"
        ),
        LINK_RETRYING => {
            format!("broker {broker} disconnected – retrying ({names} loaded, {served} served)")
        }
        _ => format!("connecting to {broker} ({names} loaded)"),
    }
}

/// Publishes the retained status when it changes (checked every [`STATUS_POLL`]), every
/// `status_interval`, and at once when `now` is notified (after each SubAck, since a Last
/// Will may have replaced it). Also keeps the systemd `STATUS=` line current.
pub(super) async fn status_task(c: StatusCtx) {
    let started = Instant::now();
    let mut last: Option<serde_json::Value> = None;
    let mut last_line = String::new();
    let mut last_at = Instant::now();
    let mut tick = tokio::time::interval(STATUS_POLL);
    loop {
        let forced = tokio::select! {
            _ = tick.tick() => false,
            _ = c.now.notified() => true,
        };
        let engine = c.engine.borrow().clone();
        let line = status_line(c.link.load(Ordering::Relaxed), &c.broker, &engine);
        if line != last_line {
            c.lifecycle.status(&line);
            last_line = line;
        }
        let reloading = c.reloading.load(Ordering::Relaxed);
        let doc = status_doc(&c.settings.node, &engine, reloading);
        let due = last_at.elapsed() >= c.settings.mqtt.status_interval;
        if !forced && !due && last.as_ref() == Some(&doc) {
            continue;
        }
        let mut full = doc.clone();
        full["uptime_s"] = json!(started.elapsed().as_secs());
        last = Some(doc);
        last_at = Instant::now();
        if let Err(e) = c
            .client
            .publish_with_properties(
                c.topic.clone(),
                QoS::AtLeastOnce,
                true,
                full.to_string().into_bytes(),
                json_props(None),
            )
            .await
        {
            warn!("status publish: {e}");
        }
    }
}
