//! The ggml tensor types a GGUF tensor info may name: id -> name, block
//! size (elements) and bytes per block. The table is ggml's
//! (`ggml/src/ggml.c` `type_traits`, mirrored by gguf-py's
//! `GGML_QUANT_SIZES`); ids 4, 5, 31..=33 and 36..=38 were removed from
//! ggml and are unknown here, like any id not listed.
//!
//! Knowing a type means knowing its byte layout, so that a tensor's byte
//! range can be checked against the file. Which of them tpi computes with
//! is decided by the code that reads the tensor, not by the parser.

/// A ggml tensor type with a known block layout.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
}

/// `QK_K`: elements per super-block of the k-quants and IQ types.
const QK_K: u32 = 256;

/// (type, id, name, elements per block, bytes per block). Byte counts as in
/// ggml's block structs (`ggml-common.h`), each spelled as its fields.
const TABLE: [(GgmlType, u32, &str, u32, u32); 34] = {
    use GgmlType as T;
    [
        (T::F32, 0, "F32", 1, 4),
        (T::F16, 1, "F16", 1, 2),
        (T::Q4_0, 2, "Q4_0", 32, 2 + 16),
        (T::Q4_1, 3, "Q4_1", 32, 2 + 2 + 16),
        (T::Q5_0, 6, "Q5_0", 32, 2 + 4 + 16),
        (T::Q5_1, 7, "Q5_1", 32, 2 + 2 + 4 + 16),
        (T::Q8_0, 8, "Q8_0", 32, 2 + 32),
        // gguf-py says 4 + 4 + 32 (the old f32 d and s); ggml's block_q8_1
        // has been two halves since 2023, and llama.cpp reads files by ggml.
        (T::Q8_1, 9, "Q8_1", 32, 2 + 2 + 32),
        (T::Q2_K, 10, "Q2_K", QK_K, 2 + 2 + QK_K / 16 + QK_K / 4),
        (T::Q3_K, 11, "Q3_K", QK_K, 2 + QK_K / 4 + QK_K / 8 + 12),
        (T::Q4_K, 12, "Q4_K", QK_K, 2 + 2 + QK_K / 2 + 12),
        (T::Q5_K, 13, "Q5_K", QK_K, 2 + 2 + QK_K / 2 + QK_K / 8 + 12),
        (
            T::Q6_K,
            14,
            "Q6_K",
            QK_K,
            2 + QK_K / 2 + QK_K / 4 + QK_K / 16,
        ),
        (T::Q8_K, 15, "Q8_K", QK_K, 4 + QK_K + QK_K / 8),
        (T::IQ2_XXS, 16, "IQ2_XXS", QK_K, 2 + QK_K / 4),
        (T::IQ2_XS, 17, "IQ2_XS", QK_K, 2 + QK_K / 4 + QK_K / 32),
        (T::IQ3_XXS, 18, "IQ3_XXS", QK_K, 2 + QK_K / 4 + QK_K / 8),
        (T::IQ1_S, 19, "IQ1_S", QK_K, 2 + QK_K / 8 + QK_K / 16),
        (T::IQ4_NL, 20, "IQ4_NL", 32, 2 + 16),
        (
            T::IQ3_S,
            21,
            "IQ3_S",
            QK_K,
            2 + QK_K / 4 + QK_K / 8 + QK_K / 32 + 4,
        ),
        (T::IQ2_S, 22, "IQ2_S", QK_K, 2 + QK_K / 4 + QK_K / 16),
        (T::IQ4_XS, 23, "IQ4_XS", QK_K, 2 + 2 + QK_K / 2 + QK_K / 64),
        (T::I8, 24, "I8", 1, 1),
        (T::I16, 25, "I16", 1, 2),
        (T::I32, 26, "I32", 1, 4),
        (T::I64, 27, "I64", 1, 8),
        (T::F64, 28, "F64", 1, 8),
        (
            T::IQ1_M,
            29,
            "IQ1_M",
            QK_K,
            QK_K / 8 + QK_K / 16 + QK_K / 32,
        ),
        (T::BF16, 30, "BF16", 1, 2),
        (T::TQ1_0, 34, "TQ1_0", QK_K, 2 + 4 * 13),
        (T::TQ2_0, 35, "TQ2_0", QK_K, 2 + 64),
        (T::MXFP4, 39, "MXFP4", 32, 1 + 16),
        (T::NVFP4, 40, "NVFP4", 64, 4 + 32),
        (T::Q1_0, 41, "Q1_0", 128, 2 + 16),
    ]
};

impl GgmlType {
    /// Every known type, in id order.
    pub fn all() -> impl Iterator<Item = GgmlType> {
        TABLE.iter().map(|row| row.0)
    }

    /// The type with ggml id `id`, if its layout is known.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        TABLE.iter().find(|row| row.1 == id).map(|row| row.0)
    }

    fn row(self) -> (GgmlType, u32, &'static str, u32, u32) {
        // The table lists every variant (tests: `table_covers_every_variant`),
        // so the fallback row is never used; it keeps this total.
        TABLE
            .iter()
            .copied()
            .find(|row| row.0 == self)
            .unwrap_or(TABLE[0])
    }

    /// ggml's id (`enum ggml_type`).
    pub fn id(self) -> u32 {
        self.row().1
    }

    /// ggml's name ("Q4_K", "BF16").
    pub fn name(self) -> &'static str {
        self.row().2
    }

    /// Elements per block (1 for plain element types).
    pub fn block_len(self) -> u64 {
        u64::from(self.row().3)
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> u64 {
        u64::from(self.row().4)
    }

    /// Bytes of `n_elements` elements, `None` when `n_elements` is not a
    /// whole number of blocks or the size overflows. Callers check rows
    /// (ne0) against the block first; this is the size of whole rows.
    pub fn bytes_for(self, n_elements: u64) -> Option<u64> {
        if !n_elements.is_multiple_of(self.block_len()) {
            return None;
        }
        (n_elements / self.block_len()).checked_mul(self.block_bytes())
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_covers_every_variant_once() {
        let mut ids: Vec<u32> = GgmlType::all().map(GgmlType::id).collect();
        assert_eq!(ids.len(), TABLE.len());
        ids.dedup();
        assert_eq!(ids.len(), TABLE.len(), "ids ascending and unique");
        for t in GgmlType::all() {
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
            assert_eq!(t.row().0, t);
        }
    }

    #[test]
    fn block_layouts_match_ggml() {
        // ggml-common.h: sizeof(block_*) for the types tpi reads first.
        for (t, block, bytes) in [
            (GgmlType::F32, 1, 4),
            (GgmlType::F16, 1, 2),
            (GgmlType::BF16, 1, 2),
            (GgmlType::Q4_0, 32, 18),
            (GgmlType::Q4_1, 32, 20),
            (GgmlType::Q5_0, 32, 22),
            (GgmlType::Q5_1, 32, 24),
            (GgmlType::Q8_0, 32, 34),
            (GgmlType::Q8_1, 32, 36),
            (GgmlType::Q2_K, 256, 84),
            (GgmlType::Q3_K, 256, 110),
            (GgmlType::Q4_K, 256, 144),
            (GgmlType::Q5_K, 256, 176),
            (GgmlType::Q6_K, 256, 210),
            (GgmlType::Q8_K, 256, 292),
        ] {
            assert_eq!((t.block_len(), t.block_bytes()), (block, bytes), "{t}");
        }
    }

    #[test]
    fn removed_and_unknown_ids_are_unknown() {
        for id in [4, 5, 31, 32, 33, 36, 37, 38, 42, u32::MAX] {
            assert_eq!(GgmlType::from_id(id), None, "{id}");
        }
    }

    #[test]
    fn bytes_for_whole_blocks_only() {
        assert_eq!(GgmlType::Q4_0.bytes_for(64), Some(36));
        assert_eq!(GgmlType::Q4_0.bytes_for(48), None);
        assert_eq!(GgmlType::F32.bytes_for(u64::MAX), None);
        assert_eq!(GgmlType::Q6_K.bytes_for(512), Some(420));
    }
}
