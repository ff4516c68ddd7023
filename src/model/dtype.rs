//! Element types of stored weights ([`Dtype`]: what safetensors holds, one
//! element at a time) and how a slice stores a matrix ([`WeightType`]: a
//! float dtype, or ggml blocks of 32 weights (Q8_0, Q4_0) or super-blocks
//! of 256 (Q4_K, Q6_K) chosen by [`Quant`]).
//!
//! `Dtype` stays an element type: `size()` is bytes per element, which a
//! Q4_0 weight (18 bytes per 32) does not have. A quantized matrix is
//! therefore never a `Dtype`; code that sizes or views a matrix asks its
//! `WeightType` for the bytes of a row ([`WeightType::row_bytes`]), which
//! is defined only for rows of whole blocks. `weights::Mat` carries a
//! `WeightType`, so a matrix is sized in elements (`rows x cols`) and its
//! bytes follow from the type, for floats and blocks alike.

/// Element types tpi computes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    F32,
    F16,
    BF16,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
        }
    }

    /// The safetensors spelling ("F32", "F16", "BF16").
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
        }
    }

    /// The dtype of a safetensors spelling, if tpi computes with it.
    pub fn from_name(s: &str) -> Option<Dtype> {
        match s {
            "F32" => Some(Dtype::F32),
            "F16" => Some(Dtype::F16),
            "BF16" => Some(Dtype::BF16),
            _ => None,
        }
    }
}

/// `--quantize`: the ggml block type layer matrices are stored in.
#[allow(non_camel_case_types)] // ggml's spelling: Q4_K, not Q4K
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Quant {
    Q8_0,
    Q4_0,
    Q4_K,
    Q6_K,
}

impl Quant {
    /// Every quantization, in the order `--help` lists them.
    pub const ALL: [Quant; 4] = [Quant::Q8_0, Quant::Q4_0, Quant::Q4_K, Quant::Q6_K];

    /// The spelling of `--quantize` ("q8_0", "q4_0", "q4_k", "q6_k").
    pub fn name(self) -> &'static str {
        match self {
            Quant::Q8_0 => "q8_0",
            Quant::Q4_0 => "q4_0",
            Quant::Q4_K => "q4_k",
            Quant::Q6_K => "q6_k",
        }
    }

    /// The quantization of a `--quantize` spelling.
    pub fn from_name(s: &str) -> Option<Quant> {
        Quant::ALL.into_iter().find(|q| q.name() == s)
    }

    pub fn weight_type(self) -> WeightType {
        match self {
            Quant::Q8_0 => WeightType::Q8_0,
            Quant::Q4_0 => WeightType::Q4_0,
            Quant::Q4_K => WeightType::Q4_K,
            Quant::Q6_K => WeightType::Q6_K,
        }
    }

    /// Weights per block of its type: 32, or 256 for a K-quant.
    pub fn block(self) -> usize {
        self.weight_type().block().unwrap_or(BLOCK)
    }
}

/// Weights per ggml block (`QK8_0`, `QK4_0`).
pub const BLOCK: usize = 32;
/// Weights per ggml K-quant super-block (`QK_K`).
pub const SUPER_BLOCK: usize = 256;

/// How a matrix is stored: floats element by element, or ggml blocks of
/// [`BLOCK`] weights along each row.
#[allow(non_camel_case_types)] // ggml's spelling: Q4_K, not Q4K
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightType {
    F32,
    F16,
    BF16,
    /// 34 bytes per 32 weights (`tpi_kernels::BlockQ8_0`).
    Q8_0,
    /// 18 bytes per 32 weights (`tpi_kernels::BlockQ4_0`).
    Q4_0,
    /// 144 bytes per 256 weights (`tpi_kernels::kquant::BlockQ4_K`).
    Q4_K,
    /// 210 bytes per 256 weights (`tpi_kernels::kquant::BlockQ6_K`).
    Q6_K,
    /// Q4_K with rows interleaved by 8 (`tpi_kernels::kx8::BlockQ4_Kx8`):
    /// 1184 bytes per 8 rows of 256 weights, 148 a row. Only slice files
    /// store it, for matrices whose rows are whole groups of 8.
    Q4_Kx8,
}

impl From<Dtype> for WeightType {
    fn from(d: Dtype) -> WeightType {
        match d {
            Dtype::F32 => WeightType::F32,
            Dtype::F16 => WeightType::F16,
            Dtype::BF16 => WeightType::BF16,
        }
    }
}

impl WeightType {
    /// The element dtype, for float storage.
    pub fn float(self) -> Option<Dtype> {
        match self {
            WeightType::F32 => Some(Dtype::F32),
            WeightType::F16 => Some(Dtype::F16),
            WeightType::BF16 => Some(Dtype::BF16),
            _ => None,
        }
    }

    /// Weights and bytes per block, `None` for floats.
    fn block_size(self) -> Option<(usize, usize)> {
        match self {
            WeightType::Q8_0 => Some((BLOCK, 34)),
            WeightType::Q4_0 => Some((BLOCK, 18)),
            WeightType::Q4_K => Some((SUPER_BLOCK, 144)),
            WeightType::Q6_K => Some((SUPER_BLOCK, 210)),
            WeightType::Q4_Kx8 => Some((SUPER_BLOCK, 148)),
            _ => None,
        }
    }

    /// Weights per block (32 or 256), `None` for floats.
    pub fn block(self) -> Option<usize> {
        self.block_size().map(|(n, _)| n)
    }

    /// Bytes of a row of `cols` weights; `None` for a block type when
    /// `cols` is not a multiple of its block.
    pub fn row_bytes(self, cols: usize) -> Option<usize> {
        match self.block_size() {
            Some((n, b)) => cols.is_multiple_of(n).then_some(cols / n * b),
            None => self.float().map(|d| cols * d.size()),
        }
    }

    /// "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q6_K", "Q4_Kx8".
    pub fn name(self) -> &'static str {
        match self {
            WeightType::Q8_0 => "Q8_0",
            WeightType::Q4_0 => "Q4_0",
            WeightType::Q4_K => "Q4_K",
            WeightType::Q6_K => "Q6_K",
            WeightType::Q4_Kx8 => "Q4_Kx8",
            _ => self.float().map_or("?", Dtype::name),
        }
    }
}

/// Widen little-endian f32/f16/bf16 bytes to f32 (small tensors only).
pub fn widen(dtype: Dtype, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
    }
}
