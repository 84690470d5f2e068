//! The Home Assistant topics of one node. The command topics sit in the daemon's own tree,
//! per node (never in a share group: the dashboard talks to one board), and answers go only
//! to fixed topics next to them; nothing in a payload chooses a topic.
//!
//! | Purpose | Topic |
//! |---|---|
//! | "Ask" text entity: command (plain-text prompt) | `{prefix}/ha/{node}/ask` |
//! | Cancel button: command (any payload) | `{prefix}/ha/{node}/cancel` |
//! | Last answer: state (at most 255 characters), retained | `{prefix}/ha/{node}/answer` |
//! | Last answer: JSON attributes (full text), retained | `{prefix}/ha/{node}/answer/attributes` |
//! | Home Assistant's birth and last will (`online`/`offline`) | `{discovery_prefix}/status` |
//! | Sensors and availability: the node status (retained) | `{prefix}/status/{node}` |

/// What a message on a Home Assistant topic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HaIncoming {
    /// A prompt typed in the "Ask" box.
    Ask,
    /// The cancel button was pressed.
    Cancel,
    /// Home Assistant's status: `online` when it (re)starts.
    Birth,
}

/// The Home Assistant topics of one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HaTopics {
    pub ask: String,
    pub cancel: String,
    pub answer: String,
    pub attributes: String,
    pub birth: String,
    /// The node status (`{prefix}/status/{node}`): the sensors' state and the availability.
    pub status: String,
}

impl HaTopics {
    /// `prefix` is the daemon's topic prefix, `node` its node name (one topic level),
    /// `discovery_prefix` Home Assistant's.
    pub fn new(prefix: &str, node: &str, discovery_prefix: &str) -> HaTopics {
        let base = format!("{prefix}/ha/{node}");
        HaTopics {
            ask: format!("{base}/ask"),
            cancel: format!("{base}/cancel"),
            answer: format!("{base}/answer"),
            attributes: format!("{base}/answer/attributes"),
            birth: format!("{discovery_prefix}/status"),
            status: format!("{prefix}/status/{node}"),
        }
    }

    /// The filters to subscribe to (exact topics, no wildcards).
    pub fn subscriptions(&self) -> Vec<String> {
        vec![self.ask.clone(), self.cancel.clone(), self.birth.clone()]
    }

    /// Classifies an incoming topic; `None` for anything that is not ours.
    pub fn classify(&self, topic: &str) -> Option<HaIncoming> {
        if topic == self.ask {
            Some(HaIncoming::Ask)
        } else if topic == self.cancel {
            Some(HaIncoming::Cancel)
        } else if topic == self.birth {
            Some(HaIncoming::Birth)
        } else {
            None
        }
    }

    /// The topics the daemon publishes Home Assistant state on (the status topic aside).
    pub fn outputs(&self) -> [&str; 2] {
        [&self.answer, &self.attributes]
    }
}

/// Whether a Home Assistant status payload is the birth message.
pub fn is_birth(payload: &[u8]) -> bool {
    payload.trim_ascii() == b"online"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_of_a_node_and_classification() {
        let t = HaTopics::new("llamabus", "pi", "homeassistant");
        assert_eq!(t.ask, "llamabus/ha/pi/ask");
        assert_eq!(t.cancel, "llamabus/ha/pi/cancel");
        assert_eq!(t.answer, "llamabus/ha/pi/answer");
        assert_eq!(t.attributes, "llamabus/ha/pi/answer/attributes");
        assert_eq!(t.birth, "homeassistant/status");
        assert_eq!(t.status, "llamabus/status/pi");
        assert_eq!(
            t.subscriptions(),
            vec![
                "llamabus/ha/pi/ask",
                "llamabus/ha/pi/cancel",
                "homeassistant/status"
            ]
        );
        assert_eq!(t.classify("llamabus/ha/pi/ask"), Some(HaIncoming::Ask));
        assert_eq!(
            t.classify("llamabus/ha/pi/cancel"),
            Some(HaIncoming::Cancel)
        );
        assert_eq!(t.classify("homeassistant/status"), Some(HaIncoming::Birth));
        // Other nodes, our own outputs and anything longer are not commands.
        for other in [
            "llamabus/ha/other/ask",
            "llamabus/ha/pi/answer",
            "llamabus/ha/pi/ask/x",
            "llamabus/ha/pi",
            "homeassistant/status/x",
            "llamabus/prompt/pi",
        ] {
            assert_eq!(t.classify(other), None, "{other}");
        }
        assert!(is_birth(b"online"));
        assert!(is_birth(b"online\n"));
        assert!(!is_birth(b"offline"));
        assert!(!is_birth(b""));
    }
}
