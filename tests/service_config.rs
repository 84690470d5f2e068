//! The layered configuration: precedence (file < drop-ins < environment < flags), drop-in merge
//! order, the error messages (file, line, key), the systemd credential, `check-config`'s
//! redaction, and the shipped default config.

mod common;
mod mqtt_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use llamabus::service::config::{self, load_sources, Overrides, Sources};
use mqtt_support::{model_path, run_cmd, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_llamabus");

fn model() -> String {
    model_path().display().to_string()
}

/// A main file plus drop-ins in `dir/config.d`.
fn layout(main: &str, dropins: &[(&str, &str)]) -> (TempDir, PathBuf) {
    let d = TempDir::tagged("cfg");
    let main = d.write("config.toml", main);
    for (name, text) in dropins {
        d.write(&format!("config.d/{name}"), text);
    }
    (d, main)
}

fn sources(main: &Path, env: &[(&str, &str)], overrides: Overrides) -> Sources {
    Sources {
        file: Some(main.to_owned()),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        credentials_dir: None,
        overrides,
    }
}

fn err(s: &Sources) -> String {
    load_sources(s).unwrap_err().to_string()
}

#[test]
fn precedence_file_then_dropins_then_environment_then_flags() {
    let main = format!(
        "[mqtt]\nprefix = \"file\"\n[model]\npath = \"{}\"\n",
        model()
    );
    let (_d, path) = layout(&main, &[]);
    let s = load_sources(&sources(&path, &[], Overrides::default())).unwrap();
    assert_eq!(s.mqtt.prefix, "file");

    let (_d, path) = layout(
        &main,
        &[
            ("10-a.toml", "[mqtt]\nprefix = \"drop10\"\n"),
            ("20-b.toml", "[mqtt]\nprefix = \"drop20\"\n"),
        ],
    );
    let s = load_sources(&sources(&path, &[], Overrides::default())).unwrap();
    assert_eq!(s.mqtt.prefix, "drop20");

    let env = [("LLAMABUS_MQTT_PREFIX", "env")];
    let s = load_sources(&sources(&path, &env, Overrides::default())).unwrap();
    assert_eq!(s.mqtt.prefix, "env");

    let flags = Overrides {
        prefix: Some("flag".into()),
        ..Overrides::default()
    };
    let s = load_sources(&sources(&path, &env, flags)).unwrap();
    assert_eq!(s.mqtt.prefix, "flag");
    assert_eq!(s.mqtt.allowed_reply_prefixes, vec!["flag/reply/#"]);
}

#[test]
fn dropins_merge_key_by_key_in_file_name_order() {
    let main = format!(
        "[limits]\nqueue_capacity = 2\nmax_tokens_cap = 100\n[model]\npath = \"{}\"\n\
         [model.sampling]\ntop_k = 10\n[mqtt]\nallowed_reply_prefixes = [\"a/#\", \"b/#\"]\n",
        model()
    );
    let (d, path) = layout(
        &main,
        &[
            // Read after 10-*, whatever order the directory lists them in.
            ("20-last.toml", "[limits]\nqueue_capacity = 4\n"),
            (
                "10-first.toml",
                "[limits]\nqueue_capacity = 3\ndefault_max_tokens = 5\n\
                 [model.sampling]\ntemperature = 0.0\n[mqtt]\nallowed_reply_prefixes = [\"c/#\"]\n",
            ),
            // Not a drop-in: ignored.
            ("30-notes.txt", "this is not TOML"),
        ],
    );
    d.write("config.d/15-dir.toml/keep", "directories are skipped");
    let s = load_sources(&sources(&path, &[], Overrides::default())).unwrap();
    assert_eq!(s.limits.queue_capacity, 4);
    assert_eq!(s.limits.default_max_tokens, 5);
    assert_eq!(s.limits.max_tokens_cap, 100);
    assert_eq!(s.model().sampling.top_k, 10);
    assert_eq!(s.model().sampling.temperature, 0.0);
    // Arrays are values: replaced, not appended.
    assert_eq!(s.mqtt.allowed_reply_prefixes, vec!["c/#"]);
    let order: Vec<&str> = s.source.split(", ").collect();
    assert_eq!(order.len(), 3, "{}", s.source);
    assert!(order[1].ends_with("10-first.toml") && order[2].ends_with("20-last.toml"));
}

#[test]
fn environment_values_are_typed_and_unrelated_variables_ignored() {
    let (_d, path) = layout(&format!("[model]\npath = \"{}\"\n", model()), &[]);
    let env = [
        ("LLAMABUS_LIMITS_QUEUE_CAPACITY", "5"),
        ("LLAMABUS_MODEL_SAMPLING_TEMPERATURE", "0.25"),
        ("LLAMABUS_MQTT_ALLOWED_REPLY_PREFIXES", "[\"x/#\"]"),
        // A string key whose value looks like a number stays a string.
        ("LLAMABUS_NODE_NAME", "1234"),
        ("LLAMABUS_LOG", "debug"),
        // Build and test knobs are not configuration.
        ("LLAMABUS_NATIVE", "1"),
        ("LLAMABUS_SKIP_ARM", "1"),
    ];
    let s = load_sources(&sources(&path, &env, Overrides::default())).unwrap();
    assert_eq!(s.limits.queue_capacity, 5);
    assert_eq!(s.model().sampling.temperature, 0.25);
    assert_eq!(s.mqtt.allowed_reply_prefixes, vec!["x/#"]);
    assert_eq!(s.node, "1234");
    assert_eq!(s.log_level, log::LevelFilter::Debug);
}

#[test]
fn every_error_names_where_and_which_key() {
    let good = format!("[model]\npath = \"{}\"\n", model());

    // Unknown key in a drop-in: the drop-in's path, the line and the key.
    let (_d, path) = layout(&good, &[("10-x.toml", "[mqtt]\n\nprefx = \"a\"\n")]);
    let e = err(&sources(&path, &[], Overrides::default()));
    assert!(
        e.contains("config.d/10-x.toml") && e.contains("line 3"),
        "{e}"
    );
    assert!(e.contains("unknown field `prefx`"), "{e}");

    // Wrong type in the main file.
    let (_d, path) = layout(&format!("{good}[limits]\nqueue_capacity = \"many\"\n"), &[]);
    let e = err(&sources(&path, &[], Overrides::default()));
    assert!(e.contains("config.toml") && e.contains("line 4"), "{e}");
    assert!(e.contains("queue_capacity"), "{e}");

    // TOML syntax.
    let (_d, path) = layout("[mqtt\n", &[]);
    let e = err(&sources(&path, &[], Overrides::default()));
    assert!(e.contains("config.toml") && e.contains("line 1"), "{e}");

    // A value valid in type but not in meaning, found after merging: the layer that set it.
    let (_d, path) = layout(
        &good,
        &[
            ("10-ok.toml", "[mqtt]\nprefix = \"fine\"\n"),
            ("20-bad.toml", "# broken prefix\n[mqtt]\nprefix = \"a/#\"\n"),
        ],
    );
    let e = err(&sources(&path, &[], Overrides::default()));
    assert!(
        e.contains("config.d/20-bad.toml:3: mqtt.prefix: ") && e.contains("'#'"),
        "{e}"
    );
    let (_d, path) = layout(&format!("{good}[log]\nlevel = \"loud\"\n"), &[]);
    let e = err(&sources(&path, &[], Overrides::default()));
    assert!(e.contains("config.toml:4: log.level: `loud`"), "{e}");

    // Environment: the variable and the key.
    let (_d, path) = layout(&good, &[]);
    let env_err =
        |var: &str, value: &str| err(&sources(&path, &[(var, value)], Overrides::default()));
    let e = env_err("LLAMABUS_LIMITS_QUEUE_CAPACITY", "many");
    assert!(
        e.starts_with("environment LLAMABUS_LIMITS_QUEUE_CAPACITY: limits.queue_capacity: "),
        "{e}"
    );
    let e = env_err("LLAMABUS_MQTT_BROKRE", "mqtt://x");
    assert!(
        e.starts_with("environment LLAMABUS_MQTT_BROKRE: mqtt.brokre: ") && e.contains("brokre"),
        "{e}"
    );
    assert_eq!(
        env_err("LLAMABUS_LIMITS_QUEUE_CAPACITY", "0"),
        "environment LLAMABUS_LIMITS_QUEUE_CAPACITY: limits.queue_capacity: must be at least 1"
    );

    // Flags.
    let flags = Overrides {
        broker: Some("http://x".into()),
        ..Overrides::default()
    };
    let e = err(&sources(&path, &[], flags));
    assert!(e.starts_with("--broker: mqtt.broker: "), "{e}");

    // A missing --config file, and a required key nobody set.
    let e = err(&sources(
        Path::new("/nonexistent/llamabus.toml"),
        &[],
        Overrides::default(),
    ));
    assert!(
        e.starts_with("/nonexistent/llamabus.toml: cannot read"),
        "{e}"
    );
    let (_d, path) = layout("[node]\nname = \"n\"\n", &[]);
    let e = err(&sources(&path, &[], Overrides::default()));
    assert!(
        e.ends_with("model.path: required: set [model] path or pass --model"),
        "{e}"
    );
    assert!(e.contains("config.toml"), "{e}");
}

#[test]
fn the_password_comes_from_the_systemd_credential_when_not_in_a_file() {
    let (d, path) = layout(
        &format!(
            "[mqtt]\nbroker = \"mqtt://127.0.0.1:1\"\nusername = \"board\"\n[model]\npath = \"{}\"\n",
            model()
        ),
        &[],
    );
    let creds = d.join("credentials");
    std::fs::create_dir_all(&creds).unwrap();
    let mut src = sources(&path, &[], Overrides::default());
    src.credentials_dir = Some(creds.clone());
    // The package ships the credential empty: no password.
    std::fs::write(creds.join(config::PASSWORD_CREDENTIAL), "").unwrap();
    assert_eq!(load_sources(&src).unwrap().mqtt.password, None);
    std::fs::write(creds.join(config::PASSWORD_CREDENTIAL), "s3cret\n").unwrap();
    let s = load_sources(&src).unwrap();
    assert_eq!(s.mqtt.password.unwrap().0, "s3cret");
    // password_file wins over the credential.
    d.write("pw", "from-file\n");
    let e = format!("password_file = \"{}\"", d.join("pw").display());
    std::fs::write(
        &path,
        std::fs::read_to_string(&path).unwrap().replace(
            "username = \"board\"",
            &format!("username = \"board\"\n{e}"),
        ),
    )
    .unwrap();
    assert_eq!(
        load_sources(&src).unwrap().mqtt.password.unwrap().0,
        "from-file"
    );
}

fn check_config(args: &[&str]) -> (Option<i32>, String, String) {
    run_cmd(
        Command::new(BIN)
            .arg("check-config")
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default()),
        Duration::from_secs(30),
    )
}

#[test]
fn check_config_prints_the_effective_settings_with_secrets_redacted() {
    let d = TempDir::tagged("check");
    let pw = d.write("password", "hunter2-do-not-print\n");
    let main = d.write(
        "config.toml",
        &format!(
            "[mqtt]\nbroker = \"mqtt://10.1.2.3\"\nusername = \"board\"\npassword_file = \"{}\"\n\
             [model]\npath = \"{}\"\n",
            pw.display(),
            model()
        ),
    );
    d.write("config.d/50-drain.toml", "[limits]\nshutdown_drain_s = 7\n");
    let (code, out, err) = check_config(&[main.to_str().unwrap(), "--prefix", "chk"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!out.contains("hunter2"), "{out}");
    assert!(out.contains("password = \"(redacted)\""), "{out}");
    assert!(out.contains("prefix = \"chk\""), "{out}");
    assert!(out.contains("shutdown_drain_s = 7"), "{out}");
    assert!(out.contains("broker = \"mqtt://10.1.2.3:1883\""), "{out}");
    assert!(out.contains("50-drain.toml"), "{out}");

    // Invalid: exit 1, the message names the file, line and key.
    std::fs::write(
        d.join("config.d/50-drain.toml"),
        "[limits]\nshutdown_drain = 7\n",
    )
    .unwrap();
    let (code, out, err) = check_config(&[main.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        err.contains("50-drain.toml") && err.contains("line 2") && err.contains("shutdown_drain"),
        "{err}"
    );
}

#[test]
fn the_shipped_default_config_is_valid() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/llamabus.toml");
    let (code, out, err) = check_config(&[shipped.to_str().unwrap(), "--model", &model()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("broker = \"mqtt://127.0.0.1:1883\""), "{out}");
    // Without the model in place it is refused, naming the key: what keeps the package from
    // starting a service that has no model.
    let (code, _, err) = check_config(&[shipped.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("model.path: /var/lib/llamabus/models/SmolLM2-135M-Instruct.Q4_1.gguf is not a readable file"),
        "{err}"
    );
}

#[test]
fn a_models_list_merges_as_one_value_and_prints_back() {
    let m = model();
    let entry =
        |name: &str, extra: &str| format!("[[models]]\nname = \"{name}\"\npath = \"{m}\"\n{extra}");
    let main = format!(
        "[limits]\nmemory_limit_mb = 300\n{}{}",
        entry("a", "threads = 1\n"),
        entry(
            "b",
            "threads = 1\nparallel = 2\nprefix_cache = false\nstep_tokens = 64\ndefault = true\n\
             kv_cells = 4096\nrepack = false\n[models.sampling]\ntop_k = 7\n"
        )
    );
    let (d, path) = layout(&main, &[]);
    let s = load_sources(&sources(&path, &[], Overrides::default())).unwrap();
    assert_eq!(s.models.len(), 2);
    assert_eq!(s.model().name, "b");
    assert_eq!(s.model().parallel, 2);
    assert!(!s.model().prefix_cache);
    // The engine gets the step size (the watchdog needs one step to fit its interval).
    assert_eq!(s.engine_config().step_tokens, 64);
    assert_eq!(s.engine_config_for(&s.models[0]).step_tokens, 256);
    // The KV pool and repacking reach the engine; by default one context's worth of cells
    // shared by 8 jobs, weights repacked.
    assert_eq!(s.engine_config().kv_cells(), 4096);
    assert!(!s.engine_config().repack);
    let a = s.engine_config_for(&s.models[0]);
    assert_eq!((a.parallel, a.kv_cells(), a.repack), (8, 2048, true));
    assert_eq!(s.model().sampling.top_k, 7);
    assert_eq!(s.models[0].sampling.top_k, 40);
    assert_eq!(s.limits.memory_limit, Some(300 << 20));

    // check-config prints the list, the default marked, and the result reads back the same.
    let (code, out, stderr) = check_config(&[path.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        out.contains("[[models]]") && !out.contains("[model]"),
        "{out}"
    );
    assert!(out.contains("memory_limit_mb = 300"), "{out}");
    let printed = d.write("printed.toml", &out);
    let again = load_sources(&sources(&printed, &[], Overrides::default())).unwrap();
    assert_eq!(again.models, s.models);
    assert_eq!(again.default_model, 1);

    // A drop-in's list replaces the main file's, and its errors point into the drop-in.
    d.write("config.d/10-one.toml", &entry("c", "threads = 0\n"));
    let e = err(&sources(&path, &[], Overrides::default()));
    assert!(
        e.contains("config.d/10-one.toml:4: models[0].threads: must be at least 1"),
        "{e}"
    );
    // step_tokens below `parallel` (no room for one token each) or above the largest micro-batch.
    for (extra, at) in [
        (
            "parallel = 4\nstep_tokens = 3\n",
            "5: models[0].step_tokens: 3 is outside 4..=512",
        ),
        (
            "step_tokens = 513\n",
            "4: models[0].step_tokens: 513 is outside 8..=512",
        ),
        (
            "kv_cells = 100\n",
            "4: models[0].kv_cells: 100 cells cannot hold one context of 2048 tokens",
        ),
    ] {
        d.write("config.d/10-one.toml", &entry("c", extra));
        let e = err(&sources(&path, &[], Overrides::default()));
        assert!(e.contains(&format!("config.d/10-one.toml:{at}")), "{e}");
    }
    d.write("config.d/10-one.toml", &entry("c", ""));
    let s = load_sources(&sources(&path, &[], Overrides::default())).unwrap();
    let names: Vec<&str> = s.models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["c"]);

    // [model] from the environment or --model beside a [[models]] list: refused, naming both.
    let e = err(&sources(
        &path,
        &[("LLAMABUS_MODEL_CONTEXT", "512")],
        Overrides::default(),
    ));
    assert!(
        e.starts_with("environment LLAMABUS_MODEL_CONTEXT: model: [model] and [[models]]"),
        "{e}"
    );
    let flags = Overrides {
        model: Some(model_path()),
        ..Overrides::default()
    };
    let e = err(&sources(&path, &[], flags));
    assert!(
        e.starts_with("--model: model: [model] and [[models]]"),
        "{e}"
    );
}
