//! Several models in one daemon ("mix and match") and the memory guard, end to end: the
//! `llamabus serve` binary against a real mosquitto, with two (or three) generated tiny models
//! whose greedy outputs differ, so every answer shows which model produced it.

mod common;
mod mqtt_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::tiny::{write_tiny_model, TinySpec, TinyTokenizer};
use llamabus::engine::EngineConfig;
use llamabus::ggml::Type;
use llamabus::mqtt::models::plan_reload;
use llamabus::mqtt::wire::{self, Encoding, Request, Response};
use llamabus::service::config::{self, Overrides};
use mqtt_support::{run_cmd, Mosquitto, NotifySocket, ServeProcess, TempDir, TestClient};
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_llamabus");

/// A tiny model that never emits EOS and answers in 64-byte pieces (`TinySpec::long_pieces`);
/// the seed makes its weights, hence its answers, its own.
fn tiny_model(dir: &Path, name: &str, seed: u64) -> PathBuf {
    let spec = TinySpec {
        tokenizer: TinyTokenizer::Spm,
        long_pieces: true,
        n_ctx_train: 1024,
        seed,
        ..TinySpec::new(Type::Q8_0)
    };
    let path = dir.join(format!("{name}.gguf"));
    write_tiny_model(&spec, &path);
    path
}

/// A copy of `src` whose `llama.feed_forward_length` disagrees with its tensors: the header
/// (all the memory guard reads) is valid, the load fails on the first FFN weight.
fn broken_model(src: &Path, dst: &Path) {
    let mut bytes = std::fs::read(src).unwrap();
    let key = b"llama.feed_forward_length";
    let at = bytes
        .windows(key.len())
        .position(|w| w == key)
        .expect("the key is in the file")
        + key.len();
    assert_eq!(&bytes[at..at + 4], &4u32.to_le_bytes(), "a u32 value");
    bytes[at + 4..at + 8].copy_from_slice(&512u32.to_le_bytes());
    std::fs::write(dst, bytes).unwrap();
}

/// One `[[models]]` entry: greedy, chat mode, one thread, a small context.
fn entry(name: &str, path: &Path, extra: &str) -> String {
    format!(
        "[[models]]\nname = \"{name}\"\npath = \"{}\"\nthreads = 1\ncontext = 256\n\
         mode = \"chat\"\n{extra}\n[models.sampling]\ntemperature = 0.0\n",
        path.display()
    )
}

/// `[[models]]` entries with no extra settings, one per (name, path).
fn entries<P: AsRef<Path>>(models: &[(&str, P)]) -> Vec<String> {
    models
        .iter()
        .map(|(name, path)| entry(name, path.as_ref(), ""))
        .collect()
}

fn daemon_config(broker: &str, limits: &str, entries: &[String]) -> String {
    format!(
        "[node]\nname = \"mm\"\n[mqtt]\nbroker = \"{broker}\"\n\
         [limits]\nmax_prompt_tokens = 128\ndefault_max_tokens = 3\nshutdown_drain_s = 2\n{limits}\n{}",
        entries.concat()
    )
}

/// The retained status once `pred` holds for it.
async fn status_where(port: u16, pred: impl Fn(&Value) -> bool) -> Value {
    let mut c = TestClient::connect(port, &["llamabus/status/mm"]).await;
    c.recv_where(60, |m| {
        let v = m.json();
        v["state"] == "online" && pred(&v)
    })
    .await
    .json()
}

fn model_names(status: &Value) -> Vec<String> {
    status["models"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| m["name"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Sends one JSON chat request on `topic` and returns the reply on `llamabus/reply/{device}`.
async fn ask_json(c: &mut TestClient, topic: &str, device: &str, body: Value) -> Value {
    let id = format!("{device}-{}", llamabus::mqtt::conn::random_hex(4));
    let mut body = body;
    body["id"] = json!(id);
    body["messages"] = json!([{"role": "user", "content": "hello there"}]);
    body["max_tokens"] = json!(3);
    c.publish(topic, body.to_string(), PublishProperties::default())
        .await;
    let reply = format!("llamabus/reply/{device}");
    c.recv_where(60, |m| m.topic == reply && m.json()["id"] == id.as_str())
        .await
        .json()
}

/// A JSON request to `model` (`None`: no `model` field) on the common topic.
async fn ask_model(c: &mut TestClient, device: &str, model: Option<&str>) -> Value {
    let body = match model {
        Some(m) => json!({"model": m}),
        None => json!({}),
    };
    ask_json(c, &format!("llamabus/prompt/{device}"), device, body).await
}

/// Plain text as an MQTT 3.1.1 client sends it (`mosquitto_pub -V mqttv311`, no properties).
fn pub_311(port: u16, topic: &str, text: &str) {
    let (code, _, err) = run_cmd(
        Command::new("mosquitto_pub").args([
            "-V",
            "mqttv311",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-t",
            topic,
            "-m",
            text,
        ]),
        Duration::from_secs(10),
    );
    assert_eq!(code, Some(0), "mosquitto_pub: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_the_model_they_name_by_field_topic_or_default() {
    let mosq = Mosquitto::start();
    let dir = TempDir::tagged("mm-route");
    let alpha = tiny_model(dir.path(), "alpha", 1);
    let beta = tiny_model(dir.path(), "beta", 2);
    let cfg = daemon_config(
        &mosq.url(),
        "",
        &[
            entry("alpha", &alpha, ""),
            entry("beta", &beta, "parallel = 2"),
        ],
    );
    let _serve = ServeProcess::start(BIN, &cfg, &[]);

    // The status lists both models, the first as the default.
    let s = status_where(mosq.port, |v| model_names(v).len() == 2).await;
    assert_eq!(model_names(&s), ["alpha", "beta"], "{s}");
    let (a, b) = (&s["models"][0], &s["models"][1]);
    assert_eq!(a["file"], "alpha.gguf");
    assert_eq!(b["file"], "beta.gguf");
    assert_eq!(
        (&a["default"], &b["default"]),
        (&json!(true), &json!(false))
    );
    // parallel defaults to 8, sharing one context's worth of KV cells.
    assert_eq!((&a["parallel"], &b["parallel"]), (&json!(8), &json!(2)));
    for m in [a, b] {
        assert_eq!(m["context"], 256);
        assert_eq!(m["kv_cells"], 256);
        assert!(m["repacked_mib"].is_number(), "{m}");
        assert_eq!(m["quantization"], "q8_0");
        assert_eq!(m["architecture"], "llama");
        assert!(m["parameters"].as_u64().unwrap() > 0);
        assert_eq!(m["queue"]["capacity"], 8);
    }
    assert_eq!(s["queue"]["capacity"], 16, "the sum of both queues: {s}");

    let mut c = TestClient::connect(mosq.port, &["llamabus/reply/#"]).await;
    // JSON `model` selects each; the two models answer differently.
    let ra = ask_model(&mut c, "j1", Some("alpha")).await;
    let rb = ask_model(&mut c, "j2", Some("beta")).await;
    assert_eq!(ra["model"], "alpha", "{ra}");
    assert_eq!(rb["model"], "beta", "{rb}");
    let (text_a, text_b) = (ra["text"].as_str().unwrap(), rb["text"].as_str().unwrap());
    assert!(!text_a.is_empty() && !text_b.is_empty());
    assert_ne!(text_a, text_b, "the test models must answer differently");

    // No `model`: the default model.
    let rd = ask_model(&mut c, "j3", None).await;
    assert_eq!((&rd["model"], &rd["text"]), (&json!("alpha"), &ra["text"]));

    // Plain text on the common topic: the default model (chat mode, greedy).
    pub_311(mosq.port, "llamabus/prompt/p1", "hello there");
    let m = c.recv_where(60, |m| m.topic == "llamabus/reply/p1").await;
    assert_eq!(m.text(), text_a);

    // MQTT 3.1.1 plain text on the model's topic.
    pub_311(mosq.port, "llamabus/model/beta/prompt/p2", "hello there");
    let m = c.recv_where(60, |m| m.topic == "llamabus/reply/p2").await;
    assert_eq!(m.text(), text_b);

    // JSON on the model's topic, without a `model` field.
    let r = ask_json(&mut c, "llamabus/model/beta/prompt/j4", "j4", json!({})).await;
    assert_eq!((&r["model"], &r["text"]), (&json!("beta"), &rb["text"]));

    // Postcard on the model's postcard topic.
    let req = Request {
        id: Some("pc".into()),
        prompt: Some("hello".into()),
        max_tokens: Some(2),
        ..Request::default()
    };
    c.publish(
        "llamabus/model/beta/pc/prompt/mcu",
        wire::encode_request(&req, Encoding::Postcard).unwrap(),
        PublishProperties::default(),
    )
    .await;
    let m = c.recv_where(60, |m| m.topic == "llamabus/reply/mcu").await;
    match wire::decode_response(&m.payload, Encoding::Postcard).unwrap() {
        Response::Reply(r) => assert_eq!(r.model, "beta"),
        other => panic!("{other:?}"),
    }

    // An unknown model names the served ones; a topic and a field that disagree are refused.
    let e = ask_model(&mut c, "j5", Some("gamma")).await;
    assert_eq!(e["error"]["code"], "unknown_model", "{e}");
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("`gamma`") && msg.contains("`alpha`, `beta`"),
        "{msg}"
    );
    let e = ask_json(
        &mut c,
        "llamabus/model/beta/prompt/j6",
        "j6",
        json!({"model": "alpha"}),
    )
    .await;
    assert_eq!(e["error"]["code"], "bad_request", "{e}");

    // Each model counted its own requests.
    let s = status_where(mosq.port, |v| v["served"] == 7).await;
    assert_eq!(s["models"][0]["served"], 3, "{s}");
    assert_eq!(s["models"][1]["served"], 4, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_per_model_and_the_memory_guard_refuses_what_does_not_fit() {
    let mosq = Mosquitto::start();
    let dir = TempDir::tagged("mm-reload");
    let alpha = tiny_model(dir.path(), "alpha", 1);
    let beta = tiny_model(dir.path(), "beta", 2);
    let gamma = tiny_model(dir.path(), "gamma", 3);
    let broken = dir.join("broken.gguf");
    broken_model(&beta, &broken);
    let notify = NotifySocket::new();
    let start = daemon_config(
        &mosq.url(),
        "",
        &entries(&[("alpha", &alpha), ("beta", &beta)]),
    );
    let serve = ServeProcess::start(
        BIN,
        &start,
        &[("NOTIFY_SOCKET", notify.path.display().to_string())],
    );
    notify.until(Duration::from_secs(60), |m| m.contains("READY=1"));
    status_where(mosq.port, |v| model_names(v).len() == 2).await;
    let mut c = TestClient::connect(mosq.port, &["llamabus/reply/#"]).await;
    let ra = ask_model(&mut c, "r1", Some("alpha")).await;
    let rb = ask_model(&mut c, "r2", Some("beta")).await;
    // Rewrites the config with `limits` and `models`, sends SIGHUP and returns the READY=1
    // notification that ends the reload.
    let reload = |limits: &str, models: &[String]| {
        let text = daemon_config(&mosq.url(), limits, models);
        std::fs::write(&serve.config, text).unwrap();
        serve.signal("HUP");
        let seen = notify.until(Duration::from_secs(60), |m| m.contains("READY=1"));
        seen.last().unwrap().1.clone()
    };

    // 1. A third model over the memory budget: refused, with the numbers; nothing changes.
    let msg = reload(
        "memory_limit_mb = 1",
        &entries(&[("alpha", &alpha), ("beta", &beta), ("gamma", &gamma)]),
    );
    assert!(msg.contains("reload refused"), "{msg}");
    assert!(msg.contains("not enough memory: need"), "{msg}");
    assert!(
        msg.contains("have 1 MiB ([limits] memory_limit_mb = 1)"),
        "{msg}"
    );
    let e = ask_model(&mut c, "r3", Some("gamma")).await;
    assert_eq!(e["error"]["code"], "unknown_model", "{e}");
    assert_eq!(
        ask_model(&mut c, "r4", Some("alpha")).await["text"],
        ra["text"]
    );

    // 2. gamma added, beta changed to a file that fails to load, alpha unchanged: gamma
    //    serves, beta keeps its running engine, alpha's engine (and its counters) stay.
    let msg = reload(
        "",
        &entries(&[("alpha", &alpha), ("beta", &broken), ("gamma", &gamma)]),
    );
    assert!(msg.contains("reloaded in part"), "{msg}");
    assert!(
        msg.contains("model beta") && msg.contains("the running one stays"),
        "{msg}"
    );
    let s = status_where(mosq.port, |v| model_names(v).len() == 3).await;
    assert_eq!(model_names(&s), ["alpha", "beta", "gamma"]);
    assert_eq!(s["models"][0]["served"], 2, "alpha kept its engine: {s}");
    assert_eq!(
        s["models"][1]["file"], "beta.gguf",
        "beta kept its file: {s}"
    );
    let rg = ask_model(&mut c, "r5", Some("gamma")).await;
    assert_eq!(rg["model"], "gamma");
    assert_ne!(rg["text"], ra["text"]);
    assert_eq!(
        ask_model(&mut c, "r6", Some("beta")).await["text"],
        rb["text"]
    );
    pub_311(mosq.port, "llamabus/model/gamma/prompt/p3", "hello there");
    let m = c.recv_where(60, |m| m.topic == "llamabus/reply/p3").await;
    assert_eq!(m.text(), rg["text"].as_str().unwrap());

    // 3. beta removed, gamma the default: beta is unknown, plain requests go to gamma.
    let msg = reload(
        "",
        &[
            entry("alpha", &alpha, ""),
            entry("gamma", &gamma, "default = true"),
        ],
    );
    assert!(
        msg.contains("configuration reloaded; serving alpha, gamma"),
        "{msg}"
    );
    let e = ask_model(&mut c, "r7", Some("beta")).await;
    assert_eq!(e["error"]["code"], "unknown_model", "{e}");
    let rd = ask_model(&mut c, "r8", None).await;
    assert_eq!((&rd["model"], &rd["text"]), (&json!("gamma"), &rg["text"]));
}

#[test]
fn the_memory_guard_refuses_to_start_with_the_numbers_and_no_ready() {
    let mosq = Mosquitto::start();
    let dir = TempDir::tagged("mm-guard");
    let alpha = tiny_model(dir.path(), "alpha", 1);
    let beta = tiny_model(dir.path(), "beta", 2);
    // beta takes every core, so the two models' threads exceed them: a warning.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let beta_entry =
        entry("beta", &beta, "parallel = 4").replace("threads = 1", &format!("threads = {cores}"));
    let cfg = daemon_config(
        &mosq.url(),
        "memory_limit_mb = 1",
        &[entry("alpha", &alpha, ""), beta_entry],
    );
    let path = dir.write("config.toml", &cfg);
    let notify = NotifySocket::new();
    let (code, _, err) = run_cmd(
        Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&path)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("NOTIFY_SOCKET", &notify.path),
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not enough memory: need "), "{err}");
    assert!(
        err.contains("have 1 MiB ([limits] memory_limit_mb = 1)"),
        "{err}"
    );
    assert!(err.contains("alpha: ") && err.contains("beta: "), "{err}");
    assert!(err.contains("KV cache"), "{err}");
    let warning = format!("threads add up to {} on {cores} cores", cores + 1);
    assert!(err.contains(&warning), "{err}");
    let sent: Vec<String> = notify
        .during(Duration::from_millis(200))
        .into_iter()
        .map(|m| m.1)
        .collect();
    assert!(!sent.iter().any(|m| m.contains("READY=1")), "{sent:?}");

    // The same models fit a budget of 64 MiB: the guard is what refused them.
    let fits = cfg.replace("memory_limit_mb = 1", "memory_limit_mb = 64");
    let serve = ServeProcess::start(BIN, &fits, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s = rt.block_on(status_where(mosq.port, |v| model_names(v).len() == 2));
    assert_eq!(s["models"][1]["parallel"], 4);
    drop(serve);

    // `complete` checks against the machine itself: a KV cache of 2^30 cells (512 GiB for this
    // model) fits no machine's MemAvailable or cgroup.
    let (code, _, err) = run_cmd(
        Command::new(BIN)
            .args(["complete", "--ctx", "1073741824", "--model"])
            .arg(&alpha)
            .arg("hi"),
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not enough memory: need "), "{err}");
    assert!(
        err.contains("(MemAvailable in /proc/meminfo)") || err.contains("(cgroup /sys/fs/cgroup"),
        "{err}"
    );
}

fn load(text: &str) -> Result<config::Settings, String> {
    config::from_str(text, Path::new("mm.toml"), &Overrides::default()).map_err(|e| e.to_string())
}

/// Loading `text` fails with an error that starts with `prefix`.
#[track_caller]
fn config_error_starts_with(text: &str, prefix: &str) {
    let err = load(text).unwrap_err();
    assert!(err.starts_with(prefix), "{err}");
}

/// Loading `text` fails with an error that contains `part`.
#[track_caller]
fn config_error_contains(text: &str, part: &str) {
    let err = load(text).unwrap_err();
    assert!(err.contains(part), "{err}");
}

#[test]
fn config_errors_name_the_problem() {
    let dir = TempDir::tagged("mm-cfg");
    let a = tiny_model(dir.path(), "a", 1);
    let b = tiny_model(dir.path(), "b", 2);
    let e = |name: &str, p: &Path| {
        format!(
            "[[models]]\nname = \"{name}\"\npath = \"{}\"\n",
            p.display()
        )
    };

    // Duplicate names, also when one comes from the file name.
    config_error_starts_with(
        &format!("{}{}", e("x", &a), e("x", &b)),
        "mm.toml:5: models[1].name: duplicate model name `x` (also models[0])",
    );
    config_error_contains(
        &format!("{}[[models]]\npath = \"{}\"\n", e("a", &b), a.display()),
        "duplicate model name `a`",
    );

    // [model] and [[models]] together.
    config_error_starts_with(
        &format!("[model]\npath = \"{}\"\n{}", a.display(), e("b", &b)),
        "mm.toml:1: model: [model] and [[models]] (mm.toml:3) cannot both be set",
    );
    // An empty list.
    config_error_starts_with("models = []\n", "mm.toml:1: models: the list is empty");
    // Two defaults; a default in [model]; a bad entry names its index and line.
    config_error_starts_with(
        &format!(
            "{}default = true\n{}default = true\n",
            e("a", &a),
            e("b", &b)
        ),
        "mm.toml:8: models[1].default: models[0] is already the default",
    );
    config_error_contains(
        &format!("[model]\npath = \"{}\"\ndefault = true\n", a.display()),
        "model.default: only [[models]] entries",
    );
    config_error_starts_with(
        &format!("{}{}parallel = 0\n", e("a", &a), e("b", &b)),
        "mm.toml:7: models[1].parallel: 0 is outside 1..=64",
    );
    config_error_starts_with(
        &format!("{}[[models]]\nname = \"b\"\n", e("a", &a)),
        "mm.toml:4: models[1].path: required: every [[models]] entry needs a path",
    );
    config_error_contains(&e("a/b", &a), "models[0].name: `a/b` must be");

    // The default: the first entry, or the one marked.
    let s = load(&format!("{}{}", e("a", &a), e("b", &b))).unwrap();
    assert_eq!((s.model().name.as_str(), s.models.len()), ("a", 2));
    let s = load(&format!("{}{}default = true\n", e("a", &a), e("b", &b))).unwrap();
    assert_eq!(s.model().name, "b");
    assert_eq!(s.models[0].parallel, 8);
    assert!(s.models[0].repack);
}

// ---------------------------------------------------------------------------------------------
// Reload plans (no model is loaded)

/// Settings with one `[[models]]` entry per `(name, extra keys)`; the model file is any
/// existing file (nothing is loaded).
fn plan_settings(models: &[(&str, &str)]) -> config::Settings {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let text: String = models
        .iter()
        .map(|(n, extra)| format!("[[models]]\nname = \"{n}\"\npath = \"{path}\"\n{extra}\n"))
        .collect();
    config::from_str(&text, Path::new("t.toml"), &Overrides::default()).unwrap()
}

fn names(cfgs: &[EngineConfig]) -> Vec<&str> {
    cfgs.iter().map(|c| c.model_name.as_str()).collect()
}

#[test]
fn a_reload_plan_is_made_model_by_model() {
    let old = plan_settings(&[
        ("a", "threads = 1"),
        ("b", "threads = 1"),
        ("c", "threads = 1"),
    ]);
    let new = plan_settings(&[
        // Sampling only: the running engine takes it.
        ("a", "threads = 1\n[models.sampling]\ntemperature = 0.1"),
        // Context and parallel need a new engine.
        ("b", "threads = 1\ncontext = 4096"),
        ("c", "threads = 1\nparallel = 2"),
        ("d", "threads = 1"),
    ]);
    let plan = plan_reload(&old, &new);
    assert_eq!(names(&plan.load), ["b", "c", "d"]);
    assert_eq!(plan.retune.len(), 1);
    assert_eq!(plan.retune[0].0, "a");
    assert_eq!(plan.retune[0].1.default_sampling.temperature, 0.1);
    assert!(plan.removed.is_empty());

    let fewer = plan_settings(&[("c", "threads = 1")]);
    let plan = plan_reload(&old, &fewer);
    assert!(plan.load.is_empty());
    assert_eq!(plan.removed, ["a", "b"]);
}
