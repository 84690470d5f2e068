//! Sampler behaviour: greedy rules, seeding, each filter of the chain, penalties, validation,
//! and streaming stop strings.

use llamabus::sampler::{
    argmax, top2_logprob_margin, FinishReason, Sampler, SamplerError, SamplingParams, StopMatcher,
    StopPush,
};

/// Pure sampling from the softmax: every filter off, temperature 1.
fn plain(seed: u64) -> SamplingParams {
    SamplingParams {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        seed,
        ..SamplingParams::default()
    }
}

/// Deterministic pseudo-random logits in [-5, 5) (test data only).
fn random_logits(n: usize, mut state: u64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 10.0 - 5.0
        })
        .collect()
}

fn draw(params: SamplingParams, logits: &[f32], history: &[u32], n: usize) -> Vec<u32> {
    let mut s = Sampler::new(params, logits.len()).unwrap();
    (0..n).map(|_| s.sample(logits, history)).collect()
}

fn frequencies(tokens: &[u32], n_vocab: usize) -> Vec<f64> {
    let mut f = vec![0.0; n_vocab];
    for &t in tokens {
        f[t as usize] += 1.0 / tokens.len() as f64;
    }
    f
}

fn ln(x: f32) -> f32 {
    x.ln()
}

// ---- greedy ----

#[test]
fn argmax_ties_resolve_to_lowest_id() {
    assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
    assert_eq!(argmax(&[5.0]), 0);
    assert_eq!(argmax(&[f32::NAN, 1.0, 0.5]), 1);
    assert_eq!(argmax(&[-0.0, 0.0]), 0);
    assert_eq!(argmax(&[f32::NEG_INFINITY, f32::NEG_INFINITY]), 0);
}

#[test]
fn greedy_sampler_equals_argmax() {
    let logits = [0.5, 2.0, -1.0, 2.0, 1.9];
    for seed in 0..20 {
        let p = SamplingParams {
            seed,
            ..SamplingParams::greedy()
        };
        assert_eq!(draw(p, &logits, &[], 5), vec![1; 5]);
    }
    let random = random_logits(49_152, 99);
    assert_eq!(
        draw(SamplingParams::greedy(), &random, &[], 1)[0],
        argmax(&random)
    );
}

#[test]
fn top2_margin_is_logit_gap() {
    assert_eq!(top2_logprob_margin(&[1.0, 3.0, 2.5]), 0.5);
    assert_eq!(top2_logprob_margin(&[3.0, 1.0, 3.0]), 0.0);
    assert_eq!(top2_logprob_margin(&[3.0]), f32::INFINITY);
    assert_eq!(top2_logprob_margin(&[2.0, f32::NAN, 1.0]), 1.0);
}

// ---- seeding ----

#[test]
fn same_seed_same_sequence_different_seed_different() {
    let logits = random_logits(1000, 1);
    let a = draw(plain(7), &logits, &[], 500);
    let b = draw(plain(7), &logits, &[], 500);
    let c = draw(plain(8), &logits, &[], 500);
    assert_eq!(a, b);
    assert_ne!(a, c);
    // Not degenerate: a wide distribution gives many distinct tokens.
    let mut distinct = a.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert!(
        distinct.len() > 100,
        "only {} distinct tokens",
        distinct.len()
    );
}

/// Pins the exact stream for one seed: the same tokens must come out on every platform
/// (x86_64, aarch64, armv7). A change here means cross-platform determinism broke.
#[test]
fn seeded_stream_is_pinned() {
    let logits = random_logits(49_152, 3);
    let params = SamplingParams {
        temperature: 0.9,
        seed: 1234,
        ..SamplingParams::default()
    };
    let got = draw(params, &logits, &[], 12);
    assert_eq!(got, PINNED);
}
const PINNED: [u32; 12] = [
    46246, 11053, 5828, 29485, 1563, 29485, 31331, 43707, 44163, 22015, 34616, 31212,
];

#[test]
fn default_chain_is_deterministic_with_history() {
    let logits = random_logits(49_152, 11);
    let params = SamplingParams {
        repeat_penalty: 1.3,
        frequency_penalty: 0.1,
        presence_penalty: 0.1,
        ..SamplingParams::default()
    };
    let run = || {
        let mut s = Sampler::new(params.clone(), logits.len()).unwrap();
        let mut history = vec![5u32, 6, 7];
        for _ in 0..64 {
            let t = s.sample(&logits, &history);
            history.push(t);
        }
        history
    };
    assert_eq!(run(), run());
}

// ---- filters ----

#[test]
fn top_k_one_is_argmax() {
    let logits = random_logits(5000, 5);
    let best = argmax(&logits);
    for seed in 0..10 {
        let p = SamplingParams {
            temperature: 1.5,
            top_k: 1,
            top_p: 1.0,
            min_p: 0.0,
            seed,
            ..SamplingParams::default()
        };
        assert!(draw(p, &logits, &[], 20).iter().all(|&t| t == best));
    }
}

#[test]
fn top_k_keeps_only_k_best() {
    let logits = [0.0, 1.0, 2.0, 3.0, 2.5, 0.5];
    let p = SamplingParams {
        top_k: 3,
        ..plain(1)
    };
    let toks = draw(p, &logits, &[], 3000);
    let f = frequencies(&toks, logits.len());
    for t in [0, 1, 5] {
        assert_eq!(f[t], 0.0, "token {t} is outside the top 3");
    }
    for t in [2, 3, 4] {
        assert!(f[t] > 0.05, "token {t} is in the top 3");
    }
}

#[test]
fn tiny_top_p_is_argmax() {
    let logits = random_logits(49_152, 9);
    let best = argmax(&logits);
    let p = SamplingParams {
        top_p: 1e-6,
        ..plain(3)
    };
    assert!(draw(p, &logits, &[], 50).iter().all(|&t| t == best));
}

/// `n` draws over 4 tokens never pick tokens 2 or 3, and pick token 0 at about `share`.
fn keeps_the_first_two(p: SamplingParams, logits: &[f32], n: usize, share: f64) {
    let f = frequencies(&draw(p, logits, &[], n), 4);
    assert_eq!(f[2] + f[3], 0.0, "{f:?}");
    assert!((f[0] - share).abs() < 0.03, "{f:?}");
}

#[test]
fn top_p_keeps_the_nucleus() {
    // p = 0.5, 0.3, 0.15, 0.05: top_p 0.75 keeps the first two (0.5 < 0.75 <= 0.8).
    let logits = [ln(0.5), ln(0.3), ln(0.15), ln(0.05)];
    let p = SamplingParams {
        top_p: 0.75,
        ..plain(4)
    };
    keeps_the_first_two(p, &logits, 4000, 0.625);
    // Unsorted path with a large vocabulary (more than the first sorting pass).
    let mut big = vec![-20.0f32; 5000];
    big[4000] = 3.0;
    big[10] = 3.0;
    big[300] = 2.0;
    let p = SamplingParams {
        top_p: 0.8,
        ..plain(5)
    };
    let toks = draw(p, &big, &[], 2000);
    assert!(
        toks.iter().all(|&t| t == 10 || t == 4000),
        "only the two best fit in 0.8"
    );
    assert!(toks.contains(&10) && toks.contains(&4000));
}

#[test]
fn min_p_excludes_unlikely_tokens() {
    // p proportional to 10, 5, 1, 1: min_p 0.2 keeps p >= 2 (tokens 0 and 1).
    let logits = [ln(10.0), ln(5.0), ln(1.0), ln(1.0)];
    let filtered = SamplingParams {
        min_p: 0.2,
        ..plain(11)
    };
    keeps_the_first_two(filtered, &logits, 5000, 2.0 / 3.0);
    // Without the filter the same seed does draw them.
    let f = frequencies(&draw(plain(11), &logits, &[], 5000), 4);
    assert!(f[2] > 0.03 && f[3] > 0.03, "{f:?}");
    // Unsorted path (no top-k/top-p before it).
    let mut big = random_logits(10_000, 17);
    big[42] = 10.0;
    let threshold = 10.0 + 0.5f32.ln();
    let p = SamplingParams {
        min_p: 0.5,
        ..plain(2)
    };
    assert!(draw(p, &big, &[], 500)
        .iter()
        .all(|&t| big[t as usize] >= threshold));
}

#[test]
fn softmax_frequencies_match_probabilities() {
    let logits = [ln(0.1), ln(0.2), ln(0.3), ln(0.4)];
    let f = frequencies(&draw(plain(21), &logits, &[], 20_000), 4);
    for (i, want) in [0.1, 0.2, 0.3, 0.4].iter().enumerate() {
        assert!((f[i] - want).abs() < 0.015, "token {i}: {} vs {want}", f[i]);
    }
}

#[test]
fn temperature_sharpens_and_flattens() {
    // At T=1 p(1) = 2/3; T=0.5 squares the odds (4:1 -> 0.8); T=2 takes their root (0.586).
    let logits = [0.0, ln(2.0)];
    for (t, want) in [
        (1.0, 2.0 / 3.0),
        (0.5, 0.8),
        (2.0, 2f64.sqrt() / (1.0 + 2f64.sqrt())),
    ] {
        let p = SamplingParams {
            temperature: t,
            ..plain(31)
        };
        let f = frequencies(&draw(p, &logits, &[], 20_000), 2);
        assert!((f[1] - want).abs() < 0.015, "T={t}: {} vs {want}", f[1]);
    }
}

// ---- penalties ----

fn greedy_with(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
    let mut p = SamplingParams::greedy();
    f(&mut p);
    p
}

#[test]
fn repeat_penalty_divides_positive_and_multiplies_negative() {
    let rp2 = greedy_with(|p| p.repeat_penalty = 2.0);
    // 3.0 / 2 = 1.5: just below 1.51, just above 1.49.
    assert_eq!(draw(rp2.clone(), &[3.0, 1.49, 1.51], &[0], 1), [2]);
    assert_eq!(draw(rp2.clone(), &[3.0, 1.51, 1.49], &[0], 1), [1]);
    assert_eq!(draw(rp2.clone(), &[3.0, 1.49], &[0], 1), [0]);
    // Negative logits are multiplied (-1 * 2 = -2), so the penalty still lowers them.
    assert_eq!(draw(rp2.clone(), &[-1.0, -1.9], &[0], 1), [1]);
    assert_eq!(draw(rp2.clone(), &[-1.0, -2.1], &[0], 1), [0]);
    // Applied once per distinct token, however often it repeats.
    assert_eq!(draw(rp2.clone(), &[3.0, 1.49], &[0, 0, 0, 0], 1), [0]);
    // No history, no penalty; out-of-vocabulary history ids are ignored.
    assert_eq!(draw(rp2.clone(), &[3.0, 1.51], &[], 1), [0]);
    assert_eq!(draw(rp2, &[3.0, 1.51], &[7, u32::MAX], 1), [0]);
}

#[test]
fn penalties_only_look_at_the_last_n_tokens() {
    let p = greedy_with(|p| {
        p.repeat_penalty = 2.0;
        p.repeat_last_n = 2;
    });
    assert_eq!(draw(p.clone(), &[3.0, 1.51, 0.0], &[0, 2, 2], 1), [0]);
    assert_eq!(draw(p, &[3.0, 1.51, 0.0], &[2, 0, 2], 1), [1]);
    let off = greedy_with(|p| {
        p.repeat_penalty = 2.0;
        p.repeat_last_n = 0;
    });
    assert_eq!(draw(off, &[3.0, 1.51], &[0], 1), [0]);
}

#[test]
fn frequency_penalty_scales_with_count() {
    // 2.0 - 3 * f against 1.0.
    let f = |v| greedy_with(|p| p.frequency_penalty = v);
    assert_eq!(draw(f(0.4), &[2.0, 1.0], &[0, 0, 0], 1), [1]);
    assert_eq!(draw(f(0.3), &[2.0, 1.0], &[0, 0, 0], 1), [0]);
    assert_eq!(draw(f(0.4), &[2.0, 1.0], &[0], 1), [0]);
}

#[test]
fn presence_penalty_applies_once() {
    let p = |v| greedy_with(|p| p.presence_penalty = v);
    assert_eq!(draw(p(1.1), &[2.0, 1.0], &[0], 1), [1]);
    // Once, not per occurrence: 2.0 - 0.9 = 1.1 > 1.0 even after three repeats.
    assert_eq!(draw(p(0.9), &[2.0, 1.0], &[0, 0, 0], 1), [0]);
    // Negative values (encouraging repeats) are allowed, as in the OpenAI API.
    assert_eq!(draw(p(-1.5), &[2.0, 1.0], &[1], 1), [1]);
}

#[test]
fn penalties_apply_before_stochastic_sampling() {
    let p = SamplingParams {
        frequency_penalty: 50.0,
        ..plain(1)
    };
    assert!(draw(p, &[5.0, 0.0, -1.0], &[0], 200)
        .iter()
        .all(|&t| t != 0));
    // And the sampler keeps working across many calls (scratch counts reset between calls).
    let mut s = Sampler::new(greedy_with(|p| p.frequency_penalty = 0.6), 2).unwrap();
    assert_eq!(s.sample(&[2.0, 1.0], &[0, 0]), 1);
    assert_eq!(s.sample(&[2.0, 1.0], &[0]), 0);
    assert_eq!(s.sample(&[2.0, 1.0], &[0, 0]), 1);
}

// ---- validation ----

fn field_of(p: SamplingParams) -> &'static str {
    match p.validate() {
        Err(SamplerError::InvalidParam { field, .. }) => field,
        other => panic!("expected a field error, got {other:?}"),
    }
}

#[test]
fn validate_rejects_bad_values_naming_the_field() {
    let d = SamplingParams::default;
    assert!(d().validate().is_ok());
    assert!(SamplingParams::greedy().validate().is_ok());
    let cases: Vec<(SamplingParams, &str)> = vec![
        (
            SamplingParams {
                temperature: f32::NAN,
                ..d()
            },
            "temperature",
        ),
        (
            SamplingParams {
                temperature: -0.1,
                ..d()
            },
            "temperature",
        ),
        (
            SamplingParams {
                temperature: f32::INFINITY,
                ..d()
            },
            "temperature",
        ),
        (SamplingParams { top_p: 1.01, ..d() }, "top_p"),
        (
            SamplingParams {
                top_p: f32::NAN,
                ..d()
            },
            "top_p",
        ),
        (SamplingParams { top_p: -0.5, ..d() }, "top_p"),
        (
            SamplingParams {
                min_p: -0.01,
                ..d()
            },
            "min_p",
        ),
        (SamplingParams { min_p: 2.0, ..d() }, "min_p"),
        (
            SamplingParams {
                repeat_penalty: 0.0,
                ..d()
            },
            "repeat_penalty",
        ),
        (
            SamplingParams {
                repeat_penalty: f32::NAN,
                ..d()
            },
            "repeat_penalty",
        ),
        (
            SamplingParams {
                presence_penalty: f32::NEG_INFINITY,
                ..d()
            },
            "presence_penalty",
        ),
        (
            SamplingParams {
                frequency_penalty: f32::NAN,
                ..d()
            },
            "frequency_penalty",
        ),
    ];
    for (p, want) in cases {
        let err = p.validate().unwrap_err();
        assert!(err.to_string().contains(want), "{err}");
        assert_eq!(field_of(p), want);
    }
}

#[test]
fn new_validates_and_rejects_empty_vocab() {
    let bad = SamplingParams {
        top_p: 7.0,
        ..SamplingParams::default()
    };
    assert!(matches!(
        Sampler::new(bad, 10),
        Err(SamplerError::InvalidParam { field: "top_p", .. })
    ));
    assert!(matches!(
        Sampler::new(SamplingParams::default(), 0),
        Err(SamplerError::InvalidVocab(0))
    ));
}

#[test]
fn json_params_default_missing_fields_and_validate_overflow() {
    let p: SamplingParams = serde_json::from_str(r#"{"temperature": 0.2, "seed": 9}"#).unwrap();
    assert_eq!(
        p,
        SamplingParams {
            temperature: 0.2,
            seed: 9,
            ..SamplingParams::default()
        }
    );
    // 1e50 does not fit f32: it must not slip through as infinity.
    if let Ok(p) = serde_json::from_str::<SamplingParams>(r#"{"temperature": 1e50}"#) {
        assert_eq!(field_of(p), "temperature");
    }
}

#[test]
fn finish_reason_wire_names() {
    let names: Vec<String> = [
        FinishReason::Stop,
        FinishReason::Length,
        FinishReason::Cancelled,
    ]
    .iter()
    .map(|r| serde_json::to_string(r).unwrap())
    .collect();
    assert_eq!(names, [r#""stop""#, r#""length""#, r#""cancelled""#]);
}

// ---- stop strings ----

fn run_stops(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool, String) {
    let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
    let mut emitted = Vec::new();
    let mut stopped = false;
    for p in pieces {
        let StopPush { emit, stopped: s } = m.push(p);
        emitted.push(emit);
        stopped |= s;
    }
    (emitted, stopped, m.finish())
}

#[test]
fn stop_string_split_across_pieces() {
    let (emitted, stopped, rest) = run_stops(
        &["</answer>"],
        &["The answer is 4", "</", "ans", "wer>", " junk"],
    );
    assert_eq!(emitted, ["The answer is 4", "", "", "", ""]);
    assert!(stopped);
    assert_eq!(rest, "");
}

#[test]
fn stop_string_inside_one_piece_cuts_the_rest() {
    let (emitted, stopped, _) = run_stops(&["\nUser:"], &["Hi there.\nUser: more"]);
    assert_eq!(emitted, ["Hi there."]);
    assert!(stopped);
}

#[test]
fn partial_match_that_fails_is_released() {
    let (emitted, stopped, rest) = run_stops(&["STOP"], &["ab S", "T", "x", "yz ST"]);
    assert_eq!(emitted, ["ab ", "", "STx", "yz "]);
    assert!(!stopped);
    assert_eq!(rest, "ST", "finish flushes the held-back prefix");
}

#[test]
fn no_false_holdback() {
    // Nothing that could start a stop string: everything goes out at once.
    let (emitted, stopped, rest) = run_stops(&["###", "<|im_end|>"], &["hello ", "world.", " #x"]);
    assert_eq!(emitted, ["hello ", "world.", " #x"]);
    assert!(!stopped);
    assert_eq!(rest, "");
    // No stop strings at all (and empty ones are ignored).
    let (emitted, _, rest) = run_stops(&[""], &["a", "b"]);
    assert_eq!(emitted, ["a", "b"]);
    assert_eq!(rest, "");
}

#[test]
fn earliest_of_several_stops_wins() {
    let (emitted, stopped, _) = run_stops(&["world", "lo w"], &["hello world"]);
    assert_eq!(emitted, ["hel"]);
    assert!(stopped);
    let (emitted, _, _) = run_stops(&["abcd", "bc"], &["a", "bc"]);
    assert_eq!(emitted, ["", "a"]);
}

#[test]
fn multibyte_stop_strings_and_text() {
    // "é" is two bytes, "日本" six: held back whole, never split.
    let (emitted, stopped, _) = run_stops(&["é!"], &["caf", "é", "!"]);
    assert_eq!(emitted, ["caf", "", ""]);
    assert!(stopped);
    let (emitted, stopped, rest) = run_stops(&["日本語"], &["私は日", "本人です"]);
    assert_eq!(emitted, ["私は", "日本人です"]);
    assert!(!stopped);
    assert_eq!(rest, "");
    // "è" shares its first byte with "é": not a prefix, so not held.
    let (emitted, _, _) = run_stops(&["éa"], &["cafè"]);
    assert_eq!(emitted, ["cafè"]);
    let (emitted, stopped, _) = run_stops(&["🦀🦀"], &["a🦀", "🦀b"]);
    assert_eq!(emitted, ["a", ""]);
    assert!(stopped);
}

#[test]
fn pushes_after_stop_emit_nothing() {
    let mut m = StopMatcher::new(vec!["x".into()]);
    assert!(m.push("ax").stopped);
    assert!(m.is_stopped());
    assert_eq!(
        m.push("more"),
        StopPush {
            emit: String::new(),
            stopped: true
        }
    );
    assert_eq!(m.finish(), "");
}

#[test]
fn tiny_temperature_is_greedy_not_uniform() {
    // All logits negative: dividing by 1e-30 without care sends every one to -inf.
    let logits = [-3.0, -1.0, -2.0, -1.5];
    let p = SamplingParams {
        temperature: 1e-30,
        ..plain(8)
    };
    assert!(draw(p, &logits, &[], 100).iter().all(|&t| t == 1));
}
