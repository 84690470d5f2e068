//! Writes the committed bindings in src/ggml/bindings/ for every known target from
//! vendor/ggml/include, or with `--check` fails if any target's bindgen output differs from the
//! file committed for it. Targets that share a file must get the same output; if they ever stop
//! doing so, writing fails and says which file to split.

// build.rs uses `committed_file`; this tool walks the whole table.
#[allow(dead_code)]
mod builder;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let check = std::env::args().any(|a| a == "--check");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root");
    let include = root.join("vendor/ggml/include");
    let dir = root.join("src/ggml/bindings");
    let mut stale = Vec::new();
    // File name -> (first target that produced it, its text), so shared files are written once.
    let mut written: BTreeMap<&str, (&str, String)> = BTreeMap::new();
    for &(target, file) in builder::KNOWN_TARGETS {
        let fresh = match builder::generate(builder::builder(&include, target), target) {
            Ok(text) => text,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        };
        let path = dir.join(file);
        if check {
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            if committed == fresh {
                println!("ok       {} ({target})", path.display());
            } else {
                println!("STALE    {} ({target})", path.display());
                stale.push(target);
            }
            continue;
        }
        if let Some((first, text)) = written.get(file) {
            if *text != fresh {
                eprintln!(
                    "bindgen's output for {first} and {target} now differs, but both use {file}: \
                     give each its own file in scripts/gen-bindings/src/builder.rs KNOWN_TARGETS"
                );
                return ExitCode::FAILURE;
            }
            continue;
        }
        if let Err(e) = std::fs::write(&path, &fresh) {
            eprintln!("writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("wrote    {} ({target})", path.display());
        written.insert(file, (target, fresh));
    }
    if stale.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "the committed bindings of {} target(s) differ from vendor/ggml's headers: run scripts/gen-bindings.sh",
            stale.len()
        );
        ExitCode::FAILURE
    }
}
