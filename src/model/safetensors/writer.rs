//! Writing safetensors files: whole (tests, fixtures) or streamed tensor
//! by tensor (`make_model`'s gigabyte models), the data area 8-byte
//! aligned.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::Dtype;

/// The JSON header for `specs`, padded with spaces to a multiple of 8 bytes
/// so that the data area starts 8-byte aligned; also the total data length.
fn build_header(specs: &[(&str, Dtype, &[usize])]) -> std::io::Result<(Vec<u8>, u64)> {
    let overflow = || std::io::Error::new(std::io::ErrorKind::InvalidInput, "tensor size overflow");
    let mut h = String::from("{");
    let mut offset: u64 = 0;
    for (i, (name, dtype, shape)) in specs.iter().enumerate() {
        let len = shape
            .iter()
            .try_fold(dtype.size() as u64, |a, &d| a.checked_mul(d as u64))
            .ok_or_else(overflow)?;
        let end = offset.checked_add(len).ok_or_else(overflow)?;
        if i > 0 {
            h.push(',');
        }
        let name = serde_json::to_string(name).map_err(std::io::Error::other)?;
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        h.push_str(&format!(
            "{name}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{offset},{end}]}}",
            dtype.name(),
            dims.join(",")
        ));
        offset = end;
    }
    h.push('}');
    while h.len() % 8 != 0 {
        h.push(' ');
    }
    let mut out = Vec::with_capacity(8 + h.len());
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(h.as_bytes());
    Ok((out, offset))
}

/// Writes a safetensors file holding `tensors` (name, dtype, shape, bytes).
pub fn write(path: &Path, tensors: &[(&str, Dtype, &[usize], &[u8])]) -> std::io::Result<()> {
    let specs: Vec<(String, Dtype, Vec<usize>)> = tensors
        .iter()
        .map(|(n, d, s, _)| (n.to_string(), *d, s.to_vec()))
        .collect();
    let mut w = StreamWriter::create(path, &specs)?;
    for (_, _, _, bytes) in tensors {
        w.write_tensor_data(bytes)?;
    }
    w.finish()
}

/// Streaming safetensors writer: the header is written first, then the
/// tensors' bytes in declaration order (in any number of chunks), so a
/// multi-GB file never has to be in memory.
pub struct StreamWriter {
    out: BufWriter<File>,
    path: PathBuf,
    /// Byte length of each declared tensor, in order.
    sizes: Vec<(String, u64)>,
    written: u64,
    total: u64,
}

impl StreamWriter {
    /// Creates `path` and writes the header for `specs`.
    pub fn create(path: &Path, specs: &[(String, Dtype, Vec<usize>)]) -> std::io::Result<Self> {
        let borrowed: Vec<(&str, Dtype, &[usize])> = specs
            .iter()
            .map(|(n, d, s)| (n.as_str(), *d, s.as_slice()))
            .collect();
        let (header, total) = build_header(&borrowed)?;
        let sizes = specs
            .iter()
            .map(|(n, d, s)| {
                let len = s.iter().fold(d.size() as u64, |a, &x| a * x as u64);
                (n.clone(), len)
            })
            .collect();
        let mut out = BufWriter::with_capacity(8 << 20, File::create(path)?);
        out.write_all(&header)?;
        Ok(StreamWriter {
            out,
            path: path.to_path_buf(),
            sizes,
            written: 0,
            total,
        })
    }

    /// Appends the next bytes of the data area (tensors in declaration order).
    pub fn write_tensor_data(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let new = self.written.saturating_add(bytes.len() as u64);
        if new > self.total {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "{}: {} data bytes written, more than the {} declared",
                    self.path.display(),
                    new,
                    self.total
                ),
            ));
        }
        self.out.write_all(bytes)?;
        self.written = new;
        Ok(())
    }

    /// The tensor the next written byte belongs to (None when complete).
    pub fn current_tensor(&self) -> Option<&str> {
        let mut start = 0u64;
        for (name, len) in &self.sizes {
            if self.written < start + len {
                return Some(name);
            }
            start += len;
        }
        None
    }

    /// Flushes and checks that every declared byte was written.
    pub fn finish(mut self) -> std::io::Result<()> {
        if self.written != self.total {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "{}: only {} of {} data bytes written (tensor `{}` incomplete)",
                    self.path.display(),
                    self.written,
                    self.total,
                    self.current_tensor().unwrap_or("?")
                ),
            ));
        }
        self.out.flush()?;
        self.out.get_ref().sync_data()
    }
}
