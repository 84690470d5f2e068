//! The memory guard: before models are loaded, their memory need is compared with the memory
//! this process may use, and a configuration that does not fit is refused with the numbers,
//! rather than left to the kernel's OOM killer halfway through a load or a long prompt.
//!
//! **Need**, per model ([`Need`]):
//! * the GGUF file size, less the weights that are repacked. The weights are memory-mapped, so
//!   their pages are file-backed and reclaimable; but every generated token reads every weight,
//!   so a model whose weights do not stay resident re-reads them from storage at every token
//!   (thrashing: seconds per token on an SD card). The rule is therefore that the mapped part
//!   must fit. A file already mapped by a running engine (a reload that changes only threads
//!   or context) counts nothing: its pages are shared;
//! * the repacked weights (`[model] repack`): copies in ggml's faster layouts, read from the
//!   mapping once at load. They are anonymous memory, private to the engine and never
//!   reclaimable, so they count in full even when the file is already mapped
//!   ([`crate::model::repacked_bytes`] decides which, as loading does);
//! * the KV cache ([`kv_cache_bytes`]);
//! * compute buffers, tokenizer tables and logits ([`compute_bytes`], an estimate).
//!
//! **Available** ([`available`]): the smallest of
//! * `MemAvailable` of `/proc/meminfo` (the kernel's estimate of what can be allocated without
//!   swapping, page cache included);
//! * the cgroup's headroom, `limit − usage` at each level from ours up to the root: cgroup v2
//!   `memory.max` − `memory.current` (`max` means no limit), cgroup v1
//!   `memory.limit_in_bytes` − `memory.usage_in_bytes` (a value near 2^63 means no limit). This
//!   is systemd's `MemoryMax=` and a container's memory limit;
//!
//! plus `[limits] memory_limit_mb`, a budget for all models together, for boards without a
//! cgroup limit and for tests.
//!
//! At start every model is counted against every limit. At a reload the models that load
//! beside the running ones are counted against the headroom (the running ones are already in
//! `MemAvailable` and the cgroup usage, and are freed only after the swap), and all models of
//! the new configuration against the budget.
//!
//! The parsers take file contents as `&str` so tests can feed them samples.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::gguf::Gguf;
use crate::model::session::MAX_UBATCH;
use crate::model::{repacked_bytes, HParams, LoadOptions, ModelError};

const MIB: u64 = 1 << 20;
/// cgroup v1 reports "no limit" as the largest page-aligned i64 (9223372036854771712);
/// anything from 2^62 up is treated as unlimited.
const V1_UNLIMITED: u64 = 1 << 62;
/// Per-vocabulary-entry bytes outside the ggml graph: tokenizer tables (token strings, merge
/// ranks, lookup maps), the logits row and the sampler's candidate scratch.
const PER_VOCAB_BYTES: u64 = 256;

/// One model's memory need, in bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Need {
    pub model: String,
    /// The GGUF file less its repacked weights (0 when it is already mapped by a running
    /// engine).
    pub file: u64,
    /// Weights copied into repacked layouts (anonymous memory).
    pub repacked: u64,
    pub kv_cache: u64,
    pub compute: u64,
}

impl Need {
    pub fn total(&self) -> u64 {
        self.file + self.repacked + self.kv_cache + self.compute
    }
}

impl fmt::Display for Need {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} file + {} repacked + {} KV cache + {} compute",
            self.model,
            mib(self.file),
            mib(self.repacked),
            mib(self.kv_cache),
            mib(self.compute)
        )
    }
}

/// One limit on the memory this process may use: the bytes still available under it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Available {
    pub bytes: u64,
    /// What the limit is, e.g. `MemAvailable in /proc/meminfo`.
    pub source: String,
}

/// Why models cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error(
        "not enough memory: need {} ({}), have {} ({}); lower context or parallel, \
         use a smaller model, or raise the limit",
        mib(*need), needs.iter().map(Need::to_string).collect::<Vec<_>>().join("; "),
        mib(have.bytes), have.source
    )]
    TooBig {
        need: u64,
        needs: Vec<Need>,
        have: Available,
    },
    #[error("model {}: {}", path.display(), crate::error_chain(error))]
    Model { path: PathBuf, error: ModelError },
}

/// `n` bytes as MiB, rounded up, for messages.
pub fn mib(n: u64) -> String {
    format!("{} MiB", n.div_ceil(MIB))
}

/// KV cache bytes: f16 keys and values of every layer for the `kv_cells` cells all sequences
/// share, as the engine allocates them (`EngineConfig::kv_cells`).
pub fn kv_cache_bytes(hp: &HParams, kv_cells: usize) -> u64 {
    crate::model::kv_cache_bytes(hp, kv_cells)
}

/// Compute-buffer estimate: the activations ggml's graph allocator keeps live within one
/// layer for a micro-batch of up to [`MAX_UBATCH`] tokens (f32 hidden states, Q/K/V,
/// attention output, three FFN-wide tensors), the f16 attention mask over every cell, the
/// output logits, plus tokenizer and sampler tables. An overestimate by design: the allocator
/// reuses buffers across nodes.
pub fn compute_bytes(hp: &HParams, kv_cells: usize, parallel: usize) -> u64 {
    let cells = kv_cells as u64;
    let tokens = cells.min(MAX_UBATCH as u64);
    let per_token = 4
        * (3 * u64::from(hp.n_embd)
            + 2 * u64::from(hp.n_embd_q())
            + 2 * u64::from(hp.n_embd_kv())
            + 3 * u64::from(hp.n_ff));
    let mask = 2 * cells * tokens;
    let logits = 4 * u64::from(hp.n_vocab) * parallel as u64;
    tokens * per_token + mask + logits + PER_VOCAB_BYTES * u64::from(hp.n_vocab)
}

/// How a model will be run, as far as its memory goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// KV cells shared by all sequences.
    pub kv_cells: usize,
    /// Sequences decoded together.
    pub parallel: usize,
    /// Weights repacked into ggml's faster layouts.
    pub repack: bool,
}

/// The need of the model in `path` run as `shape`; reads only the GGUF header (metadata and
/// tensor table).
pub fn need(name: &str, path: &Path, shape: Shape) -> Result<Need, MemoryError> {
    let model_err = |error: ModelError| MemoryError::Model {
        path: path.to_owned(),
        error,
    };
    let gguf = Gguf::open(path).map_err(|e| model_err(e.into()))?;
    let file = gguf.bytes().len() as u64;
    let md = gguf.metadata();
    let n_tokens = md
        .opt_str_array("tokenizer.ggml.tokens")
        .map_err(|e| model_err(e.into()))?
        .map_or(0, <[String]>::len);
    let hp = HParams::from_metadata(md, n_tokens).map_err(model_err)?;
    let load = LoadOptions {
        repack: shape.repack,
    };
    // A file whose weights do not validate repacks nothing here; loading it reports why.
    let repacked = repacked_bytes(&gguf, &hp, load).unwrap_or(0);
    Ok(Need {
        model: name.to_owned(),
        file: file.saturating_sub(repacked),
        repacked,
        kv_cache: kv_cache_bytes(&hp, shape.kv_cells),
        compute: compute_bytes(&hp, shape.kv_cells, shape.parallel),
    })
}

/// Checks `needs` (summed) against each limit; the error names the tightest one.
pub fn check(needs: &[Need], limits: &[Available]) -> Result<(), MemoryError> {
    let total: u64 = needs.iter().map(Need::total).sum();
    match limits.iter().min_by_key(|a| a.bytes) {
        Some(have) if total > have.bytes => Err(MemoryError::TooBig {
            need: total,
            needs: needs.to_vec(),
            have: have.clone(),
        }),
        _ => Ok(()),
    }
}

/// The `[limits] memory_limit_mb` budget as a limit.
pub fn budget(bytes: u64) -> Available {
    Available {
        bytes,
        source: format!("[limits] memory_limit_mb = {}", bytes / MIB),
    }
}

// ---------------------------------------------------------------------------------------------
// What the system allows

/// `MemAvailable` of `/proc/meminfo`, in bytes.
pub fn parse_meminfo(text: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix("MemAvailable:")?;
        let mut parts = rest.split_whitespace();
        let n: u64 = parts.next()?.parse().ok()?;
        match parts.next() {
            Some("kB") => Some(n.saturating_mul(1024)),
            None => Some(n),
            Some(_) => None,
        }
    })
}

/// Our cgroup paths from `/proc/self/cgroup`: the v2 (unified) path, and the v1 path of the
/// `memory` controller.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupPaths {
    pub v2: Option<String>,
    pub v1_memory: Option<String>,
}

/// Parses `/proc/self/cgroup`: lines `hierarchy-id:controllers:path`; `0::path` is v2.
pub fn parse_proc_cgroup(text: &str) -> CgroupPaths {
    let mut out = CgroupPaths::default();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            out.v2 = Some(path.to_owned());
        } else if controllers.split(',').any(|c| c == "memory") {
            out.v1_memory = Some(path.to_owned());
        }
    }
    out
}

/// A cgroup limit file: `max` (v2) or a v1 value from 2^62 up is no limit (`None`).
pub fn parse_limit(text: &str) -> Option<u64> {
    match text.trim() {
        "max" => None,
        t => t.parse::<u64>().ok().filter(|&n| n < V1_UNLIMITED),
    }
}

/// The tightest cgroup headroom on the way from `path` up to the root under `mount`, reading
/// files through `read` (a test passes a map). v2 reads `memory.max`/`memory.current`, v1
/// `memory.limit_in_bytes`/`memory.usage_in_bytes`.
pub fn cgroup_headroom(
    mount: &Path,
    path: &str,
    v2: bool,
    read: impl Fn(&Path) -> Option<String>,
) -> Option<Available> {
    let (limit_file, usage_file) = if v2 {
        ("memory.max", "memory.current")
    } else {
        ("memory.limit_in_bytes", "memory.usage_in_bytes")
    };
    let mut dir = mount.join(path.trim_start_matches('/'));
    let mut best: Option<Available> = None;
    loop {
        if let Some(limit) = read(&dir.join(limit_file)).as_deref().and_then(parse_limit) {
            let usage = read(&dir.join(usage_file))
                .and_then(|u| u.trim().parse::<u64>().ok())
                .unwrap_or(0);
            let bytes = limit.saturating_sub(usage);
            if best.as_ref().is_none_or(|b| bytes < b.bytes) {
                best = Some(Available {
                    bytes,
                    source: format!(
                        "cgroup {} ({} limit, {} in use)",
                        dir.join(limit_file).display(),
                        mib(limit),
                        mib(usage)
                    ),
                });
            }
        }
        if dir == mount || !dir.pop() || !dir.starts_with(mount) {
            break;
        }
    }
    best
}

/// The limits of this process: `MemAvailable` and the cgroup headroom (v2, else v1), where
/// they can be read.
pub fn available() -> Vec<Available> {
    let read = |p: &Path| std::fs::read_to_string(p).ok();
    let mut out = Vec::new();
    if let Some(bytes) = read(Path::new("/proc/meminfo"))
        .as_deref()
        .and_then(parse_meminfo)
    {
        out.push(Available {
            bytes,
            source: "MemAvailable in /proc/meminfo".into(),
        });
    }
    let paths = read(Path::new("/proc/self/cgroup"))
        .map(|t| parse_proc_cgroup(&t))
        .unwrap_or_default();
    let root = Path::new("/sys/fs/cgroup");
    let v2 = paths
        .v2
        .as_deref()
        .and_then(|p| cgroup_headroom(root, p, true, read));
    let v1 = || {
        paths
            .v1_memory
            .as_deref()
            .and_then(|p| cgroup_headroom(&root.join("memory"), p, false, read))
    };
    out.extend(v2.or_else(v1));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn meminfo() {
        let text = "MemTotal:       24684084 kB\nMemFree:         1000 kB\n\
                    MemAvailable:   23828500 kB\nBuffers:  1 kB\n";
        assert_eq!(parse_meminfo(text), Some(23_828_500 * 1024));
        assert_eq!(parse_meminfo("MemTotal: 5 kB\n"), None);
        assert_eq!(parse_meminfo("MemAvailable: lots kB\n"), None);
    }

    #[test]
    fn proc_cgroup_v1_and_v2() {
        let v1 = "9:name=systemd:/\n4:memory:/process_api/0174\n3:cpuset:/\n0::/\n";
        assert_eq!(
            parse_proc_cgroup(v1),
            CgroupPaths {
                v2: Some("/".into()),
                v1_memory: Some("/process_api/0174".into())
            }
        );
        let v2 = "0::/system.slice/llamabus.service\n";
        assert_eq!(
            parse_proc_cgroup(v2).v2.as_deref(),
            Some("/system.slice/llamabus.service")
        );
        assert_eq!(parse_proc_cgroup("garbage\n"), CgroupPaths::default());
        // A combined v1 hierarchy.
        let c = parse_proc_cgroup("5:cpu,memory:/a\n");
        assert_eq!(c.v1_memory.as_deref(), Some("/a"));
    }

    #[test]
    fn limits() {
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("536870912\n"), Some(512 * MIB));
        assert_eq!(parse_limit("9223372036854771712\n"), None);
        assert_eq!(parse_limit("nonsense"), None);
    }

    fn fs(files: &[(&str, &str)]) -> impl Fn(&Path) -> Option<String> {
        let map: HashMap<PathBuf, String> = files
            .iter()
            .map(|(p, t)| (PathBuf::from(p), (*t).to_owned()))
            .collect();
        move |p: &Path| map.get(p).cloned()
    }

    #[test]
    fn v2_headroom_is_the_tightest_level() {
        let read = fs(&[
            ("/sys/fs/cgroup/system.slice/memory.max", "2147483648\n"),
            ("/sys/fs/cgroup/system.slice/memory.current", "1879048192\n"),
            (
                "/sys/fs/cgroup/system.slice/llamabus.service/memory.max",
                "536870912\n",
            ),
            (
                "/sys/fs/cgroup/system.slice/llamabus.service/memory.current",
                "104857600\n",
            ),
        ]);
        let root = Path::new("/sys/fs/cgroup");
        let a = cgroup_headroom(root, "/system.slice/llamabus.service", true, read).unwrap();
        // The slice has 256 MiB left, the service 412 MiB: the slice wins.
        assert_eq!(a.bytes, 256 * MIB);
        assert!(a.source.contains("system.slice/memory.max"), "{}", a.source);
        assert!(a.source.contains("2048 MiB limit"), "{}", a.source);

        let unlimited = fs(&[("/sys/fs/cgroup/a/memory.max", "max\n")]);
        assert_eq!(cgroup_headroom(root, "/a", true, unlimited), None);
    }

    #[test]
    fn v1_headroom_and_the_unlimited_value() {
        let root = Path::new("/sys/fs/cgroup/memory");
        let read = fs(&[
            (
                "/sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes",
                "1073741824\n",
            ),
            (
                "/sys/fs/cgroup/memory/docker/abc/memory.usage_in_bytes",
                "73741824\n",
            ),
            (
                "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                "9223372036854771712\n",
            ),
        ]);
        let a = cgroup_headroom(root, "/docker/abc", false, read).unwrap();
        assert_eq!(a.bytes, 1_000_000_000);
        let none = fs(&[(
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "9223372036854771712\n",
        )]);
        assert_eq!(cgroup_headroom(root, "/", false, none), None);
    }

    fn smollm2_like() -> HParams {
        HParams {
            n_ctx_train: 8192,
            n_embd: 576,
            n_layer: 30,
            n_ff: 1536,
            n_head: 9,
            n_head_kv: 3,
            head_dim: 64,
            n_rot: 64,
            rope_freq_base: 100000.0,
            rope_freq_scale: 1.0,
            rms_eps: 1e-5,
            n_vocab: 49152,
        }
    }

    #[test]
    fn kv_cache_size_matches_the_cache_layout() {
        let hp = smollm2_like();
        // 30 layers × 2048 cells × (192 + 192) × 2 bytes = 45 MiB.
        assert_eq!(kv_cache_bytes(&hp, 2048), 30 * 2048 * 384 * 2);
        assert_eq!(kv_cache_bytes(&hp, 8192), 4 * kv_cache_bytes(&hp, 2048));
        let c = compute_bytes(&hp, 2048, 1);
        assert!((10 * MIB..64 * MIB).contains(&c), "{}", mib(c));
    }

    #[test]
    fn check_names_the_tightest_limit_and_the_numbers() {
        let needs = [
            Need {
                model: "chat".into(),
                file: 300 * MIB,
                repacked: 100 * MIB,
                kv_cache: 100 * MIB,
                compute: 20 * MIB,
            },
            Need {
                model: "tiny".into(),
                file: 50 * MIB,
                repacked: 0,
                kv_cache: 10 * MIB,
                compute: 5 * MIB,
            },
        ];
        let limits = [
            Available {
                bytes: 8000 * MIB,
                source: "MemAvailable in /proc/meminfo".into(),
            },
            budget(512 * MIB),
        ];
        let e = check(&needs, &limits).unwrap_err().to_string();
        assert!(e.contains("need 585 MiB"), "{e}");
        assert!(e.contains("have 512 MiB"), "{e}");
        assert!(e.contains("[limits] memory_limit_mb = 512"), "{e}");
        assert!(
            e.contains("chat: 300 MiB file + 100 MiB repacked + 100 MiB KV cache + 20 MiB compute"),
            "{e}"
        );
        assert!(check(&needs, &limits[..1]).is_ok());
        assert!(check(&needs, &[]).is_ok());
    }

    #[test]
    fn this_machine_reports_available_memory() {
        // Linux always has /proc/meminfo; the cgroup part depends on the machine.
        let a = available();
        assert!(
            a.iter()
                .any(|a| a.source.starts_with("MemAvailable") && a.bytes > 0),
            "{a:?}"
        );
    }
}
