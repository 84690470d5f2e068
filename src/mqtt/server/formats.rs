//! A request's format: named in the topic (`format/{name}/prompt/...`) or in its `format`
//! field, compiled for the serving model's vocabulary. Named formats compile once per model and
//! are kept until the settings or the engines change; inline ones compile per request.

use std::collections::HashMap;

use super::event_loop::Loop;
use crate::engine::Engine;
use crate::format::{FormatError, FormatSpec, Grammar};
use crate::mqtt::wire::FormatRef;

/// Named formats compiled for a model's vocabulary, by (model, format name).
pub(super) type FormatCache = HashMap<(String, String), Grammar>;

impl Loop {
    /// The compiled format a request asks for, by topic or by its `format` field. Inline
    /// formats compile here, on the event loop, within llguidance's compile fuel (a few ms for
    /// a typical schema, bounded for hostile ones); named ones once per model.
    pub(super) fn format_for(
        &mut self,
        engine: &Engine,
        topic: Option<&str>,
        field: Option<&FormatRef>,
    ) -> Result<Option<Grammar>, FormatError> {
        let name = match (topic, field) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => {
                return Err(FormatError::Invalid(
                    "the topic and the `format` field both name a format; give one".into(),
                ))
            }
            (None, Some(FormatRef::Inline(text))) => {
                // A request states the tagged form only (`{"type": ...}`), never a bare schema.
                let v: serde_json::Value =
                    serde_json::from_str(text).map_err(|e| FormatError::Invalid(e.to_string()))?;
                let spec = FormatSpec::from_value(&v)?;
                return engine.format_compiler()?.compile(&spec).map(Some);
            }
            (Some(name), None) => name,
            (None, Some(FormatRef::Named(name))) => name.as_str(),
        };
        let key = (engine.model_info().name, name.to_owned());
        if let Some(g) = self.formats.get(&key) {
            return Ok(Some(g.clone()));
        }
        let spec = self
            .settings
            .formats
            .get(name)
            .ok_or_else(|| FormatError::UnknownName(name.to_owned()))?;
        let grammar = engine.format_compiler()?.compile(spec)?;
        self.formats.insert(key, grammar.clone());
        Ok(Some(grammar))
    }
}
