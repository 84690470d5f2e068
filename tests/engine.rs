//! The inference worker ([`llamabus::engine::Engine`]) on the real SmolLM2-135M-Instruct Q4_1
//! model: results equal to `generate()` and `llamabus complete`, streaming, the bounded FIFO
//! queue (busy, order), cancellation, expiry, limits, heartbeat, panics and shutdown.
//!
//! Jobs that must hold the worker use a *gate*: an event sink that blocks on `Started` until
//! the test opens it, so "a long job" is deterministic rather than a matter of timing.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::jobs::{
    done, events_until_final, failed, hold_worker, order_sink, sink, start, PATIENCE,
};
use common::tiny::{models_dir, require};
use llamabus::engine::{generate, GenerateRequest};
use llamabus::engine::{
    Engine, EngineConfig, ErrorKind, EventSink, Job, JobEvent, PromptInput, PromptMode, StartError,
};
use llamabus::model::{Model, Session};
use llamabus::sampler::{FinishReason, SamplingParams};
use llamabus::tokenizer::chat::ChatMessage;

const THREADS: usize = 2;
const N_CTX: usize = 256;

fn model_path() -> PathBuf {
    require(&models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf")).to_path_buf()
}

fn config() -> EngineConfig {
    EngineConfig {
        n_ctx: N_CTX,
        n_threads: THREADS,
        queue_capacity: 4,
        max_tokens_cap: 64,
        default_max_tokens: 8,
        max_prompt_tokens: 128,
        default_sampling: SamplingParams::greedy(),
        ..EngineConfig::new("smollm2", model_path())
    }
}

fn raw_job(engine: &Engine, prompt: &str, max_tokens: u32) -> (Job, Receiver<JobEvent>) {
    let (s, rx) = sink();
    let mut job = engine.job(engine.next_id(), PromptInput::Raw(prompt.into()), s);
    job.max_tokens = Some(max_tokens);
    (job, rx)
}

/// `generate()` run directly, as `llamabus complete` does.
fn direct(prompt: Vec<u32>, max_tokens: usize) -> (String, usize, FinishReason) {
    let model = Model::load(&model_path()).unwrap();
    let mut session = Session::new(&model, N_CTX, THREADS).unwrap();
    let req = GenerateRequest {
        prompt,
        max_tokens,
        sampling: SamplingParams::greedy(),
        stop: Vec::new(),
        format: None,
    };
    let g = generate(&mut session, 0, &req, |_| {}, || false).unwrap();
    (g.text, g.tokens.len(), g.finish_reason)
}

// ---------------------------------------------------------------------------------------------
// Results

#[test]
fn raw_greedy_equals_generate_and_complete_cli() {
    let engine = start(config());
    let prompt = "The capital of France is";
    let (job, rx) = raw_job(&engine, prompt, 12);
    engine.submit(job).unwrap();
    let out = done(&rx);

    // SmolLM2 does not add BOS: the raw prompt's tokens are the text's tokens.
    let model = Model::load(&model_path()).unwrap();
    let tokens = model.tokenizer().encode(prompt, false);
    assert!(!model.tokenizer().add_bos());
    let (text, n, reason) = direct(tokens.clone(), 12);
    assert_eq!(out.text, text);
    assert_eq!(out.completion_tokens as usize, n);
    assert_eq!(out.prompt_tokens as usize, tokens.len());
    assert_eq!(out.finish_reason, reason);
    assert_eq!(out.model, "smollm2");
    assert!(out.queue_ms >= 0.0 && out.prompt_ms > 0.0 && out.generate_ms > 0.0);
    assert!(!out.text.is_empty());

    let cli = Command::new(env!("CARGO_BIN_EXE_llamabus"))
        .args(["complete", "--temperature", "0", "--max-tokens", "12"])
        .args([
            "--threads",
            &THREADS.to_string(),
            "--ctx",
            &N_CTX.to_string(),
        ])
        .arg("--model")
        .arg(model_path())
        .arg(prompt)
        .output()
        .unwrap();
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let stdout = String::from_utf8(cli.stdout).unwrap();
    assert_eq!(stdout.strip_suffix('\n'), Some(out.text.as_str()));

    let info = engine.model_info();
    assert_eq!(info.architecture, "llama");
    assert_eq!(info.quantization, "Q4_1");
    assert!(
        (100_000_000..200_000_000).contains(&info.n_params),
        "{}",
        info.n_params
    );
    assert_eq!(info.n_ctx, N_CTX);
    assert!(info.has_chat_template);
    assert_eq!(info.default_mode, PromptMode::Chat);
    let stats = engine.stats();
    assert_eq!((stats.served, stats.failed, stats.rejected), (1, 0, 0));
    assert!(stats.last_tokens_per_s > 0.0);
    engine.shutdown(Duration::from_secs(10));
}

#[test]
fn text_uses_the_chat_template_and_complete_mode_does_not() {
    let question = "What is the capital of France?";
    let model = Model::load(&model_path()).unwrap();
    let rendered = model
        .chat_template()
        .unwrap()
        .render(&[ChatMessage::new("user", question)], true)
        .unwrap();
    let (chat_text, _, _) = direct(model.tokenizer().encode(&rendered, true), 10);
    let (raw_text, _, _) = direct(model.tokenizer().encode(question, false), 10);
    assert_ne!(chat_text, raw_text);

    let engine = start(config());
    for input in [
        PromptInput::Text(question.into()),
        PromptInput::Chat(vec![ChatMessage::new("user", question)]),
    ] {
        let (s, rx) = sink();
        let mut job = engine.job(engine.next_id(), input, s);
        job.max_tokens = Some(10);
        engine.submit(job).unwrap();
        assert_eq!(done(&rx).text, chat_text);
    }
    engine.shutdown(Duration::from_secs(10));

    let engine = start(EngineConfig {
        default_mode: PromptMode::Complete,
        ..config()
    });
    assert_eq!(engine.model_info().default_mode, PromptMode::Complete);
    let (s, rx) = sink();
    let mut job = engine.job(1, PromptInput::Text(question.into()), s);
    job.max_tokens = Some(10);
    engine.submit(job).unwrap();
    assert_eq!(done(&rx).text, raw_text);
    engine.shutdown(Duration::from_secs(10));
}

#[test]
fn stream_deltas_concatenate_to_the_final_text() {
    let engine = start(config());
    for stop in [vec![], vec![".".to_owned()]] {
        let (mut job, rx) = raw_job(&engine, "Once upon a time, there was", 24);
        job.stream = true;
        job.stop = stop.clone();
        engine.submit(job).unwrap();
        let events = events_until_final(&rx);
        assert!(matches!(events[0], JobEvent::Started { .. }), "{events:?}");
        let deltas: Vec<&str> = events
            .iter()
            .filter_map(|e| match e {
                JobEvent::Delta(d) => Some(d.as_str()),
                _ => None,
            })
            .collect();
        let Some(JobEvent::Done(out)) = events.last() else {
            panic!("{events:?}")
        };
        assert!(deltas.len() >= 2, "{events:?}");
        assert!(deltas.iter().all(|d| !d.is_empty()));
        assert_eq!(deltas.concat(), out.text);
        if !stop.is_empty() {
            assert!(!out.text.contains('.'), "{:?}", out.text);
        }
    }

    // Not streamed: no deltas.
    let (job, rx) = raw_job(&engine, "Once upon a time, there was", 8);
    engine.submit(job).unwrap();
    let events = events_until_final(&rx);
    assert!(!events.iter().any(|e| matches!(e, JobEvent::Delta(_))));
    engine.shutdown(Duration::from_secs(10));
}

// ---------------------------------------------------------------------------------------------
// The queue

#[test]
fn full_queue_is_busy_at_once() {
    let engine = start(EngineConfig {
        queue_capacity: 1,
        ..config()
    });
    let (rx_a, gate) = hold_worker(&engine, 1, "Hello", Some(4)); // the worker is now held inside job 1

    let (b, rx_b) = raw_job(&engine, "Hello", 4);
    engine.submit(b).unwrap(); // waits in the queue
    assert_eq!(engine.stats().queue_depth, 1);
    assert_eq!(engine.stats().in_flight, 1);

    let (c, _rx_c) = raw_job(&engine, "Hello", 4);
    let c_id = c.id;
    let t = Instant::now();
    let rejected = engine.submit(c).unwrap_err();
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(rejected.error.kind, ErrorKind::Busy);
    assert_eq!(rejected.job.id, c_id, "the job comes back");
    assert_eq!(engine.stats().rejected, 1);

    gate.send(()).unwrap();
    done(&rx_a);
    done(&rx_b);
    let stats = engine.stats();
    assert_eq!(
        (stats.served, stats.queue_depth, stats.in_flight),
        (2, 0, 0)
    );
    engine.shutdown(Duration::from_secs(10));
}

#[test]
fn jobs_are_served_in_arrival_order() {
    let engine = start(EngineConfig {
        queue_capacity: 6,
        ..config()
    });
    let order = Arc::new(Mutex::new(Vec::new()));
    let (rx_gate, gate) = hold_worker(&engine, 0, "Hi", None);

    let mut finals = Vec::new();
    for id in [11, 3, 7, 5, 2, 9] {
        let (s, rx) = order_sink(id, &order);
        let mut job = engine.job(id, PromptInput::Raw(format!("Number {id} is")), s);
        job.max_tokens = Some(2);
        engine.submit(job).unwrap();
        finals.push(rx);
    }
    assert_eq!(engine.stats().queue_depth, 6);
    gate.send(()).unwrap();
    done(&rx_gate);
    for rx in &finals {
        done(rx);
    }
    assert_eq!(*order.lock().unwrap(), vec![11, 3, 7, 5, 2, 9]);
    engine.shutdown(Duration::from_secs(10));
}

// ---------------------------------------------------------------------------------------------
// Cancel, expiry, limits

#[test]
fn cancel_stops_generation_within_a_token() {
    let engine = start(config());

    // Cancelled by the sink when the first delta arrives: at most one more token.
    let (tx, rx) = mpsc::channel();
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = cancel.clone();
    let s: EventSink = Box::new(move |e| {
        if matches!(e, JobEvent::Delta(_)) {
            flag.store(true, Ordering::Relaxed);
        }
        let _ = tx.send(e);
    });
    let mut job = engine.job(1, PromptInput::Raw("The capital of France is".into()), s);
    job.max_tokens = Some(60);
    job.stream = true;
    job.cancel = cancel;
    engine.submit(job).unwrap();
    let out = done(&rx);
    assert_eq!(out.finish_reason, FinishReason::Cancelled);
    assert!(
        (1..=2).contains(&out.completion_tokens),
        "{}",
        out.completion_tokens
    );

    // Cancelled from another thread while generating.
    let (s, rx) = sink();
    let mut job = engine.job(2, PromptInput::Raw("Once upon a time".into()), s);
    job.max_tokens = Some(60);
    let cancel = job.cancel.clone();
    engine.submit(job).unwrap();
    assert!(matches!(
        rx.recv_timeout(PATIENCE).unwrap(),
        JobEvent::Started { .. }
    ));
    cancel.store(true, Ordering::Relaxed);
    let out = done(&rx);
    assert_eq!(out.finish_reason, FinishReason::Cancelled);
    assert!(out.completion_tokens < 60);

    // Cancelled before it started: no compute.
    let (s, rx) = sink();
    let job = engine.job(3, PromptInput::Raw("Hello".into()), s);
    job.cancel.store(true, Ordering::Relaxed);
    engine.submit(job).unwrap();
    let (kind, _, before) = failed(&rx);
    assert_eq!(kind, ErrorKind::Cancelled);
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(engine.stats().served, 2);
    engine.shutdown(Duration::from_secs(10));
}

#[test]
fn expired_deadline_fails_without_compute() {
    let engine = start(config());
    let (rx_a, gate) = hold_worker(&engine, 1, "Hi", None);

    let (mut job, rx) = raw_job(&engine, "Hello", 4);
    job.deadline = Some(Instant::now() + Duration::from_millis(50));
    engine.submit(job).unwrap();
    thread::sleep(Duration::from_millis(150));
    gate.send(()).unwrap();
    done(&rx_a);
    let (kind, message, before) = failed(&rx);
    assert_eq!(kind, ErrorKind::Expired, "{message}");
    assert!(before.is_empty(), "no Started: {before:?}");

    // A deadline in the future is fine.
    let (mut job, rx) = raw_job(&engine, "Hello", 4);
    job.deadline = Some(Instant::now() + Duration::from_secs(600));
    engine.submit(job).unwrap();
    done(&rx);
    let stats = engine.stats();
    assert_eq!((stats.served, stats.failed), (2, 1));
    engine.shutdown(Duration::from_secs(10));
}

#[test]
fn limits_give_too_long_and_bad_request() {
    let engine = start(EngineConfig {
        n_ctx: 32,
        max_prompt_tokens: 6,
        ..config()
    });
    // "The capital of France is" is 5 tokens, this one 12.
    let long = "The capital of France is Paris and the capital of Italy is";
    let (job, rx) = raw_job(&engine, long, 4);
    engine.submit(job).unwrap();
    let (kind, message, before) = failed(&rx);
    assert_eq!(kind, ErrorKind::TooLong);
    assert!(message.contains("limit is 6"), "{message}");
    assert!(before.is_empty());

    // 5 + 28 > 32.
    let (job, rx) = raw_job(&engine, "The capital of France is", 28);
    engine.submit(job).unwrap();
    let (kind, message, _) = failed(&rx);
    assert_eq!(kind, ErrorKind::TooLong);
    assert!(
        message.contains("5 tokens") && message.contains("28") && message.contains("32"),
        "{message}"
    );
    // 5 + 27 fits.
    let (job, rx) = raw_job(&engine, "The capital of France is", 27);
    engine.submit(job).unwrap();
    done(&rx);

    // Refused by submit, without queueing.
    let rejected = |job: Job| engine.submit(job).unwrap_err().error;
    let (job, _) = raw_job(&engine, "Hi", 65);
    let e = rejected(job);
    assert_eq!(e.kind, ErrorKind::BadRequest);
    assert!(e.message.contains("cap of 64"), "{e}");
    let (job, _) = raw_job(&engine, "Hi", 0);
    assert_eq!(rejected(job).kind, ErrorKind::BadRequest);
    let (mut job, _) = raw_job(&engine, "Hi", 4);
    job.sampling.temperature = f32::NAN;
    let e = rejected(job);
    assert_eq!(e.kind, ErrorKind::BadRequest);
    assert!(e.message.contains("temperature"), "{e}");
    let (mut job, _) = raw_job(&engine, "Hi", 4);
    job.sampling.top_p = -1.0;
    assert!(rejected(job).message.contains("top_p"));
    let (job, _) = raw_job(&engine, "", 4);
    assert_eq!(rejected(job).kind, ErrorKind::BadRequest);
    let (s, _) = sink();
    let e = rejected(engine.job(9, PromptInput::Chat(Vec::new()), s));
    assert_eq!(e.kind, ErrorKind::BadRequest);

    let stats = engine.stats();
    assert_eq!((stats.served, stats.failed, stats.rejected), (1, 2, 6));
    engine.shutdown(Duration::from_secs(10));
}

// ---------------------------------------------------------------------------------------------
// Heartbeat, panics, shutdown, start-up errors

#[test]
fn heartbeat_advances_idle_and_while_generating_and_stops_when_stalled() {
    let engine = start(config());
    // Idle.
    let h0 = engine.last_heartbeat();
    thread::sleep(Duration::from_millis(700));
    let h1 = engine.last_heartbeat();
    assert!(h1 > h0);
    assert!(
        h1.elapsed() < Duration::from_millis(600),
        "{:?}",
        h1.elapsed()
    );

    // Generating: between two deltas the worker has beaten at least once.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let (e2, seen2) = (engine.clone(), seen.clone());
    let s: EventSink = Box::new(move |e| {
        if matches!(e, JobEvent::Delta(_)) {
            seen2
                .lock()
                .unwrap()
                .push((Instant::now(), e2.last_heartbeat()));
        }
        let _ = tx.send(e);
    });
    let mut job = engine.job(1, PromptInput::Raw("Once upon a time".into()), s);
    job.max_tokens = Some(16);
    job.stream = true;
    engine.submit(job).unwrap();
    done(&rx);
    let seen = seen.lock().unwrap();
    assert!(seen.len() >= 4, "{}", seen.len());
    for w in seen.windows(2) {
        assert!(w[1].1 > w[0].0, "no heartbeat between two tokens");
    }

    // Stalled (the watchdog test hook): the heartbeat stops, then resumes.
    engine.stall_for_test(Duration::from_millis(1500));
    thread::sleep(Duration::from_millis(500));
    let frozen = engine.last_heartbeat();
    thread::sleep(Duration::from_millis(600));
    assert_eq!(engine.last_heartbeat(), frozen);
    thread::sleep(Duration::from_millis(1000));
    assert!(engine.last_heartbeat() > frozen);
    engine.shutdown(Duration::from_secs(10));
}

#[test]
fn a_panic_in_a_job_fails_it_and_the_worker_keeps_serving() {
    let engine = start(config());
    let (tx, rx) = mpsc::channel();
    let mut panicked = false;
    let s: EventSink = Box::new(move |e| {
        if matches!(e, JobEvent::Delta(_)) && !panicked {
            panicked = true;
            panic!("sink exploded");
        }
        let _ = tx.send(e);
    });
    let mut job = engine.job(1, PromptInput::Raw("Hello".into()), s);
    job.stream = true;
    engine.submit(job).unwrap();
    let (kind, message, _) = failed(&rx);
    assert_eq!(kind, ErrorKind::Internal);
    assert!(message.contains("sink exploded"), "{message}");

    // The rebuilt session gives the same answer as a fresh one.
    let (job, rx) = raw_job(&engine, "The capital of France is", 8);
    engine.submit(job).unwrap();
    let out = done(&rx);
    let model = Model::load(&model_path()).unwrap();
    let (text, _, _) = direct(
        model.tokenizer().encode("The capital of France is", false),
        8,
    );
    assert_eq!(out.text, text);
    let stats = engine.stats();
    assert_eq!((stats.served, stats.failed), (1, 1));
    engine.shutdown(Duration::from_secs(10));
}

#[test]
fn shutdown_drains_the_queue() {
    let engine = start(config());
    let (rx_a, gate) = hold_worker(&engine, 1, "Once upon a time", Some(8));
    let (b, rx_b) = raw_job(&engine, "The capital of France is", 8);
    engine.submit(b).unwrap();

    let e = engine.clone();
    let stopper = thread::spawn(move || e.shutdown(Duration::from_secs(60)));
    thread::sleep(Duration::from_millis(200));
    // Shutting down: new work is refused.
    let (c, _) = raw_job(&engine, "Hi", 2);
    assert_eq!(
        engine.submit(c).unwrap_err().error.kind,
        ErrorKind::Cancelled
    );
    gate.send(()).unwrap();
    stopper.join().unwrap();
    assert_eq!(done(&rx_a).finish_reason, FinishReason::Length);
    assert_eq!(done(&rx_b).finish_reason, FinishReason::Length);
    assert_eq!(engine.stats().served, 2);
}

#[test]
fn shutdown_cancels_what_the_drain_time_does_not_cover() {
    let engine = start(config());
    let (rx_a, gate) = hold_worker(&engine, 1, "Once upon a time", Some(60));
    let (b, rx_b) = raw_job(&engine, "The capital of France is", 8);
    engine.submit(b).unwrap();

    let e = engine.clone();
    let t = Instant::now();
    let stopper = thread::spawn(move || e.shutdown(Duration::ZERO));
    thread::sleep(Duration::from_millis(200));
    gate.send(()).unwrap();
    stopper.join().unwrap();
    assert!(t.elapsed() < Duration::from_secs(10));
    // The running job ends as cancelled, with its (empty) partial text; the queued one fails.
    let a = done(&rx_a);
    assert_eq!(a.finish_reason, FinishReason::Cancelled);
    assert_eq!(a.completion_tokens, 0);
    let (kind, _, before) = failed(&rx_b);
    assert_eq!(kind, ErrorKind::Cancelled);
    assert!(before.is_empty());
    let (c, _) = raw_job(&engine, "Hi", 2);
    assert_eq!(
        engine.submit(c).unwrap_err().error.kind,
        ErrorKind::Cancelled
    );
}

#[test]
fn dropping_the_last_handle_stops_the_worker() {
    let engine = start(config());
    let (rx, gate) = hold_worker(&engine, 1, "Once upon a time", Some(60));
    let dropper = thread::spawn(move || drop(engine));
    thread::sleep(Duration::from_millis(100));
    gate.send(()).unwrap();
    dropper.join().unwrap();
    assert_eq!(done(&rx).finish_reason, FinishReason::Cancelled);
}

#[test]
fn start_reports_status_and_errors() {
    let status = Arc::new(Mutex::new(Vec::new()));
    let s = status.clone();
    let engine = Engine::start(config(), move |m| s.lock().unwrap().push(m.to_owned())).unwrap();
    let status = status.lock().unwrap().clone();
    assert_eq!(status.len(), 3, "{status:?}");
    assert!(status[0].starts_with("loading model smollm2"), "{status:?}");
    assert!(status[2].starts_with("ready"), "{status:?}");
    engine.shutdown(Duration::ZERO);

    let missing = Engine::start(
        EngineConfig::new("x", models_dir().join("no-such-model.gguf")),
        |_| {},
    );
    match missing {
        Err(e @ StartError::Model { .. }) => assert!(e.to_string().contains("no-such-model")),
        other => panic!("{other:?}"),
    }
    let bad = Engine::start(
        EngineConfig {
            queue_capacity: 0,
            ..config()
        },
        |_| {},
    );
    assert!(matches!(
        bad,
        Err(StartError::Config {
            key: "queue_capacity",
            ..
        })
    ));
    let too_big = Engine::start(
        EngineConfig {
            default_max_tokens: 65,
            ..config()
        },
        |_| {},
    );
    assert!(matches!(
        too_big,
        Err(StartError::Config {
            key: "default_max_tokens",
            ..
        })
    ));
}
