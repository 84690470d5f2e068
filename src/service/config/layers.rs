//! Reading and merging the layers: files with their drop-ins, `LLAMABUS_*` variables and
//! flags, each checked alone, with the origin (`file:line`, variable, flag) of every key kept
//! for error messages.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::build::FileConfig;
use super::ConfigError;

/// The sections, as they appear in `LLAMABUS_<SECTION>_<KEY>` (`model_sampling` before
/// `model`).
const ENV_SECTIONS: [&str; 7] = [
    "model_sampling",
    "limits",
    "model",
    "mqtt",
    "node",
    "log",
    "homeassistant",
];

/// The drop-in directory of a main file: `dir/config.toml` → `dir/config.d`.
pub fn dropin_dir(main: &Path) -> PathBuf {
    let stem = main
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config".into());
    main.with_file_name(format!("{stem}.d"))
}

/// The `*.toml` files of a drop-in directory in file-name order (none when it is missing).
pub(super) fn dropins(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let read_err = |error| ConfigError::Read {
        path: dir.to_owned(),
        error,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(read_err(e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(read_err)?.path();
        if path.extension().is_some_and(|e| e == "toml") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Which layer set each key last: dotted key → `file:line`, variable or flag.
#[derive(Debug, Default)]
pub(super) struct Origins {
    by_key: BTreeMap<String, String>,
    /// For keys no layer set (a missing required key): the files read, or `(defaults)`.
    pub(super) fallback: String,
}

impl Origins {
    /// The origin of `key`, else of the nearest table above it that a layer set, else of a key
    /// below it (`model.sampling` → `model.sampling.temperature`). List entries are
    /// `models[1]`, their keys `models[1].threads`.
    pub(super) fn of(&self, key: &str) -> String {
        let mut k = key;
        loop {
            if let Some(o) = self.by_key.get(k) {
                return o.clone();
            }
            let entry = k.strip_suffix(']').and_then(|e| e.rsplit_once('['));
            match (entry, k.rsplit_once('.')) {
                (Some((list, _)), _) => k = list,
                (None, Some((parent, _))) => k = parent,
                (None, None) => break,
            }
        }
        let below = format!("{key}.");
        self.by_key
            .iter()
            .find(|(k, _)| k.starts_with(&below))
            .map_or_else(|| self.fallback.clone(), |(_, o)| o.clone())
    }
}

/// The layers merged so far.
#[derive(Debug, Default)]
pub(super) struct Layers {
    pub(super) table: toml::Table,
    pub(super) origins: Origins,
    pub(super) files: Vec<String>,
}

impl Layers {
    /// Checks one TOML file on its own (syntax, unknown keys, value types: the TOML error
    /// carries the line and the key), records where each key is, and merges it.
    pub(super) fn add_file(&mut self, text: &str, path: &Path) -> Result<(), ConfigError> {
        let parse_err = |e| ConfigError::Parse {
            path: path.to_owned(),
            error: Box::new(e),
        };
        toml::from_str::<FileConfig>(text).map_err(parse_err)?;
        let table: toml::Table = toml::from_str(text).map_err(parse_err)?;
        let name = path.display().to_string();
        if let Ok(doc) = toml::de::DeTable::parse(text) {
            record_lines(doc.get_ref(), "", text, &name, &mut self.origins.by_key);
        }
        merge(&mut self.table, table);
        self.files.push(name);
        Ok(())
    }

    /// One value from outside a file (a variable or a flag), checked on its own.
    pub(super) fn add_value(
        &mut self,
        key: &str,
        value: toml::Value,
        origin: &str,
    ) -> Result<(), ConfigError> {
        let mut layer = toml::Table::new();
        let mut parts: Vec<&str> = key.split('.').collect();
        let leaf = parts.pop().expect("split yields at least one part");
        let mut t = &mut layer;
        for part in parts {
            t = t
                .entry(part)
                .or_insert_with(|| toml::Value::Table(Default::default()))
                .as_table_mut()
                .expect("just inserted a table");
        }
        t.insert(leaf.to_owned(), value);
        FileConfig::deserialize(layer.clone()).map_err(|e| ConfigError::Invalid {
            origin: origin.to_owned(),
            key: key.to_owned(),
            why: e.message().to_owned(),
        })?;
        merge(&mut self.table, layer);
        self.origins
            .by_key
            .insert(key.to_owned(), origin.to_owned());
        Ok(())
    }

    /// `LLAMABUS_<SECTION>_<KEY>=value`: a string when the key takes one, else a TOML literal.
    pub(super) fn add_env(&mut self, var: &str, raw: &str) -> Result<(), ConfigError> {
        let Some(key) = env_key(var) else {
            return Ok(());
        };
        let origin = format!("environment {var}");
        let as_string = toml::Value::String(raw.to_owned());
        if self.add_value(&key, as_string.clone(), &origin).is_ok() {
            return Ok(());
        }
        let literal = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"));
        self.add_value(&key, literal.unwrap_or(as_string), &origin)
    }
}

/// `LLAMABUS_MODEL_SAMPLING_TOP_K` → `model.sampling.top_k`; `None` for variables that are not
/// configuration (no known section).
fn env_key(var: &str) -> Option<String> {
    let rest = var.strip_prefix("LLAMABUS_")?.to_ascii_lowercase();
    if rest == "log" {
        return Some("log.level".into());
    }
    ENV_SECTIONS.iter().find_map(|section| {
        let key = rest.strip_prefix(section)?.strip_prefix('_')?;
        (!key.is_empty()).then(|| format!("{}.{key}", section.replace('_', ".")))
    })
}

/// Records `file:line` of every key (tables too) of a parsed document.
fn record_lines(
    table: &toml::de::DeTable<'_>,
    prefix: &str,
    text: &str,
    file: &str,
    out: &mut BTreeMap<String, String>,
) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.get_ref().to_string()
        } else {
            format!("{prefix}.{}", k.get_ref())
        };
        let at = k.span().start.min(text.len());
        let line = text[..at].matches('\n').count() + 1;
        out.insert(key.clone(), format!("{file}:{line}"));
        match v.get_ref() {
            toml::de::DeValue::Table(t) => record_lines(t, &key, text, file, out),
            toml::de::DeValue::Array(items) => {
                // A list replaces an earlier layer's: forget where its old entries were.
                let entries = format!("{key}[");
                out.retain(|k, _| !k.starts_with(&entries));
                for (i, item) in items.iter().enumerate() {
                    if let toml::de::DeValue::Table(t) = item.get_ref() {
                        let at = item.span().start.min(text.len());
                        let line = text[..at].matches('\n').count() + 1;
                        let entry = format!("{key}[{i}]");
                        out.insert(entry.clone(), format!("{file}:{line}"));
                        record_lines(t, &entry, text, file, out);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Merges `src` over `dst`: tables key by key, anything else replaced.
fn merge(dst: &mut toml::Table, src: toml::Table) {
    for (k, v) in src {
        match (dst.get_mut(&k), v) {
            (Some(toml::Value::Table(d)), toml::Value::Table(s)) => merge(d, s),
            (_, v) => {
                dst.insert(k, v);
            }
        }
    }
}
