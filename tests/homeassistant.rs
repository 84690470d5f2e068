//! Home Assistant MQTT discovery end to end: a real mosquitto and the `llamabus serve` binary,
//! with a test client in Home Assistant's place. The sensors' value templates are rendered
//! (minijinja, Jinja2's rules) against the status documents the daemon really published.
//! `scripts/ha-discovery-check.py` checks the same messages with Home Assistant's own schemas.

mod common;
mod mqtt_support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use mqtt_support::*;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::v5::mqttbytes::QoS;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_llamabus");
const PREFIX: &str = "homeassistant";
/// The entities: (component, object id).
const ENTITIES: [(&str, &str); 8] = [
    ("sensor", "status"),
    ("sensor", "tokens_per_second"),
    ("sensor", "queue_depth"),
    ("sensor", "requests_served"),
    ("sensor", "model"),
    ("sensor", "answer"),
    ("text", "ask"),
    ("button", "cancel"),
];

/// Every reply topic allowed, so that only the Home Assistant rule stands in the way.
fn ha_config(port_url: &str, node: &str, ha: &str) -> String {
    service_config(
        port_url,
        node,
        "default_max_tokens = 80\nmax_payload_bytes = 2000\n",
        ha,
    )
    .replacen("[mqtt]\n", "[mqtt]\nallowed_reply_prefixes = [\"#\"]\n", 1)
}

/// The retained `online` status, or a panic with the daemon's log.
async fn online(serve: &ServeProcess, port: u16, node: &str) -> Value {
    let wait = wait_status(port, "llamabus", node, "online");
    match tokio::time::timeout(Duration::from_secs(50), wait).await {
        Ok(v) => v,
        Err(_) => panic!("not online; daemon log:\n{}", serve.log()),
    }
}

/// Jinja2 as Home Assistant renders a template on an MQTT payload: `value_json` is the JSON.
fn render(template: &str, payload: &Value) -> String {
    let mut env = minijinja::Environment::new();
    // Home Assistant's `tojson`; minijinja has it only with its `json` feature.
    env.add_filter("tojson", |v: minijinja::Value| {
        serde_json::to_string(&v).map_err(|e| {
            minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string())
        })
    });
    env.render_str(template, minijinja::context! { value_json => payload })
        .unwrap_or_else(|e| panic!("template {template:?}: {e}"))
}

/// Waits for the eight retained discovery configs of `node`, keyed by object id.
async fn discovery(c: &mut TestClient, node: &str) -> BTreeMap<String, (Msg, Value)> {
    let mut got = BTreeMap::new();
    while got.len() < ENTITIES.len() {
        let m = c
            .recv_where(30, |m| {
                m.topic.starts_with(PREFIX) && m.topic.ends_with("/config")
            })
            .await;
        let levels: Vec<&str> = m.topic.split('/').collect();
        assert_eq!(levels.len(), 5, "{}", m.topic);
        assert_eq!(levels[2], format!("llamabus_{node}"));
        assert!(
            ENTITIES.contains(&(levels[1], levels[3])),
            "unexpected {}",
            m.topic
        );
        let json = m.json();
        got.insert(levels[3].to_owned(), (m, json));
    }
    got
}

/// `node` as configured, `sane` as discovery ids spell it.
fn check_config(object: &str, c: &Value, node: &str, sane: &str) {
    let allowed = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    let uid = c["unique_id"].as_str().expect("unique_id");
    assert_eq!(uid, format!("llamabus_{sane}_{object}"));
    assert!(allowed(uid));
    assert!(c["name"].is_string(), "{object}: name");
    let d = &c["device"];
    assert_eq!(
        d["identifiers"],
        serde_json::json!([format!("llamabus_{sane}")])
    );
    for k in ["name", "manufacturer", "model", "sw_version"] {
        assert!(d[k].is_string(), "{object}: device.{k}");
    }
    assert_eq!(c["origin"]["name"], "llamabus");
    assert!(c["origin"]["sw_version"].is_string());
    assert_eq!(
        c["availability"][0]["topic"],
        format!("llamabus/status/{node}")
    );
}

/// The topics a config names that carry state to Home Assistant.
fn state_topics(c: &Value) -> Vec<String> {
    let mut t: Vec<String> = ["state_topic", "json_attributes_topic"]
        .iter()
        .filter_map(|k| c[k].as_str().map(str::to_owned))
        .collect();
    t.push(c["availability"][0]["topic"].as_str().unwrap().to_owned());
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_states_ask_cancel_birth_and_clean_stop() {
    let node = "ha-node.1";
    let sane = "ha-node_1";
    let m = Mosquitto::start();
    let mut ha = TestClient::connect(m.port, &["homeassistant/#"]).await;
    let cfg = ha_config(
        &m.url(),
        node,
        "[homeassistant]\nenabled = true\nname = \"Test LLM\"\n",
    );
    let mut serve = ServeProcess::start_logged(BIN, &cfg, &[]);
    let status = online(&serve, m.port, node).await;

    // 1. Discovery: retained, QoS 1, valid JSON with the required fields. The first status
    //    may reach the broker before the discovery (both follow the connection), so the
    //    retained copies are read once a subscriber from before the start has them all.
    discovery(&mut ha, sane).await;
    let mut late = TestClient::connect(m.port, &["homeassistant/#"]).await;
    let configs = discovery(&mut late, sane).await;
    for (object, (msg, c)) in &configs {
        assert!(msg.retain, "{object}: not retained; log:\n{}", serve.log());
        assert_eq!(msg.qos, QoS::AtLeastOnce, "{object}");
        check_config(object, c, node, sane);
        assert_eq!(c["device"]["name"], "Test LLM");
    }
    let c = |o: &str| configs[o].1.clone();
    assert_eq!(c("tokens_per_second")["state_class"], "measurement");
    assert_eq!(c("requests_served")["state_class"], "total_increasing");
    let ask_topic = c("ask")["command_topic"].as_str().unwrap().to_owned();
    let cancel_topic = c("cancel")["command_topic"].as_str().unwrap().to_owned();
    let answer_topic = c("answer")["state_topic"].as_str().unwrap().to_owned();
    let attrs_topic = c("answer")["json_attributes_topic"]
        .as_str()
        .unwrap()
        .to_owned();

    // 2. The sensors read the retained status: every template renders a value on it.
    let model = status["models"][0]["name"].as_str().unwrap().to_owned();
    assert_eq!(
        render(c("status")["value_template"].as_str().unwrap(), &status),
        "online"
    );
    let number = |o: &str| -> f64 {
        let out = render(c(o)["value_template"].as_str().unwrap(), &status);
        out.parse()
            .unwrap_or_else(|_| panic!("{o}: {out:?} is not a number"))
    };
    assert!(number("tokens_per_second") >= 0.0);
    assert_eq!(number("queue_depth"), 0.0);
    assert_eq!(number("requests_served"), 0.0);
    assert_eq!(
        render(c("model")["value_template"].as_str().unwrap(), &status),
        model
    );
    let models: Value = serde_json::from_str(&render(
        c("model")["json_attributes_template"].as_str().unwrap(),
        &status,
    ))
    .unwrap();
    assert_eq!(models, serde_json::json!({ "models": [model] }));
    for (_, cfg) in configs.values() {
        let avail = cfg["availability"][0]["value_template"].as_str().unwrap();
        assert_eq!(render(avail, &status), "online");
    }

    // 3. A prompt typed in the Ask box: the full answer in the attributes (published first),
    //    at most 255 characters in the state, both retained.
    let mut states = TestClient::connect(m.port, &["llamabus/ha/#", "devices/#"]).await;
    ha.publish_qos(
        &ask_topic,
        QoS::AtLeastOnce,
        "Tell me a long story about a llama.",
    )
    .await;
    let attrs = states
        .recv_where(120, |m| m.topic == attrs_topic || m.topic == answer_topic)
        .await;
    assert_eq!(attrs.topic, attrs_topic, "the attributes come first");
    let state = states.recv_where(10, |m| m.topic == answer_topic).await;
    let a = attrs.json();
    let text = a["text"].as_str().expect("text attribute").to_owned();
    assert!(!text.is_empty());
    assert_eq!(a["model"], model.as_str());
    let st = state.text();
    assert!(
        st.chars().count() <= 255,
        "state of {} chars",
        st.chars().count()
    );
    if text.chars().count() > 255 {
        assert_eq!(st.chars().count(), 255);
        assert!(text.starts_with(st.trim_end_matches('…')));
        assert_eq!(a["truncated"], true);
    } else {
        assert_eq!(st, text);
    }
    println!(
        "answer: {} characters, state {} characters",
        text.chars().count(),
        st.chars().count()
    );
    let mut later = TestClient::connect(m.port, &[&answer_topic, &attrs_topic]).await;
    for _ in 0..2 {
        let r = later.recv(10).await;
        assert!(r.retain, "{} not retained", r.topic);
    }

    // Every topic the configs name has state now (the status carries the served count).
    let mut all = TestClient::connect(m.port, &["llamabus/#"]).await;
    let mut seen = std::collections::BTreeSet::new();
    let wanted: std::collections::BTreeSet<String> = configs
        .values()
        .flat_map(|(_, c)| state_topics(c))
        .collect();
    while !wanted.is_subset(&seen) {
        let r = all.recv(10).await;
        seen.insert(r.topic.clone());
    }
    let status_topic = format!("llamabus/status/{node}");
    let mut st = TestClient::connect(m.port, &[&status_topic]).await;
    let served = st.recv_where(30, |m| m.json()["served"] == 1).await.json();
    assert_eq!(
        render(
            c("requests_served")["value_template"].as_str().unwrap(),
            &served
        ),
        "1"
    );

    // 4. Confinement: a Response Topic and a JSON reply_to on the Ask topic change nothing
    //    (the payload is the prompt text, the answer goes to the answer topics), and an
    //    oversized payload is refused like a device's.
    let props = PublishProperties {
        response_topic: Some("devices/lamp/cmd".into()),
        ..Default::default()
    };
    ha.publish(
        &ask_topic,
        r#"{"prompt":"hi","reply_to":"devices/lamp/cmd","max_tokens":4}"#,
        props,
    )
    .await;
    let a = states
        .recv_where(120, |m| {
            m.topic.starts_with("devices/") || m.topic == attrs_topic
        })
        .await;
    assert_eq!(a.topic, attrs_topic, "published outside its topics");
    assert!(a.json()["text"].is_string(), "{:?}", a.json());
    states.recv_where(10, |m| m.topic == answer_topic).await;
    ha.publish_qos(&ask_topic, QoS::AtLeastOnce, "x".repeat(2001))
        .await;
    let e = states.recv_where(30, |m| m.topic == answer_topic).await;
    assert!(e.text().starts_with("error: too_long:"), "{}", e.text());
    // A device cannot make the daemon publish into Home Assistant's discovery tree or onto
    // the Ask topic, even with every reply topic allowed.
    let mut dev = TestClient::connect(m.port, &["llamabus/reply/lamp"]).await;
    for target in [
        format!("{PREFIX}/sensor/llamabus_{sane}/status/config"),
        ask_topic.clone(),
    ] {
        dev.publish_qos(
            "llamabus/prompt/lamp",
            QoS::AtLeastOnce,
            format!(r#"{{"id":"r","prompt":"hi","reply_to":"{target}"}}"#),
        )
        .await;
        let r = dev.recv(30).await.json();
        assert_eq!(r["error"]["code"], "reply_topic_denied", "{target}: {r}");
    }

    // 5. The cancel button stops the running Home Assistant request.
    ha.publish_qos(
        &ask_topic,
        QoS::AtLeastOnce,
        "Count from one to one thousand in words.",
    )
    .await;
    st.recv_where(60, |m| m.json()["in_flight"] == 1).await;
    ha.publish_qos(&cancel_topic, QoS::AtLeastOnce, "PRESS")
        .await;
    let a = states
        .recv_where(60, |m| m.topic == attrs_topic)
        .await
        .json();
    let cancelled = a["finish_reason"] == "cancelled" || a["error"]["code"] == "cancelled";
    assert!(cancelled, "{a}");

    // 6. Home Assistant's birth message brings the discovery again; `offline` does not.
    while ha.try_recv(300).await.is_some() {}
    ha.publish_qos(&format!("{PREFIX}/status"), QoS::AtLeastOnce, "online")
        .await;
    let again = discovery(&mut ha, sane).await;
    assert_eq!(again.len(), ENTITIES.len());
    ha.publish_qos(&format!("{PREFIX}/status"), QoS::AtLeastOnce, "offline")
        .await;
    let _own = ha
        .recv_where(5, |m| m.topic == format!("{PREFIX}/status"))
        .await;
    assert!(
        ha.try_recv(1500).await.is_none(),
        "discovery re-sent after `offline`"
    );

    // 7. A clean stop marks the device unavailable.
    serve.signal("TERM");
    assert!(serve.wait_exit(Duration::from_secs(30)).success());
    let off = wait_status(m.port, "llamabus", node, "offline").await;
    let avail = c("status")["availability"][0]["value_template"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(render(&avail, &off), "offline");
    assert_eq!(
        render(c("queue_depth")["value_template"].as_str().unwrap(), &off),
        "None",
        "sensors read `unknown` from the offline status"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_flips_availability_and_remove_clears_the_device() {
    let node = "kill-me";
    let m = Mosquitto::start();
    // Enabled through the environment only.
    let cfg = ha_config(&m.url(), node, "");
    let env = [("LLAMABUS_HOMEASSISTANT_ENABLED", "true".to_owned())];
    let mut serve = ServeProcess::start_logged(BIN, &cfg, &env);
    online(&serve, m.port, node).await;
    let mut ha = TestClient::connect(m.port, &["homeassistant/#"]).await;
    let configs = discovery(&mut ha, node).await;
    let avail = configs["status"].1["availability"][0]["value_template"]
        .as_str()
        .unwrap()
        .to_owned();

    // The Last Will, published by the broker when the connection dies.
    serve.signal("KILL");
    serve.wait_exit(Duration::from_secs(10));
    let will = wait_status(m.port, "llamabus", node, "offline").await;
    assert_eq!(render(&avail, &will), "offline");

    // `llamabus homeassistant --remove` clears every retained config (and the answer).
    let (code, out, err) = run_cmd(
        Command::new(BIN)
            .args(["homeassistant", "--remove", "--config"])
            .arg(&serve.config)
            .env("LLAMABUS_HOMEASSISTANT_ENABLED", "true"),
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(0), "remove: {out}{err}");
    let mut fresh = TestClient::connect(m.port, &["homeassistant/#", "llamabus/ha/#"]).await;
    if let Some(r) = fresh.try_recv(1500).await {
        panic!("still retained after --remove: {} {:?}", r.topic, r.payload);
    }
    drop(serve);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_publishes_nothing_under_the_discovery_prefix() {
    let node = "quiet";
    let m = Mosquitto::start();
    let mut watch = TestClient::connect(m.port, &["homeassistant/#", "llamabus/ha/#"]).await;
    let cfg = ha_config(&m.url(), node, "");
    let serve = ServeProcess::start_logged(BIN, &cfg, &[]);
    online(&serve, m.port, node).await;
    let ask = format!("llamabus/ha/{node}/ask");
    watch
        .publish_qos(&format!("{PREFIX}/status"), QoS::AtLeastOnce, "online")
        .await;
    watch.publish_qos(&ask, QoS::AtLeastOnce, "hello").await;
    // A device prompt answered afterwards shows the daemon had every chance to publish.
    let mut dev = TestClient::connect(m.port, &["llamabus/reply/d"]).await;
    dev.publish_qos("llamabus/prompt/d", QoS::AtLeastOnce, "hi")
        .await;
    dev.recv(120).await;
    let mut others = Vec::new();
    while let Some(r) = watch.try_recv(500).await {
        let ours = r.topic == format!("{PREFIX}/status") || r.topic == ask;
        if !ours {
            others.push(r.topic);
        }
    }
    assert!(
        others.is_empty(),
        "published with enabled = false: {others:?}"
    );
}
