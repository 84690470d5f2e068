//! Home Assistant on the event loop: discovery publishes, the "Ask" box, the cancel button,
//! and the reply-topic rule that keeps devices off Home Assistant's topics.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use log::info;
use rumqttc::v5::mqttbytes::v5::Publish;
use rumqttc::v5::mqttbytes::QoS;

use super::event_loop::Loop;
use super::messages::{Ack, Msg, Route};
use super::publisher::retained;
use crate::mqtt::homeassistant::bridge::{Retained, HA_DEVICE};
use crate::mqtt::topics;
use crate::mqtt::wire::{self, Encoding, ErrorCode};

impl Loop {
    /// Retained publishes through the publisher, in order.
    pub(super) fn publish_all(&self, all: Vec<Retained>) {
        for r in all {
            let _ = self.tx.send(Msg::Publish(retained(r)));
        }
    }

    /// A prompt from Home Assistant's "Ask" box, answered like a device's (limits, busy,
    /// expiry) on the answer sensor's topics. The payload is always plain text and no property
    /// redirects the answer.
    pub(super) fn on_ha_ask(&mut self, p: Publish, ack: Option<Ack>) {
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
            None,
        );
    }

    /// The cancel button: every running Home Assistant request stops.
    pub(super) fn on_ha_cancel(&mut self) {
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

    /// The reply-topic rule, plus: never a Home Assistant topic when discovery is on.
    pub(super) fn check_reply_topic(&self, rt: &str, allowed: &[String]) -> Result<(), String> {
        topics::check_reply_topic(rt, allowed).map_err(|e| e.to_string())?;
        match &self.ha {
            Some(ha) if ha.reserved(rt) => {
                Err(format!("reply topic `{rt}` is a Home Assistant topic"))
            }
            _ => Ok(()),
        }
    }
}
