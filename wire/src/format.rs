//! A request's `format`: the name of a format configured on the daemon, or a format stated
//! inline. A microcontroller sends a name (a short string); inline formats travel as JSON text,
//! so this crate needs no JSON value type and stays `no_std`.

use alloc::format;
use alloc::string::String;
use core::fmt;

use serde::{Deserialize, Serialize};

/// A request's `format`.
///
/// In JSON, `"format": "light"` names a format from the daemon's configuration, and an object
/// (`{"type": "json_schema", "schema": {...}}`, `{"type": "json"}`, `{"type": "regex",
/// "pattern": "..."}`, `{"type": "lark", "grammar": "..."}`) states one inline. postcard carries
/// the name, or the inline object as JSON text (enum variants 0 and 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FormatRef {
    /// A configured format's name.
    Named(String),
    /// An inline format: the JSON text of the object.
    Inline(String),
}

/// postcard's form of [`FormatRef`].
#[derive(Serialize, Deserialize)]
enum FormatRefBin {
    Named(String),
    Inline(String),
}

impl Serialize for FormatRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            // JSON: the name as a string; an inline object as itself (see the JSON codec,
            // which writes the object; this fallback writes its text).
            match self {
                FormatRef::Named(n) | FormatRef::Inline(n) => s.serialize_str(n),
            }
        } else {
            match self {
                FormatRef::Named(n) => FormatRefBin::Named(n.clone()),
                FormatRef::Inline(t) => FormatRefBin::Inline(t.clone()),
            }
            .serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for FormatRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            d.deserialize_any(FormatRefVisitor)
        } else {
            Ok(match FormatRefBin::deserialize(d)? {
                FormatRefBin::Named(n) => FormatRef::Named(n),
                FormatRefBin::Inline(t) => FormatRef::Inline(t),
            })
        }
    }
}

/// JSON `format`: a string is a name; an object is kept as its JSON text.
struct FormatRefVisitor;

impl<'de> serde::de::Visitor<'de> for FormatRefVisitor {
    type Value = FormatRef;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a format name or a format object")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<FormatRef, E> {
        Ok(FormatRef::Named(v.into()))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<FormatRef, A::Error> {
        let mut out = String::new();
        JsonText(&mut out).visit_map(map)?;
        Ok(FormatRef::Inline(out))
    }
}

/// Re-writes whatever JSON value it is handed as compact JSON text (for inline formats, so the
/// types here need no JSON value type). Numbers keep their integer or float form.
struct JsonText<'a>(&'a mut String);

impl<'de> serde::de::DeserializeSeed<'de> for JsonText<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for JsonText<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.0.push_str(if v { "true" } else { "false" });
        Ok(())
    }
    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.0.push_str(&format!("{v}"));
        Ok(())
    }
    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.0.push_str(&format!("{v}"));
        Ok(())
    }
    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        // `{:?}` keeps a decimal point or exponent, so 2.0 stays a float.
        self.0.push_str(&format!("{v:?}"));
        Ok(())
    }
    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        json_string(self.0, v);
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        self.0.push_str("null");
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        self.0.push_str("null");
        Ok(())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.0.push('[');
        let mut first = true;
        loop {
            if !first {
                self.0.push(',');
            }
            let len = self.0.len();
            if seq.next_element_seed(JsonText(self.0))?.is_none() {
                // Undo the comma written before an element that was not there.
                self.0.truncate(len - usize::from(!first));
                break;
            }
            first = false;
        }
        self.0.push(']');
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.0.push('{');
        let mut first = true;
        while let Some(key) = map.next_key::<String>()? {
            if !first {
                self.0.push(',');
            }
            first = false;
            json_string(self.0, &key);
            self.0.push(':');
            map.next_value_seed(JsonText(self.0))?;
        }
        self.0.push('}');
        Ok(())
    }
}

/// Appends `s` as a JSON string literal.
fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}
