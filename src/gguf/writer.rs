//! A small GGUF v3 writer, used by tests and tools to build tiny models and valid baseline
//! files (which tests then corrupt byte by byte).
//!
//! Layout follows the spec: header, metadata, tensor infos, zero padding to the alignment,
//! then each tensor's data padded to the alignment, in insertion order.

use std::path::Path;

use super::reader::{DEFAULT_ALIGNMENT, KEY_ALIGNMENT, MAGIC};
use super::types::GgmlType;
use super::value::{Array, Value};

/// One tensor queued for writing.
#[derive(Clone, Debug)]
struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    data: Vec<u8>,
}

/// Builds a GGUF v3 file in memory.
///
/// ```
/// use llamabus::gguf::{GgmlType, GgufWriter, Value};
///
/// let bytes = GgufWriter::new()
///     .kv("general.architecture", Value::String("llama".into()))
///     .tensor("w", &[2], GgmlType::F32, vec![0; 8])
///     .to_bytes();
/// assert_eq!(&bytes[..4], b"GGUF");
/// ```
#[derive(Clone, Debug)]
pub struct GgufWriter {
    version: u32,
    alignment: u64,
    kvs: Vec<(String, Value)>,
    tensors: Vec<PendingTensor>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    /// An empty v3 file with the default alignment (32).
    pub fn new() -> Self {
        GgufWriter {
            version: 3,
            alignment: DEFAULT_ALIGNMENT,
            kvs: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// Overrides the version field (2 and 3 share a layout; others make invalid files for tests).
    pub fn version(mut self, version: u32) -> Self {
        self.version = version;
        self
    }

    /// Appends a metadata pair. Keys are written as given (duplicates included), so tests can
    /// build invalid files.
    pub fn kv(mut self, key: impl Into<String>, value: Value) -> Self {
        self.kvs.push((key.into(), value));
        self
    }

    /// Sets the data alignment and records it as `general.alignment` (u32), replacing any
    /// earlier value.
    ///
    /// # Panics
    /// If `n` is not a power of two that fits in a u32 (a caller bug, not file input).
    pub fn alignment(mut self, n: u32) -> Self {
        assert!(n.is_power_of_two(), "alignment {n} is not a power of two");
        self.alignment = n.into();
        self.kvs.retain(|(k, _)| k != KEY_ALIGNMENT);
        self.kvs.push((KEY_ALIGNMENT.to_owned(), Value::U32(n)));
        self
    }

    /// Appends a tensor with shape `dims` (ggml order, `ne[0]` first) and raw `data`.
    ///
    /// # Panics
    /// If `data` is not exactly the size `dims` and `ty` call for (a caller bug).
    pub fn tensor(
        mut self,
        name: impl Into<String>,
        dims: &[u64],
        ty: GgmlType,
        data: Vec<u8>,
    ) -> Self {
        let name = name.into();
        let rows: u64 = dims.iter().skip(1).product();
        let expected = dims
            .first()
            .and_then(|&ne0| ty.row_bytes(ne0))
            .and_then(|r| r.checked_mul(rows));
        assert_eq!(
            expected,
            Some(data.len() as u64),
            "tensor '{name}': {} data bytes for shape {dims:?} of type {ty}",
            data.len()
        );
        self.tensors.push(PendingTensor {
            name,
            dims: dims.to_vec(),
            ty,
            data,
        });
        self
    }

    /// Serialises the file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.kvs.len() as u64).to_le_bytes());
        for (key, value) in &self.kvs {
            write_string(&mut out, key);
            out.extend_from_slice(&value.type_id().to_le_bytes());
            write_value(&mut out, value);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            write_string(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ty.id().to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offset = (offset + t.data.len() as u64).next_multiple_of(self.alignment);
        }
        if !self.tensors.is_empty() {
            pad(&mut out, self.alignment);
            for t in &self.tensors {
                out.extend_from_slice(&t.data);
                pad(&mut out, self.alignment);
            }
        }
        out
    }

    /// Writes the file to `path`.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.to_bytes())
    }
}

fn pad(out: &mut Vec<u8>, alignment: u64) {
    let len = (out.len() as u64).next_multiple_of(alignment) as usize;
    out.resize(len, 0);
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Writes a value's payload (without its type id).
fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::U8(v) => out.push(*v),
        Value::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Bool(v) => out.push(u8::from(*v)),
        Value::String(s) => write_string(out, s),
        Value::Array(a) => write_array(out, a),
    }
}

/// Writes an array payload: element type, length, elements.
fn write_array(out: &mut Vec<u8>, a: &Array) {
    out.extend_from_slice(&a.elem_type_id().to_le_bytes());
    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
    fn each<T>(out: &mut Vec<u8>, v: &[T], f: impl Fn(&mut Vec<u8>, &T)) {
        for x in v {
            f(out, x);
        }
    }
    match a {
        Array::U8(v) => out.extend_from_slice(v),
        Array::I8(v) => each(out, v, |o, x| o.extend_from_slice(&x.to_le_bytes())),
        Array::U16(v) => each(out, v, |o, x| o.extend_from_slice(&x.to_le_bytes())),
        Array::I16(v) => each(out, v, |o, x| o.extend_from_slice(&x.to_le_bytes())),
        Array::U32(v) => each(out, v, |o, x| o.extend_from_slice(&x.to_le_bytes())),
        Array::I32(v) => each(out, v, |o, x| o.extend_from_slice(&x.to_le_bytes())),
        Array::U64(v) => each(out, v, |o, x| o.extend_from_slice(&x.to_le_bytes())),
        Array::I64(v) => each(out, v, |o, x| o.extend_from_slice(&x.to_le_bytes())),
        Array::F32(v) => each(out, v, |o, x| o.extend_from_slice(&x.to_le_bytes())),
        Array::F64(v) => each(out, v, |o, x| o.extend_from_slice(&x.to_le_bytes())),
        Array::Bool(v) => each(out, v, |o, x| o.push(u8::from(*x))),
        Array::String(v) => each(out, v, |o, s| write_string(o, s)),
        Array::Array(v) => each(out, v, write_array),
    }
}
