//! `llamabus bench` and the decode paths it measures, on generated tiny models: the JSON carries
//! llama-bench's field names with consistent figures, and the per-step graph arena and scratch
//! buffers that a session reuses across tokens leave the logits bit-identical to a fresh
//! session's. No timing assertions: speed is reported by the bench, never asserted.

mod common;

use std::process::Command;

use common::tempdir::TempDir;
use common::tiny::{write_tiny_model, TinySpec};
use llamabus::bench::{self, BenchOptions, Test};
use llamabus::ggml::Type;
use llamabus::model::{LoadOptions, Model, Session};
use llamabus::sampler::argmax;

fn tiny_model(dir: &TempDir, ty: Type) -> std::path::PathBuf {
    let path = dir.join("tiny.gguf");
    write_tiny_model(&TinySpec::new(ty), &path);
    path
}

#[test]
fn bench_results_carry_llama_bench_fields() {
    let dir = TempDir::new();
    let opts = BenchOptions {
        model: tiny_model(&dir, Type::F32),
        tests: vec![
            Test {
                n_prompt: 16,
                n_gen: 0,
            },
            Test {
                n_prompt: 0,
                n_gen: 8,
            },
            Test {
                n_prompt: 8,
                n_gen: 4,
            },
        ],
        threads: vec![1, 2],
        repetitions: 3,
        load: LoadOptions::REPACK,
        seed: 7,
    };
    let mut seen = 0;
    let results = bench::run(&opts, |_| seen += 1).expect("bench runs");
    assert_eq!(seen, 6, "one callback per (test, threads)");
    assert_eq!(results.len(), 6);

    let json = serde_json::to_value(&results).expect("serialises");
    let rows = json.as_array().expect("a JSON array");
    let expect = [
        (16, 0, 1, "pp16"),
        (0, 8, 1, "tg8"),
        (8, 4, 1, "pp8+tg4"),
        (16, 0, 2, "pp16"),
        (0, 8, 2, "tg8"),
        (8, 4, 2, "pp8+tg4"),
    ];
    for (row, (p, g, t, label)) in rows.iter().zip(expect) {
        let o = row.as_object().expect("an object per test");
        for key in [
            "model_filename",
            "model_type",
            "model_size",
            "model_n_params",
            "n_batch",
            "n_ubatch",
            "n_threads",
            "type_k",
            "type_v",
            "flash_attn",
            "use_mmap",
            "repack",
            "n_prompt",
            "n_gen",
            "n_depth",
            "test_time",
            "avg_ns",
            "stddev_ns",
            "avg_ts",
            "stddev_ts",
            "samples_ns",
            "samples_ts",
            "load_ms",
            "repacked_bytes",
            "ttft_ms",
            "sample_us",
            "rss_after_load",
            "peak_rss",
            "simd",
        ] {
            assert!(o.contains_key(key), "missing {key} in {row}");
        }
        assert_eq!(o["n_prompt"], p);
        assert_eq!(o["n_gen"], g);
        assert_eq!(o["n_threads"], t);
        assert_eq!(o["test"], label);
        assert!(!o.contains_key("mem_bw"), "bandwidth only when asked");
        // F32 weights have no repacked layout in ggml.
        assert_eq!(o["repack"], true);
        assert_eq!(o["repacked_bytes"], 0);

        let ts: Vec<f64> = o["samples_ts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let ns: Vec<f64> = o["samples_ns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(ts.len(), 3, "one sample per repetition");
        assert_eq!(ns.len(), 3);
        // Each sample's rate is its tokens over its time; the average is their mean.
        for (r, n) in ts.iter().zip(&ns) {
            let want = (p + g) as f64 * 1e9 / n;
            assert!((r - want).abs() <= 1e-6 * want, "{r} vs {want}");
        }
        let mean = ts.iter().sum::<f64>() / 3.0;
        let avg = o["avg_ts"].as_f64().unwrap();
        assert!((avg - mean).abs() <= 1e-9 * mean, "{avg} vs {mean}");
        assert!(o["stddev_ts"].as_f64().unwrap() >= 0.0);
        assert!(o["ttft_ms"].as_f64().unwrap() > 0.0);
        assert!(o["peak_rss"].as_u64().unwrap() >= o["rss_after_load"].as_u64().unwrap());
        assert!(o["model_size"].as_u64().unwrap() > 0);
    }
}

#[test]
fn bench_cli_prints_a_json_array() {
    let dir = TempDir::new();
    let model = tiny_model(&dir, Type::Q8_0);
    let out = Command::new(env!("CARGO_BIN_EXE_llamabus"))
        .args(["bench", "--model"])
        .arg(&model)
        .args(["-p", "8", "-n", "4", "--n-pg", "4,2", "-t", "1", "-r", "2"])
        .args(["--json", "--bandwidth"])
        .output()
        .expect("runs llamabus bench");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    let rows = v.as_array().expect("array");
    let tests: Vec<(u64, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["n_prompt"].as_u64().unwrap(),
                r["n_gen"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(tests, [(8, 0), (0, 4), (4, 2)]);
    // With --bandwidth every row has the bandwidth; generation rows also the fraction.
    for r in rows {
        assert!(r["mem_bw"].as_f64().unwrap() > 0.0);
        let is_tg = r["n_prompt"] == 0;
        assert_eq!(r.get("bw_fraction").is_some(), is_tg, "{r}");
    }
}

#[test]
fn bench_rejects_empty_runs() {
    let dir = TempDir::new();
    let opts = BenchOptions {
        model: tiny_model(&dir, Type::F32),
        tests: vec![],
        threads: vec![1],
        repetitions: 1,
        load: LoadOptions::REPACK,
        seed: 1,
    };
    assert!(bench::run(&opts, |_| {}).is_err());
    let opts = BenchOptions {
        tests: vec![Test {
            n_prompt: 4,
            n_gen: 0,
        }],
        threads: vec![0],
        ..opts
    };
    assert!(bench::run(&opts, |_| {}).is_err());
}

/// Greedy generation of `n` tokens after `prompt`, returning every step's logits.
fn greedy_logits(s: &mut Session<'_>, prompt: &[u32], n: usize) -> Vec<Vec<f32>> {
    let mut out = vec![s.eval(prompt).expect("prompt").to_vec()];
    for _ in 0..n {
        let t = argmax(out.last().unwrap());
        out.push(s.eval(&[t]).expect("step").to_vec());
    }
    out
}

#[test]
fn reused_session_gives_identical_logits_to_a_fresh_one() {
    // The session resets one graph arena and refills scratch buffers every step; a second run
    // after clear() (and after unrelated batches of other shapes) must match a fresh session
    // bit for bit, across the 32-cell steps where the attended range grows.
    let dir = TempDir::new();
    let model = Model::load(&tiny_model(&dir, Type::Q8_0)).expect("load");
    let prompt: Vec<u32> = (0..9).map(|i| 260 + i * 7).collect();
    let mut fresh = Session::new(&model, 128, 2).expect("session");
    let want = greedy_logits(&mut fresh, &prompt, 70);

    let mut reused = Session::new(&model, 128, 2).expect("session");
    reused
        .eval(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])
        .expect("other");
    reused.eval_all(&[300, 301]).expect("other");
    reused.clear();
    let got = greedy_logits(&mut reused, &prompt, 70);
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            g.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits()),
            "step {i} differs"
        );
    }
}
