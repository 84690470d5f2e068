//! ggml tensor types as stored in GGUF: numeric ids, names and block geometry.
//!
//! The table mirrors `enum ggml_type` in `vendor/ggml/include/ggml.h` and the `type_traits`
//! table in `vendor/ggml/src/ggml.c` (block sizes from the `block_*` structs in
//! `ggml-common.h`). Ids that ggml removed (4, 5, 31-33, 36-38) have no variant, so a file
//! using them is rejected at parse time instead of reaching ggml with a zero block size.

use std::fmt;

/// A ggml tensor type as stored in GGUF (numeric ids are ggml's `enum ggml_type`).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
    NVFP4,
    Q1_0,
    Q2_0,
}

/// `QK_K` in ggml-common.h: elements per super-block of the k-quants and i-quants.
const QK_K: u64 = 256;

/// One row of the table: (type, ggml id, ggml name, elements per block, bytes per block).
type Row = (GgmlType, u32, &'static str, u64, u64);

/// The type table, in id order. Sizes are `sizeof(block_*)` from ggml-common.h.
const TABLE: &[Row] = &[
    (GgmlType::F32, 0, "f32", 1, 4),
    (GgmlType::F16, 1, "f16", 1, 2),
    (GgmlType::Q4_0, 2, "q4_0", 32, 18),
    (GgmlType::Q4_1, 3, "q4_1", 32, 20),
    (GgmlType::Q5_0, 6, "q5_0", 32, 22),
    (GgmlType::Q5_1, 7, "q5_1", 32, 24),
    (GgmlType::Q8_0, 8, "q8_0", 32, 34),
    (GgmlType::Q8_1, 9, "q8_1", 32, 36),
    (GgmlType::Q2_K, 10, "q2_K", QK_K, 84),
    (GgmlType::Q3_K, 11, "q3_K", QK_K, 110),
    (GgmlType::Q4_K, 12, "q4_K", QK_K, 144),
    (GgmlType::Q5_K, 13, "q5_K", QK_K, 176),
    (GgmlType::Q6_K, 14, "q6_K", QK_K, 210),
    (GgmlType::Q8_K, 15, "q8_K", QK_K, 292),
    (GgmlType::IQ2_XXS, 16, "iq2_xxs", QK_K, 66),
    (GgmlType::IQ2_XS, 17, "iq2_xs", QK_K, 74),
    (GgmlType::IQ3_XXS, 18, "iq3_xxs", QK_K, 98),
    (GgmlType::IQ1_S, 19, "iq1_s", QK_K, 50),
    (GgmlType::IQ4_NL, 20, "iq4_nl", 32, 18),
    (GgmlType::IQ3_S, 21, "iq3_s", QK_K, 110),
    (GgmlType::IQ2_S, 22, "iq2_s", QK_K, 82),
    (GgmlType::IQ4_XS, 23, "iq4_xs", QK_K, 136),
    (GgmlType::I8, 24, "i8", 1, 1),
    (GgmlType::I16, 25, "i16", 1, 2),
    (GgmlType::I32, 26, "i32", 1, 4),
    (GgmlType::I64, 27, "i64", 1, 8),
    (GgmlType::F64, 28, "f64", 1, 8),
    (GgmlType::IQ1_M, 29, "iq1_m", QK_K, 56),
    (GgmlType::BF16, 30, "bf16", 1, 2),
    (GgmlType::TQ1_0, 34, "tq1_0", QK_K, 54),
    (GgmlType::TQ2_0, 35, "tq2_0", QK_K, 66),
    (GgmlType::MXFP4, 39, "mxfp4", 32, 17),
    (GgmlType::NVFP4, 40, "nvfp4", 64, 36),
    (GgmlType::Q1_0, 41, "q1_0", 128, 18),
    (GgmlType::Q2_0, 42, "q2_0", 64, 18),
];

impl GgmlType {
    /// Every known type, in id order.
    pub const ALL: [GgmlType; 35] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
        GgmlType::IQ2_XXS,
        GgmlType::IQ2_XS,
        GgmlType::IQ3_XXS,
        GgmlType::IQ1_S,
        GgmlType::IQ4_NL,
        GgmlType::IQ3_S,
        GgmlType::IQ2_S,
        GgmlType::IQ4_XS,
        GgmlType::I8,
        GgmlType::I16,
        GgmlType::I32,
        GgmlType::I64,
        GgmlType::F64,
        GgmlType::IQ1_M,
        GgmlType::BF16,
        GgmlType::TQ1_0,
        GgmlType::TQ2_0,
        GgmlType::MXFP4,
        GgmlType::NVFP4,
        GgmlType::Q1_0,
        GgmlType::Q2_0,
    ];

    /// The table row for this type. `ALL` and `TABLE` list the same types in the same order.
    fn row(self) -> &'static Row {
        // Linear scan over 35 entries: cheap, and it keeps the table the single source of truth.
        TABLE
            .iter()
            .find(|r| r.0 == self)
            .expect("every GgmlType variant has a TABLE row")
    }

    /// The type with ggml id `id`; `None` for unknown or removed ids (4, 5, 31-33, 36-38, ≥ 43).
    pub fn from_id(id: u32) -> Option<GgmlType> {
        TABLE.iter().find(|r| r.1 == id).map(|r| r.0)
    }

    /// ggml's numeric id (`enum ggml_type`).
    pub fn id(self) -> u32 {
        self.row().1
    }

    /// ggml's name for the type (`ggml_type_name`), e.g. `"f32"`, `"q4_1"`, `"q6_K"`.
    pub fn name(self) -> &'static str {
        self.row().2
    }

    /// Elements per block (`ggml_blck_size`); 1 for plain types.
    pub fn block_size(self) -> u64 {
        self.row().3
    }

    /// Bytes per block (`ggml_type_size`).
    pub fn type_size(self) -> u64 {
        self.row().4
    }

    /// Whether the type packs several elements per block with shared scales.
    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// Bytes for a row of `n` elements; `None` if `n` is not a multiple of `block_size` or on
    /// overflow.
    pub fn row_bytes(self, n: u64) -> Option<u64> {
        let bs = self.block_size();
        if n % bs != 0 {
            return None;
        }
        (n / bs).checked_mul(self.type_size())
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_all_agree() {
        assert_eq!(TABLE.len(), GgmlType::ALL.len());
        for (row, ty) in TABLE.iter().zip(GgmlType::ALL) {
            assert_eq!(row.0, ty);
            assert_eq!(GgmlType::from_id(ty.id()), Some(ty));
        }
        // ids strictly increase, so there are no duplicates
        assert!(TABLE.windows(2).all(|w| w[0].1 < w[1].1));
    }

    #[test]
    fn removed_and_unknown_ids_are_none() {
        for id in [4, 5, 31, 32, 33, 36, 37, 38, 43, 1000, u32::MAX] {
            assert_eq!(GgmlType::from_id(id), None, "id {id}");
        }
    }

    #[test]
    fn row_bytes() {
        assert_eq!(GgmlType::Q4_1.row_bytes(576), Some(18 * 20));
        assert_eq!(GgmlType::Q4_1.row_bytes(33), None);
        assert_eq!(GgmlType::F32.row_bytes(u64::MAX), None);
        assert_eq!(GgmlType::Q6_K.row_bytes(512), Some(420));
    }
}
