//! A rank's weights from its slice file ([`SliceResident`]): layer blocks
//! read once and kept (resident), or streamed through the memory window
//! ([`crate::window`]) with the lm_head rows following the layers; embedding
//! rows read on demand from the file.

use std::os::unix::fs::FileExt;

use super::{Dims, LayerVecs, Resident, Result, WeightsError};
use crate::model::dtype::{widen, Dtype};
use crate::split::error::{io_err, SliceError};
use crate::split::manifest::{BlockEntry, Role, TensorEntry};
use crate::split::reader::{aligned, SliceFile};
use crate::sys::AlignedBuf;
use crate::weights::{Head, LayerMats, LayerSource, Mat};
use crate::window::{Window, WindowError, WindowOpts, WindowStats};

pub use crate::split::reader::LmPart;

/// A rank's layers and lm_head read once into memory from its slice file
/// (each block checksummed as it is read); embedding rows are read on demand
/// by pread from the embedding block, so the table never sits in RAM.
pub struct SliceResident {
    slice: SliceFile,
    layers: Layers,
    lm_head: LmHead,
    row: AlignedBuf,
}

/// Where a rank's lm_head rows live.
enum LmHead {
    /// Read once and kept.
    Resident(AlignedBuf),
    /// Streamed through the window as blocks `first..first + parts.len()`
    /// after the layers, each `(first row, rows)` of the rank's vocab rows.
    Streamed { first: usize, parts: Vec<LmPart> },
}

/// Where a rank's layer blocks live.
enum Layers {
    /// Every block read once and kept.
    Resident(Vec<AlignedBuf>),
    /// W slots fed by the window's I/O thread.
    Window(Box<Window>),
}

impl std::fmt::Debug for SliceResident {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match &self.layers {
            Layers::Resident(l) => format!("resident ({} blocks)", l.len()),
            Layers::Window(w) => format!("window ({} slots)", w.stats().n_slots),
        };
        f.debug_struct("SliceResident")
            .field("path", &self.slice.path())
            .field("layers", &mode)
            .finish()
    }
}

impl SliceResident {
    /// Every layer block read once (checksummed) and kept in memory.
    pub fn load(slice: SliceFile) -> Result<SliceResident, SliceError> {
        let layers = slice
            .layers
            .iter()
            .map(|&i| slice.read_block(i))
            .collect::<Result<Vec<_>, _>>()?;
        let lm_head = LmHead::Resident(slice.read_block(slice.lm_head)?);
        SliceResident::with_layers(slice, Layers::Resident(layers), lm_head)
    }

    /// Layer blocks streamed through `n_slots` window slots by an I/O
    /// thread (pread, optionally O_DIRECT). Block checksums were verified
    /// when the slice was fetched or found in the cache.
    ///
    /// The lm_head rows follow the layers through the same window, in parts
    /// no larger than the largest layer block, so the rank's peak does not
    /// hold them (a Llama-3 8B lm_head is 1 GB in f16).
    pub fn windowed(
        slice: SliceFile,
        n_slots: usize,
        opts: WindowOpts,
    ) -> Result<SliceResident, SliceError> {
        let (blocks, parts) = slice.window_blocks();
        let first = slice.layers.len();
        let file = slice
            .file()
            .try_clone()
            .map_err(io_err(slice.path(), "reopen for the window"))?;
        let window = Window::start(file, blocks, n_slots, opts)
            .map_err(|e| window_err(&slice, "start the memory window".into(), e))?;
        let lm_head = LmHead::Streamed { first, parts };
        SliceResident::with_layers(slice, Layers::Window(Box::new(window)), lm_head)
    }

    fn with_layers(
        slice: SliceFile,
        layers: Layers,
        lm_head: LmHead,
    ) -> Result<SliceResident, SliceError> {
        let e = &slice.manifest().blocks[slice.embedding].tensors[0];
        let len = e.row_bytes();
        let row = aligned(len)
            .ok_or_else(|| slice.out_of_range("embedding row bytes", len as u64, u64::MAX))?;
        Ok(SliceResident {
            slice,
            layers,
            lm_head,
            row,
        })
    }

    pub fn slice(&self) -> &SliceFile {
        &self.slice
    }

    /// Bytes held in memory for weights (layer blocks or window slots, plus
    /// a resident lm_head).
    pub fn resident_bytes(&self) -> usize {
        let layers = match &self.layers {
            Layers::Resident(l) => l.iter().map(|b| b.len()).sum::<usize>(),
            Layers::Window(w) => {
                let s = w.stats();
                s.n_slots * s.slot_bytes
            }
        };
        let lm_head = match &self.lm_head {
            LmHead::Resident(a) => a.len(),
            LmHead::Streamed { .. } => 0,
        };
        layers + lm_head
    }

    /// Window statistics (None when resident).
    pub fn window_stats(&self) -> Option<WindowStats> {
        match &self.layers {
            Layers::Resident(_) => None,
            Layers::Window(w) => Some(w.stats()),
        }
    }
}

impl LayerSource for SliceResident {
    fn acquire(&mut self, l: usize) -> Result<LayerMats<'_>> {
        let bytes = match &mut self.layers {
            Layers::Resident(v) => v
                .get(l)
                .ok_or_else(|| self.slice.out_of_range("layer", l as u64, v.len() as u64))?
                .bytes(),
            Layers::Window(w) => w
                .acquire(l)
                .map_err(|e| window_err(&self.slice, format!("layer {l}"), e))?,
        };
        Ok(self.slice.layer_mats_in(l, bytes)?)
    }

    fn release(&mut self, l: usize) -> Result<()> {
        if let Layers::Window(w) = &mut self.layers {
            w.release(l)
                .map_err(|e| window_err(&self.slice, format!("layer {l}"), e))?;
        }
        Ok(())
    }
}

impl Head for SliceResident {
    fn embed(&mut self, token: u32, out: &mut [f32]) -> Result<()> {
        let s = &self.slice;
        let b = &s.manifest().blocks[s.embedding];
        let t = &b.tensors[0];
        if token as usize >= t.rows {
            return Err(s
                .out_of_range("token id", u64::from(token), t.rows as u64)
                .into());
        }
        let row_len = self.row.len() as u64;
        let at = b.offset + t.offset + u64::from(token) * row_len;
        s.file()
            .read_exact_at(self.row.bytes_mut(), at)
            .map_err(io_err(s.path(), "read embedding row"))?;
        let m = Mat {
            wtype: t.wtype,
            rows: 1,
            cols: t.cols,
            bytes: self.row.bytes(),
        };
        m.row_into(0, out)
    }

    fn lm_head_parts(&self) -> usize {
        match &self.lm_head {
            LmHead::Resident(_) => 1,
            LmHead::Streamed { parts, .. } => parts.len(),
        }
    }

    fn lm_head(&mut self, part: usize) -> Result<(usize, Mat<'_>)> {
        let s = &self.slice;
        let b = &s.manifest().blocks[s.lm_head];
        let t = &b.tensors[0];
        match (&self.lm_head, &mut self.layers) {
            (LmHead::Resident(a), _) => Ok((0, s.mat(b, t, a.bytes())?)),
            (LmHead::Streamed { first, parts }, Layers::Window(w)) => {
                let &(row0, rows) = parts.get(part).ok_or_else(|| {
                    s.out_of_range("lm_head part", part as u64, parts.len() as u64)
                })?;
                let bytes = w
                    .acquire(first + part)
                    .map_err(|e| window_err(s, format!("lm_head part {part}"), e))?;
                let len = rows * t.row_bytes();
                let data = bytes.get(..len).ok_or_else(|| {
                    s.out_of_range("lm_head part bytes", len as u64, bytes.len() as u64)
                })?;
                let m = Mat {
                    wtype: t.wtype,
                    rows,
                    cols: t.cols,
                    bytes: data,
                };
                Ok((row0, m))
            }
            (LmHead::Streamed { .. }, Layers::Resident(_)) => Err(WeightsError::NoWindow),
        }
    }

    fn release_lm_head(&mut self, part: usize) -> Result<()> {
        if let (LmHead::Streamed { first, .. }, Layers::Window(w)) =
            (&self.lm_head, &mut self.layers)
        {
            w.release(first + part)
                .map_err(|e| window_err(&self.slice, format!("lm_head part {part}"), e))?;
        }
        Ok(())
    }
}

/// Weights views of a slice file's bytes: the layer matrices of a block
/// (e.g. a window slot) and the resident vectors. A trait so the split's
/// reader stays a file format, below the weights it feeds.
pub trait SliceWeights {
    fn mat<'a>(
        &self,
        b: &BlockEntry,
        t: &TensorEntry,
        bytes: &'a [u8],
    ) -> std::result::Result<Mat<'a>, SliceError>;
    /// The seven matrices of layer `l` from its block's bytes.
    fn layer_mats_in<'a>(
        &self,
        l: usize,
        block_bytes: &'a [u8],
    ) -> std::result::Result<LayerMats<'a>, SliceError>;
    /// Norms, biases and RoPE frequencies from the vecs block.
    fn resident(&self) -> std::result::Result<Resident, SliceError>;
}

impl SliceWeights for SliceFile {
    fn mat<'a>(
        &self,
        b: &BlockEntry,
        t: &TensorEntry,
        bytes: &'a [u8],
    ) -> std::result::Result<Mat<'a>, SliceError> {
        let data = self.tensor_bytes(b, t, bytes)?;
        Ok(Mat {
            wtype: t.wtype,
            rows: t.rows,
            cols: t.cols,
            bytes: data,
        })
    }

    /// The seven matrices of layer `l` from its block's bytes (e.g. a window
    /// slot holding the block read from [`SliceFile::layer_blocks`]).
    /// `block_bytes` must start at the block start, be at least 4-byte
    /// aligned and cover every tensor (a longer slot is fine). Checksums are
    /// the caller's business (the bytes may not have been read by us).
    fn layer_mats_in<'a>(
        &self,
        l: usize,
        block_bytes: &'a [u8],
    ) -> std::result::Result<LayerMats<'a>, SliceError> {
        let b = self.layer_block(l)?;
        if !(block_bytes.as_ptr() as usize).is_multiple_of(4) {
            return Err(SliceError::Layout {
                path: self.path().display().to_string(),
                rank: self.rank(),
                block: Some(b.kind),
                msg: "block buffer is not 4-byte aligned".into(),
            });
        }
        let t = &b.tensors;
        Ok(LayerMats {
            q: self.mat(b, &t[0], block_bytes)?,
            k: self.mat(b, &t[1], block_bytes)?,
            v: self.mat(b, &t[2], block_bytes)?,
            o: self.mat(b, &t[3], block_bytes)?,
            gate: self.mat(b, &t[4], block_bytes)?,
            up: self.mat(b, &t[5], block_bytes)?,
            down: self.mat(b, &t[6], block_bytes)?,
        })
    }

    /// Norms, biases and RoPE frequencies from the vecs block (read and
    /// checksummed here).
    fn resident(&self) -> std::result::Result<Resident, SliceError> {
        let (buf, b) = self.read_vecs()?;
        let cfg = self.config();
        let mut layers: Vec<LayerVecs> = (0..cfg.n_layers).map(|_| LayerVecs::default()).collect();
        let mut final_norm = Vec::new();
        for t in &b.tensors {
            let m = self.mat(b, t, buf.bytes())?;
            let v = widen(Dtype::F32, m.bytes);
            let l = t.layer.unwrap_or(0);
            match t.role {
                Role::AttnNorm => layers[l].attn_norm = v,
                Role::FfnNorm => layers[l].ffn_norm = v,
                Role::QBias => layers[l].q_bias = Some(v),
                Role::KBias => layers[l].k_bias = Some(v),
                Role::VBias => layers[l].v_bias = Some(v),
                Role::FinalNorm => final_norm = v,
                _ => {}
            }
        }
        Ok(Resident {
            dims: Dims::new(cfg, self.part()),
            layers,
            final_norm,
            inv_freq: cfg.rope_inv_freq(),
        })
    }
}

fn window_err(slice: &SliceFile, what: String, source: WindowError) -> SliceError {
    SliceError::Window {
        path: slice.path().display().to_string(),
        what,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Silent;
    use crate::split::cache::write_slice;
    use crate::split::plan::{split, RankSlice, Shape};
    use crate::split::reader::Expect;
    use crate::split::reader::SliceFile;
    use crate::split::testutil::*;
    use crate::weights::in_place::{self, InPlace};

    /// One rank's forward from a slice file equals the in-place forward.
    #[test]
    fn single_rank_forward_from_slice_equals_in_place() {
        use crate::engine::{forward, Par, Solo, State, Timing};
        let tmp = TempDir::new("fwd");
        for name in FIXTURES {
            let ckpt = fixture(name);
            let cfg = &ckpt.config;
            let plan = split(&Shape::of(cfg), 1, None).unwrap();
            let path = tmp.0.join(format!("{name}.slice"));
            write_slice(&ckpt, &plan, 0, &path, &mut Silent).unwrap();
            let sf = SliceFile::open(&path, Expect::default()).unwrap();
            let res_s = sf.resident().unwrap();
            let mut mine = SliceResident::load(sf).unwrap();
            let res_w =
                in_place::resident(cfg, ckpt.safetensors().unwrap(), &RankSlice::whole(cfg))
                    .unwrap();
            let mut whole = InPlace::new(cfg, ckpt.safetensors().unwrap()).unwrap();
            let par = Par::new(1, tpi_kernels::Backend::Scalar);
            let mut s1 = State::new(&res_s.dims, 8).expect("state");
            let mut s2 = State::new(&res_w.dims, 8).expect("state");
            let mut t = Timing::default();
            for (pos, tok) in [1u32, 5, 9, 3].into_iter().enumerate() {
                let (r1, r2) = (&res_s, &res_w);
                forward(
                    r1,
                    &mut mine,
                    &mut Solo,
                    &par,
                    &mut s1,
                    &[tok],
                    pos,
                    true,
                    &mut t,
                )
                .unwrap();
                forward(
                    r2,
                    &mut whole,
                    &mut Solo,
                    &par,
                    &mut s2,
                    &[tok],
                    pos,
                    true,
                    &mut t,
                )
                .unwrap();
                assert_eq!(s1.logits, s2.logits, "{name} pos {pos}");
            }
        }
    }
}
