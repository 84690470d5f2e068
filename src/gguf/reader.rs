//! Hostile-input GGUF reader: header, typed metadata and tensor table over a mapped file.
//!
//! A GGUF file is untrusted input: ggml's own `gguf.cpp` has a long history of integer
//! overflows in counts × sizes, string lengths, `n_dims` and tensor offsets. This parser never
//! panics, never reads out of bounds and never allocates from a length field before checking it:
//!
//! - every read goes through a bounds-checked cursor whose errors name what was being read;
//! - counts and lengths are capped (the `MAX_*` constants) *and* checked against the bytes left
//!   in the file before anything is allocated, so decoded metadata takes at most a small
//!   multiple (~3×) of the file's size;
//! - all size and offset arithmetic is `checked_*`;
//! - unknown value types, unknown tensor types, bad shapes, misaligned, overlapping or
//!   out-of-file tensor data are rejected, each with its own [`GgufError`] variant naming the
//!   key or tensor.
//!
//! Format: <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>. Where the spec and ggml
//! disagree we follow ggml (`vendor/ggml/src/gguf.cpp`), because ggml is what consumes the
//! tensors: tensor names are < 64 bytes (`GGML_MAX_NAME` includes the NUL) and the data
//! section is only padded when there are tensors.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::path::Path;

use super::error::GgufError;
use super::types::GgmlType;
use super::value::{value_type, Array, Metadata, Value};

/// The four bytes every GGUF file starts with.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// Most tensors accepted. Llama-class models have a few hundred; 65 536 leaves room for MoE.
pub const MAX_TENSORS: u64 = 1 << 16;
/// Most metadata pairs accepted. Real files have tens.
pub const MAX_KVS: u64 = 1 << 20;
/// Longest metadata string value (1 MiB). Chat templates are ~10 KB, vocab entries tiny.
pub const MAX_STRING_LEN: u64 = 1 << 20;
/// Longest key, from the spec ("at most 2^16-1 bytes").
pub const MAX_KEY_LEN: u64 = (1 << 16) - 1;
/// Longest tensor name: ggml stores names in `char[GGML_MAX_NAME = 64]` with a NUL, and
/// gguf.cpp rejects `len >= 64`; a longer name would be silently truncated by `ggml_set_name`.
pub const MAX_TENSOR_NAME_LEN: u64 = 63;
/// Most elements in one metadata array (16 Mi). Vocabularies are ≤ 262 144 tokens; merges
/// lists a few hundred thousand.
pub const MAX_ARRAY_LEN: u64 = 1 << 24;
/// Deepest array nesting (an array of arrays of arrays). ggml itself rejects nested arrays;
/// the spec allows them, so we accept a little nesting but bound the recursion.
pub const MAX_ARRAY_DEPTH: usize = 3;
/// Most tensor dimensions (`GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;
/// Tensor data alignment when `general.alignment` is absent (`GGUF_DEFAULT_ALIGNMENT`).
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Key that overrides the data alignment.
pub const KEY_ALIGNMENT: &str = "general.alignment";

/// Smallest possible encoded KV: key length (8) + 1-byte key + value type (4) + 1-byte value.
const MIN_KV_BYTES: u64 = 8 + 1 + 4 + 1;
/// Smallest possible tensor info: name length (8) + n_dims (4) + one dim (8) + type (4) + offset (8).
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 8 + 4 + 8;

/// One entry of the tensor table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name, at most [`MAX_TENSOR_NAME_LEN`] bytes.
    pub name: String,
    /// `ne[0..n]` in ggml order (innermost first), 1..=4 dims, none zero.
    pub dims: Vec<u64>,
    /// Storage type.
    pub ty: GgmlType,
    /// Offset of the data relative to [`Gguf::data_offset`].
    pub offset: u64,
    /// Size of the data in bytes.
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Number of elements (the product of `dims`; checked not to overflow at parse time).
    pub fn n_elements(&self) -> u64 {
        // Saturating so a hand-made `TensorInfo` cannot panic here either.
        self.dims.iter().fold(1u64, |acc, &d| acc.saturating_mul(d))
    }
}

/// The bytes behind a [`Gguf`].
enum Storage {
    /// In-memory files, copied into ggml-aligned memory so tensors can be placed zero-copy.
    Owned(crate::ggml::AlignedBytes),
    Mapped(memmap2::Mmap),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Owned(v) => v,
            Storage::Mapped(m) => m,
        }
    }
}

/// A parsed GGUF file. The tensor data stays in the backing buffer (an mmap for files); only
/// the header is decoded. `Send + Sync`, so it can be shared through an `Arc`.
pub struct Gguf {
    storage: Storage,
    header: Header,
}

/// Everything decoded from the file's header region.
struct Header {
    version: u32,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

// `Gguf` is shared across threads through `Arc`.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Gguf>();
};

impl fmt::Debug for Gguf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gguf")
            .field("version", &self.header.version)
            .field("len", &self.bytes().len())
            .field("mapped", &self.is_mapped())
            .field("n_kv", &self.header.metadata.len())
            .field("n_tensors", &self.header.tensors.len())
            .field("alignment", &self.header.alignment)
            .field("data_offset", &self.header.data_offset)
            .finish()
    }
}

impl Gguf {
    /// Opens and parses the file at `path`. Parse errors come back wrapped in
    /// [`GgufError::Invalid`] naming the path (see [`GgufError::root`]).
    pub fn open(path: &Path) -> Result<Gguf, GgufError> {
        let io_err = |source| GgufError::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let storage = load(&file).map_err(io_err)?;
        Self::from_storage(storage).map_err(|e| GgufError::Invalid {
            path: path.to_owned(),
            source: Box::new(e),
        })
    }

    /// Parses a file held in memory (tests, fuzzing); same rules as [`Gguf::open`].
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Gguf, GgufError> {
        Self::from_storage(Storage::Owned(crate::ggml::AlignedBytes::copy_from(&bytes)))
    }

    /// Parses an already mapped file. Creating the mapping needs `unsafe` (the file could change
    /// underneath), so it belongs in `crate::ggml`; this takes the finished mapping.
    pub fn from_mmap(map: memmap2::Mmap) -> Result<Gguf, GgufError> {
        Self::from_storage(Storage::Mapped(map))
    }

    fn from_storage(storage: Storage) -> Result<Gguf, GgufError> {
        let header = parse(storage.bytes())?;
        Ok(Gguf { storage, header })
    }

    /// Format version: 2 or 3 (identical layouts for little-endian files).
    pub fn version(&self) -> u32 {
        self.header.version
    }

    /// The metadata pairs.
    pub fn metadata(&self) -> &Metadata {
        &self.header.metadata
    }

    /// The tensor table, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.header.tensors
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.header
            .by_name
            .get(name)
            .map(|&i| &self.header.tensors[i])
    }

    /// Data alignment (`general.alignment`, default 32; always a power of two).
    pub fn alignment(&self) -> u64 {
        self.header.alignment
    }

    /// Absolute file offset of the tensor data section.
    pub fn data_offset(&self) -> u64 {
        self.header.data_offset
    }

    /// The data of tensor `t`, borrowed from the file. Bounds were checked at parse time, so
    /// for any `t` from [`Gguf::tensors`] this is exactly `t.n_bytes` long; a foreign
    /// `TensorInfo` that does not fit this file yields an empty slice rather than a panic.
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let range = self
            .header
            .data_offset
            .checked_add(t.offset)
            .and_then(|start| Some((start, start.checked_add(t.n_bytes)?)))
            .and_then(|(s, e)| Some(usize::try_from(s).ok()?..usize::try_from(e).ok()?));
        range.and_then(|r| self.bytes().get(r)).unwrap_or(&[])
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        self.storage.bytes()
    }

    /// Whether the bytes are a file mapping (tensor data not copied) rather than an owned buffer.
    pub fn is_mapped(&self) -> bool {
        matches!(self.storage, Storage::Mapped(_))
    }
}

/// Lets ggml place tensors straight into the GGUF mapping.
impl crate::ggml::HostBytes for Gguf {
    fn host_bytes(&self) -> &[u8] {
        self.bytes()
    }
}

/// Maps a file for [`Gguf::open`]: tensor data stays in the page cache, never copied.
fn load(file: &File) -> std::io::Result<Storage> {
    crate::ggml::map_readonly(file).map(Storage::Mapped)
}

// ---------------------------------------------------------------------------------------------
// The parser

/// A short read: `needed` bytes wanted at `offset`, only `available` left.
struct Short {
    offset: u64,
    needed: u64,
    available: u64,
}

/// Attaches "what was being read" to a short read.
trait Context<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, GgufError>;
}

impl<T> Context<T> for Result<T, Short> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, GgufError> {
        self.map_err(|s| GgufError::Truncated {
            what: what(),
            offset: s.offset,
            needed: s.needed,
            available: s.available,
        })
    }
}

/// A bounds-checked little-endian reader over the file bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

macro_rules! read_le {
    ($($name:ident: $t:ty),* $(,)?) => {$(
        fn $name(&mut self) -> Result<$t, Short> {
            Ok(<$t>::from_le_bytes(self.array()?))
        }
    )*};
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    fn offset(&self) -> u64 {
        self.pos as u64
    }

    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    /// The next `n` bytes, or `Short` without moving if fewer are left.
    fn take(&mut self, n: u64) -> Result<&'a [u8], Short> {
        let short = Short {
            offset: self.offset(),
            needed: n,
            available: self.remaining(),
        };
        if n > self.remaining() {
            return Err(short);
        }
        // n <= remaining <= buf.len(), so it fits in usize and the slice is in bounds.
        let n = usize::try_from(n).map_err(|_| short)?;
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Short> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N as u64)?);
        Ok(a)
    }

    read_le!(u8: u8, i8: i8, u16: u16, i16: i16, u32: u32, i32: i32, u64: u64, i64: i64, f32: f32, f64: f64);
}

/// Reads a length-prefixed UTF-8 string of at most `max` bytes; `what` names it in errors.
fn read_string(
    cur: &mut Cursor<'_>,
    max: u64,
    what: &dyn Fn() -> String,
) -> Result<String, GgufError> {
    let offset = cur.offset();
    let len = cur.u64().ctx(|| format!("length of {}", what()))?;
    if len > max {
        return Err(GgufError::StringTooLong {
            what: what(),
            offset,
            len,
            max,
        });
    }
    // `take` checks `len` against the bytes left before anything is allocated.
    let bytes = cur.take(len).ctx(what)?;
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok(s.to_owned()),
        Err(_) => Err(GgufError::InvalidUtf8 {
            what: what(),
            offset,
        }),
    }
}

/// Encoded size of one element of type `ty`, or the minimum for variable-size types.
fn min_elem_size(ty: u32) -> Option<u64> {
    use value_type as t;
    Some(match ty {
        t::U8 | t::I8 | t::BOOL => 1,
        t::U16 | t::I16 => 2,
        t::U32 | t::I32 | t::F32 => 4,
        t::U64 | t::I64 | t::F64 => 8,
        t::STRING => 8,    // the length prefix
        t::ARRAY => 4 + 8, // element type + length
        _ => return None,
    })
}

fn read_bool(cur: &mut Cursor<'_>, key: &str) -> Result<bool, GgufError> {
    let offset = cur.offset();
    match cur.u8().ctx(|| format!("value of key '{key}'"))? {
        0 => Ok(false),
        1 => Ok(true),
        value => Err(GgufError::InvalidBool {
            key: key.to_owned(),
            value,
            offset,
        }),
    }
}

/// Reads one value of GGUF type `ty` for `key`; `depth` is the current array nesting.
fn read_value(cur: &mut Cursor<'_>, ty: u32, key: &str, depth: usize) -> Result<Value, GgufError> {
    use value_type as t;
    let what = || format!("value of key '{key}'");
    let offset = cur.offset();
    Ok(match ty {
        t::U8 => Value::U8(cur.u8().ctx(what)?),
        t::I8 => Value::I8(cur.i8().ctx(what)?),
        t::U16 => Value::U16(cur.u16().ctx(what)?),
        t::I16 => Value::I16(cur.i16().ctx(what)?),
        t::U32 => Value::U32(cur.u32().ctx(what)?),
        t::I32 => Value::I32(cur.i32().ctx(what)?),
        t::U64 => Value::U64(cur.u64().ctx(what)?),
        t::I64 => Value::I64(cur.i64().ctx(what)?),
        t::F32 => Value::F32(cur.f32().ctx(what)?),
        t::F64 => Value::F64(cur.f64().ctx(what)?),
        t::BOOL => Value::Bool(read_bool(cur, key)?),
        t::STRING => Value::String(read_string(cur, MAX_STRING_LEN, &what)?),
        t::ARRAY => Value::Array(read_array(cur, key, depth + 1)?),
        type_id => {
            return Err(GgufError::UnknownValueType {
                key: key.to_owned(),
                type_id,
                offset,
            })
        }
    })
}

/// Reads `n` fixed-size elements after the caller checked `n × size` fits in the file.
fn read_fixed<'a, T>(
    cur: &mut Cursor<'a>,
    n: usize,
    key: &str,
    mut read: impl FnMut(&mut Cursor<'a>) -> Result<T, Short>,
) -> Result<Vec<T>, GgufError> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(read(cur).ctx(|| format!("array element of key '{key}'"))?);
    }
    Ok(out)
}

/// An array's element type and length, checked: nesting depth, a known type, the length cap,
/// and room in the file for even the smallest encoding of that many elements.
fn read_array_header(
    cur: &mut Cursor<'_>,
    key: &str,
    depth: usize,
) -> Result<(u32, usize), GgufError> {
    let offset = cur.offset();
    if depth > MAX_ARRAY_DEPTH {
        return Err(GgufError::ArrayTooDeep {
            key: key.to_owned(),
            max: MAX_ARRAY_DEPTH,
            offset,
        });
    }
    let ty = cur
        .u32()
        .ctx(|| format!("array element type of key '{key}'"))?;
    let Some(elem_size) = min_elem_size(ty) else {
        return Err(GgufError::UnknownValueType {
            key: key.to_owned(),
            type_id: ty,
            offset,
        });
    };
    let len = cur.u64().ctx(|| format!("array length of key '{key}'"))?;
    if len > MAX_ARRAY_LEN {
        return Err(GgufError::ArrayTooLong {
            key: key.to_owned(),
            len,
            max: MAX_ARRAY_LEN,
            offset,
        });
    }
    // Before allocating `len` elements, make sure even the smallest encoding of them fits.
    let min_bytes = len.checked_mul(elem_size).ok_or(GgufError::ArrayTooLong {
        key: key.to_owned(),
        len,
        max: MAX_ARRAY_LEN,
        offset,
    })?;
    if min_bytes > cur.remaining() {
        return Err(GgufError::Truncated {
            what: format!("{len}-element array of key '{key}'"),
            offset: cur.offset(),
            needed: min_bytes,
            available: cur.remaining(),
        });
    }
    // len <= MAX_ARRAY_LEN (2^24), so it fits in usize on every target.
    Ok((ty, len as usize))
}

/// Reads an array (element type, length, elements) for `key` at nesting `depth` (1 = top).
fn read_array(cur: &mut Cursor<'_>, key: &str, depth: usize) -> Result<Array, GgufError> {
    use value_type as t;
    let (ty, n) = read_array_header(cur, key, depth)?;
    Ok(match ty {
        t::U8 => Array::U8(read_fixed(cur, n, key, Cursor::u8)?),
        t::I8 => Array::I8(read_fixed(cur, n, key, Cursor::i8)?),
        t::U16 => Array::U16(read_fixed(cur, n, key, Cursor::u16)?),
        t::I16 => Array::I16(read_fixed(cur, n, key, Cursor::i16)?),
        t::U32 => Array::U32(read_fixed(cur, n, key, Cursor::u32)?),
        t::I32 => Array::I32(read_fixed(cur, n, key, Cursor::i32)?),
        t::U64 => Array::U64(read_fixed(cur, n, key, Cursor::u64)?),
        t::I64 => Array::I64(read_fixed(cur, n, key, Cursor::i64)?),
        t::F32 => Array::F32(read_fixed(cur, n, key, Cursor::f32)?),
        t::F64 => Array::F64(read_fixed(cur, n, key, Cursor::f64)?),
        t::BOOL => {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(read_bool(cur, key)?);
            }
            Array::Bool(v)
        }
        t::STRING => {
            let mut v = Vec::with_capacity(n);
            for i in 0..n {
                v.push(read_string(cur, MAX_STRING_LEN, &|| {
                    format!("element {i} of key '{key}'")
                })?);
            }
            Array::String(v)
        }
        // t::ARRAY: min_elem_size returned Some only for known types.
        _ => {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(read_array(cur, key, depth + 1)?);
            }
            Array::Array(v)
        }
    })
}

/// Checks a header count against its cap and against the bytes left in the file.
fn check_count(
    cur: &Cursor<'_>,
    what: &'static str,
    count: u64,
    max: u64,
    min_each: u64,
) -> Result<(), GgufError> {
    if count > max {
        return Err(GgufError::TooMany { what, count, max });
    }
    let fits = count
        .checked_mul(min_each)
        .is_some_and(|need| need <= cur.remaining());
    if !fits {
        return Err(GgufError::CountExceedsFile {
            what,
            count,
            offset: cur.offset(),
            available: cur.remaining(),
            min_each,
        });
    }
    Ok(())
}

fn parse_version(cur: &mut Cursor<'_>) -> Result<u32, GgufError> {
    let version = cur.u32().ctx(|| "version".into())?;
    let reason = match version {
        2 | 3 => return Ok(version),
        0 => "version 0 is invalid",
        1 => "GGUF v1 (32-bit counts) is no longer supported; re-convert the model",
        // A v2/v3 file written big-endian reads as 0x0n000000.
        v if v & 0xFFFF == 0 => "looks like a big-endian file; only little-endian is supported",
        _ => "newer than the supported versions 2 and 3",
    };
    Err(GgufError::UnsupportedVersion { version, reason })
}

/// Reads one tensor info (`index` is its position in the table).
fn parse_tensor_info(cur: &mut Cursor<'_>, index: u64) -> Result<TensorInfo, GgufError> {
    let name = read_string(cur, MAX_TENSOR_NAME_LEN, &|| {
        format!("name of tensor #{index}")
    })?;
    let offset = cur.offset();
    let n_dims = cur
        .u32()
        .ctx(|| format!("dimension count of tensor '{name}'"))?;
    if n_dims == 0 || n_dims > MAX_DIMS {
        return Err(GgufError::BadDimCount {
            name,
            n_dims,
            offset,
        });
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for j in 0..n_dims as usize {
        let d = cur
            .u64()
            .ctx(|| format!("dimension {j} of tensor '{name}'"))?;
        if d == 0 {
            return Err(GgufError::ZeroDim { name, index: j });
        }
        dims.push(d);
    }
    // ggml stores ne[] and the element count as int64_t.
    let n_elements = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| i64::try_from(n).is_ok());
    if n_elements.is_none() {
        return Err(GgufError::ElementCountOverflow { name, dims });
    }
    let offset = cur.offset();
    let type_id = cur.u32().ctx(|| format!("type of tensor '{name}'"))?;
    let Some(ty) = GgmlType::from_id(type_id) else {
        return Err(GgufError::UnknownTensorType {
            name,
            type_id,
            offset,
        });
    };
    let ne0 = dims[0];
    if ne0 % ty.block_size() != 0 {
        return Err(GgufError::RowNotBlockMultiple {
            name,
            ty,
            ne0,
            block: ty.block_size(),
        });
    }
    let rows: u64 = dims[1..].iter().product(); // ≤ n_elements, cannot overflow
    let Some(n_bytes) = ty.row_bytes(ne0).and_then(|r| r.checked_mul(rows)) else {
        return Err(GgufError::ByteSizeOverflow { name, ty, dims });
    };
    let offset = cur
        .u64()
        .ctx(|| format!("data offset of tensor '{name}'"))?;
    Ok(TensorInfo {
        name,
        dims,
        ty,
        offset,
        n_bytes,
    })
}

/// Parses and validates everything except the tensor bytes themselves.
fn parse(buf: &[u8]) -> Result<Header, GgufError> {
    let mut cur = Cursor::new(buf);
    let magic: [u8; 4] = cur.array().ctx(|| "magic".into())?;
    if magic != MAGIC {
        return Err(GgufError::BadMagic { found: magic });
    }
    let version = parse_version(&mut cur)?;
    let n_tensors = cur.u64().ctx(|| "tensor count".into())?;
    let n_kv = cur.u64().ctx(|| "metadata key/value count".into())?;
    // Fail fast on an absurd tensor count; it is checked against the bytes left after the KVs.
    if n_tensors > MAX_TENSORS {
        return Err(GgufError::TooMany {
            what: "tensor",
            count: n_tensors,
            max: MAX_TENSORS,
        });
    }
    let metadata = parse_metadata(&mut cur, n_kv)?;
    let (tensors, by_name) = parse_tensor_infos(&mut cur, n_tensors)?;
    let alignment = parse_alignment(&metadata)?;
    let file_len = buf.len() as u64;
    let data_offset = data_section_offset(cur.offset(), file_len, !tensors.is_empty(), alignment)?;
    check_tensor_ranges(&tensors, alignment, data_offset, file_len)?;

    Ok(Header {
        version,
        metadata,
        tensors,
        by_name,
        alignment,
        data_offset,
    })
}

/// The `n_kv` metadata pairs: non-empty, unique keys and their values.
fn parse_metadata(cur: &mut Cursor<'_>, n_kv: u64) -> Result<Metadata, GgufError> {
    check_count(cur, "metadata key/value", n_kv, MAX_KVS, MIN_KV_BYTES)?;
    let mut metadata = Metadata::default();
    for i in 0..n_kv {
        let offset = cur.offset();
        let key = read_string(cur, MAX_KEY_LEN, &|| format!("key #{i}"))?;
        if key.is_empty() {
            return Err(GgufError::EmptyKey { index: i, offset });
        }
        if metadata.get(&key).is_some() {
            return Err(GgufError::DuplicateKey { key, offset });
        }
        let ty = cur.u32().ctx(|| format!("value type of key '{key}'"))?;
        let value = read_value(cur, ty, &key, 0)?;
        metadata.insert(key, value);
    }
    Ok(metadata)
}

/// The `n_tensors` tensor infos, with unique names, and the index of each name.
fn parse_tensor_infos(
    cur: &mut Cursor<'_>,
    n_tensors: u64,
) -> Result<(Vec<TensorInfo>, HashMap<String, usize>), GgufError> {
    check_count(cur, "tensor", n_tensors, MAX_TENSORS, MIN_TENSOR_INFO_BYTES)?;
    let mut tensors = Vec::with_capacity(n_tensors as usize); // ≤ MAX_TENSORS
    let mut by_name = HashMap::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        let offset = cur.offset();
        let info = parse_tensor_info(cur, i)?;
        if by_name.contains_key(&info.name) {
            return Err(GgufError::DuplicateTensor {
                name: info.name,
                offset,
            });
        }
        by_name.insert(info.name.clone(), tensors.len());
        tensors.push(info);
    }
    Ok((tensors, by_name))
}

/// `general.alignment`, a power of two, or the default.
fn parse_alignment(metadata: &Metadata) -> Result<u64, GgufError> {
    match metadata.opt_u32(KEY_ALIGNMENT)? {
        None => Ok(DEFAULT_ALIGNMENT),
        Some(a) if a.is_power_of_two() => Ok(u64::from(a)),
        Some(a) => Err(GgufError::BadAlignment {
            key: KEY_ALIGNMENT,
            value: a.into(),
        }),
    }
}

/// Where the tensor data section starts: the header's end padded to `alignment`. Like ggml, pad
/// only when there is data: vocab-only files may end right after the header.
fn data_section_offset(
    header_end: u64,
    file_len: u64,
    has_tensors: bool,
    alignment: u64,
) -> Result<u64, GgufError> {
    if !has_tensors {
        return Ok(header_end);
    }
    let padded = header_end
        .checked_next_multiple_of(alignment)
        .unwrap_or(u64::MAX);
    if padded > file_len {
        return Err(GgufError::Truncated {
            what: "padding before the tensor data section".into(),
            offset: header_end,
            needed: padded - header_end,
            available: file_len - header_end,
        });
    }
    Ok(padded)
}

/// Every tensor's data must be aligned, inside the file and disjoint from the others.
fn check_tensor_ranges(
    tensors: &[TensorInfo],
    alignment: u64,
    data_offset: u64,
    file_len: u64,
) -> Result<(), GgufError> {
    for t in tensors {
        if t.offset % alignment != 0 {
            return Err(GgufError::MisalignedTensor {
                name: t.name.clone(),
                offset: t.offset,
                alignment,
            });
        }
        let end = data_offset
            .checked_add(t.offset)
            .and_then(|s| s.checked_add(t.n_bytes));
        if end.is_none_or(|e| e > file_len) {
            return Err(GgufError::TensorOutOfBounds {
                name: t.name.clone(),
                offset: t.offset,
                n_bytes: t.n_bytes,
                data_offset,
                file_len,
            });
        }
    }
    // In bounds, so `offset + n_bytes` cannot overflow below.
    let mut order: Vec<&TensorInfo> = tensors.iter().collect();
    order.sort_by_key(|t| t.offset);
    for pair in order.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let a_end = a.offset + a.n_bytes;
        if b.offset < a_end {
            return Err(GgufError::OverlappingTensors {
                first: a.name.clone(),
                second: b.name.clone(),
                offset: b.offset,
                first_end: a_end,
            });
        }
    }
    Ok(())
}
