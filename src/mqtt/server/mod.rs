//! The daemon's MQTT side: one task polls rumqttc's event loop and routes; nothing in it waits
//! on inference (CONVENTIONS practice 2).
//!
//! ```text
//!  broker ──► event-loop task ──submit (never blocks)──► engine thread
//!                 │  (decode, route, limits)                 │ Job.events closure
//!                 ▼                                          ▼
//!            Msg channel (unbounded) ◄──────────────────────-┘
//!                 │
//!                 ▼
//!           publisher task ──► AsyncClient ──► broker      status task ──► retained status
//! ```
//!
//! * Requests arrive on `{prefix}/prompt/+` (and `{prefix}/pc/prompt/+`, whose payloads are
//!   postcard) with QoS 1; cancels on `{prefix}/cancel/+`. With `share_group` the prompt
//!   filters go through `$share/{group}/`; cancels are never shared, since only the daemon
//!   running a job can cancel it. Subscriptions are renewed after every ConnAck (cheap, and
//!   needed when the broker lost our session).
//! * At-least-once (README "Delivery guarantees"): a persistent session and manual acks. A
//!   QoS 1 request is acknowledged only after its final reply (or its error reply) was handed
//!   to rumqttc, behind that reply on the same ordered channel; anything else is acknowledged
//!   at once. Duplicates by `(device, id)` are answered from [`dedup`] (no second generation).
//!   Once shutdown starts, new requests are left unacknowledged for the broker to redeliver.
//! * Several models ([`Models`]): each also has `{prefix}/model/{model}/prompt/+` (and its
//!   postcard form), for MQTT 3.1.1 clients that cannot send a JSON `model`; the plain topics
//!   go to the JSON `model`, else the default model.
//! * Reply routing: the MQTT 5 Response Topic (Correlation Data echoed) > the JSON `reply_to` >
//!   `{prefix}/reply/{device}`. A reply topic outside `allowed_reply_prefixes`, with a wildcard
//!   or starting with `$` is refused with `reply_topic_denied`, sent to the default reply topic.
//! * Replies use the request's encoding and QoS (at most 1), and carry a Content Type.
//! * Limits: a payload over `max_payload_bytes` is refused with `too_long` before any
//!   parsing; a full queue is `busy` at once; MQTT 5 Message Expiry and JSON `deadline_ms`
//!   become the job's deadline (`expired`).
//! * Streaming: each delta becomes numbered `{id, seq, delta}` chunks that each fit the packet
//!   limit (split on UTF-8 boundaries), then the final reply with `done: true`.
//! * Formats (README "Structured answers"): a request's `format` field, or the topic
//!   `{prefix}/format/{name}/prompt/+` (and its postcard form, the way for plain text), asks for
//!   a structured reply; an unknown name or a format that does not compile is `bad_format`.
//! * Home Assistant ([`crate::mqtt::homeassistant`], when enabled): discovery after every
//!   ConnAck and on Home Assistant's birth message; prompts from the "Ask" box are jobs like
//!   any other, answered on the answer sensor's topics; reply topics never reach its topics.
//! * Malformed input never stops the loop: every refusal is one error reply (when a reply
//!   topic is known) and one log line.

mod event_loop;
mod formats;
mod homeassistant;
mod messages;
mod publisher;
mod reload;
mod requests;
mod shutdown;
mod status;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use log::{info, warn};
use rumqttc::v5::mqttbytes::v5::LastWill;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use tokio::sync::{mpsc, watch, Notify};

use crate::engine::Engine;
use crate::mqtt::conn::{self, Backoff};
use crate::mqtt::dedup::{self, DedupStore};
use crate::mqtt::homeassistant::bridge::HaBridge;
use crate::mqtt::lifecycle::{Heartbeat, Lifecycle, Reload};
use crate::mqtt::models::{Models, ModelsError};
use crate::mqtt::settings::{BrokerSettings, Settings};
use crate::mqtt::topics::Topics;
use event_loop::Loop;
use formats::FormatCache;
use messages::{Cancels, Msg};
use publisher::Publisher;
use shutdown::{Shutdown, Tasks};
use status::{offline_status, StatusCtx, LINK_CONNECTING};

/// Capacity of rumqttc's request channel (publishes waiting for the event loop).
const REQUEST_CHANNEL: usize = 256;

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("mqtt TLS: {0}")]
    Tls(conn::TlsError),
    #[cfg(feature = "embedded-broker")]
    #[error(transparent)]
    Broker(#[from] crate::mqtt::broker::BrokerError),
    #[error("model {model}: {}", crate::error_chain(&**error))]
    Engine {
        model: String,
        error: Box<crate::engine::StartError>,
    },
    #[error(transparent)]
    Memory(#[from] crate::engine::memory::MemoryError),
    #[error("no embedded broker in this build (feature `embedded-broker`): set mqtt.broker")]
    NoEmbeddedBroker,
}

/// What the server is given besides its settings: where it reports its lifecycle, the new
/// configurations of reloads, and a debug hook. [`Hooks::none`] for a server on its own.
pub struct Hooks {
    pub lifecycle: Arc<dyn Lifecycle>,
    /// New configurations, read by the caller (the service, on SIGHUP).
    pub reloads: mpsc::UnboundedReceiver<Reload>,
    /// Debug builds only (see `main.rs`): stall the inference thread for `.1` once `.0` has
    /// passed after readiness, to prove that the watchdog stops.
    pub stall_after_ready: Option<(Duration, Duration)>,
}

impl Hooks {
    /// Reports nothing; no reloads.
    pub fn none() -> Hooks {
        let (_, reloads) = mpsc::unbounded_channel();
        Hooks {
            lifecycle: Arc::new(()),
            reloads,
            stall_after_ready: None,
        }
    }
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("stall_after_ready", &self.stall_after_ready)
            .finish_non_exhaustive()
    }
}

/// Everything `llamabus serve` runs: the embedded broker when no broker is configured, the
/// models (loaded on a blocking thread, reported through [`Lifecycle::status`] while
/// [`Lifecycle::while_loading`] runs), then the server until `shutdown` completes. `ready`
/// comes once every model has computed a warm-up token. A shutdown during the load returns at
/// once.
pub async fn serve(
    settings: Settings,
    shutdown: impl Future<Output = ()>,
    hooks: Hooks,
) -> Result<(), ServeError> {
    #[cfg(feature = "embedded-broker")]
    let _broker = match &settings.mqtt.broker {
        BrokerSettings::Embedded { listen } => Some(crate::mqtt::broker::start(
            *listen,
            settings.mqtt.max_packet_bytes,
        )?),
        BrokerSettings::External(_) => None,
    };
    #[cfg(not(feature = "embedded-broker"))]
    if matches!(settings.mqtt.broker, BrokerSettings::Embedded { .. }) {
        return Err(ServeError::NoEmbeddedBroker);
    }
    let lifecycle = hooks.lifecycle.clone();
    let to_load = settings.clone();
    let load = tokio::task::spawn_blocking(move || {
        Models::start(&to_load, move |s: &str| {
            info!("{s}");
            lifecycle.status(s);
        })
    });
    tokio::pin!(shutdown);
    let models = tokio::select! {
        r = load => r,
        _ = hooks.lifecycle.while_loading() => unreachable!("the load guard never ends"),
        _ = &mut shutdown => {
            hooks.lifecycle.stopping("stopped while loading the model");
            info!("stopped while loading the model");
            return Ok(());
        }
    };
    let models = match models.expect("the engine start task panicked") {
        Ok(m) => m,
        Err(ModelsError::Memory(e)) => return Err(e.into()),
        Err(ModelsError::Start { model, error }) => {
            return Err(ServeError::Engine { model, error })
        }
    };
    run_models(settings, models, shutdown, hooks).await
}

/// Serves prompts with `engine` until `shutdown` completes, then stops taking prompts, lets
/// running and queued jobs finish for `limits.shutdown_drain`, publishes the retained
/// `offline` status and disconnects. Connection failures are retried forever with backoff.
pub async fn run(
    settings: Settings,
    engine: Engine,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let models = Models::new(&settings, vec![engine]);
    run_models(settings, models, shutdown, Hooks::none()).await
}

/// [`run`] with loaded `models` and the caller's hooks: starts the publisher, status and
/// watchdog tasks beside the event loop, serves until `shutdown`, then runs the [`Shutdown`]
/// steps.
async fn run_models(
    settings: Settings,
    models: Models,
    shutdown: impl Future<Output = ()>,
    hooks: Hooks,
) -> Result<(), ServeError> {
    let settings = Arc::new(settings);
    let lifecycle = hooks.lifecycle;
    let mut topics = Topics::new(&settings.mqtt.prefix, settings.mqtt.share_group.as_deref());
    topics.set_models(&models.names());
    let status_topic = topics.status(&settings.node);
    let mut options = conn::daemon_options(&settings.mqtt).map_err(ServeError::Tls)?;
    options.set_last_will(LastWill::new(
        status_topic.clone(),
        offline_status(&settings.node),
        QoS::AtLeastOnce,
        true,
        None,
    ));
    let (client, eventloop) = AsyncClient::new(options, REQUEST_CHANNEL);
    let (tx, rx) = mpsc::unbounded_channel::<Msg>();
    let out_limit = Arc::new(AtomicU32::new(settings.mqtt.max_packet_bytes));
    let cancels: Cancels = Arc::new(Mutex::new(HashMap::new()));
    let dedup = Arc::new(Mutex::new(open_dedup(&settings)));
    let epoch = Arc::new(AtomicU64::new(0));
    let ha = HaBridge::new(
        &settings.homeassistant,
        &settings.mqtt.prefix,
        &settings.node,
    );
    let publisher = tokio::spawn(
        Publisher {
            ha: ha.clone(),
            client: client.clone(),
            routes: HashMap::new(),
            cancels: cancels.clone(),
            out_limit: out_limit.clone(),
            dedup: dedup.clone(),
            epoch: epoch.clone(),
            to_ack: Vec::new(),
        }
        .run(rx),
    );
    let broker = broker_name(&settings);
    lifecycle.ready(&format!(
        "{} loaded; connecting to {broker}",
        models_phrase(&models)
    ));
    let (engines, engine_rx) = watch::channel(models.clone());
    let link = Arc::new(AtomicU8::new(LINK_CONNECTING));
    let status_now = Arc::new(Notify::new());
    let reloading = Arc::new(AtomicBool::new(false));
    let status = tokio::spawn(status::status_task(StatusCtx {
        client: client.clone(),
        engine: engine_rx.clone(),
        settings: settings.clone(),
        topic: status_topic.clone(),
        now: status_now.clone(),
        reloading: reloading.clone(),
        lifecycle: lifecycle.clone(),
        link: link.clone(),
        broker: broker.clone(),
    }));
    let heartbeat: Heartbeat = Arc::new(move || engine_rx.borrow().oldest_heartbeat());
    let watchdog = tokio::spawn(lifecycle.watch(heartbeat));
    if let Some((after, stall)) = hooks.stall_after_ready {
        let e = models.default_engine().clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            warn!("debug hook: stalling the inference thread for {stall:?}");
            e.stall_for_test(stall);
        });
    }
    let mut lp = Loop {
        settings: settings.clone(),
        models,
        engines,
        retiring: Vec::new(),
        pending: None,
        lifecycle: lifecycle.clone(),
        next_job: 1,
        topics,
        eventloop,
        tx,
        cancels,
        out_limit,
        status_now,
        link,
        backoff: Backoff::new(),
        broker,
        connected: false,
        dedup,
        epoch,
        draining: false,
        formats: FormatCache::new(),
        ha,
        reloading,
    };
    let mut reloads = hooks.reloads;
    let result = lp.serve(shutdown, &mut reloads).await;
    let tasks = Tasks {
        publisher,
        status,
        watchdog,
    };
    Shutdown::new(lp, client, status_topic, tasks).run().await;
    result
}

/// `model X` or `models X, Y`, for status lines.
fn models_phrase(models: &Models) -> String {
    match models.names().as_slice() {
        [one] => format!("model {one}"),
        names => format!("models {}", names.join(", ")),
    }
}

/// The dedup window, persisted in `state_dir` when one is configured (a store that cannot be
/// opened is a warning: the daemon serves with a window in memory).
fn open_dedup(s: &Settings) -> DedupStore {
    let m = &s.mqtt;
    let Some(dir) = &m.state_dir else {
        return DedupStore::new(m.dedup_window, m.dedup_capacity).with_max_bytes(m.dedup_max_bytes);
    };
    let (store, err) = DedupStore::open(
        m.dedup_window,
        m.dedup_capacity,
        m.dedup_max_bytes,
        dir,
        dedup::now_ms(),
    );
    if let Some(e) = err {
        warn!(
            "reply store: {e}; keeping replies in memory only (a duplicate arriving after a \
             restart is generated again)"
        );
    }
    store
}

fn broker_name(s: &Settings) -> String {
    match &s.mqtt.broker {
        BrokerSettings::External(u) => u.to_string(),
        BrokerSettings::Embedded { listen, .. } => format!("embedded mqtt://{listen}"),
    }
}
