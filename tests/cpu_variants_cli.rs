//! The binary's CPU variants: `sysinfo` names the variant in use, `--version` lists the
//! variants, `LLAMABUS_CPU_VARIANT` forces one (and refuses one the CPU lacks), and every variant
//! this CPU runs answers SmolLM2's `14 + 16 =` with ` 24.`. scripts/test.sh also runs the kernel,
//! tiny-model and golden suites once per variant, and the selection under qemu on named CPUs
//! (scripts/qemu-variants.sh), where spawning the binary from a test is not possible.

use std::process::Command;

use llamabus::ggml::cpu;

const BIN: &str = env!("CARGO_BIN_EXE_llamabus");

fn run(args: &[&str], forced: Option<&str>) -> (bool, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove(cpu::ENV_VAR);
    if let Some(v) = forced {
        cmd.env(cpu::ENV_VAR, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn sysinfo_variant(forced: Option<&str>) -> String {
    let (ok, out, err) = run(&["sysinfo"], forced);
    assert!(ok, "{out}{err}");
    out.lines()
        .find_map(|l| l.strip_prefix("variant:"))
        .unwrap_or_else(|| panic!("no variant line: {out}"))
        .trim()
        .to_string()
}

#[test]
fn sysinfo_names_the_variant_and_the_env_var_forces_one() {
    let best = cpu::choose(None, &cpu::cpu_has).unwrap();
    assert_eq!(sysinfo_variant(None), best.describe());
    for v in cpu::variants() {
        if v.runs_here() {
            assert_eq!(sysinfo_variant(Some(v.name())), v.describe());
        } else {
            // Forcing one the CPU lacks: a clear error, and nothing computes.
            let (ok, out, err) = run(&["inspect", "/nonexistent.gguf"], Some(v.name()));
            assert!(!ok);
            assert!(
                err.contains(&format!(
                    "CPU variant {} (from {}) needs",
                    v.name(),
                    cpu::ENV_VAR
                )),
                "{out}{err}"
            );
            let (ok, out, _) = run(&["sysinfo"], Some(v.name()));
            assert!(!ok && out.contains("variant:       none:"), "{out}");
            println!("{} does not run here: forcing it is refused", v.name());
        }
    }
    let (ok, _, err) = run(&["inspect", "/nonexistent.gguf"], Some("bogus"));
    assert!(!ok && err.contains("\"bogus\""), "{err}");
}

#[test]
fn version_lists_the_variants() {
    let (ok, out, err) = run(&["--version"], None);
    assert!(ok, "{err}");
    for v in cpu::variants() {
        assert!(out.contains(&v.describe()), "{out}");
    }
}

/// Every variant this CPU runs computes SmolLM2 correctly (a short greedy completion). The
/// ones it cannot run are skipped with the reason.
#[test]
fn every_variant_this_cpu_runs_answers_smollm2() {
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(model.exists(), "run scripts/fetch-test-data.sh");
    let model = model.to_str().unwrap();
    for v in cpu::variants() {
        if !v.runs_here() {
            println!(
                "skipping {}: this CPU lacks {}",
                v.name(),
                v.missing().join(" ")
            );
            continue;
        }
        let args = [
            "complete",
            "--model",
            model,
            "--temperature",
            "0",
            "--max-tokens",
            "4",
            "--threads",
            "2",
            "--ctx",
            "64",
            "14 + 16 =",
        ];
        let (ok, out, err) = run(&args, Some(v.name()));
        assert!(ok, "{}: {err}", v.name());
        assert!(out.starts_with(" 24."), "{}: {out:?}", v.name());
        assert!(
            err.contains(&format!("CPU variant {} |", v.name())),
            "{err}"
        );
    }
}
