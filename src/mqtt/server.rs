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
//! * Home Assistant ([`crate::mqtt::homeassistant`], when enabled): discovery after every
//!   ConnAck and on Home Assistant's birth message; prompts from the "Ask" box are jobs like
//!   any other, answered on the answer sensor's topics; reply topics never reach its topics.
//! * Malformed input never stops the loop: every refusal is one error reply (when a reply
//!   topic is known) and one log line.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use log::{debug, error, info, warn};
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode, Filter, LastWill, Packet, Publish, PublishProperties,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop};
use rumqttc::Outgoing as OutgoingEvent;
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;

use crate::engine::worker::{Engine, ErrorKind, JobEvent, JobOutcome, PromptInput, StartError};
use crate::mqtt::conn::{self, Backoff};
use crate::mqtt::dedup::{self, DedupStore, Seen};
use crate::mqtt::homeassistant::answer::Outcome;
use crate::mqtt::homeassistant::bridge::{HaBridge, Retained, HA_DEVICE};
use crate::mqtt::homeassistant::topics::{is_birth, HaIncoming};
use crate::mqtt::models::{self, Models, ModelsError};
use crate::mqtt::topics::{self, Incoming, Topics};
use crate::mqtt::wire::{
    self, Chunk, Encoding, ErrorBody, ErrorCode, ErrorReply, Reply, Request, Response, Timings,
    Usage,
};
use crate::sampler;
use crate::service::config::{BrokerSettings, ConfigError, Settings};
use crate::service::notify::Notifier;
use crate::service::signals::Control;
use crate::tokenizer::chat::ChatMessage;

/// Capacity of rumqttc's request channel (publishes waiting for the event loop).
const REQUEST_CHANNEL: usize = 256;
/// How often the status task looks for changes.
const STATUS_POLL: Duration = Duration::from_millis(250);
/// Room kept in every packet for the fixed header, topic, packet id and properties.
const PACKET_OVERHEAD: usize = 64;
/// How long a clean shutdown waits for the broker to take the last messages.
const DISCONNECT_GRACE: Duration = Duration::from_secs(3);

/// The broker link, for the systemd status line.
const LINK_CONNECTING: u8 = 0;
const LINK_UP: u8 = 1;
const LINK_RETRYING: u8 = 2;

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
        error: Box<crate::engine::worker::StartError>,
    },
    #[error(transparent)]
    Memory(#[from] crate::engine::memory::MemoryError),
    #[error("no embedded broker in this build (feature `embedded-broker`): set mqtt.broker")]
    NoEmbeddedBroker,
}

/// The service around [`run`]: systemd notifications, signals, configuration reload. Tests
/// that drive [`run`] directly use [`Service::none`].
pub struct Service {
    pub notifier: Notifier,
    /// Shutdown (first SIGTERM/SIGINT) and reload (SIGHUP) events.
    pub control: Control,
    /// Re-reads the configuration on reload; `None` refuses reloads.
    pub reload: Option<Reloader>,
    /// Debug builds only (see `main.rs`): stall the inference thread for `.1` once `.0` has
    /// passed after readiness, to prove that the watchdog stops.
    pub stall_after_ready: Option<(Duration, Duration)>,
}

/// Produces the new settings on reload (parse → merge → validate of every source again).
pub type Reloader = Box<dyn FnMut() -> Result<Settings, ConfigError> + Send>;

impl Service {
    /// No systemd, no signals, no reload.
    pub fn none() -> Service {
        Service {
            notifier: Notifier::disabled(),
            control: Control::none(),
            reload: None,
            stall_after_ready: None,
        }
    }
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("notifier", &self.notifier)
            .field("reload", &self.reload.is_some())
            .field("stall_after_ready", &self.stall_after_ready)
            .finish_non_exhaustive()
    }
}

/// Starts everything `llamabus serve` runs: the embedded broker when no broker is configured,
/// the engine (model load on a blocking thread), then [`run`] until `shutdown` completes.
pub async fn serve(
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    serve_service(settings, shutdown, Service::none()).await
}

/// [`serve`] as a systemd service: `STATUS=` through the model load (with the start timeout
/// extended while it runs), `READY=1` once the model has computed a warm-up token, then
/// [`run`] with watchdog pings, SIGHUP reloads and `STOPPING=1`. A shutdown during the load
/// returns at once.
pub async fn serve_service(
    settings: Settings,
    shutdown: impl Future<Output = ()>,
    svc: Service,
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
    let notifier = svc.notifier.clone();
    let to_load = settings.clone();
    let load = tokio::task::spawn_blocking(move || {
        Models::start(&to_load, move |s: &str| {
            info!("{s}");
            notifier.status(s);
        })
    });
    tokio::pin!(shutdown);
    let models = tokio::select! {
        r = load => r,
        _ = svc.notifier.clone().load_guard() => unreachable!("the load guard never ends"),
        _ = &mut shutdown => {
            svc.notifier.stopping("stopped while loading the model");
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
    run_service(settings, models, shutdown, svc).await
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
    run_service(settings, models, shutdown, Service::none()).await
}

/// [`run`] with several models ([`Models::start`]).
pub async fn run_models(
    settings: Settings,
    models: Models,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    run_service(settings, models, shutdown, Service::none()).await
}

/// [`run`] with the [`Service`] hooks.
pub async fn run_service(
    settings: Settings,
    models: Models,
    shutdown: impl Future<Output = ()>,
    svc: Service,
) -> Result<(), ServeError> {
    let settings = Arc::new(settings);
    let notifier = svc.notifier;
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
    notifier.ready(&format!(
        "{} loaded; connecting to {broker}",
        models_phrase(&models)
    ));
    let (engines, engine_rx) = watch::channel(models.clone());
    let link = Arc::new(AtomicU8::new(LINK_CONNECTING));
    let status_now = Arc::new(Notify::new());
    let status = tokio::spawn(status_task(StatusCtx {
        client: client.clone(),
        engine: engine_rx.clone(),
        settings: settings.clone(),
        topic: status_topic.clone(),
        now: status_now.clone(),
        notifier: notifier.clone(),
        link: link.clone(),
        broker: broker.clone(),
    }));
    let watchdog = tokio::spawn(
        notifier
            .clone()
            .watchdog_task(move || engine_rx.borrow().oldest_heartbeat()),
    );
    if let Some((after, stall)) = svc.stall_after_ready {
        let e = models.default_engine().clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            warn!("debug hook: stalling the inference thread for {stall:?}");
            e.stall_for_test(stall);
        });
    }
    let mut control = svc.control;
    let mut lp = Loop {
        settings: settings.clone(),
        models,
        engines,
        retiring: Vec::new(),
        pending: None,
        reloader: svc.reload,
        notifier: notifier.clone(),
        next_job: 1,
        topics,
        eventloop,
        tx: tx.clone(),
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
        ha,
    };

    let result = lp.serve(shutdown, &mut control.reload).await;
    let drain = lp.settings.limits.shutdown_drain;
    let (in_flight, queue_depth, ..) = lp.models.totals();
    info!(
        "shutting down: no new prompts; draining {in_flight} running and {queue_depth} queued for up to {drain:?}"
    );
    notifier.stopping(&format!(
        "draining {in_flight} running and {queue_depth} queued requests (up to {drain:?})"
    ));

    // 1. Stop taking prompts. Prompts already delivered are still answered (the engine
    //    refuses them as `cancelled` once it shuts down); later ones are left unacknowledged,
    //    so the broker keeps them in our session and redelivers them after the restart. Only
    //    in a share group do we unsubscribe, so that the other boards take the traffic.
    lp.draining = true;
    if lp.settings.mqtt.share_group.is_some() {
        let _ = tx.send(Msg::Unsubscribe(lp.topics.prompt_subscriptions()));
    }
    // 2. Let the engines finish (bounded by the drain time) while the loop keeps publishing;
    //    a model load started by a reload is abandoned.
    if let Some((_, task)) = lp.pending.take() {
        task.abort();
    }
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
    // 3. Everything the engine reported is in the channel: wait until it is handed to rumqttc.
    let (ftx, frx) = oneshot::channel();
    let _ = tx.send(Msg::Flush(ftx));
    let _ = lp.pump(frx, DISCONNECT_GRACE).await;
    // 4. Offline status (the status task must not overwrite it), then disconnect.
    status.abort();
    let _ = status.await;
    watchdog.abort();
    let _ = tx.send(Msg::Publish(Outgoing {
        topic: status_topic,
        qos: QoS::AtLeastOnce,
        retain: true,
        payload: offline_status(&settings.node),
        props: json_props(None),
    }));
    let (ftx, frx) = oneshot::channel();
    let _ = tx.send(Msg::Flush(ftx));
    let _ = lp.pump(frx, DISCONNECT_GRACE).await;
    let _ = client.try_disconnect();
    lp.until_disconnected(DISCONNECT_GRACE).await;
    drop(tx);
    drop(lp);
    let _ = publisher.await;
    info!("stopped");
    notifier.status("stopped");
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

// ---------------------------------------------------------------------------------------------
// Messages between the event loop, the engine and the publisher

/// Request id → its cancel flag, keyed by (device, id).
type Cancels = Arc<Mutex<HashMap<(String, String), (u64, Arc<AtomicBool>)>>>;

/// A publish to make.
#[derive(Debug)]
struct Outgoing {
    topic: String,
    qos: QoS,
    retain: bool,
    payload: Vec<u8>,
    props: PublishProperties,
}

/// The acknowledgement a QoS 1 request is owed: its packet id, on the connection it arrived on.
#[derive(Debug, Clone, Copy)]
struct Ack {
    qos: QoS,
    pkid: u16,
    /// The connection (counted by [`Loop::handle`]) that delivered it. After a reconnect the
    /// packet id may name another message, so a stale ack is not sent: the broker redelivers
    /// the request in the resumed session, and the redelivery is acked instead.
    epoch: u64,
}

/// Where and how to answer one job.
#[derive(Debug)]
struct Route {
    /// The device level of the request topic (for logs).
    device: String,
    topic: String,
    qos: QoS,
    enc: Encoding,
    id: Option<String>,
    correlation: Option<Bytes>,
    stream: bool,
    next_seq: u32,
    cancel_key: Option<(String, String)>,
    /// Sent once the final reply is out: the request's, and those of duplicates merged in.
    acks: Vec<Ack>,
    /// `(device, id)` in the dedup window while the job runs.
    dedup_key: Option<dedup::Key>,
    /// A Home Assistant "Ask" request: answered on the answer sensor's topics.
    ha: bool,
}

enum Msg {
    /// Registers a job's route; always sent before the job is submitted.
    Route(u64, Route),
    /// An engine event of a routed job.
    Event(u64, JobEvent),
    Publish(Outgoing),
    /// Acknowledges requests whose replies were sent before this message.
    Ack(Vec<Ack>),
    /// A duplicate of a running job: acknowledged when the job's reply is out.
    Merge(u64, Ack),
    Subscribe(Vec<String>),
    Unsubscribe(Vec<String>),
    /// Answered once everything sent before it was handed to rumqttc.
    Flush(oneshot::Sender<()>),
}

fn error_code(kind: ErrorKind) -> ErrorCode {
    match kind {
        ErrorKind::BadRequest => ErrorCode::BadRequest,
        ErrorKind::TooLong => ErrorCode::TooLong,
        ErrorKind::Busy => ErrorCode::Busy,
        ErrorKind::Expired => ErrorCode::Expired,
        ErrorKind::Cancelled => ErrorCode::Cancelled,
        ErrorKind::Internal => ErrorCode::Internal,
    }
}

fn finish_reason(r: sampler::FinishReason) -> wire::FinishReason {
    match r {
        sampler::FinishReason::Stop => wire::FinishReason::Stop,
        sampler::FinishReason::Length => wire::FinishReason::Length,
        sampler::FinishReason::Cancelled => wire::FinishReason::Cancelled,
    }
}

fn props(enc: Encoding, correlation: Option<Bytes>) -> PublishProperties {
    PublishProperties {
        // 1: the payload is UTF-8 (text and JSON); postcard is binary.
        payload_format_indicator: (enc != Encoding::Postcard).then_some(1),
        content_type: Some(enc.content_type().to_owned()),
        correlation_data: correlation,
        ..PublishProperties::default()
    }
}

fn json_props(correlation: Option<Bytes>) -> PublishProperties {
    props(Encoding::Json, correlation)
}

/// Bytes of payload that fit one packet to `topic` with `correlation`.
fn payload_budget(limit: u32, topic: &str, correlation: Option<&Bytes>, enc: Encoding) -> usize {
    let overhead = PACKET_OVERHEAD
        + topic.len()
        + correlation.map_or(0, |c| c.len())
        + enc.content_type().len();
    (limit as usize).saturating_sub(overhead)
}

// ---------------------------------------------------------------------------------------------
// The publisher task

struct Publisher {
    /// Home Assistant discovery, when enabled.
    ha: Option<HaBridge>,
    client: AsyncClient,
    routes: HashMap<u64, Route>,
    cancels: Cancels,
    out_limit: Arc<AtomicU32>,
    dedup: Arc<Mutex<DedupStore>>,
    /// The current connection (see [`Ack::epoch`]).
    epoch: Arc<AtomicU64>,
    /// Acks owed once the publishes of the current event are handed over.
    to_ack: Vec<Ack>,
}

impl Publisher {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        while let Some(msg) = rx.recv().await {
            match msg {
                Msg::Route(job, route) => {
                    self.routes.insert(job, route);
                }
                Msg::Event(job, event) => {
                    for out in self.on_event(job, event) {
                        self.publish(out).await;
                    }
                    for ack in std::mem::take(&mut self.to_ack) {
                        self.ack(ack).await;
                    }
                }
                Msg::Publish(out) => self.publish(out).await,
                Msg::Ack(acks) => {
                    for ack in acks {
                        self.ack(ack).await;
                    }
                }
                Msg::Merge(job, ack) => match self.routes.get_mut(&job) {
                    Some(route) => route.acks.push(ack),
                    // It ended just before: its reply is already out.
                    None => self.ack(ack).await,
                },
                Msg::Subscribe(filters) => {
                    let filters: Vec<Filter> = filters
                        .into_iter()
                        .map(|f| Filter::new(f, QoS::AtLeastOnce))
                        .collect();
                    if let Err(e) = self.client.subscribe_many(filters).await {
                        error!("subscribe: {e}");
                    }
                }
                Msg::Unsubscribe(filters) => {
                    for f in filters {
                        if let Err(e) = self.client.unsubscribe(f.clone()).await {
                            warn!("unsubscribe {f}: {e}");
                        }
                    }
                }
                Msg::Flush(done) => {
                    let _ = done.send(());
                }
            }
        }
    }

    async fn publish(&self, out: Outgoing) {
        let topic = out.topic.clone();
        if let Err(e) = self
            .client
            .publish_with_properties(out.topic, out.qos, out.retain, out.payload, out.props)
            .await
        {
            error!("publish to {topic}: {e}");
        }
    }

    /// Sends a PUBACK into rumqttc's request channel, behind every publish made before it.
    ///
    /// Why not wait for the reply's own PUBACK: the channel and the TCP stream are ordered, so
    /// the broker has read the reply's PUBLISH before it reads the request's PUBACK; if the
    /// connection breaks in between, rumqttc drops the queued PUBACK and resends the reply in
    /// the resumed session, and the broker redelivers the request, which the dedup window
    /// answers. Waiting for the reply's PUBACK would add no safety (the broker acknowledges
    /// before it has delivered or persisted either way) and would need packet-id bookkeeping
    /// that rumqttc does not expose.
    async fn ack(&self, ack: Ack) {
        if ack.epoch != self.epoch.load(Ordering::Acquire) {
            debug!(
                "not acknowledging packet {} of an earlier connection: the broker redelivers it",
                ack.pkid
            );
            return;
        }
        let mut p = Publish::new("", ack.qos, Vec::new(), None);
        p.pkid = ack.pkid;
        if let Err(e) = self.client.ack(&p).await {
            error!("acknowledge packet {}: {e}", ack.pkid);
        }
    }

    /// The publishes one engine event turns into.
    fn on_event(&mut self, job: u64, event: JobEvent) -> Vec<Outgoing> {
        let Some(route) = self.routes.get_mut(&job) else {
            warn!("event for unknown job {job}");
            return Vec::new();
        };
        let limit = self.out_limit.load(Ordering::Relaxed);
        let budget = payload_budget(limit, &route.topic, route.correlation.as_ref(), route.enc);
        let out = |route: &Route, payload: Vec<u8>| Outgoing {
            topic: route.topic.clone(),
            qos: route.qos,
            retain: false,
            payload,
            props: props(route.enc, route.correlation.clone()),
        };
        match event {
            JobEvent::Started { queue_ms } => {
                debug!("job {job} ({:?}) started after {queue_ms:.0} ms", route.id);
                Vec::new()
            }
            JobEvent::Delta(delta) => {
                if !route.stream {
                    return Vec::new();
                }
                let id = route.id.as_deref();
                let Some(pieces) = wire::split_chunk_delta(&delta, id, budget, route.enc) else {
                    error!(
                        "job {job}: a chunk cannot fit {budget} bytes to {}",
                        route.topic
                    );
                    return Vec::new();
                };
                let mut outs = Vec::with_capacity(pieces.len());
                for piece in pieces {
                    let chunk = Response::Chunk(Chunk {
                        id: route.id.clone(),
                        seq: route.next_seq,
                        delta: piece.to_owned(),
                    });
                    route.next_seq += 1;
                    outs.push(out(route, wire::encode_response(&chunk, route.enc)));
                }
                outs
            }
            JobEvent::Done(o) => {
                let mut route = self.finish(job);
                // Counts and timings only: prompts and answers are user data, never logged.
                info!(
                    request_id = route.id.as_deref().unwrap_or(""),
                    device = route.device.as_str(),
                    model = o.model.as_str(),
                    prompt_tokens = o.prompt_tokens,
                    completion_tokens = o.completion_tokens,
                    tokens_per_s = (o.tokens_per_s * 10.0).round() / 10.0;
                    "job {job} ({:?}) answered on {}: {} + {} tokens, {:.1} tok/s, {:?}",
                    route.id,
                    route.topic,
                    o.prompt_tokens,
                    o.completion_tokens,
                    o.tokens_per_s,
                    o.finish_reason
                );
                if route.ha && self.ha.is_some() {
                    let reply = reply_of(&route, o);
                    self.settle(&mut route, job, None);
                    let ha = self.ha.as_ref().expect("checked above");
                    return ha_publishes(ha, &route, &reply);
                }
                let (payload, reply) = final_reply(&route, o, budget);
                self.settle(&mut route, job, reply);
                vec![out(&route, payload)]
            }
            JobEvent::Failed(e) => {
                let mut route = self.finish(job);
                // Not kept: a retry after `busy`, `expired` or a failure runs again.
                self.settle(&mut route, job, None);
                let code = error_code(e.kind);
                log_refusal(&route, code, &e.message);
                let reply = Response::Error(ErrorReply {
                    id: route.id.clone(),
                    error: ErrorBody {
                        code,
                        message: e.message,
                    },
                });
                if let (true, Some(ha)) = (route.ha, &self.ha) {
                    return ha_publishes(ha, &route, &reply);
                }
                vec![out(&route, wire::encode_response(&reply, route.enc))]
            }
        }
    }

    /// The end of a job in the dedup window (the reply kept for duplicates, if any) and its
    /// acks, sent after the final reply.
    fn settle(&mut self, route: &mut Route, job: u64, reply: Option<Response>) {
        if let Some(key) = &route.dedup_key {
            self.dedup.lock().unwrap_or_else(|e| e.into_inner()).finish(
                key,
                job,
                reply,
                dedup::now_ms(),
            );
        }
        self.to_ack.append(&mut route.acks);
    }

    /// Forgets a finished job: its route and its cancel flag.
    fn finish(&mut self, job: u64) -> Route {
        let route = self.routes.remove(&job).expect("checked by the caller");
        if let Some(key) = &route.cancel_key {
            let mut cancels = self.cancels.lock().unwrap_or_else(|e| e.into_inner());
            if cancels.get(key).is_some_and(|(j, _)| *j == job) {
                cancels.remove(key);
            }
        }
        route
    }
}

/// One warning per refused or failed request, with the journal fields. Error messages name
/// limits and parameters, never the prompt text.
fn log_refusal(route: &Route, code: ErrorCode, message: &str) {
    warn!(
        request_id = route.id.as_deref().unwrap_or(""),
        device = route.device.as_str(),
        error_code = code.as_str();
        "request {:?} from {} refused: {code}: {message} (reply to {})",
        route.id, route.device, route.topic
    );
}

/// The final reply payload, and the reply to keep for duplicates; if it would exceed the
/// packet budget (the config check makes that rare), an `internal` error instead (not kept),
/// so the broker never drops the connection.
fn final_reply(route: &Route, o: JobOutcome, budget: usize) -> (Vec<u8>, Option<Response>) {
    let reply = reply_of(route, o);
    let payload = wire::encode_response(&reply, route.enc);
    if payload.len() <= budget {
        return (payload, Some(reply));
    }
    error!(
        "reply of {} bytes exceeds the packet budget of {budget} bytes",
        payload.len()
    );
    let e = Response::Error(ErrorReply {
        id: route.id.clone(),
        error: ErrorBody {
            code: ErrorCode::Internal,
            message: format!(
                "the reply of {} bytes exceeds the packet limit; ask for fewer max_tokens",
                payload.len()
            ),
        },
    });
    (wire::encode_response(&e, route.enc), None)
}

/// The final reply of a finished job.
fn reply_of(route: &Route, o: JobOutcome) -> Response {
    Response::Reply(Reply {
        id: route.id.clone(),
        model: o.model,
        text: o.text,
        finish_reason: finish_reason(o.finish_reason),
        usage: Usage {
            prompt_tokens: o.prompt_tokens,
            completion_tokens: o.completion_tokens,
        },
        timings: Timings {
            queue_ms: o.queue_ms,
            prompt_ms: o.prompt_ms,
            generate_ms: o.generate_ms,
            tokens_per_s: o.tokens_per_s,
        },
        done: route.stream.then_some(true),
    })
}

/// The Home Assistant publishes of a final reply or an error (attributes, then state).
fn ha_publishes(ha: &HaBridge, route: &Route, reply: &Response) -> Vec<Outgoing> {
    let id = route.id.as_deref().unwrap_or("");
    let outcome = match reply {
        Response::Reply(r) => Outcome::Answer {
            text: &r.text,
            model: &r.model,
            finish_reason: match r.finish_reason {
                wire::FinishReason::Stop => "stop",
                wire::FinishReason::Length => "length",
                wire::FinishReason::Cancelled => "cancelled",
            },
            prompt_tokens: r.usage.prompt_tokens,
            completion_tokens: r.usage.completion_tokens,
            tokens_per_s: r.timings.tokens_per_s,
        },
        Response::Error(e) => Outcome::Error {
            code: e.error.code.as_str(),
            message: &e.error.message,
        },
        Response::Chunk(_) => return Vec::new(),
    };
    ha.answer(id, outcome).into_iter().map(retained).collect()
}

/// A retained QoS 1 publish (Home Assistant discovery and state).
fn retained(r: Retained) -> Outgoing {
    Outgoing {
        topic: r.topic,
        qos: QoS::AtLeastOnce,
        retain: true,
        payload: r.payload,
        props: PublishProperties {
            payload_format_indicator: Some(1),
            ..PublishProperties::default()
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Status

fn offline_status(node: &str) -> Vec<u8> {
    json!({"node": node, "version": env!("CARGO_PKG_VERSION"), "state": "offline"})
        .to_string()
        .into_bytes()
}

/// The status document; `uptime_s` is left out so that changes can be compared. Every model
/// has its own entry (queue and counters included); the top-level counters are the sums, and
/// `last_tokens_per_s` is the default model's.
fn status_doc(node: &str, models: &Models) -> serde_json::Value {
    let (in_flight, depth, capacity, served, failed) = models.totals();
    let s = models.default_engine().stats();
    json!({
        "node": node,
        "version": env!("CARGO_PKG_VERSION"),
        "state": "online",
        "models": models.status_entries(),
        "queue": {"depth": depth, "capacity": capacity},
        "in_flight": in_flight,
        "served": served,
        "failed": failed,
        "last_tokens_per_s": (s.last_tokens_per_s * 10.0).round() / 10.0,
    })
}

/// What the status task reads.
struct StatusCtx {
    client: AsyncClient,
    /// The engines serving now (replaced by reloads).
    engine: watch::Receiver<Models>,
    settings: Arc<Settings>,
    topic: String,
    now: Arc<Notify>,
    notifier: Notifier,
    link: Arc<AtomicU8>,
    broker: String,
}

/// The systemd `STATUS=` line: the broker link, the models, the queues, the counters.
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
async fn status_task(c: StatusCtx) {
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
            c.notifier.status(&line);
            last_line = line;
        }
        let doc = status_doc(&c.settings.node, &engine);
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

// ---------------------------------------------------------------------------------------------
// The event-loop task

/// The engines loaded for a reload (or why they were not), each with its model name.
type Loaded = Result<Vec<(String, Result<Engine, StartError>)>, String>;
/// Model loads started by a reload, with the settings they belong to.
type PendingEngine = (Box<Settings>, JoinHandle<Loaded>);

struct Loop {
    settings: Arc<Settings>,
    /// The engines serving now, one per model.
    models: Models,
    /// Tells the status and watchdog tasks which engines serve.
    engines: watch::Sender<Models>,
    /// Engines replaced by a reload, draining their jobs.
    retiring: Vec<JoinHandle<()>>,
    /// A reload waiting for its new model.
    pending: Option<PendingEngine>,
    reloader: Option<Reloader>,
    notifier: Notifier,
    /// Job ids are the server's, not an engine's, so they stay unique across engine swaps.
    next_job: u64,
    topics: Topics,
    eventloop: EventLoop,
    tx: mpsc::UnboundedSender<Msg>,
    cancels: Cancels,
    out_limit: Arc<AtomicU32>,
    status_now: Arc<Notify>,
    link: Arc<AtomicU8>,
    backoff: Backoff,
    broker: String,
    connected: bool,
    dedup: Arc<Mutex<DedupStore>>,
    /// Counts connections: bumped on every ConnAck and every connection loss.
    epoch: Arc<AtomicU64>,
    /// Shutting down: new requests are left for the broker to redeliver.
    draining: bool,
    /// Home Assistant discovery, when enabled.
    ha: Option<HaBridge>,
}

impl Loop {
    /// Polls until `shutdown`, reloading the configuration on each `reload` message.
    async fn serve(
        &mut self,
        shutdown: impl Future<Output = ()>,
        reload: &mut mpsc::UnboundedReceiver<()>,
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
                Some(()) = reload.recv() => self.reload(),
                loaded = pending => {
                    let (settings, _) = self.pending.take().expect("polled above");
                    let loaded = loaded.unwrap_or_else(|e| Err(format!("the load task failed: {e}")));
                    self.swap_engine(*settings, loaded);
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
    async fn pump<F: Future>(&mut self, fut: F, limit: Duration) -> Option<F::Output> {
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
    async fn until_disconnected(&mut self, limit: Duration) {
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

    /// SIGHUP: reads every configuration source again. Limits and sampling defaults apply at
    /// once; changed and added models load beside the running ones, which serve until the new
    /// ones are ready ([`Loop::swap_engine`]); `[mqtt]` and `[node]` need a restart. An invalid
    /// new configuration, or one the memory guard refuses, is refused and the running one kept.
    fn reload(&mut self) {
        let Some(reloader) = self.reloader.as_mut() else {
            warn!("reload: this daemon was not started from a configuration; nothing to reload");
            return;
        };
        if self.pending.is_some() {
            warn!("reload: a new model is still loading; try again once it is ready");
            return;
        }
        self.notifier.reloading("reloading the configuration");
        let mut new = match reloader() {
            Ok(s) => s,
            Err(e) => return self.reload_refused(&e.to_string()),
        };
        let old = self.settings.clone();
        if new.mqtt != old.mqtt || new.node != old.node || new.homeassistant != old.homeassistant {
            warn!(
                "reload: [mqtt], [node] and [homeassistant] changes apply after a restart; \
                 keeping the running ones"
            );
            new.mqtt = old.mqtt.clone();
            new.node = old.node.clone();
            new.homeassistant = old.homeassistant.clone();
        }
        let plan = models::plan_reload(&old, &new);
        if !plan.load.is_empty() || !plan.removed.is_empty() {
            let names: Vec<&str> = plan.load.iter().map(|c| c.model_name.as_str()).collect();
            let what = match names.as_slice() {
                [] => "nothing (models removed)".to_owned(),
                [one] => format!("model {one}"),
                all => format!("models {}", all.join(", ")),
            };
            self.notifier.status(&format!("reloading: loading {what}"));
            // The memory guard reads model headers: off the event loop, like the loads.
            let checked = new.clone();
            let task = tokio::task::spawn_blocking(move || {
                models::guard_reload(&old, &checked, &plan).map_err(|e| e.to_string())?;
                Ok(models::load(plan.load))
            });
            self.pending = Some((Box::new(new), task));
            return;
        }
        if let Err(e) = self.models.retune(&plan) {
            return self.reload_refused(&e);
        }
        self.settings = Arc::new(new);
        self.reloaded(&[]);
    }

    /// The end of a reload that loaded models: serve with them and let the replaced ones
    /// drain; a model whose load failed keeps its running engine.
    fn swap_engine(&mut self, settings: Settings, loaded: Loaded) {
        let loaded = match loaded {
            Ok(l) => l,
            Err(why) => return self.reload_refused(&why),
        };
        let applied = self.models.apply_reload(&self.settings, settings, loaded);
        if let Err(e) = applied
            .models
            .retune(&models::plan_reload(&self.settings, &applied.settings))
        {
            warn!("reload: {e}");
        }
        let (old_names, new_names) = (self.models.names(), applied.models.names());
        let gone: Vec<String> = old_names
            .iter()
            .filter(|n| !new_names.contains(n))
            .flat_map(|n| self.topics.model_subscriptions(n))
            .collect();
        let added: Vec<String> = new_names
            .iter()
            .filter(|n| !old_names.contains(n))
            .flat_map(|n| self.topics.model_subscriptions(n))
            .collect();
        self.topics.set_models(&new_names);
        if !gone.is_empty() {
            let _ = self.tx.send(Msg::Unsubscribe(gone));
        }
        if !added.is_empty() {
            let _ = self.tx.send(Msg::Subscribe(added));
        }
        self.models = applied.models;
        self.engines.send_replace(self.models.clone());
        let drain = self.settings.limits.shutdown_drain;
        for old in applied.retired {
            self.retiring
                .push(tokio::task::spawn_blocking(move || old.shutdown(drain)));
        }
        self.retiring.retain(|t| !t.is_finished());
        self.settings = Arc::new(applied.settings);
        self.reloaded(&applied.failures);
    }

    fn reloaded(&mut self, failures: &[String]) {
        let s = &self.settings;
        let serving = self.models.names().join(", ");
        if failures.is_empty() {
            info!("configuration reloaded from {}", s.source);
            self.notifier
                .ready(&format!("configuration reloaded; serving {serving}"));
        } else {
            let why = failures.join("; ");
            error!("configuration reloaded from {} in part: {why}", s.source);
            self.notifier.ready(&format!(
                "configuration reloaded in part ({why}); serving {serving}"
            ));
        }
        self.status_now.notify_one();
    }

    fn reload_refused(&mut self, why: &str) {
        error!("reload refused, the running configuration stays: {why}");
        self.notifier.ready(&format!(
            "reload refused ({why}); serving with the previous configuration"
        ));
    }

    fn on_publish(&mut self, p: Publish) {
        let Ok(topic) = std::str::from_utf8(&p.topic) else {
            warn!("ignoring a message with a non-UTF-8 topic");
            return;
        };
        let topic = topic.to_owned();
        let ack = self.ack_of(&p);
        match self.topics.classify(&topic) {
            Some(Incoming::Prompt { .. }) if self.draining => {
                debug!("shutting down: leaving a request on {topic} for the broker to redeliver");
            }
            Some(Incoming::Prompt {
                device,
                postcard,
                model,
            }) => self.on_prompt(device, postcard, p, model, ack),
            Some(Incoming::Cancel { device }) => {
                self.on_cancel(device, &p.payload);
                self.ack_now(ack);
            }
            None => match self.ha.as_ref().and_then(|ha| ha.topics.classify(&topic)) {
                Some(HaIncoming::Ask) if self.draining => {
                    debug!("shutting down: leaving a Home Assistant request for redelivery");
                }
                Some(HaIncoming::Ask) => self.on_ha_ask(p, ack),
                Some(HaIncoming::Cancel) => {
                    self.on_ha_cancel();
                    self.ack_now(ack);
                }
                Some(HaIncoming::Birth) => {
                    if let Some(ha) = self.ha.as_ref().filter(|_| is_birth(&p.payload)) {
                        info!("Home Assistant is online: publishing the discovery again");
                        self.publish_all(ha.on_birth());
                        self.status_now.notify_one();
                    }
                    self.ack_now(ack);
                }
                None => {
                    debug!("ignoring a message on {topic}");
                    self.ack_now(ack);
                }
            },
        }
    }

    /// Retained publishes through the publisher, in order.
    fn publish_all(&self, all: Vec<Retained>) {
        for r in all {
            let _ = self.tx.send(Msg::Publish(retained(r)));
        }
    }

    /// A prompt from Home Assistant's "Ask" box, answered like a device's (limits, busy,
    /// expiry) on the answer sensor's topics. The payload is always plain text and no property
    /// redirects the answer.
    fn on_ha_ask(&mut self, p: Publish, ack: Option<Ack>) {
        let received = Instant::now();
        let Some(ha) = &self.ha else { return };
        let route = Route {
            device: HA_DEVICE.to_owned(),
            topic: ha.topics.answer.clone(),
            qos: QoS::AtLeastOnce,
            enc: Encoding::Text,
            id: Some(format!("ha-{}", self.next_job)),
            correlation: None,
            stream: false,
            next_seq: 0,
            cancel_key: None,
            acks: ack.into_iter().collect(),
            dedup_key: None,
            ha: true,
        };
        let limit = self.settings.limits.max_payload_bytes as usize;
        if p.payload.len() > limit {
            let msg = format!(
                "the payload of {} bytes exceeds the limit of {limit} bytes",
                p.payload.len()
            );
            return self.refuse(&route, ErrorCode::TooLong, msg);
        }
        let req = match wire::decode_request(&p.payload, Encoding::Text) {
            Ok(r) => r,
            Err(e) => return self.refuse(&route, e.code, e.message),
        };
        let deadline = p
            .properties
            .and_then(|pp| pp.message_expiry_interval)
            .map(|secs| received + Duration::from_secs(secs.into()));
        let engine = self.models.default_engine().clone();
        self.submit(
            HA_DEVICE,
            route,
            req,
            Encoding::Text,
            deadline,
            received,
            &engine,
        );
    }

    /// The cancel button: every running Home Assistant request stops.
    fn on_ha_cancel(&mut self) {
        let cancels = self.cancels.lock().unwrap_or_else(|e| e.into_inner());
        let mut n = 0;
        for ((device, id), (job, flag)) in cancels.iter() {
            if device == HA_DEVICE {
                flag.store(true, Ordering::Relaxed);
                info!("cancel: Home Assistant request {id} (job {job})");
                n += 1;
            }
        }
        if n == 0 {
            info!("cancel: no Home Assistant request is running");
        }
    }

    /// The ack a QoS 1 (or 2) message is owed; none for QoS 0.
    fn ack_of(&self, p: &Publish) -> Option<Ack> {
        (p.qos != QoS::AtMostOnce).then(|| Ack {
            qos: p.qos,
            pkid: p.pkid,
            epoch: self.epoch.load(Ordering::Acquire),
        })
    }

    /// Acks through the publisher, behind anything it is publishing.
    fn ack_now(&self, ack: Option<Ack>) {
        if let Some(a) = ack {
            let _ = self.tx.send(Msg::Ack(vec![a]));
        }
    }

    fn on_cancel(&mut self, device: &str, payload: &[u8]) {
        let id = std::str::from_utf8(payload).unwrap_or("").trim();
        let key = (device.to_owned(), id.to_owned());
        let cancels = self.cancels.lock().unwrap_or_else(|e| e.into_inner());
        match cancels.get(&key) {
            Some((job, flag)) => {
                flag.store(true, Ordering::Relaxed);
                info!("cancel: request {id:?} of {device} (job {job})");
            }
            None => info!("cancel: no running request {id:?} of {device}"),
        }
    }

    /// Sends one error reply (and logs it).
    fn refuse(&self, route: &Route, code: ErrorCode, message: String) {
        log_refusal(route, code, &message);
        let reply = Response::Error(ErrorReply {
            id: route.id.clone(),
            error: ErrorBody { code, message },
        });
        self.answer(route, &reply);
    }

    /// Publishes `reply` as `route` asks, then the request's acks behind it.
    fn answer(&self, route: &Route, reply: &Response) {
        if let (true, Some(ha)) = (route.ha, &self.ha) {
            for out in ha_publishes(ha, route, reply) {
                let _ = self.tx.send(Msg::Publish(out));
            }
            if !route.acks.is_empty() {
                let _ = self.tx.send(Msg::Ack(route.acks.clone()));
            }
            return;
        }
        let _ = self.tx.send(Msg::Publish(Outgoing {
            topic: route.topic.clone(),
            qos: route.qos,
            retain: false,
            payload: wire::encode_response(reply, route.enc),
            props: props(route.enc, route.correlation.clone()),
        }));
        if !route.acks.is_empty() {
            let _ = self.tx.send(Msg::Ack(route.acks.clone()));
        }
    }

    /// A request whose `(device, id)` is in the dedup window: `true` when it was handled (a
    /// finished one gets its stored reply again, a running one is merged into its job).
    fn duplicate(&self, route: &Route) -> bool {
        let Some(id) = &route.id else { return false };
        let key = (route.device.clone(), id.clone());
        let seen = self
            .dedup
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .check(&key, dedup::now_ms());
        match seen {
            Seen::New => false,
            Seen::InFlight(job) => {
                info!(
                    "request {id:?} from {} is a duplicate of running job {job}: one answer",
                    route.device
                );
                if let Some(&ack) = route.acks.first() {
                    let _ = self.tx.send(Msg::Merge(job, ack));
                }
                true
            }
            Seen::Finished(mut reply) => {
                info!(
                    "request {id:?} from {} was answered already: sending the stored reply to {}",
                    route.device, route.topic
                );
                if let Response::Reply(r) = &mut reply {
                    // The stored reply, as this duplicate asked for it.
                    r.done = route.stream.then_some(true);
                }
                self.answer(route, &reply);
                true
            }
        }
    }

    /// The reply-topic rule, plus: never a Home Assistant topic when discovery is on.
    fn check_reply_topic(&self, rt: &str, allowed: &[String]) -> Result<(), String> {
        topics::check_reply_topic(rt, allowed).map_err(|e| e.to_string())?;
        match &self.ha {
            Some(ha) if ha.reserved(rt) => {
                Err(format!("reply topic `{rt}` is a Home Assistant topic"))
            }
            _ => Ok(()),
        }
    }

    fn on_prompt(
        &mut self,
        device: &str,
        postcard: bool,
        p: Publish,
        topic_model: Option<&str>,
        ack: Option<Ack>,
    ) {
        let received = Instant::now();
        let s = &self.settings;
        let allowed = &s.mqtt.allowed_reply_prefixes;
        let pprops = p.properties.unwrap_or_default();
        let enc = if postcard {
            Encoding::Postcard
        } else {
            wire::sniff(&p.payload, pprops.content_type.as_deref())
        };
        let mut route = Route {
            device: device.to_owned(),
            topic: self.topics.reply(device),
            qos: match p.qos {
                QoS::AtMostOnce => QoS::AtMostOnce,
                _ => QoS::AtLeastOnce,
            },
            enc,
            id: None,
            correlation: pprops.correlation_data.clone(),
            stream: false,
            next_seq: 0,
            cancel_key: None,
            acks: ack.into_iter().collect(),
            dedup_key: None,
            ha: false,
        };
        let too_big = p.payload.len() > s.limits.max_payload_bytes as usize;

        // MQTT 5 Response Topic first: it decides where even a malformed request is answered.
        if let Some(rt) = &pprops.response_topic {
            if let Err(e) = self.check_reply_topic(rt, allowed) {
                if !too_big {
                    route.id = wire::salvage_id(&p.payload, enc);
                }
                return self.refuse(&route, ErrorCode::ReplyTopicDenied, e);
            }
            route.topic = rt.clone();
        }
        if too_big {
            let msg = format!(
                "the payload of {} bytes exceeds the limit of {} bytes",
                p.payload.len(),
                s.limits.max_payload_bytes
            );
            return self.refuse(&route, ErrorCode::TooLong, msg);
        }
        let req = match wire::decode_request(&p.payload, enc) {
            Ok(r) => r,
            Err(e) => {
                route.id = wire::salvage_id(&p.payload, enc);
                return self.refuse(&route, e.code, e.message);
            }
        };
        route.id = req.id.clone();
        route.stream = req.stream.unwrap_or(false);
        if pprops.response_topic.is_none() {
            if let Some(rt) = &req.reply_to {
                if let Err(e) = self.check_reply_topic(rt, allowed) {
                    return self.refuse(&route, ErrorCode::ReplyTopicDenied, e);
                }
                route.topic = rt.clone();
            }
        }
        if self.duplicate(&route) {
            return;
        }
        let engine = match self.models.select(topic_model, req.model.as_deref()) {
            Ok(e) => e.clone(),
            Err((code, msg)) => return self.refuse(&route, code, msg),
        };
        let deadline = [
            pprops
                .message_expiry_interval
                .map(|secs| received + Duration::from_secs(secs.into())),
            req.deadline_ms
                .map(|ms| received + Duration::from_millis(ms)),
        ]
        .into_iter()
        .flatten()
        .min();
        self.submit(device, route, req, enc, deadline, received, &engine);
    }

    #[allow(clippy::too_many_arguments)]
    fn submit(
        &mut self,
        device: &str,
        mut route: Route,
        req: Request,
        enc: Encoding,
        deadline: Option<Instant>,
        received: Instant,
        engine: &Engine,
    ) {
        let input = match (enc, req.prompt, req.messages) {
            (Encoding::Text, Some(text), _) => PromptInput::Text(text),
            (_, Some(prompt), _) => PromptInput::Raw(prompt),
            (_, None, Some(messages)) => PromptInput::Chat(
                messages
                    .into_iter()
                    .map(|m| ChatMessage::new(m.role, m.content))
                    .collect(),
            ),
            (_, None, None) => {
                // validate() makes this unreachable; answer rather than panic.
                let msg = "one of `prompt` or `messages` is required".to_owned();
                return self.refuse(&route, ErrorCode::BadRequest, msg);
            }
        };
        let job_id = self.next_job;
        self.next_job += 1;
        let tx = self.tx.clone();
        let mut job = engine.job(
            job_id,
            input,
            Box::new(move |ev| {
                let _ = tx.send(Msg::Event(job_id, ev));
            }),
        );
        job.max_tokens = req.max_tokens;
        job.client = device.to_owned();
        job.stream = route.stream;
        job.client = device.to_owned();
        job.deadline = deadline;
        job.enqueued = received;
        job.stop = req.stop.unwrap_or_default();
        let sp = &mut job.sampling;
        if let Some(v) = req.temperature {
            sp.temperature = v;
        }
        if let Some(v) = req.top_k {
            sp.top_k = v;
        }
        if let Some(v) = req.top_p {
            sp.top_p = v;
        }
        if let Some(v) = req.min_p {
            sp.min_p = v;
        }
        if let Some(v) = req.repeat_penalty {
            sp.repeat_penalty = v;
        }
        if let Some(v) = req.seed {
            sp.seed = v;
        }
        if let Some(id) = &route.id {
            let key = (device.to_owned(), id.clone());
            self.cancels
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key.clone(), (job_id, job.cancel.clone()));
            // Home Assistant ids are ours, one per request: nothing to recognise again.
            if !route.ha {
                self.dedup
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .start(key.clone(), job_id);
                route.dedup_key = Some(key.clone());
            }
            route.cancel_key = Some(key);
        }
        debug!(
            "job {job_id}: request {:?} from {device} ({enc:?}), reply to {}",
            route.id, route.topic
        );
        let _ = self.tx.send(Msg::Route(job_id, route));
        if let Err(rejected) = engine.submit(job) {
            // Answered like any other failure, by the publisher (which logs it).
            let _ = self
                .tx
                .send(Msg::Event(job_id, JobEvent::Failed(rejected.error)));
        }
    }
}
