//! Format parsing and compiling on hostile input: the text as a `--format` file or a config
//! entry (a tagged format or a JSON Schema), then our checks, llguidance's compiler under our
//! limits, and a few mask/commit steps. Nothing may panic, hang or exhaust memory.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use llamabus::format::{FormatCompiler, FormatLimits, FormatSpec};

fn compiler() -> &'static FormatCompiler {
    static C: OnceLock<FormatCompiler> = OnceLock::new();
    C.get_or_init(|| FormatCompiler::model_free(FormatLimits::default()).expect("compiler"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The text both as a JSON format and as a raw regex and Lark grammar.
    let mut specs = vec![
        FormatSpec::Regex {
            pattern: text.to_owned(),
        },
        FormatSpec::Lark {
            grammar: text.to_owned(),
        },
    ];
    if let Ok(spec) = FormatSpec::from_json_text(text) {
        specs.push(spec);
    }
    for spec in specs {
        let Ok(grammar) = compiler().compile(&spec) else {
            continue;
        };
        let mut c = grammar.constraint();
        for _ in 0..8 {
            // The lowest allowed token: deterministic, and exercises the matcher's commit.
            let Ok(Some(token)) = c.first_allowed() else {
                break;
            };
            if c.commit(token).is_err() || c.is_stopped() {
                break;
            }
        }
    }
});
