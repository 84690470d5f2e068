//! Unit tests of the layering and validation rules.

use super::*;
use crate::mqtt::homeassistant::HomeAssistantSettings;

fn model_path() -> String {
    // Any existing file passes the `is_file` check; the model is not loaded here.
    concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml").to_owned()
}

fn load_str(text: &str) -> Result<Settings, ConfigError> {
    from_str(text, Path::new("test.toml"), &Overrides::default())
}

#[test]
fn defaults_with_a_model() {
    let s = load_str(&format!("[model]\npath = \"{}\"\n", model_path())).unwrap();
    assert_eq!(s.mqtt.prefix, "llamabus");
    assert_eq!(s.mqtt.allowed_reply_prefixes, vec!["llamabus/reply/#"]);
    assert_eq!(s.mqtt.max_packet_bytes, 256 * 1024);
    assert!(matches!(s.mqtt.broker, BrokerSettings::Embedded { .. }));
    assert_eq!(s.model().name, "Cargo");
    assert_eq!(s.limits.queue_capacity, 8);
}

#[test]
fn cpu_variant_must_exist_run_here_and_agree_across_models() {
    use crate::ggml::cpu;
    let m = model_path();
    let runs: Vec<&str> = cpu::variants()
        .into_iter()
        .filter(|v| v.runs_here())
        .map(|v| v.name())
        .collect();
    let s = load_str(&format!(
        "[model]\npath = \"{m}\"\ncpu_variant = \"{}\"\n",
        runs[0]
    ))
    .unwrap();
    assert_eq!(s.cpu_variant(), Some(runs[0]));
    let shown = effective_toml(&s);
    assert!(
        shown.contains(&format!("cpu_variant = \"{}\"", runs[0])),
        "{shown}"
    );
    let s = load_str(&format!("[model]\npath = \"{m}\"\n")).unwrap();
    assert_eq!(s.cpu_variant(), None);

    let e = load_str(&format!(
        "[model]\npath = \"{m}\"\ncpu_variant = \"avx1024\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("test.toml:3: model.cpu_variant:"), "{e}");
    assert!(
        e.contains("\"avx1024\"") && e.contains("is not compiled into this build"),
        "{e}"
    );
    for v in cpu::variants().into_iter().filter(|v| !v.runs_here()) {
        let e = load_str(&format!("[model]\npath = \"{m}\"\ncpu_variant = \"{v}\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("which this CPU lacks"), "{e}");
    }
    if let [a, b, ..] = runs[..] {
        let text = format!(
            "[[models]]\nname = \"a\"\npath = \"{m}\"\ncpu_variant = \"{a}\"\n\
             [[models]]\nname = \"b\"\npath = \"{m}\"\ncpu_variant = \"{b}\"\n"
        );
        let e = load_str(&text).unwrap_err().to_string();
        assert!(
            e.contains("models[1].cpu_variant") && e.contains("process-wide"),
            "{e}"
        );
        // Set on one model, it applies to the process.
        let text = format!(
            "[[models]]\nname = \"a\"\npath = \"{m}\"\n\
             [[models]]\nname = \"b\"\npath = \"{m}\"\ncpu_variant = \"{b}\"\n"
        );
        assert_eq!(load_str(&text).unwrap().cpu_variant(), Some(b));
    }
}

#[test]
fn overrides_win_and_are_named_in_errors() {
    let o = Overrides {
        model: Some(model_path().into()),
        broker: Some("mqtt://127.0.0.1:1999".into()),
        prefix: Some("lb".into()),
        homeassistant: None,
    };
    let s = from_str("[mqtt]\nprefix = \"x\"\n", Path::new("f.toml"), &o).unwrap();
    assert_eq!(s.mqtt.prefix, "lb");
    assert_eq!(s.mqtt.allowed_reply_prefixes, vec!["lb/reply/#"]);
    assert_eq!(
        s.mqtt.broker,
        BrokerSettings::External(BrokerUrl {
            tls: false,
            host: "127.0.0.1".into(),
            port: 1999
        })
    );
    let o = Overrides {
        broker: Some("http://x".into()),
        ..o
    };
    let e = from_str("", Path::new("f.toml"), &o)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("--broker: mqtt.broker:"), "{e}");
}

#[test]
fn homeassistant_section_defaults_values_flag_and_errors() {
    let m = model_path();
    let s = load_str(&format!("[model]\npath = \"{m}\"\n")).unwrap();
    assert_eq!(s.homeassistant, HomeAssistantSettings::default());
    assert!(!s.homeassistant.enabled);
    assert_eq!(s.homeassistant.discovery_prefix, "homeassistant");
    let text = format!(
        "[model]\npath = \"{m}\"\n[homeassistant]\nenabled = true\n\
         discovery_prefix = \"ha/test\"\nname = \"Kitchen LLM\"\n"
    );
    let s = load_str(&text).unwrap();
    assert!(s.homeassistant.enabled);
    assert_eq!(s.homeassistant.discovery_prefix, "ha/test");
    assert_eq!(s.homeassistant.name.as_deref(), Some("Kitchen LLM"));
    assert!(effective_toml(&s).contains(
        "[homeassistant]\ndiscovery_prefix = \"ha/test\"\nenabled = true\nname = \"Kitchen LLM\"\n"
    ));
    let flag = Overrides {
        homeassistant: Some(true),
        ..Overrides::default()
    };
    let s = from_str(&format!("[model]\npath = \"{m}\"\n"), Path::new("f"), &flag).unwrap();
    assert!(s.homeassistant.enabled);
    for (bad, key) in [
        (
            "discovery_prefix = \"ha/#\"",
            "homeassistant.discovery_prefix",
        ),
        (
            "discovery_prefix = \"$SYS\"",
            "homeassistant.discovery_prefix",
        ),
        ("name = \" \"", "homeassistant.name"),
        ("enabled = \"yes\"", "enabled"),
        ("enable = true", "enable"),
    ] {
        let text = format!("[model]\npath = \"{m}\"\n[homeassistant]\n{bad}\n");
        let e = load_str(&text).unwrap_err().to_string();
        assert!(e.contains(key), "{bad}: {e}");
    }
}

#[test]
fn unknown_keys_are_rejected_naming_the_file() {
    let e = load_str("[mqtt]\nprefx = \"a\"\n").unwrap_err().to_string();
    assert!(e.contains("test.toml") && e.contains("prefx"), "{e}");
    let e = load_str("[modle]\n").unwrap_err().to_string();
    assert!(e.contains("modle"), "{e}");
}

#[test]
fn invalid_values_name_the_key() {
    let m = model_path();
    for (toml, key) in [
        ("[mqtt]\nprefix = \"a/#\"", "mqtt.prefix"),
        ("[mqtt]\nprefix = \"\"", "mqtt.prefix"),
        ("[mqtt]\nbroker = \"tcp://x\"", "mqtt.broker"),
        ("[mqtt]\nshare_group = \"a/b\"", "mqtt.share_group"),
        (
            "[mqtt]\nallowed_reply_prefixes = [\"a/#/b\"]",
            "mqtt.allowed_reply_prefixes",
        ),
        ("[mqtt]\nmax_packet_bytes = 100", "mqtt.max_packet_bytes"),
        ("[mqtt]\nkeep_alive_s = 1", "mqtt.keep_alive_s"),
        (
            "[mqtt]\nsession_expiry_s = 4294967296",
            "mqtt.session_expiry_s",
        ),
        ("[mqtt]\ndedup_window_s = 999999", "mqtt.dedup_window_s"),
        ("[mqtt]\ndedup_capacity = 0", "mqtt.dedup_capacity"),
        ("[mqtt]\ndedup_max_bytes = 1000", "mqtt.dedup_max_bytes"),
        (
            "[mqtt]\ndedup_max_bytes = 4294967296",
            "mqtt.dedup_max_bytes",
        ),
        ("[limits]\nqueue_capacity = 0", "limits.queue_capacity"),
        (
            "[limits]\ndefault_max_tokens = 2000",
            "limits.default_max_tokens",
        ),
        (
            "[limits]\nmax_payload_bytes = 999999",
            "limits.max_payload_bytes",
        ),
        ("[node]\nname = \"a/b\"", "node.name"),
    ] {
        let text = format!("{toml}\n[model]\npath = \"{m}\"\n");
        let e = load_str(&text).unwrap_err().to_string();
        // The fragment's key is on line 2, below its table header.
        assert!(
            e.starts_with(&format!("test.toml:2: {key}:")),
            "{toml}: {e}"
        );
    }
    for (toml, key) in [
        ("mode = \"chatty\"", "model.mode"),
        ("threads = 0", "model.threads"),
        ("[model.sampling]\ntemperature = -1.0", "model.sampling"),
    ] {
        let text = format!("[model]\npath = \"{m}\"\n{toml}\n");
        let e = load_str(&text).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("test.toml:3: {key}:")),
            "{toml}: {e}"
        );
    }
    let e = load_str("").unwrap_err().to_string();
    assert!(e.starts_with("test.toml: model.path: required"), "{e}");
}

#[test]
fn broker_urls() {
    let p = |s| BrokerUrl::parse(s);
    assert_eq!(p("mqtt://h").unwrap().port, 1883);
    assert_eq!(p("mqtts://h").unwrap().port, 8883);
    assert_eq!(p("mqtt://[::1]:99").unwrap().host, "::1");
    assert_eq!(p("mqtt://[::1]:99").unwrap().to_string(), "mqtt://[::1]:99");
    assert!(p("mqtt://h:0").is_err());
    assert!(p("mqtt://h/path").is_err());
    assert!(p("mqtt://").is_err());
}

#[test]
fn named_formats_are_checked_at_load() {
    let m = model_path();
    let with = |formats: &str| load_str(&format!("[model]\npath = \"{m}\"\n{formats}\n"));
    let s = with(
        "[formats.light]\nschema = '{\"type\": \"object\", \"properties\": {\"on\": {\"type\": \"boolean\"}}}'\n\
         [formats.pct]\nregex = \"[0-9]{1,3}%\"\n[formats.any]\njson = true",
    )
    .unwrap();
    assert_eq!(
        s.formats.keys().collect::<Vec<_>>(),
        ["any", "light", "pct"]
    );
    assert!(s.formats["light"].is_json());
    // check-config prints them back, and the printed form loads to the same formats.
    let printed = effective_toml(&s);
    assert!(printed.contains("[formats.pct]"), "{printed}");
    let again = from_str(&printed, Path::new("printed.toml"), &Overrides::default()).unwrap();
    assert_eq!(again.formats, s.formats);

    for (toml, why) in [
        (
            "[formats.x]\nschema = '{\"type\": \"array\", \"uniqueItems\": true}'",
            "uniqueItems",
        ),
        ("[formats.x]\nregex = \"(unclosed\"", "does not compile"),
        ("[formats.x]\nlark = \"start: nowhere\"", "nowhere"),
        ("[formats.x]\nregex = \"a\"\njson = true", "exactly one"),
        ("[formats.x]\nschema = '{nope'", "not JSON"),
    ] {
        let e = with(toml).unwrap_err().to_string();
        assert!(e.starts_with("test.toml:3: formats.x:"), "{toml}: {e}");
        assert!(e.contains(why), "{toml}: {e}");
    }
    let e = with("[formats.\"a/b\"]\njson = true")
        .unwrap_err()
        .to_string();
    assert!(e.contains("one non-empty topic level"), "{e}");
    let e = with("[formats.x]\npattern = \"a\"")
        .unwrap_err()
        .to_string();
    assert!(e.contains("pattern"), "{e}");
}
