//! Scheduling state of the inference thread: who is admitted next, and which KV sequences a
//! new job can start from. Pure bookkeeping (no model), driven by `worker::Worker::run`.
//!
//! # Scheduling
//!
//! - **Slots.** Up to `parallel` jobs run at once, each on its own KV sequence. Every step
//!   builds one batch: first one token for every generating job, then prompt tokens of the
//!   jobs still reading their prompt, in admission order, until the step's token budget
//!   (`step_tokens`) is spent. A long prompt is thus read in chunks between other jobs' decode
//!   steps instead of stalling them, and the whole batch goes through the model in one graph
//!   (the weights are read once per step, not once per job). Jobs finish independently; a freed
//!   slot is refilled between steps.
//! - **Fairness.** Waiting jobs are queued per client (the device). When a slot frees, the next
//!   job comes from the client that was admitted least recently (a client with nothing admitted
//!   yet first; ties go to the oldest job), FIFO within a client. A device with twenty queued
//!   jobs therefore gets every other admission at most while another device waits, and a
//!   newcomer is admitted at the next free slot. A client's record is dropped when its queue
//!   empties, so the bookkeeping stays bounded by the queue.
//! - **Prefix cache.** A finished job's sequence stays in the KV cache, idle, with its token
//!   list. A new job looks for the sequence (idle or running) sharing the longest token prefix
//!   with its prompt and shares those cells (`Session::copy_prefix`), evaluating only the rest.
//!   An idle sequence whose tokens the new job fully contains is dropped (the device continuing
//!   its conversation). The memory budget is the KV cache itself: when an admission needs cells
//!   that running jobs have not reserved, idle sequences are evicted least recently used first.
//!   At most [`crate::model::MAX_SEQS`] sequences exist at once.

use std::collections::VecDeque;

use crate::model::{SeqId, MAX_SEQS};

/// Jobs waiting for a slot, queued per client and taken round-robin by least recent admission.
#[derive(Debug)]
pub struct FairQueue<T> {
    clients: Vec<ClientQueue<T>>,
    /// Admissions so far; a client's stamp is the admission number of its last one.
    admissions: u64,
    /// Arrival counter, for FIFO order within and ties across clients.
    arrivals: u64,
    len: usize,
}

#[derive(Debug)]
struct ClientQueue<T> {
    client: String,
    last_admitted: u64,
    jobs: VecDeque<(u64, T)>,
}

/// A job taken by [`FairQueue::pop`], with what [`FairQueue::unpop`] needs to put it back.
#[derive(Debug)]
pub struct Popped<T> {
    pub client: String,
    pub job: T,
    arrival: u64,
    stamp: u64,
}

impl<T> Default for FairQueue<T> {
    fn default() -> Self {
        FairQueue {
            clients: Vec::new(),
            admissions: 0,
            arrivals: 0,
            len: 0,
        }
    }
}

impl<T> FairQueue<T> {
    /// Jobs waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues `job` behind `client`'s earlier ones.
    pub fn push(&mut self, client: &str, job: T) {
        self.arrivals += 1;
        let arrival = self.arrivals;
        match self.clients.iter_mut().find(|c| c.client == client) {
            Some(c) => c.jobs.push_back((arrival, job)),
            None => self.clients.push(ClientQueue {
                client: client.to_owned(),
                last_admitted: 0,
                jobs: VecDeque::from([(arrival, job)]),
            }),
        }
        self.len += 1;
    }

    /// The next job to admit: the oldest of the client admitted least recently.
    pub fn pop(&mut self) -> Option<Popped<T>> {
        let i = self
            .clients
            .iter()
            .enumerate()
            .min_by_key(|(_, c)| (c.last_admitted, c.jobs.front().map_or(u64::MAX, |j| j.0)))?
            .0;
        self.admissions += 1;
        let c = &mut self.clients[i];
        let stamp = c.last_admitted;
        c.last_admitted = self.admissions;
        let (arrival, job) = c.jobs.pop_front().expect("client queues are never empty");
        let client = if c.jobs.is_empty() {
            self.clients.swap_remove(i).client
        } else {
            c.client.clone()
        };
        self.len -= 1;
        Some(Popped {
            client,
            job,
            arrival,
            stamp,
        })
    }

    /// Puts a popped job back where it was (it could not be admitted yet).
    pub fn unpop(&mut self, p: Popped<T>) {
        self.admissions -= 1;
        match self.clients.iter_mut().find(|c| c.client == p.client) {
            Some(c) => {
                c.last_admitted = p.stamp;
                c.jobs.push_front((p.arrival, p.job));
            }
            None => self.clients.push(ClientQueue {
                client: p.client,
                last_admitted: p.stamp,
                jobs: VecDeque::from([(p.arrival, p.job)]),
            }),
        }
        self.len += 1;
    }

    /// Removes and returns every job for which `drop` is true (cancelled, expired).
    pub fn remove_where(&mut self, mut drop: impl FnMut(&T) -> bool) -> Vec<T> {
        let mut out = Vec::new();
        for c in &mut self.clients {
            let mut keep = VecDeque::with_capacity(c.jobs.len());
            for (a, job) in c.jobs.drain(..) {
                if drop(&job) {
                    out.push(job);
                } else {
                    keep.push_back((a, job));
                }
            }
            c.jobs = keep;
        }
        self.clients.retain(|c| !c.jobs.is_empty());
        self.len -= out.len();
        out
    }
}

/// The KV sequences that exist, with the tokens each holds, for prefix matching and eviction.
#[derive(Debug, Default)]
pub struct SeqTable {
    seqs: Vec<SeqEntry>,
    tick: u64,
}

#[derive(Debug)]
struct SeqEntry {
    id: SeqId,
    /// Exactly the tokens in the cache for this sequence, position 0 first.
    tokens: Vec<u32>,
    active: bool,
    last_used: u64,
}

/// Where a new job's sequence starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Start {
    /// The job's new sequence (empty in the cache).
    pub seq: SeqId,
    /// A sequence holding the first `reuse` prompt tokens, to share them from.
    pub from: Option<SeqId>,
    pub reuse: usize,
}

impl SeqTable {
    /// Sequences that exist (running and idle).
    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// Whether another sequence can be created.
    pub fn has_room(&self) -> bool {
        self.seqs.len() < MAX_SEQS as usize
    }

    /// A new running sequence for `prompt`, sharing the longest prefix any sequence already
    /// holds when `reuse` is on. At least one prompt token is always left to evaluate (its
    /// logits are needed). `None` when [`SeqTable::has_room`] is false.
    pub fn start(&mut self, prompt: &[u32], reuse: bool) -> Option<Start> {
        let seq = (0..MAX_SEQS).find(|id| self.seqs.iter().all(|s| s.id != *id))?;
        let limit = prompt.len().saturating_sub(1);
        let best = reuse
            .then(|| {
                self.seqs
                    .iter()
                    .map(|s| (s.id, common_prefix(&s.tokens, &prompt[..limit])))
                    .filter(|&(_, n)| n > 0)
                    .max_by_key(|&(id, n)| (n, std::cmp::Reverse(id)))
            })
            .flatten();
        self.tick += 1;
        self.seqs.push(SeqEntry {
            id: seq,
            tokens: best.map_or_else(Vec::new, |(_, n)| prompt[..n].to_vec()),
            active: true,
            last_used: self.tick,
        });
        Some(Start {
            seq,
            from: best.map(|b| b.0),
            reuse: best.map_or(0, |b| b.1),
        })
    }

    /// Idle sequences that `seq` (just started) fully contains: keeping them saves nothing.
    pub fn redundant(&self, seq: SeqId) -> Vec<SeqId> {
        let Some(new) = self.seqs.iter().find(|s| s.id == seq) else {
            return Vec::new();
        };
        self.seqs
            .iter()
            .filter(|s| !s.active && s.tokens.len() <= new.tokens.len())
            .filter(|s| new.tokens.starts_with(&s.tokens))
            .map(|s| s.id)
            .collect()
    }

    /// Records tokens appended to `seq` in the cache.
    pub fn extend(&mut self, seq: SeqId, tokens: &[u32]) {
        if let Some(s) = self.seqs.iter_mut().find(|s| s.id == seq) {
            s.tokens.extend_from_slice(tokens);
        }
    }

    /// Tokens `seq` holds.
    pub fn n_tokens(&self, seq: SeqId) -> usize {
        self.seqs
            .iter()
            .find(|s| s.id == seq)
            .map_or(0, |s| s.tokens.len())
    }

    /// The job on `seq` ended: keep it idle for later prefix matches.
    pub fn park(&mut self, seq: SeqId) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(s) = self.seqs.iter_mut().find(|s| s.id == seq) {
            s.active = false;
            s.last_used = tick;
        }
    }

    /// Forgets `seq` (the caller removes its cells).
    pub fn remove(&mut self, seq: SeqId) {
        self.seqs.retain(|s| s.id != seq);
    }

    /// The idle sequence used least recently, to evict.
    pub fn lru_idle(&self) -> Option<SeqId> {
        self.seqs
            .iter()
            .filter(|s| !s.active)
            .min_by_key(|s| s.last_used)
            .map(|s| s.id)
    }

    /// Forgets everything (the session was rebuilt).
    pub fn clear(&mut self) {
        self.seqs.clear();
    }
}

/// Length of the common prefix of `a` and `b`.
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
