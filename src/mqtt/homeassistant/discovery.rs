//! The discovery messages: one retained JSON config per entity at
//! `<discovery_prefix>/<component>/llamabus_<node>/<object>/config`, and their removal (the
//! same topics with empty retained payloads).
//!
//! Every entity carries the rules Home Assistant documents: a `unique_id`, the `device` block
//! (identifiers, name, manufacturer, model, sw_version) that groups them as one device, the
//! `origin` block naming llamabus, and `availability` on the retained node status, whose Last
//! Will and clean-stop payload say `"state":"offline"`. The sensors read that same status
//! document through value templates, so they need no topics of their own; the templates
//! answer `None` (Home Assistant's "unknown") on the offline document, which lacks the fields.

use serde_json::{json, Map, Value};

use super::ids;
use super::topics::HaTopics;
use super::HomeAssistantSettings;

/// Home Assistant's limit on a state (and the `text` platform's largest `max`).
pub const MAX_STATE_CHARS: usize = 255;

/// The availability template: `online` unless the status says `offline` (so `reloading` and
/// future states still count as available).
pub const AVAILABILITY_TEMPLATE: &str =
    "{{ 'offline' if value_json.state == 'offline' else 'online' }}";

/// One retained discovery message.
#[derive(Clone, Debug, PartialEq)]
pub struct DiscoveryMessage {
    pub topic: String,
    pub payload: Value,
}

/// One entity: its platform, object id and platform-specific options.
struct Entity {
    component: &'static str,
    object: &'static str,
    name: &'static str,
    options: Value,
}

/// A template reading `field` of the status document, `None` when it is absent.
fn status_field(field: &str) -> String {
    let top = field.split('.').next().unwrap_or(field);
    format!("{{{{ value_json.{field} if value_json.{top} is defined else None }}}}")
}

/// The entities of one node, in the order they are announced.
fn entities(t: &HaTopics) -> Vec<Entity> {
    let status = &t.status;
    vec![
        Entity {
            component: "sensor",
            object: "status",
            name: "Status",
            options: json!({
                "state_topic": status,
                "value_template": "{{ value_json.state }}",
                "icon": "mdi:robot",
            }),
        },
        Entity {
            component: "sensor",
            object: "tokens_per_second",
            name: "Generation speed",
            options: json!({
                "state_topic": status,
                "value_template": status_field("last_tokens_per_s"),
                "unit_of_measurement": "tok/s",
                "state_class": "measurement",
                "suggested_display_precision": 1,
                "icon": "mdi:speedometer",
            }),
        },
        Entity {
            component: "sensor",
            object: "queue_depth",
            name: "Queue",
            options: json!({
                "state_topic": status,
                "value_template": status_field("queue.depth"),
                "state_class": "measurement",
                "icon": "mdi:tray-full",
            }),
        },
        Entity {
            component: "sensor",
            object: "requests_served",
            name: "Requests served",
            options: json!({
                "state_topic": status,
                "value_template": status_field("served"),
                "state_class": "total_increasing",
                "icon": "mdi:counter",
            }),
        },
        Entity {
            component: "sensor",
            object: "model",
            name: "Model",
            options: json!({
                "state_topic": status,
                // The default model's name; every served model as an attribute.
                "value_template": "{{ value_json.models | default([]) | selectattr('default') \
                    | map(attribute='name') | first | default(None) }}",
                "json_attributes_topic": status,
                "json_attributes_template": "{{ {'models': value_json.models | default([]) \
                    | map(attribute='name') | list} | tojson }}",
                "icon": "mdi:brain",
            }),
        },
        Entity {
            component: "sensor",
            object: "answer",
            name: "Answer",
            options: json!({
                "state_topic": t.answer,
                "json_attributes_topic": t.attributes,
                "icon": "mdi:message-reply-text",
            }),
        },
        Entity {
            component: "text",
            object: "ask",
            name: "Ask",
            options: json!({
                "command_topic": t.ask,
                "min": 1,
                "max": MAX_STATE_CHARS,
                "mode": "text",
                "icon": "mdi:chat-question",
            }),
        },
        Entity {
            component: "button",
            object: "cancel",
            name: "Cancel",
            options: json!({
                "command_topic": t.cancel,
                "payload_press": "PRESS",
                "icon": "mdi:stop-circle",
            }),
        },
    ]
}

/// The discovery topic of one entity.
fn config_topic(discovery_prefix: &str, node: &str, e: &Entity) -> String {
    format!(
        "{discovery_prefix}/{}/{}/{}/config",
        e.component,
        ids::node_id(node),
        e.object
    )
}

/// The device's name in Home Assistant.
pub fn device_name(ha: &HomeAssistantSettings, node: &str) -> String {
    ha.name
        .clone()
        .unwrap_or_else(|| format!("llamabus {node}"))
}

/// The discovery messages of node `node` (published retained, QoS 1).
pub fn messages(ha: &HomeAssistantSettings, node: &str, t: &HaTopics) -> Vec<DiscoveryMessage> {
    let version = env!("CARGO_PKG_VERSION");
    let device = json!({
        "identifiers": [ids::node_id(node)],
        "name": device_name(ha, node),
        "manufacturer": "llamabus",
        "model": "llamabus LLM daemon",
        "sw_version": version,
    });
    let origin = json!({"name": "llamabus", "sw_version": version});
    let availability = json!([{"topic": t.status, "value_template": AVAILABILITY_TEMPLATE}]);
    entities(t)
        .into_iter()
        .map(|e| {
            let mut config = Map::new();
            config.insert("name".into(), e.name.into());
            config.insert("unique_id".into(), ids::unique_id(node, e.object).into());
            if let Value::Object(options) = &e.options {
                config.extend(options.clone());
            }
            config.insert("availability".into(), availability.clone());
            config.insert("device".into(), device.clone());
            config.insert("origin".into(), origin.clone());
            DiscoveryMessage {
                topic: config_topic(&ha.discovery_prefix, node, &e),
                payload: Value::Object(config),
            }
        })
        .collect()
}

/// The topics to clear (empty retained payloads) to remove the device from Home Assistant:
/// every discovery config, then the retained answer.
pub fn removal_topics(ha: &HomeAssistantSettings, node: &str, t: &HaTopics) -> Vec<String> {
    let mut all: Vec<String> = entities(t)
        .iter()
        .map(|e| config_topic(&ha.discovery_prefix, node, e))
        .collect();
    all.extend(t.outputs().iter().map(|s| (*s).to_owned()));
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ha(name: Option<&str>) -> HomeAssistantSettings {
        HomeAssistantSettings {
            enabled: true,
            discovery_prefix: "homeassistant".into(),
            name: name.map(str::to_owned),
        }
    }

    #[test]
    fn every_entity_has_the_required_fields_and_a_valid_topic() {
        let t = HaTopics::new("llamabus", "pi.lan", "homeassistant");
        let msgs = messages(&ha(None), "pi.lan", &t);
        assert_eq!(msgs.len(), 8);
        let mut unique = std::collections::BTreeSet::new();
        for m in &msgs {
            let levels: Vec<&str> = m.topic.split('/').collect();
            assert_eq!(levels.len(), 5, "{}", m.topic);
            assert_eq!(levels[0], "homeassistant");
            assert!(["sensor", "text", "button"].contains(&levels[1]));
            assert_eq!(levels[2], "llamabus_pi_lan");
            assert!(ids::is_valid(levels[2]) && ids::is_valid(levels[3]));
            assert_eq!(levels[4], "config");
            let c = &m.payload;
            let uid = c["unique_id"].as_str().unwrap();
            assert!(ids::is_valid(uid), "{uid}");
            assert!(unique.insert(uid.to_owned()), "duplicate unique_id {uid}");
            assert!(c["name"].is_string());
            let d = &c["device"];
            assert_eq!(d["identifiers"], json!(["llamabus_pi_lan"]));
            assert_eq!(d["name"], "llamabus pi.lan");
            for k in ["manufacturer", "model", "sw_version"] {
                assert!(d[k].is_string(), "device.{k}");
            }
            assert_eq!(c["origin"]["name"], "llamabus");
            assert_eq!(c["availability"][0]["topic"], "llamabus/status/pi.lan");
            assert_eq!(
                c["availability"][0]["value_template"],
                AVAILABILITY_TEMPLATE
            );
            // Each entity reads or writes at least one topic.
            assert!(c["state_topic"].is_string() || c["command_topic"].is_string());
        }
        let by = |obj: &str| {
            msgs.iter()
                .find(|m| m.topic.ends_with(&format!("/{obj}/config")))
                .map(|m| m.payload.clone())
                .unwrap()
        };
        assert_eq!(by("tokens_per_second")["state_class"], "measurement");
        assert_eq!(by("queue_depth")["state_class"], "measurement");
        assert_eq!(by("requests_served")["state_class"], "total_increasing");
        assert_eq!(by("ask")["command_topic"], "llamabus/ha/pi.lan/ask");
        assert_eq!(by("ask")["max"], 255);
        assert_eq!(by("answer")["state_topic"], "llamabus/ha/pi.lan/answer");
        assert_eq!(
            by("answer")["json_attributes_topic"],
            "llamabus/ha/pi.lan/answer/attributes"
        );
        assert_eq!(by("cancel")["command_topic"], "llamabus/ha/pi.lan/cancel");
        assert_eq!(by("status")["state_topic"], "llamabus/status/pi.lan");
    }

    #[test]
    fn name_prefix_and_removal() {
        let t = HaTopics::new("lb", "n", "ha");
        let msgs = messages(&ha(Some("Kitchen LLM")), "n", &t);
        assert!(msgs
            .iter()
            .all(|m| m.payload["device"]["name"] == "Kitchen LLM"));
        let mut h = ha(None);
        h.discovery_prefix = "ha".into();
        let msgs = messages(&h, "n", &t);
        assert!(msgs.iter().all(|m| m.topic.starts_with("ha/")));
        let removal = removal_topics(&h, "n", &t);
        let configs: Vec<&String> = removal.iter().filter(|s| s.ends_with("/config")).collect();
        assert_eq!(configs.len(), msgs.len());
        for m in &msgs {
            assert!(removal.contains(&m.topic));
        }
        assert!(removal.contains(&t.answer) && removal.contains(&t.attributes));
    }

    #[test]
    fn status_field_templates() {
        assert_eq!(
            status_field("queue.depth"),
            "{{ value_json.queue.depth if value_json.queue is defined else None }}"
        );
    }
}
