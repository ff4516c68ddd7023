//! Cutting a rank's slice file from a checkpoint: `write_slice` streams
//! one tensor slice at a time from the mmapped safetensors (RAM O(write
//! buffer + small vectors), never O(model)), block by block in the order and
//! layout [`super::manifest`] fixes, hashing each block as it goes, into a
//! `.partial` file that is fsynced and renamed into place. The plan is
//! checked against the model first (`check_plan`).
//!
//! With a plan's `quant` (`--quantize`), the seven layer matrices are
//! quantized row by row as they stream (ggml's reference quantizers from
//! `tpi_kernels::quant` and `tpi_kernels::kquant`; a row is widened to
//! f32 first), and the lm_head to Q8_0 (see `quantized_type`). A matrix
//! whose rows (this rank's columns) are not whole blocks of the type falls
//! back to Q8_0 or F16, as llama.cpp's quantizer does. Norms and biases
//! stay f32; the embedding keeps its stored dtype (one row is read per
//! token).

use std::fmt;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::Path;

use super::error::{io_err, SliceError};
use super::interleave;
use super::manifest::{
    align_up, block_kinds, check_part, encode_manifest, expected_tensors, BlockEntry, BlockKind,
    Manifest, Preamble, Role, TensorEntry, BLOCK_ALIGN, FORMAT_VERSION, MAX_MANIFEST, PREAMBLE_LEN,
    TENSOR_ALIGN,
};
use super::plan::{Plan, RankSlice, Shape};
use super::types::{class_name, quantized_type, MatrixClass};
use crate::codec::checksum::Hasher64;
use crate::model::checkpoint::Checkpoint;
use crate::model::dtype::{Quant, WeightType};
use crate::model::source::MatrixRef;
use crate::progress::Progress;
use crate::sys::LargeWriter;

// Writer

/// Where a tensor's bytes come from.
enum Src<'a> {
    /// Rows `rows` (HF order) of a stored matrix, columns `cols` of each.
    Matrix {
        m: MatrixRef<'a>,
        rows: Range<usize>,
        cols: Range<usize>,
    },
    /// Small f32 vector (norms, biases).
    F32(Vec<f32>),
}

fn source_err(ckpt: &Checkpoint, e: impl fmt::Display) -> SliceError {
    SliceError::Source {
        origin: ckpt.origin.clone(),
        msg: e.to_string(),
    }
}

/// The type a slice stores a GGUF matrix in: its own, when the columns
/// taken are whole blocks of it (always for row slices; for the column
/// slices of o_proj and down_proj the plan puts them on block boundaries,
/// spec §6); else F16 (the blocks are cut: dequantized, then narrowed).
fn gguf_type(stored: WeightType, cols: &Range<usize>) -> WeightType {
    let whole_blocks =
        stored.row_bytes(cols.start).is_some() && stored.row_bytes(cols.len()).is_some();
    match whole_blocks {
        true => stored,
        false => WeightType::F16,
    }
}

/// The tensors of `kind` with their types and sources.
fn block_sources<'a>(
    ckpt: &'a Checkpoint,
    part: &RankSlice,
    kind: BlockKind,
    quant: Option<Quant>,
) -> Result<Vec<(TensorEntry, Src<'a>)>, SliceError> {
    let (cfg, w) = (&ckpt.config, &ckpt.weights);
    let hd = cfg.head_dim;
    let mut out = Vec::new();
    for (role, layer, rows, cols) in expected_tensors(cfg, part, kind) {
        let l = layer.unwrap_or(0);
        let (d, nh, nhid) = (cfg.dim, cfg.n_heads * hd, cfg.hidden_dim);
        let qr = part.heads.start * hd..part.heads.end * hd;
        let kvr = part.kv_heads.start * hd..part.kv_heads.end * hd;
        let entry = |wtype| TensorEntry {
            role,
            layer,
            wtype,
            rows,
            cols,
            offset: 0,
        };
        if role.is_vector() {
            let v = w.vector(cfg, role, l).map_err(|e| source_err(ckpt, e))?;
            let r = match role {
                Role::QBias => qr,
                Role::KBias | Role::VBias => kvr,
                _ => 0..v.len(),
            };
            let v = v
                .get(r)
                .ok_or_else(|| source_err(ckpt, format!("{role:?} of layer {l} is too short")))?;
            out.push((entry(WeightType::F32), Src::F32(v.to_vec())));
            continue;
        }
        let (r, c, whole) = match role {
            Role::Q => (qr, 0..d, d),
            Role::K | Role::V => (kvr, 0..d, d),
            Role::O => (0..d, qr, nh),
            Role::Gate | Role::Up => (part.hidden.clone(), 0..d, d),
            Role::Down => (0..d, part.hidden.clone(), nhid),
            Role::Embedding => (0..cfg.vocab_size, 0..d, d),
            _ => (part.vocab.clone(), 0..d, d),
        };
        let m = w.matrix(cfg, role, l).map_err(|e| source_err(ckpt, e))?;
        if r.len() != rows || c.len() != cols || r.end > m.rows || c.end > m.cols {
            return Err(source_err(
                ckpt,
                format!("{} does not hold the plan's slice", m.name),
            ));
        }
        let wtype = match quant {
            _ if w.is_gguf() => gguf_type(m.wtype, &c),
            Some(q) => quantized_type(q, role, cols, whole).unwrap_or(m.wtype),
            None => m.wtype,
        };
        let wtype = interleave::slice_type(wtype, role, rows);
        out.push((
            entry(wtype),
            Src::Matrix {
                m,
                rows: r,
                cols: c,
            },
        ));
    }
    // Offsets within the block.
    let mut at = 0u64;
    for (t, _) in &mut out {
        t.offset = align_up(at, TENSOR_ALIGN);
        at = t.offset + t.byte_len();
    }
    Ok(out)
}

/// Content length of a block's tensors, padded to [`BLOCK_ALIGN`].
fn padded_len(tensors: &[TensorEntry]) -> u64 {
    let end = tensors
        .iter()
        .map(|t| t.offset + t.byte_len())
        .max()
        .unwrap_or(0);
    align_up(end.max(1), BLOCK_ALIGN)
}

/// Sequential output that hashes what it writes and reports its progress.
struct Out<'p> {
    w: LargeWriter,
    pos: u64,
    hash: Hasher64,
    progress: &'p mut dyn Progress,
    /// `pos` when `progress` last heard.
    reported: u64,
}

/// Bytes written between two progress reports.
const REPORT_EVERY: u64 = 4 << 20;

static ZEROS: [u8; 4096] = [0; 4096];

impl Out<'_> {
    fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.w.write_all(b)?;
        self.hash.update(b);
        self.pos += b.len() as u64;
        if self.pos - self.reported >= REPORT_EVERY {
            self.reported = self.pos;
            self.progress.update(self.pos);
        }
        Ok(())
    }
    fn pad_to(&mut self, pos: u64) -> std::io::Result<()> {
        while self.pos < pos {
            let n = (pos - self.pos).min(ZEROS.len() as u64) as usize;
            self.put(&ZEROS[..n])?;
        }
        Ok(())
    }
}

/// Writes rows `rows`, columns `cols` of `m` as `to`: the stored bytes
/// when the type is kept and the columns are whole blocks, else each row
/// converted ([`Converter`]).
fn write_matrix(
    out: &mut Out<'_>,
    m: &MatrixRef<'_>,
    rows: Range<usize>,
    cols: Range<usize>,
    to: WeightType,
) -> std::io::Result<()> {
    let bad = || std::io::Error::other(format!("{}: a row is outside the tensor", m.name));
    if to == WeightType::Q4_Kx8 {
        let mut conv = Converter::new(WeightType::Q4_K, m.wtype, m.cols, cols.clone());
        return interleave::write_q4_k_x8(
            m,
            rows,
            cols,
            |row, dst| conv.q4_k(row, dst),
            |b| out.put(b),
        );
    }
    if to == m.wtype {
        if cols == (0..m.cols) && m.order.is_none() {
            let rb = m.row_bytes();
            return out.put(
                m.bytes
                    .get(rows.start * rb..rows.end * rb)
                    .ok_or_else(bad)?,
            );
        }
        if let (Some(a), Some(b)) = (to.row_bytes(cols.start), to.row_bytes(cols.end)) {
            for r in rows {
                out.put(m.row(r).and_then(|row| row.get(a..b)).ok_or_else(bad)?)?;
            }
            return Ok(());
        }
    }
    let mut conv = Converter::new(to, m.wtype, m.cols, cols);
    for r in rows {
        conv.put(out, m.row(r).ok_or_else(bad)?)?;
    }
    Ok(())
}

/// One matrix's rows converted as they are written: each stored row
/// widened to f32 (or dequantized), its columns `cols` then quantized by
/// ggml's reference quantizer (or narrowed to f16, round to nearest
/// even); buffers allocated once per matrix.
struct Converter {
    from: WeightType,
    /// `[stored cols]`
    row: Vec<f32>,
    cols: Range<usize>,
    to: Target,
}

/// A [`Converter`]'s output row.
enum Target {
    /// `[cols/32]`
    Q8_0(Vec<tpi_kernels::BlockQ8_0>),
    Q4_0(Vec<tpi_kernels::BlockQ4_0>),
    /// `[cols/256]`
    Q4K(Vec<tpi_kernels::BlockQ4_K>),
    Q6K(Vec<tpi_kernels::BlockQ6_K>),
    /// `[cols]` (also the target for f32 and bf16, which are never asked)
    F16(Vec<half::f16>),
}

impl Converter {
    fn new(to: WeightType, from: WeightType, stored_cols: usize, cols: Range<usize>) -> Converter {
        let n = cols.len();
        let nb = n / tpi_kernels::quant::QK;
        let nk = n / tpi_kernels::kquant::QK_K;
        let to = match to {
            WeightType::Q8_0 => Target::Q8_0(vec![Default::default(); nb]),
            WeightType::Q4_0 => Target::Q4_0(vec![Default::default(); nb]),
            WeightType::Q4_K => Target::Q4K(vec![bytemuck::Zeroable::zeroed(); nk]),
            WeightType::Q6_K => Target::Q6K(vec![bytemuck::Zeroable::zeroed(); nk]),
            _ => Target::F16(vec![half::f16::ZERO; n]),
        };
        Converter {
            from,
            row: vec![0.0; stored_cols],
            cols,
            to,
        }
    }

    /// One stored row quantized to Q4_K into `dst` (the blocks of `cols`).
    fn q4_k(&mut self, bytes: &[u8], dst: &mut [tpi_kernels::BlockQ4_K]) -> std::io::Result<()> {
        self.widen(bytes)?;
        let x = self.row.get(self.cols.clone()).unwrap_or(&[]);
        if x.len() != dst.len() * tpi_kernels::kquant::QK_K {
            return Err(std::io::Error::other(format!(
                "quantizing {} weights into {} Q4_K super-blocks",
                x.len(),
                dst.len()
            )));
        }
        tpi_kernels::kquant::quantize_row_q4_k(x, dst);
        Ok(())
    }

    /// One stored row (`stored cols` weights of `from`) widened into `row`.
    fn widen(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.from == WeightType::Q4_Kx8
            || self.from.row_bytes(self.row.len()) != Some(bytes.len())
        {
            return Err(std::io::Error::other(format!(
                "converting a row of {} bytes, expected {} weights of {}",
                bytes.len(),
                self.row.len(),
                self.from.name()
            )));
        }
        widen_row(self.from, bytes, &mut self.row);
        Ok(())
    }

    /// Writes one stored row (`stored cols` weights of `from`).
    fn put(&mut self, out: &mut Out<'_>, bytes: &[u8]) -> std::io::Result<()> {
        self.widen(bytes)?;
        let x = self.row.get(self.cols.clone()).unwrap_or(&[]);
        match &mut self.to {
            Target::Q8_0(q) => {
                tpi_kernels::quant::quantize_row_q8_0(x, q);
                out.put(bytemuck::cast_slice(q))
            }
            Target::Q4_0(q) => {
                tpi_kernels::quant::quantize_row_q4_0(x, q);
                out.put(bytemuck::cast_slice(q))
            }
            Target::Q4K(q) => {
                tpi_kernels::kquant::quantize_row_q4_k(x, q);
                out.put(bytemuck::cast_slice(q))
            }
            Target::Q6K(q) => {
                tpi_kernels::kquant::quantize_row_q6_k(x, q);
                out.put(bytemuck::cast_slice(q))
            }
            Target::F16(h) => {
                h.iter_mut()
                    .zip(x)
                    .for_each(|(h, &x)| *h = half::f16::from_f32(x));
                out.put(bytemuck::cast_slice(h))
            }
        }
    }
}

/// `bytes`, one row of `from` whose length [`WeightType::row_bytes`]
/// checked, as f32 into `out`. Blocks are copied out first: a row of a
/// mapped file need not be aligned for them.
fn widen_row(from: WeightType, bytes: &[u8], out: &mut [f32]) {
    fn blocks<T: bytemuck::Pod>(bytes: &[u8]) -> Vec<T> {
        let mut v = vec![T::zeroed(); bytes.len() / std::mem::size_of::<T>()];
        let dst: &mut [u8] = bytemuck::cast_slice_mut(&mut v);
        dst.copy_from_slice(bytes.get(..dst.len()).unwrap_or(&[]));
        v
    }
    match from {
        WeightType::F32 => bytes
            .chunks_exact(4)
            .zip(out.iter_mut())
            .for_each(|(c, o)| *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        WeightType::F16 => bytes
            .chunks_exact(2)
            .zip(out.iter_mut())
            .for_each(|(c, o)| *o = half::f16::from_le_bytes([c[0], c[1]]).into()),
        WeightType::BF16 => bytes
            .chunks_exact(2)
            .zip(out.iter_mut())
            .for_each(|(c, o)| *o = half::bf16::from_le_bytes([c[0], c[1]]).into()),
        WeightType::Q8_0 => tpi_kernels::quant::dequantize_row_q8_0(&blocks(bytes), out),
        WeightType::Q4_0 => tpi_kernels::quant::dequantize_row_q4_0(&blocks(bytes), out),
        WeightType::Q4_K => tpi_kernels::kquant::dequantize_row_q4_k(&blocks(bytes), out),
        WeightType::Q6_K => tpi_kernels::kquant::dequantize_row_q6_k(&blocks(bytes), out),
        // Only slices hold it (`Converter::widen` refuses it first).
        WeightType::Q4_Kx8 => out.fill(f32::NAN),
    }
}

/// Rank `rank`'s slice of `plan`, checked against `ckpt`'s config (shape,
/// ranges inside the model, KV heads those the query heads use).
pub(crate) fn check_plan(
    ckpt: &Checkpoint,
    plan: &Plan,
    rank: usize,
) -> Result<RankSlice, SliceError> {
    let cfg = &ckpt.config;
    let s = &plan.shape;
    if Shape::of(cfg) != *s {
        return Err(SliceError::Source {
            origin: ckpt.origin.clone(),
            msg: format!("plan shape {s:?} does not match the model config"),
        });
    }
    let part = plan.try_rank(rank)?.clone();
    check_part(cfg, &part).map_err(|msg| SliceError::Source {
        origin: ckpt.origin.clone(),
        msg: format!("plan rank {rank}: {msg}"),
    })?;
    Ok(part)
}

/// Rank `rank`'s matrix classes as its slice stores them (the writer's
/// layout pass: headers and small vectors only): per role, type and shape,
/// how many. Mixed files (a GGUF Q4_K_M keeps some layers' matrices in
/// Q6_K) give a class per type. The embedding is left out: one row of it
/// is read per token.
pub fn rank_classes(
    ckpt: &Checkpoint,
    plan: &Plan,
    rank: usize,
) -> Result<Vec<MatrixClass>, SliceError> {
    let part = check_plan(ckpt, plan, rank)?;
    let mut classes: Vec<MatrixClass> = Vec::new();
    for kind in block_kinds(&ckpt.config) {
        for (t, _) in block_sources(ckpt, &part, kind, plan.quant)? {
            if t.role.is_vector() || t.role == Role::Embedding {
                continue;
            }
            let same = |c: &&mut MatrixClass| {
                (c.role, c.wtype, c.rows, c.cols) == (t.role, t.wtype, t.rows, t.cols)
            };
            match classes.iter_mut().find(same) {
                Some(c) => c.count += 1,
                None => classes.push(MatrixClass {
                    role: t.role,
                    name: class_name(t.role),
                    wtype: t.wtype,
                    rows: t.rows,
                    cols: t.cols,
                    count: 1,
                }),
            }
        }
    }
    Ok(classes)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn write_slice_with(
    ckpt: &Checkpoint,
    plan: &Plan,
    rank: usize,
    path: &Path,
    fingerprint: u64,
    config_json: String,
    generation_config_json: Option<String>,
    progress: &mut dyn Progress,
) -> Result<(), SliceError> {
    let cfg = &ckpt.config;
    let part = check_plan(ckpt, plan, rank)?;

    // Pass 1: layout (no data touched beyond headers and small vectors).
    let kinds = block_kinds(cfg);
    let mut blocks = Vec::with_capacity(kinds.len());
    for &kind in &kinds {
        let tensors: Vec<TensorEntry> = block_sources(ckpt, &part, kind, plan.quant)?
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        blocks.push(BlockEntry {
            kind,
            offset: 0,
            len: padded_len(&tensors),
            checksum: 0,
            tensors,
        });
    }
    let mut manifest = Manifest {
        version: FORMAT_VERSION,
        fingerprint,
        plan_hash: plan.hash(),
        rank,
        world_size: plan.world_size,
        config_json,
        generation_config_json,
        part: part.clone(),
        blocks,
    };
    let manifest_len = encode_manifest(&manifest).len() as u64;
    if manifest_len > MAX_MANIFEST {
        return Err(SliceError::ManifestTooLarge {
            path: path.display().to_string(),
            len: manifest_len,
            max: MAX_MANIFEST,
        });
    }
    let mut at = align_up(PREAMBLE_LEN as u64 + manifest_len, BLOCK_ALIGN);
    for b in &mut manifest.blocks {
        b.offset = at;
        at += b.len;
    }

    // Pass 2: data.
    let partial = path.with_extension("partial");
    let file = File::create(&partial).map_err(io_err(&partial, "create"))?;
    progress.begin(&format!("slicing rank {rank} of {}", plan.world_size), at);
    let mut out = Out {
        w: LargeWriter::new(file, 0),
        pos: 0,
        hash: Hasher64::new(),
        progress,
        reported: 0,
    };
    let werr = io_err(&partial, "write");
    let first = manifest.blocks.first().map_or(at, |b| b.offset);
    let result = (|| -> std::io::Result<()> {
        out.pad_to(first)?;
        for b in &mut manifest.blocks {
            debug_assert_eq!(out.pos, b.offset);
            out.hash = Hasher64::new();
            let srcs =
                block_sources(ckpt, &part, b.kind, plan.quant).map_err(std::io::Error::other)?;
            for (t, src) in srcs {
                out.pad_to(b.offset + t.offset)?;
                match src {
                    Src::Matrix { m, rows, cols } => {
                        write_matrix(&mut out, &m, rows, cols, t.wtype)?;
                        // Copied out: its pages leave this process's
                        // resident set (the page cache keeps them).
                        ckpt.weights.release(&m);
                    }
                    Src::F32(v) => {
                        for x in v {
                            out.put(&x.to_le_bytes())?;
                        }
                    }
                }
            }
            out.pad_to(b.offset + b.len)?;
            b.checksum = out.hash.finish();
        }
        out.w.flush()?;
        let mut head = Vec::with_capacity(PREAMBLE_LEN + manifest_len as usize);
        let m = encode_manifest(&manifest);
        head.extend_from_slice(&Preamble::of(&m).encode());
        head.extend_from_slice(&m);
        let f = out.w.file_mut();
        f.seek(SeekFrom::Start(0))?;
        f.write_all(&head)?;
        f.sync_all()
    })();
    if result.is_ok() {
        out.progress.update(out.pos);
        out.progress.end();
    }
    drop(out);
    if let Err(e) = result {
        let _ = std::fs::remove_file(&partial);
        return Err(werr(e));
    }
    std::fs::rename(&partial, path).map_err(io_err(path, "rename the .partial file"))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir, "fsync directory"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::safetensors::Dtype;
    use crate::progress::Silent;
    use crate::split::cache::ensure_slices;
    use crate::split::cache::write_slice;
    use crate::split::plan::split;
    use crate::split::reader::{Expect, SliceFile};
    use crate::split::testutil::*;
    use crate::sys::AlignedBuf;
    use crate::weights::in_place::{self, InPlace};
    use crate::weights::sliced::SliceResident;
    use crate::weights::sliced::SliceWeights;
    use crate::weights::{Head, LayerSource};
    use std::os::unix::fs::FileExt;

    /// The decisive test: every rank of every world size, byte-exact against
    /// the source tensors, norms equal, union over ranks covers the model.
    #[test]
    fn slices_match_source_for_every_world_size_and_rank() {
        let tmp = TempDir::new("exact");
        for name in FIXTURES {
            let ckpt = fixture(name);
            let cfg = &ckpt.config;
            let st = ckpt.safetensors().unwrap();
            let hd = cfg.head_dim;
            let fp = fp_of(&ckpt);
            let whole = in_place::resident(cfg, st, &RankSlice::whole(cfg)).unwrap();
            let mut inplace = InPlace::new(cfg, st).unwrap();
            for ws in 1..=cfg.n_heads {
                let plan = split(&Shape::of(cfg), ws, None).unwrap();
                let mut heads = vec![0usize; cfg.n_heads];
                let mut kv = vec![0usize; cfg.n_kv_heads];
                let mut hidden = vec![0usize; cfg.hidden_dim];
                let mut vocab = vec![0usize; cfg.vocab_size];
                for rank in 0..ws {
                    let path = tmp.0.join(format!("{name}-{ws}-{rank}.slice"));
                    write_slice(&ckpt, &plan, rank, &path, &mut Silent).unwrap();
                    assert!(!path.with_extension("partial").exists());
                    let sf = SliceFile::open(&path, expect_for(fp, &plan, rank)).unwrap();
                    sf.verify().unwrap();
                    assert_eq!(sf.config(), cfg);
                    let p = sf.part().clone();
                    let r = plan.rank(rank);
                    assert_eq!(
                        (&p.heads, &p.kv_heads, &p.hidden, &p.vocab),
                        (&r.heads, &r.kv_heads, &r.hidden, &r.vocab)
                    );
                    for (cov, range) in [
                        (&mut heads, &p.heads),
                        (&mut kv, &p.kv_heads),
                        (&mut hidden, &p.hidden),
                        (&mut vocab, &p.vocab),
                    ] {
                        range.clone().for_each(|i| cov[i] += 1);
                    }
                    // Blocks aligned, in the file.
                    for b in &sf.manifest().blocks {
                        assert_eq!(b.offset % BLOCK_ALIGN, 0);
                        assert_eq!(b.len % BLOCK_ALIGN, 0);
                        assert!(b.offset + b.len <= sf.file_len());
                        for t in &b.tensors {
                            assert_eq!(t.offset % TENSOR_ALIGN, 0);
                        }
                    }
                    // Norms.
                    let res = sf.resident().unwrap();
                    assert_eq!(res.final_norm, whole.final_norm);
                    assert_eq!(res.inv_freq, whole.inv_freq);
                    assert_eq!(res.dims.n_heads, p.heads.len());
                    for (a, b) in res.layers.iter().zip(&whole.layers) {
                        assert_eq!(a.attn_norm, b.attn_norm);
                        assert_eq!(a.ffn_norm, b.ffn_norm);
                        assert_eq!(a.q_bias, None);
                    }
                    // Layer matrices, via the resident source and via raw block bytes.
                    let qr = p.heads.start * hd..p.heads.end * hd;
                    let kvr = p.kv_heads.start * hd..p.kv_heads.end * hd;
                    let blocks = sf.layer_blocks();
                    assert_eq!(blocks.len(), cfg.n_layers);
                    let mut sr = SliceResident::load(sf).unwrap();
                    for (l, &(off, len)) in blocks.iter().enumerate() {
                        let n = |leaf| crate::model::names::layer_name(l, leaf);
                        let m = sr.acquire(l).unwrap();
                        let (d, q, k, h) = (cfg.dim, qr.len(), kvr.len(), p.hidden.len());
                        let w = |leaf, r: &Range<usize>| src_rows(st, &n(leaf), r.clone());
                        let c = |leaf, r: &Range<usize>| src_cols(st, &n(leaf), r.clone());
                        check_mat(&m.q, &w("self_attn.q_proj.weight", &qr), q, d, "q");
                        check_mat(&m.k, &w("self_attn.k_proj.weight", &kvr), k, d, "k");
                        check_mat(&m.v, &w("self_attn.v_proj.weight", &kvr), k, d, "v");
                        check_mat(&m.o, &c("self_attn.o_proj.weight", &qr), d, q, "o");
                        check_mat(&m.gate, &w("mlp.gate_proj.weight", &p.hidden), h, d, "gate");
                        check_mat(&m.up, &w("mlp.up_proj.weight", &p.hidden), h, d, "up");
                        check_mat(&m.down, &c("mlp.down_proj.weight", &p.hidden), d, h, "down");
                        // Dtype never changes.
                        let src_dt = st.tensor(&n("self_attn.q_proj.weight")).unwrap().dtype;
                        assert_eq!(m.q.wtype, src_dt.into());
                        // layer_mats_in over a block read independently.
                        let mut slot = AlignedBuf::zeroed(len as usize, 64).unwrap();
                        sr.slice()
                            .file()
                            .read_exact_at(slot.bytes_mut(), off)
                            .unwrap();
                        let m2 = sr.slice().layer_mats_in(l, slot.bytes()).unwrap();
                        assert!(m2.down.bytes == sr.acquire(l).unwrap().down.bytes);
                    }
                    // lm_head rows and embedding rows.
                    let (_, lm) = sr.lm_head(0).unwrap();
                    let lm_name = crate::model::names::lm_head_name(cfg, st);
                    check_mat(
                        &lm,
                        &src_rows(st, lm_name, p.vocab.clone()),
                        p.vocab.len(),
                        cfg.dim,
                        "lm_head",
                    );
                    let mut a = vec![0.0; cfg.dim];
                    let mut b = vec![0.0; cfg.dim];
                    for tok in [0, 1, cfg.vocab_size as u32 / 2, cfg.vocab_size as u32 - 1] {
                        sr.embed(tok, &mut a).unwrap();
                        inplace.embed(tok, &mut b).unwrap();
                        assert_eq!(a, b, "{name} embedding row {tok}");
                    }
                    assert!(sr.embed(cfg.vocab_size as u32, &mut a).is_err());
                    std::fs::remove_file(&path).unwrap();
                }
                // Union over ranks covers the model (and only KV heads repeat).
                assert!(heads.iter().all(|&c| c == 1), "{name} ws {ws} heads");
                assert!(hidden.iter().all(|&c| c == 1), "{name} ws {ws} hidden");
                assert!(vocab.iter().all(|&c| c == 1), "{name} ws {ws} vocab");
                assert!(kv.iter().all(|&c| c >= 1), "{name} ws {ws} kv heads");
            }
        }
    }

    /// A model with q/k/v biases and f16 matrices (no fixture has either):
    /// the llama-mha-f32 fixture converted, biases made up.
    #[test]
    fn biases_and_f16_are_sliced() {
        let tmp = TempDir::new("bias");
        let src = fixture("llama-mha-f32");
        let dir = tmp.0.join("model");
        std::fs::create_dir_all(&dir).unwrap();
        let fixture_dir =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama-mha-f32");
        let mut cfg_json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixture_dir.join("config.json")).unwrap())
                .unwrap();
        cfg_json["attention_bias"] = serde_json::Value::Bool(true);
        std::fs::write(dir.join("config.json"), cfg_json.to_string()).unwrap();
        let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for t in src.safetensors().unwrap().tensors() {
            let bytes = src.safetensors().unwrap().bytes(t);
            if t.shape.len() == 2 {
                let f16: Vec<u8> = crate::model::dtype::widen(t.dtype, bytes)
                    .into_iter()
                    .flat_map(|x| half::f16::from_f32(x).to_le_bytes())
                    .collect();
                tensors.push((t.name.clone(), Dtype::F16, t.shape.clone(), f16));
            } else {
                tensors.push((t.name.clone(), t.dtype, t.shape.clone(), bytes.to_vec()));
            }
        }
        let c = &src.config;
        for l in 0..c.n_layers {
            for (leaf, n) in [("q", c.n_heads), ("k", c.n_kv_heads), ("v", c.n_kv_heads)] {
                let v: Vec<u8> = (0..n * c.head_dim)
                    .flat_map(|i| (i as f32 * 0.25 + l as f32).to_le_bytes())
                    .collect();
                let name =
                    crate::model::names::layer_name(l, &format!("self_attn.{leaf}_proj.bias"));
                tensors.push((name, Dtype::F32, vec![n * c.head_dim], v));
            }
        }
        let refs: Vec<(&str, Dtype, &[usize], &[u8])> = tensors
            .iter()
            .map(|(n, d, s, b)| (n.as_str(), *d, s.as_slice(), b.as_slice()))
            .collect();
        crate::model::safetensors::write(&dir.join("model.safetensors"), &refs).unwrap();
        let ckpt = Checkpoint::open_dir(&dir).unwrap();
        assert!(ckpt.config.attention_bias);
        let cfg = &ckpt.config;
        for ws in [1, 3, 8] {
            let plan = split(&Shape::of(cfg), ws, None).unwrap();
            let paths =
                ensure_slices(&ckpt, &plan, &tmp.0.join("cache"), |_| false, &mut Silent).unwrap();
            for (rank, path) in paths.iter().enumerate() {
                let sf = SliceFile::open(path, Expect::default()).unwrap();
                sf.verify().unwrap();
                let want = in_place::resident(cfg, ckpt.safetensors().unwrap(), sf.part()).unwrap();
                let got = sf.resident().unwrap();
                for (a, b) in got.layers.iter().zip(&want.layers) {
                    assert!(a.q_bias.is_some() && a.k_bias.is_some() && a.v_bias.is_some());
                    assert_eq!(
                        (&a.q_bias, &a.k_bias, &a.v_bias),
                        (&b.q_bias, &b.k_bias, &b.v_bias),
                        "ws {ws} rank {rank}"
                    );
                }
                let hd = cfg.head_dim;
                let p = sf.part().clone();
                let mut sr = SliceResident::load(sf).unwrap();
                let m = sr.acquire(cfg.n_layers - 1).unwrap();
                assert_eq!(m.q.wtype, Dtype::F16.into());
                let name =
                    crate::model::names::layer_name(cfg.n_layers - 1, "self_attn.o_proj.weight");
                let want_o = src_cols(
                    ckpt.safetensors().unwrap(),
                    &name,
                    p.heads.start * hd..p.heads.end * hd,
                );
                assert!(m.o.bytes == want_o.as_slice());
            }
        }
    }
}
