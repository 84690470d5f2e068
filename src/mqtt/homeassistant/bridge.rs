//! What the event loop does for Home Assistant, as publishes to make: the discovery at every
//! connection and at every Home Assistant birth, the answers of "Ask" requests (remembered,
//! so a birth brings the last one again), and the topics no reply may go to.

use std::sync::{Arc, Mutex};

use super::answer::{answer_state, AnswerState, Outcome};
use super::discovery;
use super::topics::HaTopics;
use super::HomeAssistantSettings;
use crate::mqtt::topics::filter_matches;

/// The device level of Home Assistant requests in logs and cancel keys. It holds a `/`, so no
/// device topic level can ever equal it.
pub const HA_DEVICE: &str = "homeassistant/ask";

/// One retained publish, QoS 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retained {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// The Home Assistant side of one daemon (present only when enabled).
#[derive(Clone, Debug)]
pub struct HaBridge {
    settings: HomeAssistantSettings,
    node: String,
    prefix: String,
    pub topics: HaTopics,
    /// The last answer, shared by the event loop and the publisher.
    last: Arc<Mutex<Option<AnswerState>>>,
}

impl HaBridge {
    /// `None` unless Home Assistant discovery is enabled.
    pub fn new(settings: &HomeAssistantSettings, prefix: &str, node: &str) -> Option<HaBridge> {
        settings.enabled.then(|| HaBridge {
            settings: settings.clone(),
            node: node.to_owned(),
            prefix: prefix.to_owned(),
            topics: HaTopics::new(prefix, node, &settings.discovery_prefix),
            last: Arc::new(Mutex::new(None)),
        })
    }

    /// The discovery messages.
    pub fn discovery(&self) -> Vec<Retained> {
        discovery::messages(&self.settings, &self.node, &self.topics)
            .into_iter()
            .map(|m| Retained {
                topic: m.topic,
                payload: m.payload.to_string().into_bytes(),
            })
            .collect()
    }

    /// Home Assistant (re)started: the discovery, then the last answer.
    pub fn on_birth(&self) -> Vec<Retained> {
        let mut all = self.discovery();
        if let Some(a) = self.last.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            all.extend(self.answer_publishes(a));
        }
        all
    }

    /// The publishes of request `id`'s outcome (attributes first), remembered as the last.
    pub fn answer(&self, id: &str, o: Outcome<'_>) -> Vec<Retained> {
        let a = answer_state(id, o);
        let out = self.answer_publishes(&a);
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(a);
        out
    }

    fn answer_publishes(&self, a: &AnswerState) -> Vec<Retained> {
        vec![
            Retained {
                topic: self.topics.attributes.clone(),
                payload: a.attributes.to_string().into_bytes(),
            },
            Retained {
                topic: self.topics.answer.clone(),
                payload: a.state.clone().into_bytes(),
            },
        ]
    }

    /// Whether a device's reply topic would land in Home Assistant's discovery tree or on a
    /// Home Assistant topic of any llamabus node: such replies are refused, whatever
    /// `allowed_reply_prefixes` says.
    pub fn reserved(&self, topic: &str) -> bool {
        let discovery = format!("{}/#", self.settings.discovery_prefix);
        let ours = format!("{}/ha/#", self.prefix);
        filter_matches(&discovery, topic) || filter_matches(&ours, topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bridge() -> HaBridge {
        let s = HomeAssistantSettings {
            enabled: true,
            ..HomeAssistantSettings::default()
        };
        HaBridge::new(&s, "llamabus", "pi").unwrap()
    }

    #[test]
    fn disabled_means_no_bridge() {
        assert!(HaBridge::new(&HomeAssistantSettings::default(), "llamabus", "pi").is_none());
    }

    #[test]
    fn birth_repeats_discovery_and_the_last_answer() {
        let b = bridge();
        assert_eq!(b.on_birth(), b.discovery());
        assert_eq!(b.discovery().len(), 8);
        let out = b.answer(
            "ha-1",
            Outcome::Error {
                code: "busy",
                message: "full",
            },
        );
        assert_eq!(out[0].topic, "llamabus/ha/pi/answer/attributes");
        assert_eq!(out[1].topic, "llamabus/ha/pi/answer");
        assert_eq!(out[1].payload, b"error: busy: full");
        let birth = b.on_birth();
        assert_eq!(birth.len(), 10);
        assert_eq!(&birth[8..], &out[..]);
    }

    #[test]
    fn replies_never_go_to_home_assistant_topics() {
        let b = bridge();
        for t in [
            "homeassistant/sensor/x/y/config",
            "homeassistant/status",
            "llamabus/ha/pi/ask",
            "llamabus/ha/other/cancel",
        ] {
            assert!(b.reserved(t), "{t}");
        }
        for t in ["llamabus/reply/pi", "homeassistantx/y", "llamabus/hax"] {
            assert!(!b.reserved(t), "{t}");
        }
    }
}
