//! Writes src/ggml/bindings/<target>.rs for every known target from vendor/ggml/include, or with
//! `--check` fails if any committed file differs from what bindgen generates now.

mod builder;

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
    for target in builder::KNOWN_TARGETS {
        let fresh = match builder::generate(builder::builder(&include, target), target) {
            Ok(text) => text,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        };
        let path = dir.join(format!("{target}.rs"));
        if check {
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            if committed == fresh {
                println!("ok       {}", path.display());
            } else {
                println!("STALE    {}", path.display());
                stale.push(path);
            }
        } else {
            if let Err(e) = std::fs::write(&path, &fresh) {
                eprintln!("writing {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
            println!("wrote    {}", path.display());
        }
    }
    if stale.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "{} committed binding file(s) differ from vendor/ggml's headers: run scripts/gen-bindings.sh",
            stale.len()
        );
        ExitCode::FAILURE
    }
}
