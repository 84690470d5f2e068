//! Structured output ([`llamabus::format`]) on the real SmolLM2-135M-Instruct Q4_1 model:
//! replies for several JSON Schemas validate against an independent validator (the
//! `jsonschema` crate, not llguidance), greedy and sampled; regex replies match in full;
//! `max_tokens` before the format completes is reported, never passed off as valid; hostile
//! formats are refused with a reason; the token trie keeps special tokens out of text.

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use common::jobs::{done, sink, start};
use common::tempdir::TempDir;
use common::tiny::{models_dir, require, write_tiny_model, TinySpec};
use llamabus::engine::{generate, GenerateRequest, Generation};
use llamabus::engine::{EngineConfig, JobOutcome, PromptInput};
use llamabus::format::{FormatCompiler, FormatError, FormatLimits, FormatSpec, Grammar};
use llamabus::ggml::Type;
use llamabus::model::{Model, Session};
use llamabus::sampler::{FinishReason, SamplingParams};
use llamabus::tokenizer::chat::ChatMessage;
use serde_json::{json, Value};

const THREADS: usize = 2;
const N_CTX: usize = 512;

fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        let path: PathBuf = models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
        Model::load(require(&path)).expect("load SmolLM2")
    })
}

fn compiler() -> &'static FormatCompiler {
    static C: OnceLock<FormatCompiler> = OnceLock::new();
    C.get_or_init(|| FormatCompiler::new(model().tokenizer(), FormatLimits::default()).unwrap())
}

fn chat_prompt(user: &str) -> Vec<u32> {
    let m = model();
    let msgs = [ChatMessage::new("user", user)];
    m.chat_template()
        .expect("SmolLM2 has a chat template")
        .encode(m.tokenizer(), &msgs, true)
        .unwrap()
}

fn run(prompt: &str, grammar: &Grammar, sampling: SamplingParams, max_tokens: usize) -> Generation {
    let mut session = Session::new(model(), N_CTX, THREADS).unwrap();
    let req = GenerateRequest {
        prompt: chat_prompt(prompt),
        max_tokens,
        sampling,
        stop: Vec::new(),
        format: Some(grammar.clone()),
    };
    generate(&mut session, 0, &req, |_| {}, || false).unwrap()
}

/// Greedy, then three seeds at temperatures 0.7 and 1.0.
fn samplings() -> Vec<SamplingParams> {
    let mut v = vec![SamplingParams::greedy()];
    for (seed, temperature) in [(1, 1.0), (2, 1.0), (3, 0.7)] {
        v.push(SamplingParams {
            temperature,
            seed,
            ..SamplingParams::default()
        });
    }
    v
}

/// Every reply completes, parses, agrees with `json`, and validates against `schema`.
fn check_schema(prompt: &str, schema: Value) {
    let validator = jsonschema::validator_for(&schema).expect("the test schema is valid");
    let grammar = compiler()
        .compile(&FormatSpec::JsonSchema {
            schema: schema.clone(),
        })
        .unwrap();
    assert!(grammar.is_json());
    for sampling in samplings() {
        let g = run(prompt, &grammar, sampling.clone(), 96);
        let f = g.format.as_ref().expect("a format outcome");
        let what = format!("{schema} with {sampling:?}: {:?}", g.text);
        assert_eq!(g.finish_reason, FinishReason::Stop, "{what}");
        assert!(f.complete && f.error.is_none(), "{what}: {f:?}");
        let value: Value = serde_json::from_str(&g.text).expect(&what);
        assert_eq!(f.json.as_ref(), Some(&value), "{what}");
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{what}: {errors:?}");
        // One mask per sampled token, plus one if the model picked end-of-generation.
        let masks = f.mask_times.len();
        assert!(
            masks == g.tokens.len() || masks == g.tokens.len() + 1,
            "{what}"
        );
    }
}

#[test]
fn enum_object_validates() {
    check_schema(
        "Turn the kitchen light off.",
        json!({
            "type": "object",
            "properties": {
                "action": {"enum": ["on", "off"]},
                "room": {"type": "string", "enum": ["kitchen", "hall", "bedroom"]}
            },
            "required": ["action", "room"],
            "additionalProperties": false
        }),
    );
}

#[test]
fn nested_objects_and_number_ranges_validate() {
    check_schema(
        "Set the living room thermostat to 21.5 degrees in heat mode.",
        json!({
            "type": "object",
            "properties": {
                "device": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "minLength": 1, "maxLength": 20},
                        "floor": {"type": "integer", "minimum": 0, "maximum": 3}
                    },
                    "required": ["name", "floor"],
                    "additionalProperties": false
                },
                "target": {"type": "number", "minimum": 5, "maximum": 30},
                "mode": {"const": "heat"}
            },
            "required": ["device", "target", "mode"],
            "additionalProperties": false
        }),
    );
}

#[test]
fn arrays_with_bounds_validate() {
    check_schema(
        "List three colours.",
        json!({
            "type": "object",
            "properties": {
                "colours": {
                    "type": "array",
                    "items": {"type": "string", "maxLength": 12},
                    "minItems": 2,
                    "maxItems": 4
                }
            },
            "required": ["colours"],
            "additionalProperties": false
        }),
    );
}

#[test]
fn any_of_and_refs_validate() {
    check_schema(
        "Report the sensor reading: 42 or an error.",
        json!({
            "$defs": {
                "reading": {
                    "type": "object",
                    "properties": {"value": {"type": "integer", "minimum": -40, "maximum": 125}},
                    "required": ["value"],
                    "additionalProperties": false
                },
                "failure": {
                    "type": "object",
                    "properties": {"error": {"type": "string", "pattern": "^[a-z ]{1,16}$"}},
                    "required": ["error"],
                    "additionalProperties": false
                }
            },
            "anyOf": [{"$ref": "#/$defs/reading"}, {"$ref": "#/$defs/failure"}]
        }),
    );
}

#[test]
fn any_json_object_parses() {
    let grammar = compiler().compile(&FormatSpec::Json).unwrap();
    for sampling in samplings().into_iter().take(3) {
        let g = run("Describe a cat as JSON.", &grammar, sampling, 160);
        let f = g.format.unwrap();
        if f.complete {
            let v: Value = serde_json::from_str(&g.text).unwrap();
            assert!(v.is_object(), "{}", g.text);
            assert_eq!(f.json, Some(v));
        } else {
            // Free-form objects can outgrow the budget; then it must say so.
            assert_eq!(g.finish_reason, FinishReason::Length, "{}", g.text);
            assert_eq!(f.json, None);
        }
    }
}

#[test]
fn regex_replies_match_in_full() {
    let pattern = r"(on|off) (kitchen|hall) [0-9]{1,3}%";
    let grammar = compiler()
        .compile(&FormatSpec::Regex {
            pattern: pattern.into(),
        })
        .unwrap();
    assert!(!grammar.is_json());
    // An independent matcher: the jsonschema crate's `pattern`, anchored.
    let check = jsonschema::validator_for(&json!({"pattern": format!("^(?:{pattern})$")})).unwrap();
    for sampling in samplings() {
        let g = run(
            "Dim the hall light to 40 percent.",
            &grammar,
            sampling.clone(),
            32,
        );
        let f = g.format.unwrap();
        assert!(f.complete, "{sampling:?}: {:?}", g.text);
        assert!(f.json.is_none());
        assert!(
            check.is_valid(&Value::String(g.text.clone())),
            "{:?}",
            g.text
        );
    }
}

#[test]
fn max_tokens_before_completion_is_length_without_json() {
    let grammar = compiler()
        .compile(&FormatSpec::JsonSchema {
            schema: json!({
                "type": "object",
                "properties": {"story": {"type": "string", "minLength": 200}},
                "required": ["story"]
            }),
        })
        .unwrap();
    let g = run("Tell me a story.", &grammar, SamplingParams::greedy(), 8);
    assert_eq!(g.finish_reason, FinishReason::Length);
    assert_eq!(g.tokens.len(), 8);
    let f = g.format.unwrap();
    assert!(!f.complete);
    assert_eq!(f.json, None);
    assert!(f.error.is_none());
    assert!(g.text.starts_with("{\"story\": \""), "{:?}", g.text);
}

#[test]
fn no_format_means_no_outcome_and_the_same_tokens() {
    // The same request with and without a permissive format differ; without one, the output is
    // exactly the unconstrained greedy output (the golden test checks it token for token).
    let mut session = Session::new(model(), N_CTX, THREADS).unwrap();
    let req = GenerateRequest {
        prompt: chat_prompt("What is the capital of France?"),
        max_tokens: 12,
        sampling: SamplingParams::greedy(),
        stop: Vec::new(),
        format: None,
    };
    let plain = generate(&mut session, 0, &req, |_| {}, || false).unwrap();
    assert!(plain.format.is_none());
    // A regex that admits any text up to the budget leaves greedy decoding unchanged.
    let any = compiler()
        .compile(&FormatSpec::Regex {
            pattern: r"(?s:.*)".into(),
        })
        .unwrap();
    let mut session = Session::new(model(), N_CTX, THREADS).unwrap();
    let constrained = generate(
        &mut session,
        0,
        &GenerateRequest {
            format: Some(any),
            ..req
        },
        |_| {},
        || false,
    )
    .unwrap();
    assert_eq!(constrained.tokens, plain.tokens);
}

#[test]
fn special_tokens_are_never_text_and_eog_only_where_the_format_accepts() {
    let tok = model().tokenizer();
    let eos = tok.eos().unwrap();
    let im_start = tok.encode("<|im_start|>", true);
    assert_eq!(im_start.len(), 1);
    let grammar = compiler()
        .compile(&FormatSpec::Regex {
            pattern: r"(?s:.{0,40})".into(),
        })
        .unwrap();
    let mut c = grammar.constraint();
    let allowed = |mask: &[u32], id: u32| mask[id as usize / 32] & (1 << (id % 32)) != 0;
    let mask = c.mask().unwrap().to_vec();
    // Any text is allowed, yet control tokens are not text; the empty reply is accepted.
    assert!(
        !allowed(&mask, im_start[0]),
        "<|im_start|> must not be text"
    );
    assert!(allowed(&mask, eos), "EOS where the regex accepts");
    assert!(allowed(&mask, tok.encode("Hello", false)[0]));

    let grammar = compiler()
        .compile(&FormatSpec::Regex {
            pattern: "yes|no".into(),
        })
        .unwrap();
    let mut c = grammar.constraint();
    let mask = c.mask().unwrap().to_vec();
    assert!(!allowed(&mask, eos), "no EOS before the regex matches");
    let yes = tok.encode("yes", false);
    assert_eq!(yes.len(), 1);
    assert!(allowed(&mask, yes[0]));
    c.commit(yes[0]).unwrap();
    assert!(c.is_accepting());
    assert!(c.is_stopped(), "nothing can follow `yes`");
}

#[test]
fn bad_formats_are_refused_with_a_reason() {
    let c = compiler();
    let compile_err = |spec: FormatSpec| c.compile(&spec).unwrap_err();
    let e = compile_err(FormatSpec::Regex {
        pattern: "(unclosed".into(),
    });
    assert!(matches!(e, FormatError::Compile(_)), "{e}");
    let e = compile_err(FormatSpec::Lark {
        grammar: "start: missing_rule".into(),
    });
    assert!(matches!(e, FormatError::Compile(_)), "{e}");
    assert!(e.to_string().contains("missing_rule"), "{e}");
    let e = compile_err(FormatSpec::JsonSchema {
        schema: json!({"type": "array", "uniqueItems": true}),
    });
    assert!(e.to_string().contains("uniqueItems"), "{e}");
    let e = compile_err(FormatSpec::JsonSchema {
        schema: json!({"$ref": "https://example.com/schema.json"}),
    });
    assert!(matches!(e, FormatError::Compile(_)), "{e}");
    // oneOf whose branches overlap cannot be enforced exactly: refused, not approximated.
    let e = compile_err(FormatSpec::JsonSchema {
        schema: json!({"oneOf": [{"type": "integer"}, {"type": "number"}]}),
    });
    assert!(e.to_string().contains("oneOf"), "{e}");
    let e = compile_err(FormatSpec::Regex {
        pattern: "a".repeat(40_000),
    });
    assert!(matches!(e, FormatError::TooLarge { .. }), "{e}");
}

/// Formats built to be expensive: each is refused (by our limits or llguidance's) or compiles
/// and then runs its masks within llguidance's per-step fuel. Either way the call returns;
/// no timing is asserted (the step limits bound the work, the machine decides the time).
#[test]
fn hostile_formats_are_refused_or_bounded() {
    let deep_schema = (0..40).fold(
        json!({"type": "integer"}),
        |s, _| json!({"type": "array", "items": s}),
    );
    let wide_enum: Vec<String> = (0..5000).map(|i| format!("value-{i}")).collect();
    let hostile = [
        // Catastrophic backtracking in a backtracking engine; derivatives keep it linear.
        FormatSpec::Regex {
            pattern: "(a+)+(b+)+(a|aa)*c".into(),
        },
        // Counted repetition blow-up: 1000 x 1000 states if expanded.
        FormatSpec::Regex {
            pattern: "(a{1000}){1000}".into(),
        },
        FormatSpec::Regex {
            pattern: "[a-z]{1,60000}".into(),
        },
        // Deep nesting: refused by our depth limit.
        FormatSpec::Regex {
            pattern: format!("{}a{}", "(".repeat(200), ")".repeat(200)),
        },
        FormatSpec::JsonSchema {
            schema: deep_schema,
        },
        // Exponentially ambiguous grammar.
        FormatSpec::Lark {
            grammar: "start: x\nx: x x | x x x | \"a\" | \"\"".into(),
        },
        // Self-referential schema.
        FormatSpec::JsonSchema {
            schema: json!({"$defs": {"n": {"anyOf": [{"$ref": "#/$defs/n"}, {"type": "null"}]}},
                           "$ref": "#/$defs/n"}),
        },
        FormatSpec::JsonSchema {
            schema: json!({"type": "object", "properties": {"v": {"enum": wide_enum}}}),
        },
        // A string pattern whose complement-style intersection is costly.
        FormatSpec::JsonSchema {
            schema: json!({"type": "string", "pattern": "^(.*a.*){30}$", "maxLength": 4000}),
        },
    ];
    let mut refused = 0;
    for spec in hostile {
        let name = format!("{spec:?}").chars().take(80).collect::<String>();
        match compiler().compile(&spec) {
            Err(e) => {
                assert!(!e.to_string().is_empty());
                refused += 1;
            }
            Ok(g) => {
                let mut c = g.constraint();
                for _ in 0..16 {
                    match c.first_allowed() {
                        Ok(Some(t)) => {
                            if model().tokenizer().is_eog(t) || c.commit(t).is_err() {
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            assert!(matches!(e, FormatError::Runtime(_)), "{name}: {e}");
                            break;
                        }
                    }
                }
            }
        }
    }
    assert!(
        refused >= 2,
        "the deep regex and schema are refused by our limits"
    );
}

/// `Constraint::first_allowed` is the lowest token id the mask allows (found here by testing each
/// id's bit), and committing it step by step spells the regex's only match.
#[test]
fn first_allowed_is_the_lowest_token_of_the_mask() {
    let grammar = compiler()
        .compile(&FormatSpec::Regex {
            pattern: "kitchen light".to_owned(),
        })
        .unwrap();
    let mut c = grammar.constraint();
    let mut text = String::new();
    for _ in 0..16 {
        let mask = c.mask().unwrap().to_vec();
        let lowest =
            (0..mask.len() as u32 * 32).find(|&i| mask[i as usize / 32] >> (i % 32) & 1 == 1);
        let t = c.first_allowed().unwrap();
        assert_eq!(t, lowest, "after {text:?}");
        let t = t.expect("the match is incomplete, so some token is allowed");
        if model().tokenizer().is_eog(t) {
            break;
        }
        text.push_str(&model().tokenizer().decode(&[t]));
        c.commit(t).unwrap();
        if c.is_stopped() {
            break;
        }
    }
    assert_eq!(text, "kitchen light");
}

/// Continuous batching with per-sequence matchers: constrained and unconstrained jobs running
/// together (`parallel = 4`) give exactly what each gives alone (`parallel = 1`). The tiny model
/// keeps this token-exact (batched and single decodes agree bit for bit on it, see
/// tests/batching.rs); its byte tokens make any regex reachable.
#[test]
fn constrained_and_unconstrained_jobs_batch_as_they_run_alone() {
    let dir = TempDir::new();
    let path = dir.join("tiny.gguf");
    write_tiny_model(&TinySpec::new(Type::Q8_0), &path);
    let config = |parallel: usize| EngineConfig {
        n_ctx: 256,
        parallel,
        n_threads: 2,
        queue_capacity: 16,
        max_tokens_cap: 48,
        default_max_tokens: 40,
        max_prompt_tokens: 128,
        default_sampling: SamplingParams::greedy(),
        ..EngineConfig::new("tiny", &path)
    };
    let jobs: Vec<(&str, Option<FormatSpec>)> = vec![
        ("hello world", None),
        (
            "the tiny llama",
            Some(FormatSpec::Regex {
                pattern: "[a-z ]{3,20}!".into(),
            }),
        ),
        ("a test of many words", None),
        (
            "numbers please",
            Some(FormatSpec::JsonSchema {
                schema: json!({"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 999}},
                               "required": ["n"], "additionalProperties": false}),
            }),
        ),
    ];
    let run = |parallel: usize, together: bool| -> Vec<JobOutcome> {
        let engine = start(config(parallel));
        let compiler = engine.format_compiler().unwrap();
        let submit = |(prompt, spec): &(&str, Option<FormatSpec>)| {
            let (s, rx) = sink();
            let mut job = engine.job(engine.next_id(), PromptInput::Raw(prompt.to_string()), s);
            job.max_tokens = Some(40);
            job.format = spec.as_ref().map(|f| compiler.compile(f).unwrap());
            engine.submit(job).unwrap();
            rx
        };
        if together {
            let rxs: Vec<_> = jobs.iter().map(submit).collect();
            rxs.iter().map(done).collect()
        } else {
            jobs.iter().map(|j| done(&submit(j))).collect()
        }
    };
    let alone = run(1, false);
    let batched = run(4, true);
    for ((a, b), (prompt, spec)) in alone.iter().zip(&batched).zip(&jobs) {
        assert_eq!(a.tokens, b.tokens, "{prompt}");
        assert_eq!(a.text, b.text, "{prompt}");
        assert_eq!(a.format.is_some(), spec.is_some());
        if let (Some(fa), Some(fb)) = (&a.format, &b.format) {
            assert_eq!((fa.complete, &fa.json), (fb.complete, &fb.json), "{prompt}");
        }
    }
    // The constrained ones really were constrained.
    let re = jsonschema::validator_for(&json!({"pattern": "^[a-z ]{3,20}!$"})).unwrap();
    // Both formats are bounded well inside 40 tokens, so they complete.
    let f = batched[1].format.as_ref().unwrap();
    assert!(f.complete, "{:?}", batched[1].text);
    assert!(
        re.is_valid(&Value::String(batched[1].text.clone())),
        "{:?}",
        batched[1].text
    );
    let f = batched[3].format.as_ref().unwrap();
    assert!(f.complete, "{:?}", batched[3].text);
    assert!(
        f.json.as_ref().unwrap()["n"].is_u64(),
        "{:?}",
        batched[3].text
    );
}

/// `llamabus complete --format @file` takes the same path: the output validates; a bad format
/// fails with its reason and a non-zero exit.
#[test]
fn complete_cli_takes_a_format_file() {
    let dir = TempDir::new();
    let schema = json!({"type": "object", "properties": {"action": {"enum": ["on", "off"]}},
                        "required": ["action"], "additionalProperties": false});
    let file = dir.join("light.json");
    std::fs::write(&file, schema.to_string()).unwrap();
    let model = models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let run = |format: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_llamabus"))
            .args(["complete", "--model"])
            .arg(require(&model))
            .args([
                "--chat",
                "--temperature",
                "0",
                "--threads",
                "2",
                "--max-tokens",
                "32",
            ])
            .args(["--format", format, "Turn the light off."])
            .output()
            .unwrap()
    };
    let out = run(&format!("@{}", file.display()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let v: Value = serde_json::from_str(text.trim()).expect("stdout is the JSON answer");
    assert!(
        jsonschema::validator_for(&schema).unwrap().is_valid(&v),
        "{text}"
    );

    std::fs::write(&file, r#"{"type": "regex", "pattern": "(unclosed"}"#).unwrap();
    let out = run(&format!("@{}", file.display()));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not compile"), "{err}");
}
