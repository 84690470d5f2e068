//! What the daemon logs about requests: the structured fields the journal gets (REQUEST_ID,
//! DEVICE, MODEL, PROMPT_TOKENS, COMPLETION_TOKENS, TOKENS_PER_S, ERROR_CODE), and never the
//! prompt or the answer at info level. A capture logger stands in for the journal logger: both
//! receive the same `log` records and key-values (the journal logger upper-cases the keys).

mod common;
mod mqtt_support;

use std::collections::BTreeMap;
use std::sync::Mutex;

use log::kv::{Key, Value, VisitSource};
use mqtt_support::*;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use serde_json::json;

#[derive(Debug, Clone)]
struct Rec {
    level: log::Level,
    message: String,
    fields: BTreeMap<String, String>,
}

static RECORDS: Mutex<Vec<Rec>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        // What the service passes at the default level.
        llamabus::service::logging::enabled(m)
    }

    fn log(&self, r: &log::Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        struct Fields(BTreeMap<String, String>);
        impl<'kvs> VisitSource<'kvs> for Fields {
            fn visit_pair(&mut self, k: Key<'kvs>, v: Value<'kvs>) -> Result<(), log::kv::Error> {
                self.0.insert(k.to_string(), v.to_string());
                Ok(())
            }
        }
        let mut f = Fields(BTreeMap::new());
        let _ = r.key_values().visit(&mut f);
        RECORDS.lock().unwrap().push(Rec {
            level: r.level(),
            message: r.args().to_string(),
            fields: f.0,
        });
    }

    fn flush(&self) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_logged_with_journal_fields_and_without_user_data() {
    log::set_logger(&Capture).unwrap();
    log::set_max_level(log::LevelFilter::Info);
    let mosq = Mosquitto::start();
    let d = Daemon::start(settings(&mosq.url(), "logs", ""));
    wait_status(mosq.port, "llamabus", "logs", "online").await;
    let mut c = TestClient::connect(mosq.port, &["llamabus/reply/#"]).await;

    let secret = "PURPLE-OKAPI-7781 is my bank PIN";
    c.publish(
        "llamabus/prompt/phone",
        json!({"id": "log-1", "prompt": secret, "max_tokens": 12, "temperature": 0}).to_string(),
        PublishProperties::default(),
    )
    .await;
    let reply = c.recv(60).await.json();
    assert_eq!(reply["id"], "log-1");
    let answer = reply["text"].as_str().unwrap().trim().to_owned();
    c.publish(
        "llamabus/prompt/phone",
        json!({"id": "log-2", "prompt": secret, "max_tokens": 100000}).to_string(),
        PublishProperties::default(),
    )
    .await;
    assert_eq!(c.recv(60).await.json()["error"]["code"], "bad_request");
    drop(d);

    let records = RECORDS.lock().unwrap().clone();
    let answered = records
        .iter()
        .find(|r| r.fields.get("request_id").map(String::as_str) == Some("log-1"))
        .unwrap_or_else(|| panic!("no record for log-1: {records:#?}"));
    assert_eq!(answered.level, log::Level::Info);
    let f = &answered.fields;
    assert_eq!(f["device"], "phone");
    assert_eq!(f["model"], "SmolLM2-135M-Instruct.Q4_1");
    assert!(f["prompt_tokens"].parse::<u32>().unwrap() > 5, "{f:?}");
    assert_eq!(
        f["completion_tokens"],
        reply["usage"]["completion_tokens"].to_string()
    );
    assert!(f["tokens_per_s"].parse::<f64>().unwrap() > 0.0, "{f:?}");

    let refused = records
        .iter()
        .find(|r| r.fields.get("request_id").map(String::as_str) == Some("log-2"))
        .unwrap_or_else(|| panic!("no record for log-2: {records:#?}"));
    assert_eq!(refused.level, log::Level::Warn);
    assert_eq!(refused.fields["error_code"], "bad_request");
    assert_eq!(refused.fields["device"], "phone");

    // User data: neither the prompt nor the answer appears in any record or field.
    for r in &records {
        let all = format!("{} {:?}", r.message, r.fields);
        assert!(!all.contains("PURPLE-OKAPI"), "prompt logged: {r:?}");
        if answer.len() >= 8 {
            assert!(!all.contains(&answer), "answer logged: {r:?}");
        }
    }
}
