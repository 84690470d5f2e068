//! The models a daemon serves ("mix and match"): one [`Engine`], on its own inference thread,
//! per configured model, looked up by name.
//!
//! * Which model answers: the topic's model (`{prefix}/model/{model}/prompt/{device}`), else
//!   the request's `model` field, else the default model. A topic model and a different
//!   `model` field are a `bad_request`; a name not served is `unknown_model`, naming the
//!   served ones.
//! * Start: the memory guard ([`crate::engine::memory`]) checks all models together, then they
//!   load one after the other.
//! * Reload, per model ([`plan_reload`], [`Models::apply_reload`]): an unchanged model keeps
//!   its engine (new limits and sampling defaults apply at once); a changed or added one loads
//!   beside the running ones; a removed one drains and stops; a model whose load fails keeps
//!   its old engine (an added one is simply not served), and the failure is reported.

use std::path::PathBuf;
use std::time::Instant;

use log::{info, warn};
use serde_json::json;

use crate::engine::memory::{self, MemoryError, Need};
use crate::engine::{Engine, EngineConfig, StartError, Tunables};
use crate::mqtt::settings::{ModelSettings, Settings};
use crate::mqtt::wire::ErrorCode;

/// The engines serving now, in configuration order; cheap to clone (engines are handles).
#[derive(Clone, Debug)]
pub struct Models {
    entries: Vec<Entry>,
    default: usize,
}

#[derive(Clone, Debug)]
struct Entry {
    name: String,
    engine: Engine,
    /// The file name, for the status document.
    file: String,
    parallel: usize,
}

/// Why a model could not start.
#[derive(Debug, thiserror::Error)]
pub enum ModelsError {
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error("model {model}: {error}")]
    Start {
        model: String,
        error: Box<StartError>,
    },
}

impl Models {
    /// Pairs running `engines` with the models of `settings` by name (an engine the settings
    /// do not name is served under its own name).
    pub fn new(settings: &Settings, engines: Vec<Engine>) -> Models {
        let entries: Vec<Entry> = engines
            .into_iter()
            .map(|engine| {
                let name = engine.model_info().name;
                let m = settings.models.iter().find(|m| m.name == name);
                Entry {
                    file: m.map_or_else(String::new, file_name),
                    parallel: m.map_or(1, |m| m.parallel),
                    name,
                    engine,
                }
            })
            .collect();
        let default = entries
            .iter()
            .position(|e| e.name == settings.model().name)
            .unwrap_or(0);
        Models { entries, default }
    }

    /// Checks memory for every model of `settings`, then loads them one after the other
    /// (blocking: call from a blocking task). `on_status` hears each load phase. Warns when
    /// the models' threads together exceed the cores: their engines then compete for them.
    pub fn start(
        settings: &Settings,
        on_status: impl Fn(&str) + Clone + Send + 'static,
    ) -> Result<Models, ModelsError> {
        warn_oversubscribed(settings);
        guard_start(settings)?;
        let mut engines = Vec::with_capacity(settings.models.len());
        for m in &settings.models {
            let engine = Engine::start(settings.engine_config_for(m), on_status.clone()).map_err(
                |error| ModelsError::Start {
                    model: m.name.clone(),
                    error: Box::new(error),
                },
            )?;
            engines.push(engine);
        }
        Ok(Models::new(settings, engines))
    }

    /// The engine for a request: the topic's model, else the request's `model` field, else
    /// the default. The error is the code and message of the refusal.
    pub fn select(
        &self,
        topic_model: Option<&str>,
        field: Option<&str>,
    ) -> Result<&Engine, (ErrorCode, String)> {
        let name = match (topic_model, field) {
            (Some(t), Some(f)) if t != f => {
                return Err((
                    ErrorCode::BadRequest,
                    format!("the topic addresses model `{t}` but the request names `{f}`"),
                ))
            }
            (Some(n), _) | (None, Some(n)) => n,
            (None, None) => return Ok(self.default_engine()),
        };
        match self.entries.iter().find(|e| e.name == name) {
            Some(e) => Ok(&e.engine),
            None => Err((
                ErrorCode::UnknownModel,
                format!(
                    "no model named `{name}` here; this node serves {}",
                    self.names()
                        .iter()
                        .map(|n| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    pub fn default_engine(&self) -> &Engine {
        &self.entries[self.default].engine
    }

    /// The served model names, in configuration order.
    pub fn names(&self) -> Vec<&str> {
        self.entries.iter().map(|e| e.name.as_str()).collect()
    }

    pub fn engines(&self) -> impl Iterator<Item = &Engine> {
        self.entries.iter().map(|e| &e.engine)
    }

    /// The oldest heartbeat of all engines: one hung engine stops the watchdog.
    pub fn oldest_heartbeat(&self) -> Instant {
        self.engines()
            .map(Engine::last_heartbeat)
            .min()
            .unwrap_or_else(Instant::now)
    }

    /// One status entry per model.
    pub fn status_entries(&self) -> Vec<serde_json::Value> {
        self.entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let s = e.engine.stats();
                let m = &s.model;
                json!({
                    "name": m.name,
                    "file": e.file,
                    "default": i == self.default,
                    "architecture": m.architecture,
                    "parameters": m.n_params,
                    "quantization": m.quantization,
                    "context": m.n_ctx,
                    "parallel": e.parallel,
                    "kv_cells": m.kv_cells,
                    "repacked_mib": (m.repacked_bytes as f64 / f64::from(1 << 20) * 10.0).round() / 10.0,
                    "queue": {"depth": s.queue_depth, "capacity": s.queue_capacity},
                    "in_flight": s.in_flight,
                    "served": s.served,
                    "failed": s.failed,
                    "last_tokens_per_s": (s.last_tokens_per_s * 10.0).round() / 10.0,
                    "prompt_tokens": {
                        "evaluated": s.prompt_tokens_evaluated,
                        "cached": s.prompt_tokens_cached,
                    },
                })
            })
            .collect()
    }

    /// Counters over all models: (in flight, queued, queue capacity, served, failed).
    pub fn totals(&self) -> (usize, usize, usize, u64, u64) {
        self.engines()
            .map(Engine::stats)
            .fold((0, 0, 0, 0, 0), |t, s| {
                (
                    t.0 + s.in_flight,
                    t.1 + s.queue_depth,
                    t.2 + s.queue_capacity,
                    t.3 + s.served,
                    t.4 + s.failed,
                )
            })
    }

    /// The end of a reload: the models of `new` with the engines `loaded` for them (by name),
    /// the unchanged ones kept, and for each failed load the old engine and settings kept.
    /// Returns the models now serving, the effective settings, the engines to retire (drain
    /// and stop) and one message per failed load.
    pub fn apply_reload(
        &self,
        old: &Settings,
        mut new: Settings,
        loaded: Vec<(String, Result<Engine, StartError>)>,
    ) -> Applied {
        let mut loaded = loaded;
        let mut engines = Vec::new();
        let mut models = Vec::new();
        let mut failures = Vec::new();
        // Which running engines go on serving.
        let mut reused = vec![false; self.entries.len()];
        for m in &new.models {
            let at = self.entries.iter().position(|e| e.name == m.name);
            let running = at.map(|i| &self.entries[i]);
            let fresh = loaded
                .iter()
                .position(|(n, _)| *n == m.name)
                .map(|i| loaded.swap_remove(i).1);
            match (fresh, running) {
                (Some(Ok(engine)), _) => {
                    engines.push(engine);
                    models.push(m.clone());
                }
                (Some(Err(e)), Some(r)) => {
                    reused[at.expect("running")] = true;
                    failures.push(format!(
                        "model {}: {}; the running one stays",
                        m.name,
                        crate::error_chain(&e)
                    ));
                    engines.push(r.engine.clone());
                    let was = old.models.iter().find(|o| o.name == m.name);
                    models.push(was.cloned().unwrap_or_else(|| m.clone()));
                }
                (Some(Err(e)), None) => {
                    failures.push(format!(
                        "model {}: {}; it is not served",
                        m.name,
                        crate::error_chain(&e)
                    ));
                }
                (None, Some(r)) => {
                    reused[at.expect("running")] = true;
                    engines.push(r.engine.clone());
                    models.push(m.clone());
                }
                (None, None) => {
                    failures.push(format!("model {}: no engine was loaded", m.name));
                }
            }
        }
        let default_name = new.model().name.clone();
        if models.is_empty() {
            // Every model failed and none ran before: nothing changes.
            return Applied {
                models: self.clone(),
                settings: old.clone(),
                retired: Vec::new(),
                failures,
            };
        }
        new.default_model = models
            .iter()
            .position(|m| m.name == default_name)
            .or_else(|| models.iter().position(|m| m.name == old.model().name))
            .unwrap_or(0);
        new.models = models;
        let retired = self
            .entries
            .iter()
            .zip(reused)
            .filter(|(_, reused)| !reused)
            .map(|(e, _)| e.engine.clone())
            .collect();
        let models = Models::new(&new, engines);
        Applied {
            models,
            settings: new,
            retired,
            failures,
        }
    }
}

/// What [`Models::apply_reload`] produced.
#[derive(Debug)]
pub struct Applied {
    pub models: Models,
    pub settings: Settings,
    pub retired: Vec<Engine>,
    pub failures: Vec<String>,
}

fn file_name(m: &ModelSettings) -> String {
    m.path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// What a reload does, model by model.
#[derive(Debug, Default)]
pub struct ReloadPlan {
    /// Models to load beside the running ones (changed or added).
    pub load: Vec<EngineConfig>,
    /// Running models that stay, with their (possibly new) limits and defaults.
    pub retune: Vec<(String, Tunables)>,
    /// Running models that are no longer configured.
    pub removed: Vec<String>,
}

/// Compares the running settings with the new ones, model by model (by name).
pub fn plan_reload(old: &Settings, new: &Settings) -> ReloadPlan {
    let mut plan = ReloadPlan::default();
    for m in &new.models {
        let cfg = new.engine_config_for(m);
        match old.models.iter().find(|o| o.name == m.name) {
            Some(o)
                if o.parallel == m.parallel && !old.engine_config_for(o).needs_new_engine(&cfg) =>
            {
                plan.retune.push((m.name.clone(), cfg.tunables()));
            }
            _ => plan.load.push(cfg),
        }
    }
    plan.removed = old
        .models
        .iter()
        .filter(|o| !new.models.iter().any(|m| m.name == o.name))
        .map(|o| o.name.clone())
        .collect();
    plan
}

impl Models {
    /// Applies the retunes of `plan` to the running engines.
    pub fn retune(&self, plan: &ReloadPlan) -> Result<(), String> {
        for (name, t) in &plan.retune {
            if let Some(e) = self.entries.iter().find(|e| &e.name == name) {
                e.engine
                    .retune(t.clone())
                    .map_err(|err| format!("model {name}: {err}"))?;
            }
        }
        Ok(())
    }
}

/// How `m` will run, for the memory guard.
fn shape(m: &ModelSettings) -> memory::Shape {
    memory::Shape {
        kv_cells: m.kv_cells,
        parallel: m.parallel,
        repack: m.repack,
    }
}

/// The memory guard at start: every model against every limit.
pub fn guard_start(settings: &Settings) -> Result<(), MemoryError> {
    let mut needs = Vec::with_capacity(settings.models.len());
    for m in &settings.models {
        needs.push(memory::need(&m.name, &m.path, shape(m))?);
    }
    let mut limits = memory::available();
    limits.extend(settings.limits.memory_limit.map(memory::budget));
    memory::check(&needs, &limits)?;
    let total: u64 = needs.iter().map(Need::total).sum();
    info!(
        "memory guard: the models need {} ({}); available {}",
        memory::mib(total),
        needs
            .iter()
            .map(Need::to_string)
            .collect::<Vec<_>>()
            .join("; "),
        limits
            .iter()
            .map(|a| format!("{} ({})", memory::mib(a.bytes), a.source))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// The memory guard at reload: the models of `plan.load` against the headroom left beside the
/// running ones (a file the running engines already map counts nothing), and all models of
/// `new` against the `memory_limit_mb` budget.
pub fn guard_reload(old: &Settings, new: &Settings, plan: &ReloadPlan) -> Result<(), MemoryError> {
    let mapped: Vec<&PathBuf> = old.models.iter().map(|m| &m.path).collect();
    let mut loading = Vec::new();
    for cfg in &plan.load {
        let m = new
            .models
            .iter()
            .find(|m| m.name == cfg.model_name)
            .expect("the plan comes from these settings");
        let mut need = memory::need(&m.name, &m.path, shape(m))?;
        if mapped.contains(&&m.path) {
            need.file = 0;
        }
        loading.push(need);
    }
    memory::check(&loading, &memory::available())?;
    if let Some(budget) = new.limits.memory_limit {
        let mut all = Vec::with_capacity(new.models.len());
        for m in &new.models {
            all.push(memory::need(&m.name, &m.path, shape(m))?);
        }
        memory::check(&all, &[memory::budget(budget)])?;
    }
    Ok(())
}

/// Loads the engines of a reload (blocking), each with its result.
pub fn load(cfgs: Vec<EngineConfig>) -> Vec<(String, Result<Engine, StartError>)> {
    cfgs.into_iter()
        .map(|cfg| {
            let name = cfg.model_name.clone();
            info!(
                "reload: loading model {name} from {} beside the running ones",
                cfg.model_path.display()
            );
            (name, Engine::start(cfg, |s| info!("{s}")))
        })
        .collect()
}

/// Warns when the models' compute threads together exceed the cores.
fn warn_oversubscribed(settings: &Settings) {
    let threads: usize = settings.models.iter().map(|m| m.threads).sum();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if settings.models.len() > 1 && threads > cores {
        warn!(
            "the models' threads add up to {threads} on {cores} cores: their engines compete \
             when several are busy at once; set `threads` per model to share the cores"
        );
    }
}
