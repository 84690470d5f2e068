//! Incoming publishes: prompts (decode, route, limits, duplicates, submit) and cancels.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use rumqttc::v5::mqttbytes::v5::Publish;
use rumqttc::v5::mqttbytes::QoS;

use super::event_loop::Loop;
use super::messages::*;
use super::publisher::{ha_publishes, log_refusal};
use crate::engine::{Engine, JobEvent, PromptInput};
use crate::format::Grammar;
use crate::mqtt::dedup::{self, Seen};
use crate::mqtt::homeassistant::topics::{is_birth, HaIncoming};
use crate::mqtt::topics::Incoming;
use crate::mqtt::wire::{self, Encoding, ErrorBody, ErrorCode, ErrorReply, Request, Response};
use crate::tokenizer::chat::ChatMessage;

impl Loop {
    pub(super) fn on_publish(&mut self, p: Publish) {
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
                format,
            }) => self.on_prompt(device, postcard, p, model, format, ack),
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
    pub(super) fn refuse(&self, route: &Route, code: ErrorCode, message: String) {
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

    fn on_prompt(
        &mut self,
        device: &str,
        postcard: bool,
        p: Publish,
        topic_model: Option<&str>,
        topic_format: Option<&str>,
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
        let format = match self.format_for(&engine, topic_format, req.format.as_ref()) {
            Ok(f) => f,
            Err(e) => return self.refuse(&route, ErrorCode::BadFormat, e.to_string()),
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
        self.submit(device, route, req, enc, deadline, received, &engine, format);
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn submit(
        &mut self,
        device: &str,
        mut route: Route,
        req: Request,
        enc: Encoding,
        deadline: Option<Instant>,
        received: Instant,
        engine: &Engine,
        format: Option<Grammar>,
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
        job.deadline = deadline;
        job.enqueued = received;
        job.stop = req.stop.unwrap_or_default();
        job.format = format;
        // A field the request leaves out keeps the model's default.
        let sp = &mut job.sampling;
        override_with(&mut sp.temperature, req.temperature);
        override_with(&mut sp.top_k, req.top_k);
        override_with(&mut sp.top_p, req.top_p);
        override_with(&mut sp.min_p, req.min_p);
        override_with(&mut sp.repeat_penalty, req.repeat_penalty);
        override_with(&mut sp.seed, req.seed);
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

/// Replaces `slot` with `value` when the request set it.
fn override_with<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}
