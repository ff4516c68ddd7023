//! Why a rank's weights could not be read: a matrix that cannot be viewed
//! as its dtype, a row or layer out of range, or the source below (the
//! mmapped safetensors, the slice file and its window) with its own error.

use std::fmt;

#[derive(Debug)]
pub enum WeightsError {
    /// Matrix bytes misaligned or not `rows x cols` of the dtype.
    Matrix {
        bytes: usize,
        rows: usize,
        cols: usize,
    },
    /// A tensor of the safetensors that cannot be viewed in place.
    Misaligned {
        tensor: String,
        file: String,
        offset: usize,
        align: usize,
    },
    /// A row, layer, token or part index out of range.
    OutOfRange {
        what: &'static str,
        index: usize,
        len: usize,
    },
    /// The lm_head is streamed but the layers are resident (no window).
    NoWindow,
    /// The mmapped safetensors.
    SafeTensors(crate::model::safetensors::SafeTensorsError),
    /// The slice file or its window.
    Slice(crate::split::SliceError),
}

impl fmt::Display for WeightsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WeightsError::Matrix { bytes, rows, cols } => write!(
                f,
                "matrix bytes misaligned or of wrong length ({bytes} bytes for {rows} x {cols})"
            ),
            WeightsError::Misaligned {
                tensor,
                file,
                offset,
                align,
            } => write!(
                f,
                "tensor {tensor} in {file} at offset {offset} is not aligned to its {align}-byte dtype"
            ),
            WeightsError::OutOfRange { what, index, len } => {
                write!(f, "{what} {index} out of range (of {len})")
            }
            WeightsError::NoWindow => write!(f, "lm_head streamed without a window"),
            WeightsError::SafeTensors(e) => write!(f, "{e}"),
            WeightsError::Slice(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for WeightsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WeightsError::SafeTensors(e) => Some(e),
            WeightsError::Slice(e) => Some(e),
            _ => None,
        }
    }
}

impl From<crate::model::safetensors::SafeTensorsError> for WeightsError {
    fn from(e: crate::model::safetensors::SafeTensorsError) -> Self {
        WeightsError::SafeTensors(e)
    }
}

impl From<crate::split::SliceError> for WeightsError {
    fn from(e: crate::split::SliceError) -> Self {
        WeightsError::Slice(e)
    }
}
