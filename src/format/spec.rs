//! What a format is, and the checks we make before llguidance sees it.
//!
//! A request's `format` is one of (JSON, tagged by `type`):
//! - `{"type": "json_schema", "schema": {...}}`: JSON Schema, the subset llguidance enforces;
//! - `{"type": "json"}`: any JSON object;
//! - `{"type": "regex", "pattern": "..."}`: the reply matches the regex in full;
//! - `{"type": "lark", "grammar": "..."}`: llguidance's Lark-like grammar.
//!
//! Our own limits come first, because llguidance's are about compile and mask *work*: text size
//! and nesting depth bound what a hostile request can make us parse at all, and the keyword
//! check turns a keyword llguidance would skip (it ignores keywords unknown to the JSON Schema
//! draft, so a typo like `maxLenght` would silently constrain nothing) into an error.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::FormatError;

/// Size and depth limits for formats, checked before compiling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FormatLimits {
    /// Bytes of schema (as compact JSON), regex or grammar text.
    pub max_bytes: usize,
    /// Nesting of schema JSON values, or of brackets in a regex or grammar.
    pub max_depth: usize,
}

impl Default for FormatLimits {
    fn default() -> Self {
        // 32 KiB holds any schema a device would use many times over; 32 levels likewise.
        FormatLimits {
            max_bytes: 32 * 1024,
            max_depth: 32,
        }
    }
}

/// One format, as a request or the config states it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum FormatSpec {
    /// A JSON Schema (an object).
    JsonSchema { schema: Value },
    /// Any JSON object.
    Json,
    /// A regular expression (Rust `regex` syntax) the whole reply must match.
    Regex { pattern: String },
    /// A grammar in llguidance's Lark-like syntax.
    Lark { grammar: String },
}

/// A named format in the configuration, `[formats.NAME]`: exactly one of its keys.
///
/// ```toml
/// [formats.light]
/// schema = '''{"type": "object", "properties": {"action": {"enum": ["on", "off"]}}}'''
/// [formats.percent]
/// regex = "[0-9]{1,3}%"
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FormatEntry {
    /// A JSON Schema, as JSON text.
    pub schema: Option<String>,
    /// `true`: any JSON object.
    pub json: Option<bool>,
    pub regex: Option<String>,
    pub lark: Option<String>,
}

impl FormatEntry {
    /// The format this entry states.
    pub fn to_spec(&self) -> Result<FormatSpec, FormatError> {
        let spec = match (&self.schema, self.json, &self.regex, &self.lark) {
            (Some(text), None, None, None) => FormatSpec::JsonSchema {
                schema: serde_json::from_str(text)
                    .map_err(|e| FormatError::Invalid(format!("`schema` is not JSON: {e}")))?,
            },
            (None, Some(true), None, None) => FormatSpec::Json,
            (None, None, Some(pattern), None) => FormatSpec::Regex {
                pattern: pattern.clone(),
            },
            (None, None, None, Some(grammar)) => FormatSpec::Lark {
                grammar: grammar.clone(),
            },
            _ => {
                return Err(FormatError::Invalid(
                    "exactly one of `schema`, `json = true`, `regex` or `lark` is required".into(),
                ))
            }
        };
        Ok(spec)
    }
}

/// JSON Schema keywords llguidance enforces (its `IMPLEMENTED` list, llguidance 1.9
/// `src/json/schema.rs`).
const ENFORCED: &[&str] = &[
    "anyOf",
    "oneOf",
    "allOf",
    "$ref",
    "const",
    "enum",
    "type",
    "items",
    "additionalItems",
    "prefixItems",
    "minItems",
    "maxItems",
    "properties",
    "additionalProperties",
    "patternProperties",
    "required",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "format",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
];

/// Keywords that constrain nothing (metadata, annotations, definitions).
const ANNOTATIONS: &[&str] = &[
    "$anchor",
    "$defs",
    "definitions",
    "$schema",
    "$id",
    "$comment",
    "title",
    "description",
    "default",
    "readOnly",
    "writeOnly",
    "examples",
];

/// Keywords whose value maps names to subschemas.
const SCHEMA_MAPS: &[&str] = &["properties", "patternProperties", "$defs", "definitions"];
/// Keywords whose value is one subschema (or, for `items`, possibly a list of them).
const SCHEMA_ONE: &[&str] = &["additionalProperties", "additionalItems", "items"];
/// Keywords whose value is a list of subschemas.
const SCHEMA_LISTS: &[&str] = &["prefixItems", "anyOf", "oneOf", "allOf", "items"];

impl FormatSpec {
    /// Parses the tagged JSON form (a request's inline `format`).
    pub fn from_value(v: &Value) -> Result<FormatSpec, FormatError> {
        FormatSpec::deserialize(v).map_err(|e| FormatError::Invalid(e.to_string()))
    }

    /// Parses a format given as text (a `--format @file` or a config entry): the tagged form
    /// when its `type` is one of the four format tags, otherwise the text is a JSON Schema.
    pub fn from_json_text(text: &str) -> Result<FormatSpec, FormatError> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| FormatError::Invalid(format!("not JSON: {e}")))?;
        let tagged = v
            .get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| ["json_schema", "json", "regex", "lark"].contains(&t));
        if tagged {
            FormatSpec::from_value(&v)
        } else {
            Ok(FormatSpec::JsonSchema { schema: v })
        }
    }

    /// Whether replies are JSON (and so carry the parsed value beside the text).
    pub fn is_json(&self) -> bool {
        matches!(self, FormatSpec::JsonSchema { .. } | FormatSpec::Json)
    }

    /// Checks size, depth and (for schemas) that every keyword is enforced.
    pub fn check(&self, limits: &FormatLimits) -> Result<(), FormatError> {
        match self {
            FormatSpec::Json => Ok(()),
            FormatSpec::JsonSchema { schema } => {
                if !schema.is_object() {
                    return Err(FormatError::Invalid(
                        "`schema` must be a JSON object".into(),
                    ));
                }
                let bytes = schema.to_string().len();
                check_size("schema", bytes, limits)?;
                if let Some(depth) = value_depth(schema, limits.max_depth) {
                    return Err(FormatError::TooDeep {
                        what: "schema",
                        depth,
                        limit: limits.max_depth,
                    });
                }
                check_keywords(schema, &mut String::from("#"))
            }
            FormatSpec::Regex { pattern } => check_text("regex", pattern, limits),
            FormatSpec::Lark { grammar } => check_text("grammar", grammar, limits),
        }
    }
}

/// The `--format` argument of `llamabus ask` and `llamabus complete`, parsed one way for both.
#[derive(Clone, Debug, PartialEq)]
pub enum FormatArg {
    /// A name from the daemon's `[formats]` (`ask` sends it as is).
    Named(String),
    /// `json` (any JSON object), or `@path` to a file holding a tagged format or a JSON Schema.
    Spec(FormatSpec),
}

impl FormatArg {
    /// `json`, `@path`, or else a format name.
    pub fn parse(arg: &str) -> Result<FormatArg, FormatError> {
        if arg == "json" {
            return Ok(FormatArg::Spec(FormatSpec::Json));
        }
        let Some(path) = arg.strip_prefix('@') else {
            if arg.is_empty() {
                return Err(FormatError::Invalid("the format name is empty".into()));
            }
            return Ok(FormatArg::Named(arg.to_owned()));
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| FormatError::Invalid(format!("reading {path}: {e}")))?;
        FormatSpec::from_json_text(&text).map(FormatArg::Spec)
    }
}

fn check_size(what: &'static str, bytes: usize, limits: &FormatLimits) -> Result<(), FormatError> {
    if bytes > limits.max_bytes {
        return Err(FormatError::TooLarge {
            what,
            bytes,
            limit: limits.max_bytes,
        });
    }
    Ok(())
}

fn check_text(what: &'static str, text: &str, limits: &FormatLimits) -> Result<(), FormatError> {
    check_size(what, text.len(), limits)?;
    let depth = bracket_depth(text);
    if depth > limits.max_depth {
        return Err(FormatError::TooDeep {
            what,
            depth,
            limit: limits.max_depth,
        });
    }
    Ok(())
}

/// Deepest nesting of `(`, `[` and `{` in regex or grammar text, skipping backslash escapes.
/// Brackets inside quoted literals count too: conservative, never an underestimate.
pub fn bracket_depth(text: &str) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '(' | '[' | '{' => {
                depth += 1;
                max = max.max(depth);
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// `Some(depth)` when `v` nests deeper than `limit` (scalars are depth 0, `{}` is 1), else `None`.
/// Stops descending past the limit, so its cost is bounded by the value's size.
fn value_depth(v: &Value, limit: usize) -> Option<usize> {
    fn walk(v: &Value, depth: usize, limit: usize) -> Option<usize> {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(a) => Box::new(a.iter()),
            Value::Object(o) => Box::new(o.values()),
            _ => return None,
        };
        let depth = depth + 1;
        if depth > limit {
            return Some(depth);
        }
        children.filter_map(|c| walk(c, depth, limit)).next()
    }
    walk(v, 0, limit)
}

/// Refuses any keyword that is neither enforced nor an annotation, in every subschema.
fn check_keywords(schema: &Value, path: &mut String) -> Result<(), FormatError> {
    let map = match schema {
        Value::Bool(_) => return Ok(()),
        Value::Object(m) => m,
        _ => {
            return Err(FormatError::Invalid(format!(
                "a schema must be an object or a boolean, at {path}"
            )))
        }
    };
    for (key, value) in map {
        let k = key.as_str();
        if !ENFORCED.contains(&k) && !ANNOTATIONS.contains(&k) {
            return Err(FormatError::UnsupportedKeyword {
                keyword: key.clone(),
                path: path.clone(),
            });
        }
        let len = path.len();
        if SCHEMA_MAPS.contains(&k) {
            if let Value::Object(subs) = value {
                for (name, sub) in subs {
                    path.push_str(&format!("/{k}/{name}"));
                    check_keywords(sub, path)?;
                    path.truncate(len);
                }
            }
        } else if SCHEMA_LISTS.contains(&k) && value.is_array() {
            for (i, sub) in value.as_array().into_iter().flatten().enumerate() {
                path.push_str(&format!("/{k}/{i}"));
                check_keywords(sub, path)?;
                path.truncate(len);
            }
        } else if SCHEMA_ONE.contains(&k) {
            path.push_str(&format!("/{k}"));
            check_keywords(value, path)?;
            path.truncate(len);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: Value) -> Result<FormatSpec, FormatError> {
        let s = FormatSpec::from_value(&v)?;
        s.check(&FormatLimits::default())?;
        Ok(s)
    }

    #[test]
    fn the_four_shapes_parse() {
        assert_eq!(spec(json!({"type": "json"})).unwrap(), FormatSpec::Json);
        assert!(
            spec(json!({"type": "json_schema", "schema": {"type": "integer"}}))
                .unwrap()
                .is_json()
        );
        assert!(!spec(json!({"type": "regex", "pattern": "[0-9]+"}))
            .unwrap()
            .is_json());
        assert!(spec(json!({"type": "lark", "grammar": "start: \"a\""})).is_ok());
    }

    #[test]
    fn text_is_the_tagged_form_or_a_plain_schema() {
        assert_eq!(
            FormatSpec::from_json_text(r#"{"type": "regex", "pattern": "a+"}"#).unwrap(),
            FormatSpec::Regex {
                pattern: "a+".into()
            }
        );
        assert_eq!(
            FormatSpec::from_json_text(r#"{"type": "object"}"#).unwrap(),
            FormatSpec::JsonSchema {
                schema: json!({"type": "object"})
            }
        );
        assert!(matches!(
            FormatSpec::from_json_text("{nope"),
            Err(FormatError::Invalid(_))
        ));
    }

    #[test]
    fn config_entries_state_exactly_one_format() {
        let entry = |t: &str| toml::from_str::<FormatEntry>(t).unwrap().to_spec();
        assert_eq!(
            entry(r#"regex = "a+""#).unwrap(),
            FormatSpec::Regex {
                pattern: "a+".into()
            }
        );
        assert_eq!(entry("json = true").unwrap(), FormatSpec::Json);
        assert!(entry(r#"schema = '{"type": "object"}'"#).unwrap().is_json());
        assert!(entry(r#"schema = "{nope""#).is_err());
        assert!(entry("regex = 'a'\nlark = 'start: \"a\"'").is_err());
        assert!(entry("json = false").is_err());
        assert!(entry("").is_err());
        assert!(toml::from_str::<FormatEntry>("grammar = \"x\"").is_err());
    }

    #[test]
    fn bad_shapes_are_invalid() {
        for v in [
            json!({"type": "yaml"}),
            json!({"type": "regex"}),
            json!({"type": "regex", "pattern": "a", "extra": 1}),
            json!({"type": "json_schema", "schema": true}),
            json!({"type": "json_schema", "schema": [1]}),
            json!("light"),
        ] {
            assert!(
                matches!(spec(v.clone()), Err(FormatError::Invalid(_))),
                "{v}"
            );
        }
    }

    #[test]
    fn unsupported_keywords_are_named_with_their_path() {
        let e = spec(json!({"type": "json_schema", "schema": {
            "type": "object",
            "properties": {"name": {"type": "string", "maxLenght": 3}}
        }}))
        .unwrap_err();
        assert_eq!(
            e,
            FormatError::UnsupportedKeyword {
                keyword: "maxLenght".into(),
                path: "#/properties/name".into()
            }
        );
        let e = spec(json!({"type": "json_schema", "schema": {
            "anyOf": [{"type": "string"}, {"type": "array", "uniqueItems": true}]
        }}))
        .unwrap_err();
        assert!(e.to_string().contains("`uniqueItems` at #/anyOf/1"), "{e}");
        // llguidance's own options may not be smuggled in.
        let e = spec(json!({"type": "json_schema", "schema": {"x-guidance": {"lenient": true}}}))
            .unwrap_err();
        assert!(e.to_string().contains("x-guidance"), "{e}");
    }

    #[test]
    fn size_and_depth_are_limited() {
        let limits = FormatLimits {
            max_bytes: 100,
            max_depth: 4,
        };
        let big = FormatSpec::Regex {
            pattern: "a".repeat(101),
        };
        assert!(matches!(
            big.check(&limits),
            Err(FormatError::TooLarge { bytes: 101, .. })
        ));
        let deep = FormatSpec::Regex {
            pattern: "(((((a)))))".into(),
        };
        assert!(matches!(
            deep.check(&limits),
            Err(FormatError::TooDeep { depth: 5, .. })
        ));
        let escaped = FormatSpec::Regex {
            pattern: r"\(\(\(\(\(a".into(),
        };
        assert!(escaped.check(&limits).is_ok());
        let nested = FormatSpec::JsonSchema {
            schema: json!({"items": {"items": {"items": {"items": {"type": "integer"}}}}}),
        };
        assert!(matches!(
            nested.check(&limits),
            Err(FormatError::TooDeep { depth: 5, .. })
        ));
    }
}
