//! The publisher task: turns engine events into reply publishes, in order, and sends each
//! request's acknowledgement once its reply is handed to rumqttc.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use log::{debug, error, info, warn};
use rumqttc::v5::mqttbytes::v5::{Filter, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use tokio::sync::mpsc;

use super::messages::*;
use crate::engine::{FormatOutcome, JobEvent, JobOutcome};
use crate::mqtt::dedup::{self, DedupStore};
use crate::mqtt::homeassistant::answer::Outcome;
use crate::mqtt::homeassistant::bridge::{HaBridge, Retained};
use crate::mqtt::wire::{
    self, Chunk, ErrorBody, ErrorCode, ErrorReply, Reply, Response, Timings, Usage,
};

/// The publisher task's state: the routes of running jobs and what it owes the broker.
pub(super) struct Publisher {
    /// Home Assistant discovery, when enabled.
    pub(super) ha: Option<HaBridge>,
    pub(super) client: AsyncClient,
    pub(super) routes: HashMap<u64, Route>,
    pub(super) cancels: Cancels,
    pub(super) out_limit: Arc<AtomicU32>,
    pub(super) dedup: Arc<Mutex<DedupStore>>,
    /// The current connection (see [`Ack::epoch`]).
    pub(super) epoch: Arc<AtomicU64>,
    /// Acks owed once the publishes of the current event are handed over.
    pub(super) to_ack: Vec<Ack>,
}

impl Publisher {
    pub(super) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
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
pub(super) fn log_refusal(route: &Route, code: ErrorCode, message: &str) {
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
        json: o
            .format
            .as_ref()
            .and_then(|f| f.json.as_ref())
            .map(|v| v.to_string()),
        message: o.format.as_deref().and_then(format_message),
    })
}

/// Why a formatted reply is not a complete answer; `None` when it is.
fn format_message(f: &FormatOutcome) -> Option<String> {
    if f.complete {
        return None;
    }
    Some(match &f.error {
        Some(e) => format!("{e}; the text is not a valid answer"),
        None => "the reply ended before the format was complete (max_tokens, a stop string or a \
                 cancel); the text is not a valid answer"
            .to_owned(),
    })
}

/// The Home Assistant publishes of a final reply or an error (attributes, then state).
pub(super) fn ha_publishes(ha: &HaBridge, route: &Route, reply: &Response) -> Vec<Outgoing> {
    let id = route.id.as_deref().unwrap_or("");
    let outcome = match reply {
        Response::Reply(r) => Outcome::Answer {
            text: &r.text,
            model: &r.model,
            finish_reason: r.finish_reason.as_str(),
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
pub(super) fn retained(r: Retained) -> Outgoing {
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
