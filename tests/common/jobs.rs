//! Driving the inference worker from a test: starting an engine, event sinks (a plain one and
//! a *gated* one that holds the worker on `Started`, so "these jobs wait at once" or "a long
//! job" is deterministic rather than a matter of timing), a job holding the worker, and waiting for
//! a job's final event.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use llamabus::engine::{
    Engine, EngineConfig, ErrorKind, EventSink, JobEvent, JobOutcome, PromptInput,
};

/// Longest any single event may take to arrive (a loaded CI machine, a debug build): a hang
/// guard, not a speed assertion.
pub const PATIENCE: Duration = Duration::from_secs(120);

pub fn start(cfg: EngineConfig) -> Engine {
    Engine::start(cfg, |_| {}).expect("engine starts")
}

/// A sink forwarding every event to a channel.
pub fn sink() -> (EventSink, Receiver<JobEvent>) {
    let (tx, rx) = mpsc::channel();
    (
        Box::new(move |e| {
            let _ = tx.send(e);
        }),
        rx,
    )
}

/// A sink that also appends `id` to `order` when the job starts: the order in which the
/// worker admitted jobs.
pub fn order_sink(id: u64, order: &Arc<Mutex<Vec<u64>>>) -> (EventSink, Receiver<JobEvent>) {
    let (tx, rx) = mpsc::channel();
    let order = order.clone();
    let s: EventSink = Box::new(move |e| {
        if matches!(e, JobEvent::Started { .. }) {
            order.lock().unwrap().push(id);
        }
        let _ = tx.send(e);
    });
    (s, rx)
}

/// A sink that, on `Started`, reports through the second receiver and then blocks the worker
/// until the returned sender is used (or dropped).
pub fn gated_sink() -> (EventSink, Receiver<JobEvent>, Receiver<()>, Sender<()>) {
    let (tx, rx) = mpsc::channel();
    let (started_tx, started_rx) = mpsc::channel();
    let (gate_tx, gate_rx) = mpsc::channel::<()>();
    let gate_rx = Mutex::new(gate_rx);
    let sink: EventSink = Box::new(move |e| {
        let started = matches!(e, JobEvent::Started { .. });
        let _ = tx.send(e);
        if started {
            let _ = started_tx.send(());
            let _ = gate_rx.lock().unwrap().recv();
        }
    });
    (sink, rx, started_rx, gate_tx)
}

/// Submits job `id` (the raw `prompt`, `max_tokens` if given) on a gated sink and returns once
/// the worker is held inside it: its events, and the gate that lets it go on.
pub fn hold_worker(
    engine: &Engine,
    id: u64,
    prompt: &str,
    max_tokens: Option<u32>,
) -> (Receiver<JobEvent>, Sender<()>) {
    let (s, rx, started, gate) = gated_sink();
    let mut job = engine.job(id, PromptInput::Raw(prompt.into()), s);
    if let Some(n) = max_tokens {
        job.max_tokens = Some(n);
    }
    engine.submit(job).unwrap();
    started.recv_timeout(PATIENCE).unwrap();
    (rx, gate)
}

/// Every event up to and including the final one.
pub fn events_until_final(rx: &Receiver<JobEvent>) -> Vec<JobEvent> {
    let mut out = Vec::new();
    loop {
        let e = rx.recv_timeout(PATIENCE).expect("an event in time");
        let last = matches!(e, JobEvent::Done(_) | JobEvent::Failed(_));
        out.push(e);
        if last {
            return out;
        }
    }
}

/// The outcome of a job that must succeed.
pub fn done(rx: &Receiver<JobEvent>) -> JobOutcome {
    match events_until_final(rx).pop() {
        Some(JobEvent::Done(o)) => o,
        other => panic!("expected Done, got {other:?}"),
    }
}

/// The error of a job that must fail, and the events before it.
pub fn failed(rx: &Receiver<JobEvent>) -> (ErrorKind, String, Vec<JobEvent>) {
    let mut events = events_until_final(rx);
    match events.pop() {
        Some(JobEvent::Failed(e)) => (e.kind, e.message, events),
        other => panic!("expected Failed, got {other:?}"),
    }
}
