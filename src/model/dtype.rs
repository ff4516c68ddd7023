//! Element types of stored weights ([`Dtype`]: what safetensors holds, one
//! element at a time) and how a slice stores a matrix ([`WeightType`]: a
//! float dtype, or ggml blocks of 32 weights chosen by [`Quant`]).
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Quant {
    Q8_0,
    Q4_0,
}

impl Quant {
    /// The spelling of `--quantize` ("q8_0", "q4_0").
    pub fn name(self) -> &'static str {
        match self {
            Quant::Q8_0 => "q8_0",
            Quant::Q4_0 => "q4_0",
        }
    }

    /// The quantization of a `--quantize` spelling.
    pub fn from_name(s: &str) -> Option<Quant> {
        match s {
            "q8_0" => Some(Quant::Q8_0),
            "q4_0" => Some(Quant::Q4_0),
            _ => None,
        }
    }

    pub fn weight_type(self) -> WeightType {
        match self {
            Quant::Q8_0 => WeightType::Q8_0,
            Quant::Q4_0 => WeightType::Q4_0,
        }
    }
}

/// Weights per ggml block (`QK8_0`, `QK4_0`).
pub const BLOCK: usize = 32;

/// How a matrix is stored: floats element by element, or ggml blocks of
/// [`BLOCK`] weights along each row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightType {
    F32,
    F16,
    BF16,
    /// 34 bytes per 32 weights (`tpi_kernels::BlockQ8_0`).
    Q8_0,
    /// 18 bytes per 32 weights (`tpi_kernels::BlockQ4_0`).
    Q4_0,
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
            WeightType::Q8_0 | WeightType::Q4_0 => None,
        }
    }

    /// Bytes of a row of `cols` weights; `None` for a block type when
    /// `cols` is not a multiple of [`BLOCK`].
    pub fn row_bytes(self, cols: usize) -> Option<usize> {
        let block = |b: usize| cols.is_multiple_of(BLOCK).then_some(cols / BLOCK * b);
        match self {
            WeightType::Q8_0 => block(34),
            WeightType::Q4_0 => block(18),
            _ => self.float().map(|d| cols * d.size()),
        }
    }

    /// "F32", "F16", "BF16", "Q8_0", "Q4_0".
    pub fn name(self) -> &'static str {
        match self {
            WeightType::Q8_0 => "Q8_0",
            WeightType::Q4_0 => "Q4_0",
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
