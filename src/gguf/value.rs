//! Typed metadata: values, arrays and the key/value table with its typed getters.

use std::collections::HashMap;

use super::error::GgufError;

/// A metadata value (`gguf_metadata_value_t`).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Array),
}

/// A homogeneous metadata array; nested arrays are `Array(Vec<Array>)`.
#[derive(Clone, Debug, PartialEq)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<Array>),
}

/// GGUF value type ids (`enum gguf_type`).
pub mod value_type {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

impl Value {
    /// The GGUF type id this value is stored with.
    pub fn type_id(&self) -> u32 {
        use value_type as t;
        match self {
            Value::U8(_) => t::U8,
            Value::I8(_) => t::I8,
            Value::U16(_) => t::U16,
            Value::I16(_) => t::I16,
            Value::U32(_) => t::U32,
            Value::I32(_) => t::I32,
            Value::U64(_) => t::U64,
            Value::I64(_) => t::I64,
            Value::F32(_) => t::F32,
            Value::F64(_) => t::F64,
            Value::Bool(_) => t::BOOL,
            Value::String(_) => t::STRING,
            Value::Array(_) => t::ARRAY,
        }
    }

    /// Short type name for messages, e.g. `"u32"`, `"array[string]"`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F32(_) => "f32",
            Value::F64(_) => "f64",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Array(a) => a.type_name(),
        }
    }

    /// The value as an integer if it is one of the integer types (widened losslessly).
    pub fn as_int(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(v) => v.into(),
            Value::I8(v) => v.into(),
            Value::U16(v) => v.into(),
            Value::I16(v) => v.into(),
            Value::U32(v) => v.into(),
            Value::I32(v) => v.into(),
            Value::U64(v) => v.into(),
            Value::I64(v) => v.into(),
            _ => return None,
        })
    }
}

impl Array {
    /// The GGUF type id of the elements.
    pub fn elem_type_id(&self) -> u32 {
        use value_type as t;
        match self {
            Array::U8(_) => t::U8,
            Array::I8(_) => t::I8,
            Array::U16(_) => t::U16,
            Array::I16(_) => t::I16,
            Array::U32(_) => t::U32,
            Array::I32(_) => t::I32,
            Array::U64(_) => t::U64,
            Array::I64(_) => t::I64,
            Array::F32(_) => t::F32,
            Array::F64(_) => t::F64,
            Array::Bool(_) => t::BOOL,
            Array::String(_) => t::STRING,
            Array::Array(_) => t::ARRAY,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::F64(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::String(v) => v.len(),
            Array::Array(v) => v.len(),
        }
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Short type name for messages, e.g. `"array[f32]"`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Array::U8(_) => "array[u8]",
            Array::I8(_) => "array[i8]",
            Array::U16(_) => "array[u16]",
            Array::I16(_) => "array[i16]",
            Array::U32(_) => "array[u32]",
            Array::I32(_) => "array[i32]",
            Array::U64(_) => "array[u64]",
            Array::I64(_) => "array[i64]",
            Array::F32(_) => "array[f32]",
            Array::F64(_) => "array[f64]",
            Array::Bool(_) => "array[bool]",
            Array::String(_) => "array[string]",
            Array::Array(_) => "array[array]",
        }
    }
}

/// Metadata key/value pairs, in file order (so `inspect` can print them as stored).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metadata {
    entries: Vec<(String, Value)>,
    index: HashMap<String, usize>,
}

impl Metadata {
    /// The value stored under `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    /// All pairs in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds a pair; returns `false` (and changes nothing) if the key already exists.
    pub(super) fn insert(&mut self, key: String, value: Value) -> bool {
        if self.index.contains_key(&key) {
            return false;
        }
        self.index.insert(key.clone(), self.entries.len());
        self.entries.push((key, value));
        true
    }

    fn wrong_type(key: &str, expected: &'static str, v: &Value) -> GgufError {
        GgufError::WrongType {
            key: key.to_owned(),
            expected,
            found: v.type_name(),
        }
    }

    /// Any integer value under `key`, range-checked into `T`.
    fn opt_int<T: TryFrom<i128>>(
        &self,
        key: &str,
        expected: &'static str,
    ) -> Result<Option<T>, GgufError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let n = v
            .as_int()
            .ok_or_else(|| Self::wrong_type(key, expected, v))?;
        T::try_from(n).map(Some).map_err(|_| GgufError::OutOfRange {
            key: key.to_owned(),
            value: n.to_string(),
            expected,
        })
    }

    fn required<T>(key: &str, v: Result<Option<T>, GgufError>) -> Result<T, GgufError> {
        v?.ok_or_else(|| GgufError::MissingKey(key.to_owned()))
    }

    /// An integer key as `u32` (any integer type accepted if the value fits).
    pub fn opt_u32(&self, key: &str) -> Result<Option<u32>, GgufError> {
        self.opt_int(key, "u32")
    }

    /// Like [`Metadata::opt_u32`], but absent is [`GgufError::MissingKey`].
    pub fn req_u32(&self, key: &str) -> Result<u32, GgufError> {
        Self::required(key, self.opt_u32(key))
    }

    /// An integer key as `u64` (any integer type accepted if the value fits).
    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>, GgufError> {
        self.opt_int(key, "u64")
    }

    /// Like [`Metadata::opt_u64`], but absent is [`GgufError::MissingKey`].
    pub fn req_u64(&self, key: &str) -> Result<u64, GgufError> {
        Self::required(key, self.opt_u64(key))
    }

    /// An integer key as `i64` (any integer type accepted if the value fits).
    pub fn opt_i64(&self, key: &str) -> Result<Option<i64>, GgufError> {
        self.opt_int(key, "i64")
    }

    /// A float key as `f32`; `F64` is accepted and narrowed (an overflow to infinity is an error).
    pub fn opt_f32(&self, key: &str) -> Result<Option<f32>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(&Value::F32(x)) => Ok(Some(x)),
            Some(&Value::F64(x)) => {
                let narrowed = x as f32;
                if x.is_finite() && !narrowed.is_finite() {
                    return Err(GgufError::OutOfRange {
                        key: key.to_owned(),
                        value: x.to_string(),
                        expected: "f32",
                    });
                }
                Ok(Some(narrowed))
            }
            Some(v) => Err(Self::wrong_type(key, "f32", v)),
        }
    }

    /// Like [`Metadata::opt_f32`], but absent is [`GgufError::MissingKey`].
    pub fn req_f32(&self, key: &str) -> Result<f32, GgufError> {
        Self::required(key, self.opt_f32(key))
    }

    /// A bool key.
    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(&Value::Bool(b)) => Ok(Some(b)),
            Some(v) => Err(Self::wrong_type(key, "bool", v)),
        }
    }

    /// A string key.
    pub fn opt_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(Self::wrong_type(key, "string", v)),
        }
    }

    /// Like [`Metadata::opt_str`], but absent is [`GgufError::MissingKey`].
    pub fn req_str(&self, key: &str) -> Result<&str, GgufError> {
        Self::required(key, self.opt_str(key))
    }

    /// A string-array key (e.g. `tokenizer.ggml.tokens`).
    pub fn opt_str_array(&self, key: &str) -> Result<Option<&[String]>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(Array::String(v))) => Ok(Some(v)),
            Some(v) => Err(Self::wrong_type(key, "array[string]", v)),
        }
    }

    /// An f32-array key (e.g. `tokenizer.ggml.scores`). Only `array[f32]` is accepted.
    pub fn opt_f32_array(&self, key: &str) -> Result<Option<&[f32]>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(Array::F32(v))) => Ok(Some(v)),
            Some(v) => Err(Self::wrong_type(key, "array[f32]", v)),
        }
    }

    /// An i32-array key (e.g. `tokenizer.ggml.token_type`). Only `array[i32]` is accepted.
    pub fn opt_i32_array(&self, key: &str) -> Result<Option<&[i32]>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(Array::I32(v))) => Ok(Some(v)),
            Some(v) => Err(Self::wrong_type(key, "array[i32]", v)),
        }
    }
}
