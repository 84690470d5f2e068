//! Duplicate requests under at-least-once delivery: a window of recently seen `(device, id)`
//! keys. A request still running is not started twice; a finished one is answered again from
//! its stored reply instead of a second generation.
//!
//! Only successful replies are stored: a retry after `busy`, `expired`, `cancelled` or an
//! internal error runs again. Finished entries expire `window` after they finished; at most
//! `capacity` of them and at most `max_bytes` of keys and replies are kept (the oldest go
//! first), since a device's topic level may be as long as a packet allows; running entries live
//! until their job ends (the engine's queue bounds them).
//!
//! With a state directory the finished replies are also appended to
//! `{state_dir}/replies.postcard`, so a redelivery after a restart (the daemon was killed
//! between publishing a reply and acknowledging its request) gets the same reply again. Each
//! record is a little-endian `u32` length and a postcard [`Record`]; a torn last record (a
//! crash mid-write) is ignored. The file is rewritten with the live entries at start and when
//! it holds more than twice `capacity` records or twice `max_bytes`. Writes are not fsynced:
//! they survive a crash of the process, not necessarily a power cut (flash wear beats the last
//! seconds of replies).

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use log::{info, warn};
use serde::{Deserialize, Serialize};

use crate::mqtt::wire::Response;

/// `(device, id)`: the device level of the request topic and the request's `id`.
pub type Key = (String, String);

/// The file of stored replies in the state directory.
pub const FILE_NAME: &str = "replies.postcard";
/// The first bytes of the file: a format version.
const MAGIC: &[u8; 8] = b"LBDEDUP1";
/// A record larger than this is corrupt (replies are bounded by the packet limit).
const MAX_RECORD: u32 = 16 << 20;
/// Default byte budget of the stored keys and replies.
pub const DEFAULT_MAX_BYTES: usize = 8 << 20;
/// What an entry costs beyond its key and reply bytes (map slots, order queue, allocations).
const ENTRY_OVERHEAD: usize = 128;

/// What the window knows of a key.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    /// Not seen (or expired): run it.
    New,
    /// Running as this job.
    InFlight(u64),
    /// Answered with this reply.
    Finished(Response),
}

/// One stored reply, as persisted.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    device: String,
    id: String,
    /// Unix time in milliseconds when the reply was published.
    at_ms: u64,
    response: Response,
}

/// The dedup window.
#[derive(Debug)]
pub struct DedupStore {
    window: Duration,
    capacity: usize,
    max_bytes: usize,
    /// Sum of the finished entries' costs (see [`cost`]).
    bytes: usize,
    running: HashMap<Key, u64>,
    /// Finished entries: finishing time, reply, cost.
    finished: HashMap<Key, (u64, Response, usize)>,
    /// Finished keys in finishing order, with their time (stale pairs are skipped).
    order: VecDeque<(u64, Key)>,
    log: Option<Log>,
}

#[derive(Debug)]
struct Log {
    path: PathBuf,
    file: File,
    records: usize,
    bytes: usize,
}

/// Milliseconds since the Unix epoch (wall clock, since entries outlive the process).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl DedupStore {
    /// An in-memory window.
    pub fn new(window: Duration, capacity: usize) -> DedupStore {
        DedupStore {
            window,
            capacity: capacity.max(1),
            max_bytes: DEFAULT_MAX_BYTES,
            bytes: 0,
            running: HashMap::new(),
            finished: HashMap::new(),
            order: VecDeque::new(),
            log: None,
        }
    }

    /// The byte budget of the finished entries (keys and replies); default
    /// [`DEFAULT_MAX_BYTES`]. Entries over it are evicted oldest first at the next insert.
    pub fn with_max_bytes(mut self, max_bytes: usize) -> DedupStore {
        self.max_bytes = max_bytes;
        self
    }

    /// A window backed by `{dir}/replies.postcard`: loads the entries still inside the window,
    /// then rewrites the file with them. An error leaves the window in memory only (the caller
    /// logs it: duplicates after a restart are then generated again).
    pub fn open(
        window: Duration,
        capacity: usize,
        max_bytes: usize,
        dir: &Path,
        now: u64,
    ) -> (DedupStore, Option<io::Error>) {
        let mut s = DedupStore::new(window, capacity).with_max_bytes(max_bytes);
        let path = dir.join(FILE_NAME);
        let loaded = match read_records(&path) {
            Ok(r) => r,
            Err(e) => return (s, Some(with_path(&path, e))),
        };
        let n = loaded.len();
        for r in loaded {
            s.insert_finished((r.device, r.id), r.at_ms, r.response, now);
        }
        s.prune(now);
        match s.rewrite(&path) {
            Ok(()) => {
                if n > 0 {
                    info!(
                        "{}: {} stored replies, {} still inside the dedup window",
                        path.display(),
                        n,
                        s.finished.len()
                    );
                }
                (s, None)
            }
            Err(e) => (s, Some(with_path(&path, e))),
        }
    }

    /// What is known of `key` at `now` (expired entries are dropped first).
    pub fn check(&mut self, key: &Key, now: u64) -> Seen {
        self.prune(now);
        if let Some(job) = self.running.get(key) {
            return Seen::InFlight(*job);
        }
        match self.finished.get(key) {
            Some((_, r, _)) => Seen::Finished(r.clone()),
            None => Seen::New,
        }
    }

    /// `key` runs as `job`.
    pub fn start(&mut self, key: Key, job: u64) {
        self.running.insert(key, job);
    }

    /// `job` of `key` ended: with a reply to keep for duplicates, or without (a failure, which
    /// a retry may run again).
    pub fn finish(&mut self, key: &Key, job: u64, reply: Option<Response>, now: u64) {
        if self.running.get(key) == Some(&job) {
            self.running.remove(key);
        }
        let Some(reply) = reply else { return };
        if let Err(e) = self.append(key, now, &reply) {
            let path = self.log.take().map(|l| l.path).unwrap_or_default();
            warn!(
                "{}: {e}; stored replies are kept in memory only from now on",
                path.display()
            );
        }
        self.insert_finished(key.clone(), now, reply, now);
        if self.log.as_ref().is_some_and(|l| {
            l.records > 2 * self.capacity + 16 || l.bytes > 2 * self.max_bytes + (64 << 10)
        }) {
            self.prune(now);
            let path = self
                .log
                .as_ref()
                .map(|l| l.path.clone())
                .unwrap_or_default();
            if let Err(e) = self.rewrite(&path) {
                self.log = None;
                warn!(
                    "{}: {e}; stored replies are kept in memory only from now on",
                    path.display()
                );
            }
        }
    }

    /// Finished entries kept now.
    pub fn finished_len(&self) -> usize {
        self.finished.len()
    }

    /// Running entries now.
    pub fn running_len(&self) -> usize {
        self.running.len()
    }

    /// Bytes the finished entries cost now (keys, replies and a fixed overhead each).
    pub fn finished_bytes(&self) -> usize {
        self.bytes
    }

    fn insert_finished(&mut self, key: Key, at: u64, reply: Response, now: u64) {
        if now.saturating_sub(at) >= self.window_ms() {
            return;
        }
        let cost = cost(&key, &reply);
        if cost > self.max_bytes {
            // Alone over the budget: kept for nobody (a duplicate is generated again).
            return;
        }
        self.order.push_back((at, key.clone()));
        if let Some((_, _, old)) = self.finished.insert(key, (at, reply, cost)) {
            self.bytes -= old;
        }
        self.bytes += cost;
        while (self.finished.len() > self.capacity || self.bytes > self.max_bytes)
            && !self.order.is_empty()
        {
            self.pop_oldest();
        }
    }

    fn window_ms(&self) -> u64 {
        self.window.as_millis() as u64
    }

    /// Drops finished entries older than the window.
    fn prune(&mut self, now: u64) {
        let window = self.window_ms();
        while let Some((at, _)) = self.order.front() {
            if now.saturating_sub(*at) < window {
                break;
            }
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((at, key)) = self.order.pop_front() {
            // A key finished again later has a newer time: its entry stays.
            if self.finished.get(&key).is_some_and(|(t, _, _)| *t == at) {
                if let Some((_, _, cost)) = self.finished.remove(&key) {
                    self.bytes -= cost;
                }
            }
        }
    }

    fn append(&mut self, key: &Key, at: u64, reply: &Response) -> io::Result<()> {
        let Some(log) = self.log.as_mut() else {
            return Ok(());
        };
        let rec = Record {
            device: key.0.clone(),
            id: key.1.clone(),
            at_ms: at,
            response: reply.clone(),
        };
        let frame = frame(&rec)?;
        log.file.write_all(&frame)?;
        log.records += 1;
        log.bytes += frame.len();
        Ok(())
    }

    /// Writes the live entries to a temporary file and renames it over `path`.
    fn rewrite(&mut self, path: &Path) -> io::Result<()> {
        let tmp = path.with_extension("tmp");
        let mut bytes = MAGIC.to_vec();
        let mut n = 0;
        for (at, key) in &self.order {
            if let Some((t, r, _)) = self.finished.get(key) {
                if t == at {
                    bytes.extend(frame(&Record {
                        device: key.0.clone(),
                        id: key.1.clone(),
                        at_ms: *at,
                        response: r.clone(),
                    })?);
                    n += 1;
                }
            }
        }
        std::fs::write(&tmp, &bytes)?;
        std::fs::rename(&tmp, path)?;
        let file = OpenOptions::new().append(true).open(path)?;
        self.log = Some(Log {
            path: path.to_owned(),
            file,
            records: n,
            bytes: bytes.len(),
        });
        Ok(())
    }
}

/// What keeping `reply` under `key` costs: its key and encoded reply bytes plus a fixed
/// overhead (an estimate of the heap it holds, not an exact count).
fn cost(key: &Key, reply: &Response) -> usize {
    let reply_bytes = postcard::to_allocvec(reply).map_or(0, |v| v.len());
    key.0.len() + key.1.len() + reply_bytes + ENTRY_OVERHEAD
}

fn with_path(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn frame(rec: &Record) -> io::Result<Vec<u8>> {
    let body = postcard::to_allocvec(rec).map_err(io::Error::other)?;
    let len = u32::try_from(body.len()).map_err(io::Error::other)?;
    let mut out = len.to_le_bytes().to_vec();
    out.extend(body);
    Ok(out)
}

/// The records of `path` (none when it does not exist). A torn or undecodable tail ends the
/// list with a warning; a file that is not ours is an error.
fn read_records(path: &Path) -> io::Result<Vec<Record>> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => f.read_to_end(&mut bytes)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let Some(mut rest) = bytes.strip_prefix(MAGIC.as_slice()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a llamabus reply store (bad header)",
        ));
    };
    let mut out = Vec::new();
    while !rest.is_empty() {
        let rec = rest
            .get(..4)
            .map(|l| u32::from_le_bytes(l.try_into().expect("4 bytes")))
            .filter(|&len| len <= MAX_RECORD)
            .and_then(|len| rest.get(4..4 + len as usize))
            .and_then(|body| Some((postcard::from_bytes::<Record>(body).ok()?, body.len())));
        let Some((rec, len)) = rec else {
            warn!(
                "{}: ignoring {} bytes of a torn or corrupt record at the end",
                path.display(),
                rest.len()
            );
            break;
        };
        out.push(rec);
        rest = &rest[4 + len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::wire::Reply;

    fn key(id: &str) -> Key {
        ("dev".to_owned(), id.to_owned())
    }

    fn reply(text: &str) -> Response {
        Response::Reply(Reply {
            id: Some("x".into()),
            text: text.into(),
            ..Reply::default()
        })
    }

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn running_then_finished_then_expired() {
        let mut s = DedupStore::new(MIN, 10);
        assert_eq!(s.check(&key("a"), 0), Seen::New);
        s.start(key("a"), 7);
        assert_eq!(s.check(&key("a"), 1), Seen::InFlight(7));
        assert_eq!(s.check(&key("b"), 1), Seen::New);
        s.finish(&key("a"), 7, Some(reply("hi")), 1_000);
        assert_eq!(s.check(&key("a"), 1_001), Seen::Finished(reply("hi")));
        assert_eq!(s.running_len(), 0);
        // The window counts from the finish.
        assert_eq!(s.check(&key("a"), 60_999), Seen::Finished(reply("hi")));
        assert_eq!(s.check(&key("a"), 61_000), Seen::New);
        assert_eq!(s.finished_len(), 0);
    }

    #[test]
    fn a_failure_is_forgotten_so_a_retry_runs() {
        let mut s = DedupStore::new(MIN, 10);
        s.start(key("a"), 1);
        s.finish(&key("a"), 1, None, 5);
        assert_eq!(s.check(&key("a"), 6), Seen::New);
    }

    #[test]
    fn a_stale_job_does_not_end_a_newer_run() {
        let mut s = DedupStore::new(MIN, 10);
        s.start(key("a"), 2);
        s.finish(&key("a"), 1, None, 5);
        assert_eq!(s.check(&key("a"), 6), Seen::InFlight(2));
    }

    #[test]
    fn capacity_evicts_the_oldest_finished() {
        let mut s = DedupStore::new(MIN, 3);
        for (i, id) in ["a", "b", "c", "d"].into_iter().enumerate() {
            s.start(key(id), i as u64);
            s.finish(&key(id), i as u64, Some(reply(id)), i as u64);
        }
        assert_eq!(s.finished_len(), 3);
        assert_eq!(s.check(&key("a"), 10), Seen::New);
        assert_eq!(s.check(&key("d"), 10), Seen::Finished(reply("d")));
        // Running entries do not count against the capacity.
        for j in 0..10 {
            s.start(key(&format!("r{j}")), 100 + j);
        }
        assert_eq!(s.finished_len(), 3);
        assert_eq!(s.running_len(), 10);
    }

    #[test]
    fn the_byte_budget_evicts_the_oldest_and_skips_what_alone_exceeds_it() {
        // A device level may be as long as a packet: 100 KiB keys, room for two of them.
        let long = |id: &str| ("d".repeat(100 << 10), id.to_owned());
        let one = cost(&long("a"), &reply("a"));
        let mut s = DedupStore::new(MIN, 100).with_max_bytes(2 * one + 10);
        for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
            s.finish(&long(id), i as u64, Some(reply(id)), i as u64);
        }
        assert_eq!(s.finished_len(), 2);
        assert_eq!(s.finished_bytes(), 2 * one);
        assert_eq!(s.check(&long("a"), 5), Seen::New);
        assert_eq!(s.check(&long("c"), 5), Seen::Finished(reply("c")));
        // Finishing a key again replaces its entry without counting it twice.
        s.finish(&long("c"), 9, Some(reply("c")), 6);
        assert_eq!((s.finished_len(), s.finished_bytes()), (2, 2 * one));
        // Larger than the whole budget: not kept, and nothing else is evicted for it.
        let huge = ("d".repeat(300 << 10), "h".to_owned());
        s.finish(&huge, 10, Some(reply("h")), 7);
        assert_eq!(s.check(&huge, 8), Seen::New);
        assert_eq!(s.finished_len(), 2);
        // Expiry gives the bytes back.
        assert_eq!(s.check(&key("x"), 7 + 60_000), Seen::New);
        assert_eq!((s.finished_len(), s.finished_bytes()), (0, 0));
    }

    #[test]
    fn devices_are_separate() {
        let mut s = DedupStore::new(MIN, 10);
        s.finish(&key("a"), 1, Some(reply("x")), 0);
        let other = ("other".to_owned(), "a".to_owned());
        assert_eq!(s.check(&other, 1), Seen::New);
    }

    fn tmp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "llamabus-dedup-{tag}-{}-{}",
            std::process::id(),
            now_ms()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn finished_replies_survive_a_restart_inside_the_window() {
        let dir = tmp_dir("persist");
        let (mut s, e) = DedupStore::open(MIN, 10, DEFAULT_MAX_BYTES, &dir, 0);
        assert!(e.is_none(), "{e:?}");
        s.start(key("a"), 1);
        s.finish(&key("a"), 1, Some(reply("kept")), 1_000);
        s.finish(&key("old"), 2, Some(reply("old")), 0);
        s.start(key("run"), 3);
        drop(s);
        let (mut s, e) = DedupStore::open(MIN, 10, DEFAULT_MAX_BYTES, &dir, 30_000);
        assert!(e.is_none(), "{e:?}");
        assert_eq!(s.check(&key("a"), 30_000), Seen::Finished(reply("kept")));
        assert_eq!(
            s.check(&key("run"), 30_000),
            Seen::New,
            "running is not kept"
        );
        drop(s);
        // Past the window of "old" only.
        let (mut s, _) = DedupStore::open(MIN, 10, DEFAULT_MAX_BYTES, &dir, 60_500);
        assert_eq!(s.check(&key("old"), 60_500), Seen::New);
        assert_eq!(s.check(&key("a"), 60_500), Seen::Finished(reply("kept")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_torn_tail_is_ignored_and_a_foreign_file_refused() {
        let dir = tmp_dir("torn");
        let (mut s, _) = DedupStore::open(MIN, 10, DEFAULT_MAX_BYTES, &dir, 0);
        s.finish(&key("a"), 1, Some(reply("a")), 0);
        s.finish(&key("b"), 2, Some(reply("b")), 0);
        drop(s);
        let path = dir.join(FILE_NAME);
        let len = std::fs::metadata(&path).unwrap().len();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 3).unwrap();
        drop(f);
        let (mut s, e) = DedupStore::open(MIN, 10, DEFAULT_MAX_BYTES, &dir, 1);
        assert!(e.is_none());
        assert_eq!(s.check(&key("a"), 1), Seen::Finished(reply("a")));
        assert_eq!(s.check(&key("b"), 1), Seen::New);
        drop(s);
        std::fs::write(&path, b"something else").unwrap();
        let (mut s, e) = DedupStore::open(MIN, 10, DEFAULT_MAX_BYTES, &dir, 1);
        let e = e.expect("a foreign file is an error");
        assert!(e.to_string().contains("bad header"), "{e}");
        assert_eq!(s.check(&key("a"), 1), Seen::New);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_file_is_compacted() {
        let dir = tmp_dir("compact");
        let (mut s, _) = DedupStore::open(MIN, 4, DEFAULT_MAX_BYTES, &dir, 0);
        for i in 0..100u64 {
            s.finish(&key(&i.to_string()), i, Some(reply("x")), i);
        }
        assert!(s.log.as_ref().unwrap().records <= 2 * 4 + 16 + 1);
        let size = std::fs::metadata(dir.join(FILE_NAME)).unwrap().len();
        assert!(size < 2_000, "{size} bytes");
        drop(s);
        let (mut s, _) = DedupStore::open(MIN, 4, DEFAULT_MAX_BYTES, &dir, 100);
        assert_eq!(s.finished_len(), 4);
        assert_eq!(s.check(&key("99"), 100), Seen::Finished(reply("x")));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
