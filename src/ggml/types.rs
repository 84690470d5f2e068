//! ggml element types, and quantize/dequantize helpers.

use std::ffi::CStr;

use super::sys;

/// A ggml tensor type (`enum ggml_type`), known to the linked ggml.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Type(pub(crate) sys::ggml_type);

impl std::fmt::Debug for Type {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Type {
    pub const F32: Type = Type(sys::GGML_TYPE_F32);
    pub const F16: Type = Type(sys::GGML_TYPE_F16);
    pub const BF16: Type = Type(sys::GGML_TYPE_BF16);
    pub const Q4_0: Type = Type(sys::GGML_TYPE_Q4_0);
    pub const Q4_1: Type = Type(sys::GGML_TYPE_Q4_1);
    pub const Q5_0: Type = Type(sys::GGML_TYPE_Q5_0);
    pub const Q5_1: Type = Type(sys::GGML_TYPE_Q5_1);
    pub const Q8_0: Type = Type(sys::GGML_TYPE_Q8_0);
    pub const Q2_K: Type = Type(sys::GGML_TYPE_Q2_K);
    pub const Q3_K: Type = Type(sys::GGML_TYPE_Q3_K);
    pub const Q4_K: Type = Type(sys::GGML_TYPE_Q4_K);
    pub const Q5_K: Type = Type(sys::GGML_TYPE_Q5_K);
    pub const Q6_K: Type = Type(sys::GGML_TYPE_Q6_K);
    pub const IQ4_NL: Type = Type(sys::GGML_TYPE_IQ4_NL);
    pub const IQ4_XS: Type = Type(sys::GGML_TYPE_IQ4_XS);
    pub const I32: Type = Type(sys::GGML_TYPE_I32);
    pub const I64: Type = Type(sys::GGML_TYPE_I64);

    /// The type with ggml id `id`, if the linked ggml has it (removed ids such as the old
    /// Q4_0_4_4 have no traits and are refused).
    pub fn from_id(id: u32) -> Option<Type> {
        if id >= sys::GGML_TYPE_COUNT {
            return None;
        }
        let t = Type(id);
        (t.traits().blck_size > 0 && t.traits().type_size > 0).then_some(t)
    }

    /// The ggml id.
    pub fn id(self) -> u32 {
        self.0
    }

    fn traits(self) -> &'static sys::ggml_type_traits {
        debug_assert!(self.0 < sys::GGML_TYPE_COUNT);
        // SAFETY: ggml returns a pointer into its static traits table for every id below
        // GGML_TYPE_COUNT (ids are only constructed below it).
        unsafe { &*sys::ggml_get_type_traits(self.0) }
    }

    /// ggml's name for the type ("q4_1", ...).
    pub fn name(self) -> &'static str {
        let p = self.traits().type_name;
        if p.is_null() {
            return "unknown";
        }
        // SAFETY: type names are static NUL-terminated strings in ggml's traits table.
        unsafe { CStr::from_ptr(p) }.to_str().unwrap_or("unknown")
    }

    /// Elements per block.
    pub fn block_size(self) -> usize {
        self.traits().blck_size as usize
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        self.traits().type_size
    }

    /// Whether the type is block-quantized.
    pub fn is_quantized(self) -> bool {
        self.traits().is_quantized
    }

    /// Bytes of a row of `n` elements (`n` a multiple of the block size).
    pub fn row_bytes(self, n: i64) -> usize {
        assert!(n >= 0 && n as usize % self.block_size() == 0);
        n as usize / self.block_size() * self.type_size()
    }

    /// Whether the CPU backend can run `mul_mat` with weights of this type: it needs a
    /// conversion to its dot-product type (ggml_get_type_traits_cpu).
    /// False if no CPU variant runs here.
    pub fn cpu_supports_mul_mat(self) -> bool {
        let Ok(v) = super::init() else {
            return false;
        };
        // SAFETY: static traits table lookup for a valid id, in the variant in use.
        let cpu = unsafe { &*(v.api().get_type_traits_cpu)(self.0) };
        cpu.vec_dot.is_some()
    }
}

/// Quantizes `src` (rows of `n_per_row` f32) into type `ty` with ggml's reference quantizer.
pub fn quantize(ty: Type, src: &[f32], n_per_row: usize) -> Vec<u8> {
    assert!(
        n_per_row > 0 && src.len() % n_per_row == 0,
        "whole rows only"
    );
    assert!(
        n_per_row % ty.block_size() == 0,
        "row length must be a multiple of the block size"
    );
    let n_rows = src.len() / n_per_row;
    let mut out = vec![0u8; n_rows * ty.row_bytes(n_per_row as i64)];
    if ty == Type::F32 {
        for (o, v) in out.chunks_exact_mut(4).zip(src) {
            o.copy_from_slice(&v.to_le_bytes());
        }
        return out;
    }
    // ggml asserts for the IQ types that need an importance matrix, so refuse those first.
    assert!(
        !matches!(ty.name(), n if n.starts_with("iq1") || n.starts_with("iq2")),
        "{} needs an importance matrix",
        ty.name()
    );
    // SAFETY: src holds n_rows*n_per_row floats; out holds exactly the quantized size of that
    // many rows; a NULL importance matrix is allowed for every type left after the assert.
    let written = unsafe {
        sys::ggml_quantize_chunk(
            ty.0,
            src.as_ptr(),
            out.as_mut_ptr().cast(),
            0,
            n_rows as i64,
            n_per_row as i64,
            std::ptr::null(),
        )
    };
    assert_eq!(written, out.len(), "ggml_quantize_chunk size");
    out
}

/// Converts `n` elements of type `ty` in `bytes` back to f32.
pub fn dequantize(ty: Type, bytes: &[u8], n: usize) -> Vec<f32> {
    assert_eq!(
        bytes.len(),
        ty.row_bytes(n as i64),
        "byte length for {n} {}",
        ty.name()
    );
    let mut out = vec![0f32; n];
    if ty == Type::F32 {
        for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
            *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        return out;
    }
    let to_float = ty
        .traits()
        .to_float
        .unwrap_or_else(|| panic!("ggml has no to_float for {}", ty.name()));
    // SAFETY: bytes holds exactly n elements of ty (checked above); out holds n floats.
    unsafe { to_float(bytes.as_ptr().cast(), out.as_mut_ptr(), n as i64) };
    out
}
