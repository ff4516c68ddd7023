//! Slice files: one file per rank holding that rank's slice of every layer,
//! kernel-ready, so a worker with no model directory can run from it alone.
//!
//! # On-disk layout (all integers little-endian)
//!
//! ```text
//! offset  size  field
//! 0       8     magic b"TPISLICE"
//! 8       4     format version (u32, = FORMAT_VERSION)
//! 12      4     flags (u32, must be 0)
//! 16      8     manifest length in bytes (u64, <= MAX_MANIFEST)
//! 24      8     checksum64 of the manifest bytes
//! 32      n     manifest
//! ...           zero padding up to the first 4 KiB boundary
//!               blocks: each at a 4 KiB-aligned offset, each a multiple of
//!               4 KiB long (zero padded), so pread / O_DIRECT of a whole
//!               block lands straight in a window slot
//! ```
//!
//! Manifest:
//!
//! ```text
//! u32 format version          u64 model fingerprint     u64 plan hash
//! u32 rank                    u32 world size
//! u32 len + config.json text (UTF-8, <= MAX_CONFIG_TEXT)
//! u8 has_generation_config (0/1) [+ u32 len + text]
//! u64 x 8: heads, kv_heads, hidden, vocab ranges (start, end)
//! u32 block count, then per block (file order):
//!   u8 kind (0 vecs, 1 layer, 2 embedding, 3 lm_head), 3 zero bytes,
//!   u32 layer (u32::MAX unless kind = layer), u64 offset, u64 len,
//!   u64 checksum64 of the block's len bytes, u32 tensor count, then per tensor:
//!     u8 role, u8 dtype (0 F32, 1 F16, 2 BF16), u16 zero,
//!     u32 layer (u32::MAX when none), u64 rows, u64 cols,
//!     u64 offset within the block (64-byte aligned)
//! ```
//!
//! Blocks, in this order: `Vecs` (every layer's two RMSNorm weights, its
//! sliced q/k/v biases when the model has them, then the final norm; all
//! f32), `Layer(0..n_layers)` (q, k, v, o, gate, up, down of this rank, in
//! the stored dtype, never upcast), `Embedding` (the whole table, replicated,
//! read by row on demand) and `LmHead` (this rank's vocab rows of `lm_head`,
//! or of the embedding when tied). Layer matrices are laid out exactly as
//! [`LayerMats`] documents them: o_proj and down_proj columns of this rank are
//! gathered row by row into contiguous `[dim][my_cols]` matrices.

use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::cache::{self, CacheError, FileStamp};
use crate::codec::checksum::{checksum64, le64, Hasher64};
use crate::codec::cursor::Cursor;
use crate::load::{vector_f32, widen};
use crate::model::bundled;
use crate::model::checkpoint::Checkpoint;
use crate::model::config::Config;
use crate::model::names::{self, layer_name, lm_head_name};
use crate::model::safetensors::{Dtype, SafeTensors, TensorInfo};
use crate::plan::{Plan, PlanError, Shape};
use crate::progress::Progress;
use crate::weights::{Dims, Head, LayerMats, LayerSource, LayerVecs, Mat, Part, Resident};
use crate::window::{Window, WindowOpts, WindowStats};

/// File magic.
pub const MAGIC: [u8; 8] = *b"TPISLICE";
/// Format version written and accepted.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes before the manifest.
pub const PREAMBLE_LEN: usize = 32;
/// Block offsets and lengths are multiples of this.
pub const BLOCK_ALIGN: u64 = 4096;
/// Tensor offsets within a block are multiples of this.
pub const TENSOR_ALIGN: u64 = 64;
/// Largest manifest accepted.
pub const MAX_MANIFEST: u64 = 16 << 20;
/// Largest embedded config.json / generation_config.json text.
pub const MAX_CONFIG_TEXT: usize = 1 << 20;
/// Largest world size in a manifest.
pub const MAX_WORLD: usize = 1 << 14;
/// Most blocks in a manifest (layers + 3).
pub const MAX_BLOCKS: usize = 1 << 16;
/// Most tensors in one block (the vecs block has 5 per layer + 1).
pub const MAX_TENSORS_PER_BLOCK: usize = 1 << 19;
/// Largest range end / tensor dimension in a manifest.
pub const MAX_INDEX: u64 = 1 << 32;
/// "No layer" in the encoding.
const NO_LAYER: u32 = u32::MAX;
/// Encoded bytes per block entry without its tensors.
const BLOCK_ENTRY_LEN: usize = 1 + 3 + 4 + 8 + 8 + 8 + 4;
/// Encoded bytes per tensor entry.
const TENSOR_ENTRY_LEN: usize = 1 + 1 + 2 + 4 + 8 + 8 + 8;
/// Chunk size when hashing a block from the file.
const VERIFY_CHUNK: usize = 1 << 20;
/// Largest read of [`SliceFile::verify_with`] with `O_DIRECT` (two are in
/// memory at once).
const VERIFY_DIRECT_PIECE: u64 = 8 << 20;

// ---------------------------------------------------------------------------
// Manifest types

/// What a block holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// All layers' norms (+ sliced biases) and the final norm, f32.
    Vecs,
    /// Layer `l`'s seven matrices.
    Layer(usize),
    /// The full embedding table.
    Embedding,
    /// This rank's lm_head rows.
    LmHead,
}

impl fmt::Display for BlockKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockKind::Vecs => write!(f, "vecs block"),
            BlockKind::Layer(l) => write!(f, "layer {l} block"),
            BlockKind::Embedding => write!(f, "embedding block"),
            BlockKind::LmHead => write!(f, "lm_head block"),
        }
    }
}

/// What a tensor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
    AttnNorm,
    FfnNorm,
    QBias,
    KBias,
    VBias,
    FinalNorm,
    Embedding,
    LmHead,
}

const ROLES: [Role; 15] = [
    Role::Q,
    Role::K,
    Role::V,
    Role::O,
    Role::Gate,
    Role::Up,
    Role::Down,
    Role::AttnNorm,
    Role::FfnNorm,
    Role::QBias,
    Role::KBias,
    Role::VBias,
    Role::FinalNorm,
    Role::Embedding,
    Role::LmHead,
];

impl Role {
    fn code(self) -> u8 {
        ROLES.iter().position(|&r| r == self).unwrap_or(0) as u8
    }
}

fn dtype_code(d: Dtype) -> u8 {
    match d {
        Dtype::F32 => 0,
        Dtype::F16 => 1,
        Dtype::BF16 => 2,
    }
}

/// One tensor of a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    pub role: Role,
    pub layer: Option<usize>,
    pub dtype: Dtype,
    pub rows: usize,
    pub cols: usize,
    /// Byte offset within the block (multiple of [`TENSOR_ALIGN`]).
    pub offset: u64,
}

impl TensorEntry {
    /// Bytes of data (`rows * cols * dtype size`); decoded entries never overflow.
    pub fn byte_len(&self) -> u64 {
        (self.rows as u64)
            .saturating_mul(self.cols as u64)
            .saturating_mul(self.dtype.size() as u64)
    }
}

/// One block of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockEntry {
    pub kind: BlockKind,
    /// Absolute file offset (multiple of [`BLOCK_ALIGN`]).
    pub offset: u64,
    /// Length in bytes (multiple of [`BLOCK_ALIGN`], zero padded).
    pub len: u64,
    /// `checksum64` of the block's `len` bytes.
    pub checksum: u64,
    pub tensors: Vec<TensorEntry>,
}

/// The decoded manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub version: u32,
    pub fingerprint: u64,
    pub plan_hash: u64,
    pub rank: usize,
    pub world_size: usize,
    pub config_json: String,
    pub generation_config_json: Option<String>,
    pub part: Part,
    pub blocks: Vec<BlockEntry>,
}

// ---------------------------------------------------------------------------
// Errors

/// Errors writing, opening or reading a slice file; each names the file and,
/// where known, the rank, block and offset.
#[derive(Debug)]
pub enum SliceError {
    Io {
        path: String,
        what: &'static str,
        source: std::io::Error,
    },
    /// The file ends before `need` bytes.
    Truncated {
        path: String,
        what: &'static str,
        need: u64,
        file_len: u64,
    },
    BadMagic {
        path: String,
    },
    Version {
        path: String,
        found: u32,
        supported: u32,
    },
    ManifestTooLarge {
        path: String,
        len: u64,
        max: u64,
    },
    ManifestChecksum {
        path: String,
        stored: u64,
        computed: u64,
    },
    /// The manifest bytes do not decode (structure, bounds, alignment).
    Manifest {
        path: String,
        msg: String,
    },
    /// The file is for another model, plan, rank or world size.
    Mismatch {
        path: String,
        what: &'static str,
        expected: u64,
        found: u64,
    },
    /// A block reaches past the end of the file.
    BlockOutOfFile {
        path: String,
        rank: usize,
        block: BlockKind,
        offset: u64,
        len: u64,
        file_len: u64,
    },
    BlockChecksum {
        path: String,
        rank: usize,
        block: BlockKind,
        offset: u64,
        stored: u64,
        computed: u64,
    },
    /// Blocks or tensors do not match the embedded config and part.
    Layout {
        path: String,
        rank: usize,
        block: Option<BlockKind>,
        msg: String,
    },
    /// The embedded config does not parse.
    Config {
        path: String,
        msg: String,
    },
    /// The checkpoint a slice is written from is unusable.
    Source {
        origin: String,
        msg: String,
    },
    Plan(PlanError),
    /// Hashing a model file or recording a cache entry failed.
    Cache(CacheError),
    /// A layer index, token id or buffer outside its range.
    OutOfRange {
        path: String,
        rank: usize,
        what: &'static str,
        index: u64,
        len: u64,
    },
}

impl fmt::Display for SliceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SliceError::Io { path, what, source } => write!(f, "slice {path}: {what}: {source}"),
            SliceError::Truncated {
                path,
                what,
                need,
                file_len,
            } => write!(
                f,
                "slice {path}: truncated: {what} needs {need} bytes, file has {file_len}"
            ),
            SliceError::BadMagic { path } => {
                write!(f, "slice {path}: not a slice file (bad magic)")
            }
            SliceError::Version {
                path,
                found,
                supported,
            } => write!(
                f,
                "slice {path}: format version {found}, this build reads {supported}"
            ),
            SliceError::ManifestTooLarge { path, len, max } => {
                write!(f, "slice {path}: manifest of {len} bytes exceeds {max}")
            }
            SliceError::ManifestChecksum {
                path,
                stored,
                computed,
            } => write!(
                f,
                "slice {path}: manifest checksum {computed:016x} != stored {stored:016x} (corrupt)"
            ),
            SliceError::Manifest { path, msg } => write!(f, "slice {path}: manifest: {msg}"),
            SliceError::Mismatch {
                path,
                what,
                expected,
                found,
            } => write!(
                f,
                "slice {path}: {what} is {found:#x}, expected {expected:#x} (stale or foreign slice)"
            ),
            SliceError::BlockOutOfFile {
                path,
                rank,
                block,
                offset,
                len,
                file_len,
            } => write!(
                f,
                "slice {path} (rank {rank}): {block} at offset {offset} length {len} \
                 ends past the file end {file_len} (truncated)"
            ),
            SliceError::BlockChecksum {
                path,
                rank,
                block,
                offset,
                stored,
                computed,
            } => write!(
                f,
                "slice {path} (rank {rank}): {block} at offset {offset}: checksum \
                 {computed:016x} != stored {stored:016x} (corrupt)"
            ),
            SliceError::Layout {
                path,
                rank,
                block,
                msg,
            } => match block {
                Some(b) => write!(f, "slice {path} (rank {rank}): {b}: {msg}"),
                None => write!(f, "slice {path} (rank {rank}): {msg}"),
            },
            SliceError::Config { path, msg } => {
                write!(f, "slice {path}: embedded config: {msg}")
            }
            SliceError::Source { origin, msg } => write!(f, "checkpoint {origin}: {msg}"),
            SliceError::Plan(e) => write!(f, "{e}"),
            SliceError::Cache(e) => write!(f, "{e}"),
            SliceError::OutOfRange {
                path,
                rank,
                what,
                index,
                len,
            } => write!(
                f,
                "slice {path} (rank {rank}): {what} {index} outside 0..{len}"
            ),
        }
    }
}

impl std::error::Error for SliceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SliceError::Io { source, .. } => Some(source),
            SliceError::Plan(e) => Some(e),
            SliceError::Cache(e) => Some(e),
            _ => None,
        }
    }
}

impl From<SliceError> for crate::error::Error {
    fn from(e: SliceError) -> Self {
        crate::error::Error::Model(e.to_string())
    }
}

impl From<CacheError> for SliceError {
    fn from(e: CacheError) -> Self {
        SliceError::Cache(e)
    }
}

impl From<PlanError> for SliceError {
    fn from(e: PlanError) -> Self {
        SliceError::Plan(e)
    }
}

fn io_err<'a>(
    path: &'a Path,
    what: &'static str,
) -> impl FnOnce(std::io::Error) -> SliceError + 'a {
    move |source| SliceError::Io {
        path: path.display().to_string(),
        what,
        source,
    }
}

// ---------------------------------------------------------------------------
// Manifest encoding / decoding

fn put_u32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn layer_code(l: Option<usize>) -> u32 {
    l.map_or(NO_LAYER, |l| l as u32)
}

/// Encodes a manifest (inverse of [`decode_manifest`] for valid manifests).
pub fn encode_manifest(m: &Manifest) -> Vec<u8> {
    let mut b = Vec::with_capacity(256 + m.config_json.len());
    put_u32(&mut b, m.version);
    put_u64(&mut b, m.fingerprint);
    put_u64(&mut b, m.plan_hash);
    put_u32(&mut b, m.rank as u32);
    put_u32(&mut b, m.world_size as u32);
    put_u32(&mut b, m.config_json.len() as u32);
    b.extend_from_slice(m.config_json.as_bytes());
    match &m.generation_config_json {
        Some(g) => {
            b.push(1);
            put_u32(&mut b, g.len() as u32);
            b.extend_from_slice(g.as_bytes());
        }
        None => b.push(0),
    }
    let p = &m.part;
    for r in [&p.heads, &p.kv_heads, &p.hidden, &p.vocab] {
        put_u64(&mut b, r.start as u64);
        put_u64(&mut b, r.end as u64);
    }
    put_u32(&mut b, m.blocks.len() as u32);
    for blk in &m.blocks {
        let (kind, layer) = match blk.kind {
            BlockKind::Vecs => (0u8, None),
            BlockKind::Layer(l) => (1, Some(l)),
            BlockKind::Embedding => (2, None),
            BlockKind::LmHead => (3, None),
        };
        b.extend_from_slice(&[kind, 0, 0, 0]);
        put_u32(&mut b, layer_code(layer));
        put_u64(&mut b, blk.offset);
        put_u64(&mut b, blk.len);
        put_u64(&mut b, blk.checksum);
        put_u32(&mut b, blk.tensors.len() as u32);
        for t in &blk.tensors {
            b.extend_from_slice(&[t.role.code(), dtype_code(t.dtype), 0, 0]);
            put_u32(&mut b, layer_code(t.layer));
            put_u64(&mut b, t.rows as u64);
            put_u64(&mut b, t.cols as u64);
            put_u64(&mut b, t.offset);
        }
    }
    b
}

fn merr(msg: impl Into<String>) -> SliceError {
    SliceError::Manifest {
        path: "<manifest>".into(),
        msg: msg.into(),
    }
}

fn cur<T>(r: Result<T, crate::net::msg::MsgError>) -> Result<T, SliceError> {
    r.map_err(|e| merr(e.to_string()))
}

/// A bounded index (`<= MAX_INDEX`) as usize.
fn index(v: u64, field: &str) -> Result<usize, SliceError> {
    if v > MAX_INDEX {
        return Err(merr(format!("{field} = {v} exceeds {MAX_INDEX}")));
    }
    usize::try_from(v).map_err(|_| merr(format!("{field} = {v} does not fit usize")))
}

fn text(c: &mut Cursor<'_>, field: &'static str) -> Result<String, SliceError> {
    let len = cur(c.u32(field))? as usize;
    if len > MAX_CONFIG_TEXT {
        return Err(merr(format!(
            "{field} is {len} bytes, maximum {MAX_CONFIG_TEXT}"
        )));
    }
    let bytes = cur(c.bytes(len, field))?;
    String::from_utf8(bytes.to_vec()).map_err(|_| merr(format!("{field} is not UTF-8")))
}

fn layer_field(v: u32, field: &str) -> Result<Option<usize>, SliceError> {
    match v {
        NO_LAYER => Ok(None),
        l if (l as usize) < MAX_BLOCKS => Ok(Some(l as usize)),
        l => Err(merr(format!("{field} = {l} out of range"))),
    }
}

/// Decodes manifest bytes. Robust to arbitrary input: every read is bounded,
/// counts are checked against constant maxima and the bytes left before
/// allocating, trailing bytes are rejected. Checks structure only (ranges,
/// alignment, tensor bounds within blocks, non-overlap); consistency with the
/// embedded config and the file length is checked by [`SliceFile::open`].
pub fn decode_manifest(bytes: &[u8]) -> Result<Manifest, SliceError> {
    let mut c = Cursor::new(bytes);
    let version = cur(c.u32("version"))?;
    if version != FORMAT_VERSION {
        return Err(merr(format!(
            "format version {version}, expected {FORMAT_VERSION}"
        )));
    }
    let fingerprint = cur(c.u64("fingerprint"))?;
    let plan_hash = cur(c.u64("plan_hash"))?;
    let rank = cur(c.u32("rank"))? as usize;
    let world_size = cur(c.u32("world_size"))? as usize;
    if world_size == 0 || world_size > MAX_WORLD {
        return Err(merr(format!(
            "world size {world_size} outside 1..={MAX_WORLD}"
        )));
    }
    if rank >= world_size {
        return Err(merr(format!("rank {rank} >= world size {world_size}")));
    }
    let config_json = text(&mut c, "config_json")?;
    let generation_config_json = match cur(c.u8("has_generation_config"))? {
        0 => None,
        1 => Some(text(&mut c, "generation_config_json")?),
        v => {
            return Err(merr(format!(
                "has_generation_config = {v}, expected 0 or 1"
            )))
        }
    };
    let mut ranges = Vec::with_capacity(4);
    for field in ["heads", "kv_heads", "hidden", "vocab"] {
        let s = index(cur(c.u64("part range"))?, field)?;
        let e = index(cur(c.u64("part range"))?, field)?;
        if s > e {
            return Err(merr(format!("part {field} range {s}..{e} is reversed")));
        }
        ranges.push(s..e);
    }
    let part = Part {
        heads: ranges[0].clone(),
        kv_heads: ranges[1].clone(),
        hidden: ranges[2].clone(),
        vocab: ranges[3].clone(),
    };
    let n_blocks = cur(c.u32("block count"))? as usize;
    if n_blocks > MAX_BLOCKS || n_blocks.saturating_mul(BLOCK_ENTRY_LEN) > c.remaining() {
        return Err(merr(format!(
            "block count {n_blocks} exceeds {MAX_BLOCKS} or the {} bytes left",
            c.remaining()
        )));
    }
    let mut blocks = Vec::with_capacity(n_blocks);
    let mut prev_end = 0u64;
    for bi in 0..n_blocks {
        let kind_code = cur(c.u8("block kind"))?;
        if cur(c.array::<3>("block reserved"))? != [0; 3] {
            return Err(merr(format!("block {bi}: reserved bytes not zero")));
        }
        let layer = layer_field(cur(c.u32("block layer"))?, "block layer")?;
        let kind = match (kind_code, layer) {
            (0, None) => BlockKind::Vecs,
            (1, Some(l)) => BlockKind::Layer(l),
            (2, None) => BlockKind::Embedding,
            (3, None) => BlockKind::LmHead,
            (k, l) => {
                return Err(merr(format!(
                    "block {bi}: kind {k} with layer {l:?} is not a valid block"
                )))
            }
        };
        let offset = cur(c.u64("block offset"))?;
        let len = cur(c.u64("block len"))?;
        let checksum = cur(c.u64("block checksum"))?;
        if !offset.is_multiple_of(BLOCK_ALIGN) || !len.is_multiple_of(BLOCK_ALIGN) || len == 0 {
            return Err(merr(format!(
                "{kind} at offset {offset} length {len}: not a non-empty multiple of {BLOCK_ALIGN}"
            )));
        }
        let end = offset
            .checked_add(len)
            .ok_or_else(|| merr(format!("{kind}: offset {offset} + length {len} overflows")))?;
        if offset < prev_end || offset < PREAMBLE_LEN as u64 {
            return Err(merr(format!(
                "{kind} at offset {offset} overlaps the previous block or the manifest"
            )));
        }
        prev_end = end;
        let n_tensors = cur(c.u32("tensor count"))? as usize;
        if n_tensors > MAX_TENSORS_PER_BLOCK
            || n_tensors.saturating_mul(TENSOR_ENTRY_LEN) > c.remaining()
        {
            return Err(merr(format!(
                "{kind}: tensor count {n_tensors} exceeds {MAX_TENSORS_PER_BLOCK} or the bytes left"
            )));
        }
        let mut tensors = Vec::with_capacity(n_tensors);
        let mut t_end = 0u64;
        for ti in 0..n_tensors {
            let role_code = cur(c.u8("tensor role"))?;
            let role = *ROLES
                .get(role_code as usize)
                .ok_or_else(|| merr(format!("{kind} tensor {ti}: role {role_code} unknown")))?;
            let dtype = match cur(c.u8("tensor dtype"))? {
                0 => Dtype::F32,
                1 => Dtype::F16,
                2 => Dtype::BF16,
                d => return Err(merr(format!("{kind} tensor {ti}: dtype {d} unknown"))),
            };
            if cur(c.u16("tensor reserved"))? != 0 {
                return Err(merr(format!("{kind} tensor {ti}: reserved bytes not zero")));
            }
            let layer = layer_field(cur(c.u32("tensor layer"))?, "tensor layer")?;
            let rows = index(cur(c.u64("tensor rows"))?, "tensor rows")?;
            let cols = index(cur(c.u64("tensor cols"))?, "tensor cols")?;
            let t_off = cur(c.u64("tensor offset"))?;
            let size = (rows as u64)
                .checked_mul(cols as u64)
                .and_then(|n| n.checked_mul(dtype.size() as u64))
                .ok_or_else(|| merr(format!("{kind} tensor {ti}: size overflows")))?;
            let stop = t_off.checked_add(size);
            if !t_off.is_multiple_of(TENSOR_ALIGN) || t_off < t_end || stop.is_none_or(|s| s > len)
            {
                return Err(merr(format!(
                    "{kind} tensor {ti} ({role:?}) at offset {t_off} size {size}: \
                     misaligned, overlapping or past the block length {len}"
                )));
            }
            t_end = stop.unwrap_or(len);
            tensors.push(TensorEntry {
                role,
                layer,
                dtype,
                rows,
                cols,
                offset: t_off,
            });
        }
        blocks.push(BlockEntry {
            kind,
            offset,
            len,
            checksum,
            tensors,
        });
    }
    cur(c.finish())?;
    Ok(Manifest {
        version,
        fingerprint,
        plan_hash,
        rank,
        world_size,
        config_json,
        generation_config_json,
        part,
        blocks,
    })
}

// ---------------------------------------------------------------------------
// Expected contents (shared by writer and reader)

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// The canonical block order for `cfg`.
fn block_kinds(cfg: &Config) -> Vec<BlockKind> {
    let mut k = Vec::with_capacity(cfg.n_layers + 3);
    k.push(BlockKind::Vecs);
    k.extend((0..cfg.n_layers).map(BlockKind::Layer));
    k.push(BlockKind::Embedding);
    k.push(BlockKind::LmHead);
    k
}

/// (role, layer, rows, cols) of every tensor of `kind`, in block order.
fn expected_tensors(
    cfg: &Config,
    part: &Part,
    kind: BlockKind,
) -> Vec<(Role, Option<usize>, usize, usize)> {
    let hd = cfg.head_dim;
    let (d, q, kv, h) = (
        cfg.dim,
        part.heads.len() * hd,
        part.kv_heads.len() * hd,
        part.hidden.len(),
    );
    match kind {
        BlockKind::Vecs => {
            let mut v = Vec::with_capacity(cfg.n_layers * 5 + 1);
            for l in 0..cfg.n_layers {
                v.push((Role::AttnNorm, Some(l), 1, d));
                v.push((Role::FfnNorm, Some(l), 1, d));
                if cfg.attention_bias {
                    v.push((Role::QBias, Some(l), 1, q));
                    v.push((Role::KBias, Some(l), 1, kv));
                    v.push((Role::VBias, Some(l), 1, kv));
                }
            }
            v.push((Role::FinalNorm, None, 1, d));
            v
        }
        BlockKind::Layer(l) => vec![
            (Role::Q, Some(l), q, d),
            (Role::K, Some(l), kv, d),
            (Role::V, Some(l), kv, d),
            (Role::O, Some(l), d, q),
            (Role::Gate, Some(l), h, d),
            (Role::Up, Some(l), h, d),
            (Role::Down, Some(l), d, h),
        ],
        BlockKind::Embedding => vec![(Role::Embedding, None, cfg.vocab_size, d)],
        BlockKind::LmHead => vec![(Role::LmHead, None, part.vocab.len(), d)],
    }
}

/// Checks `part` against `cfg` (ranges inside the model, non-empty, KV heads
/// exactly those the query heads use).
fn check_part(cfg: &Config, part: &Part) -> Result<(), String> {
    let group = cfg.n_heads / cfg.n_kv_heads.max(1);
    for (name, r, len) in [
        ("heads", &part.heads, cfg.n_heads),
        ("kv_heads", &part.kv_heads, cfg.n_kv_heads),
        ("hidden", &part.hidden, cfg.hidden_dim),
        ("vocab", &part.vocab, cfg.vocab_size),
    ] {
        if r.is_empty() || r.end > len {
            return Err(format!("part {name} {r:?} is empty or outside 0..{len}"));
        }
    }
    let kv = part.heads.start / group.max(1)..part.heads.end.div_ceil(group.max(1));
    if group == 0 || part.kv_heads != kv {
        return Err(format!(
            "part kv_heads {:?}, but heads {:?} use {kv:?}",
            part.kv_heads, part.heads
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Fingerprint

/// The raw config.json and generation_config.json texts of a checkpoint.
/// `Checkpoint` keeps only the parsed config, so they are re-read from its
/// origin directory (or taken from the bundled model) and checked to parse to
/// the same `Config`.
fn config_texts(ckpt: &Checkpoint) -> Result<(String, Option<String>), SliceError> {
    let src = |msg: String| SliceError::Source {
        origin: ckpt.origin.clone(),
        msg,
    };
    let (cfg, gen, origin) = if ckpt.origin == bundled::NAME {
        (
            bundled::CONFIG.to_string(),
            Some(bundled::GENERATION_CONFIG.to_string()),
            bundled::NAME.to_string(),
        )
    } else {
        let dir = Path::new(&ckpt.origin);
        let read = |p: &Path| -> Result<String, SliceError> {
            let f = File::open(p).map_err(io_err(p, "read config"))?;
            let mut s = String::new();
            f.take(MAX_CONFIG_TEXT as u64 + 1)
                .read_to_string(&mut s)
                .map_err(io_err(p, "read config"))?;
            if s.len() > MAX_CONFIG_TEXT {
                return Err(src(format!(
                    "{} is larger than {MAX_CONFIG_TEXT} bytes",
                    p.display()
                )));
            }
            Ok(s)
        };
        let cp = dir.join("config.json");
        let gp = dir.join("generation_config.json");
        let gen = if gp.exists() { Some(read(&gp)?) } else { None };
        (read(&cp)?, gen, cp.display().to_string())
    };
    let reparsed = Config::from_json(&cfg, gen.as_deref(), &origin)
        .map_err(|e| src(format!("config re-read for the slice: {e}")))?;
    if reparsed != ckpt.config {
        return Err(src(
            "config.json / generation_config.json changed since the checkpoint was opened".into(),
        ));
    }
    Ok((cfg, gen))
}

fn hash_text(h: &mut Hasher64, tag: &[u8], t: Option<&str>) {
    h.update(tag);
    match t {
        Some(t) => {
            h.update(&[1]);
            h.update(&(t.len() as u64).to_le_bytes());
            h.update(t.as_bytes());
        }
        None => h.update(&[0]),
    }
}

fn fingerprint_with(ckpt: &Checkpoint, cfg: &str, gen: Option<&str>, digests: &[u64]) -> u64 {
    let mut h = Hasher64::new();
    h.update(b"tpi-fingerprint-v2");
    hash_text(&mut h, b"config", Some(cfg));
    hash_text(&mut h, b"generation_config", gen);
    let st = &ckpt.weights;
    h.update(&(st.num_shards() as u64).to_le_bytes());
    for i in 0..st.num_shards() {
        h.update(&(st.shard_bytes(i).len() as u64).to_le_bytes());
        h.update(&digests.get(i).copied().unwrap_or(0).to_le_bytes());
    }
    h.finish()
}

/// Every shard's whole-file XXH64, in index order: remembered by the
/// `SafeTensors` once computed, else taken from the digest cache in
/// `cache_dir` under the shard's (canonical path, size, mtime, inode), else
/// read and hashed (reported to `progress`) and stored there.
fn shard_digests(
    st: &SafeTensors,
    cache_dir: Option<&Path>,
    progress: &mut dyn Progress,
) -> Result<Vec<u64>, SliceError> {
    let n = st.num_shards();
    let mut out = vec![0u64; n];
    let mut todo = Vec::new();
    for (i, slot) in out.iter_mut().enumerate() {
        let Some(cell) = st.digest_cell(i) else {
            continue;
        };
        if let Some(d) = cell.get() {
            *slot = *d;
            continue;
        }
        let d = match st.shard_file(i) {
            // In-memory bytes (the bundled model): cheap to hash.
            None => checksum64(st.shard_bytes(i)),
            Some((_, id)) => match cache_dir.and_then(|c| cache::lookup_digest(c, id)) {
                Some(d) => d,
                None => {
                    todo.push(i);
                    continue;
                }
            },
        };
        *slot = *cell.get_or_init(|| d);
    }
    if todo.is_empty() {
        return Ok(out);
    }
    let total = todo
        .iter()
        .filter_map(|&i| st.shard_file(i))
        .map(|(_, id)| id.size)
        .sum();
    progress.begin("hashing model weights", total);
    let started = std::time::SystemTime::now();
    let mut done = 0u64;
    for i in todo {
        let (Some((file, id)), Some(cell), Some(slot)) =
            (st.shard_file(i), st.digest_cell(i), out.get_mut(i))
        else {
            continue;
        };
        let d = cache::hash_file(file, id, &mut |n| {
            done += n;
            progress.update(done);
        })?;
        if let Some(dir) = cache_dir {
            // A digest that cannot be stored is only hashed again next time.
            let _ = cache::store_digest(dir, id, d, started);
        }
        *slot = *cell.get_or_init(|| d);
    }
    progress.end();
    Ok(out)
}

/// Model identity: `checksum64` (XXH64) over a tag, the config.json and
/// generation_config.json texts, and for every shard (in index order) its
/// size and the XXH64 of all its bytes (header and weights). Two models
/// that differ in a single weight byte have different fingerprints, so a
/// slice cut from one is never served for the other, and a worker holding
/// other weights is refused at hello.
///
/// Hashing reads the whole model once per process; the digest is kept in
/// the digest cache in `cache_dir` (see `cache.rs`) keyed by the file's
/// canonical path, size, mtime and inode, so later runs only `stat` it.
/// `progress` hears of the hashing when it happens.
pub fn fingerprint(
    ckpt: &Checkpoint,
    cache_dir: &Path,
    progress: &mut dyn Progress,
) -> Result<u64, SliceError> {
    let (c, g) = config_texts(ckpt)?;
    let digests = shard_digests(&ckpt.weights, Some(cache_dir), progress)?;
    Ok(fingerprint_with(ckpt, &c, g.as_deref(), &digests))
}

/// The files the fingerprint covers, as they are now (for the entry record).
fn model_stamps(ckpt: &Checkpoint) -> Vec<FileStamp> {
    let mut v = Vec::new();
    if ckpt.origin != bundled::NAME {
        let dir = Path::new(&ckpt.origin);
        for name in ["config.json", "generation_config.json"] {
            if let Ok(s) = FileStamp::of(&dir.join(name)) {
                v.push(s);
            }
        }
    }
    let st = &ckpt.weights;
    for i in 0..st.num_shards() {
        if let Some((_, id)) = st.shard_file(i) {
            v.push(FileStamp {
                path: id.path.clone(),
                size: id.size,
                mtime_ns: id.mtime_ns,
            });
        }
    }
    v
}

/// Records in a cache entry directory where its slices came from.
fn record(ckpt: &Checkpoint, entry: &Path) -> Result<(), SliceError> {
    let origin = match std::fs::canonicalize(&ckpt.origin) {
        Ok(p) => p.display().to_string(),
        Err(_) => ckpt.origin.clone(),
    };
    Ok(cache::record_entry(entry, &origin, &model_stamps(ckpt))?)
}

// ---------------------------------------------------------------------------
// Writer

/// Where a tensor's bytes come from.
enum Src<'a> {
    /// Contiguous bytes (whole tensor or a row range).
    Bytes(&'a [u8]),
    /// A column range of a row-major matrix: `bytes[r*row + start .. r*row + end]`
    /// for every row.
    Cols {
        bytes: &'a [u8],
        rows: usize,
        row: usize,
        start: usize,
        end: usize,
    },
    /// Small f32 vector (norms, biases).
    F32(Vec<f32>),
}

fn source_err(st: &SafeTensors, e: impl fmt::Display) -> SliceError {
    SliceError::Source {
        origin: st.shard_name(0).to_string(),
        msg: e.to_string(),
    }
}

/// The tensors of `kind` with their dtype, source bytes and (for matrices)
/// the source tensor, whose pages are released once it is written.
#[allow(clippy::type_complexity)]
fn block_sources<'a>(
    cfg: &Config,
    st: &'a SafeTensors,
    part: &Part,
    kind: BlockKind,
) -> Result<Vec<(TensorEntry, Src<'a>, Option<&'a TensorInfo>)>, SliceError> {
    let hd = cfg.head_dim;
    let mut out = Vec::new();
    for (role, layer, rows, cols) in expected_tensors(cfg, part, kind) {
        let l = layer.unwrap_or(0);
        let matrix = |leaf: &str, shape: [usize; 2]| {
            let name = match leaf {
                "embed" => names::EMBED.to_string(),
                "lm_head" => lm_head_name(cfg, st).to_string(),
                _ => layer_name(l, leaf),
            };
            let t = st
                .tensor_shaped(&name, &shape)
                .map_err(|e| source_err(st, e))?;
            let bytes = st.bytes(t);
            if bytes.len() != t.len {
                return Err(source_err(st, format!("tensor {name} is outside its file")));
            }
            Ok((t.dtype, bytes, t))
        };
        let row_slice = |leaf: &str, shape: [usize; 2], r: Range<usize>| {
            let (dtype, bytes, t) = matrix(leaf, shape)?;
            let row = shape[1] * dtype.size();
            Ok::<_, SliceError>((
                dtype,
                Src::Bytes(&bytes[r.start * row..r.end * row]),
                Some(t),
            ))
        };
        let col_slice = |leaf: &str, shape: [usize; 2], c: Range<usize>| {
            let (dtype, bytes, t) = matrix(leaf, shape)?;
            let s = dtype.size();
            Ok::<_, SliceError>((
                dtype,
                Src::Cols {
                    bytes,
                    rows: shape[0],
                    row: shape[1] * s,
                    start: c.start * s,
                    end: c.end * s,
                },
                Some(t),
            ))
        };
        let vector = |leaf: &str, len: usize, r: Range<usize>| {
            let name = if leaf == names::FINAL_NORM {
                leaf.to_string()
            } else {
                layer_name(l, leaf)
            };
            let v = vector_f32(st, &name, len).map_err(|e| source_err(st, e))?;
            Ok::<_, SliceError>((Dtype::F32, Src::F32(v[r].to_vec()), None))
        };
        let (d, nh, nkv, nhid) = (
            cfg.dim,
            cfg.n_heads * hd,
            cfg.n_kv_heads * hd,
            cfg.hidden_dim,
        );
        let qr = part.heads.start * hd..part.heads.end * hd;
        let kvr = part.kv_heads.start * hd..part.kv_heads.end * hd;
        let (dtype, src, source) = match role {
            Role::Q => row_slice("self_attn.q_proj.weight", [nh, d], qr)?,
            Role::K => row_slice("self_attn.k_proj.weight", [nkv, d], kvr)?,
            Role::V => row_slice("self_attn.v_proj.weight", [nkv, d], kvr)?,
            Role::O => col_slice("self_attn.o_proj.weight", [d, nh], qr)?,
            Role::Gate => row_slice("mlp.gate_proj.weight", [nhid, d], part.hidden.clone())?,
            Role::Up => row_slice("mlp.up_proj.weight", [nhid, d], part.hidden.clone())?,
            Role::Down => col_slice("mlp.down_proj.weight", [d, nhid], part.hidden.clone())?,
            Role::AttnNorm => vector(names::ATTN_NORM, d, 0..d)?,
            Role::FfnNorm => vector(names::FFN_NORM, d, 0..d)?,
            Role::QBias => vector(names::Q_BIAS, nh, qr)?,
            Role::KBias => vector(names::K_BIAS, nkv, kvr.clone())?,
            Role::VBias => vector(names::V_BIAS, nkv, kvr)?,
            Role::FinalNorm => vector(names::FINAL_NORM, d, 0..d)?,
            Role::Embedding => row_slice("embed", [cfg.vocab_size, d], 0..cfg.vocab_size)?,
            Role::LmHead => row_slice("lm_head", [cfg.vocab_size, d], part.vocab.clone())?,
        };
        out.push((
            TensorEntry {
                role,
                layer,
                dtype,
                rows,
                cols,
                offset: 0,
            },
            src,
            source,
        ));
    }
    // Offsets within the block.
    let mut at = 0u64;
    for (t, _, _) in &mut out {
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

fn check_plan(ckpt: &Checkpoint, plan: &Plan, rank: usize) -> Result<Part, SliceError> {
    let cfg = &ckpt.config;
    let s = &plan.shape;
    if Shape::of(cfg) != *s {
        return Err(SliceError::Source {
            origin: ckpt.origin.clone(),
            msg: format!("plan shape {s:?} does not match the model config"),
        });
    }
    let r = plan.try_rank(rank)?;
    let part = Part {
        heads: r.heads.clone(),
        kv_heads: r.kv_heads.clone(),
        hidden: r.hidden.clone(),
        vocab: r.vocab.clone(),
    };
    check_part(cfg, &part).map_err(|msg| SliceError::Source {
        origin: ckpt.origin.clone(),
        msg: format!("plan rank {rank}: {msg}"),
    })?;
    Ok(part)
}

/// Write size and alignment for slice files (see [`LargeWriter`]).
pub const WRITE_BUF: usize = 4 << 20;

/// Sequential file writer that hands the file system writes of
/// [`WRITE_BUF`] bytes at multiples of [`WRITE_BUF`], always from its own
/// buffer. The file then sits in the page cache in large (up to 2 MiB)
/// folios where the file system supports them, and a mapped memory window
/// maps a block with a few hundred page-table operations instead of tens
/// of thousands. Both parts matter, as measured (populating a 4.1 GB pass):
/// 110 ms after `BufWriter`, which hands large writes straight from the
/// mmapped safetensors to the kernel (whose write path appears to shrink
/// its folios at each fault on a source page not yet in memory); 41 ms
/// after unaligned 4 MiB writes from memory; 13-14 ms after aligned ones.
pub(crate) struct LargeWriter {
    file: File,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    at: u64,
}

impl LargeWriter {
    /// A writer appending at `at`, the file's current length.
    pub(crate) fn new(file: File, at: u64) -> LargeWriter {
        LargeWriter {
            file,
            buf: Vec::with_capacity(WRITE_BUF),
            at,
        }
    }

    fn write_buf(&mut self) -> std::io::Result<()> {
        self.file.write_all(&self.buf)?;
        self.at += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// The file, with everything written to it.
    pub(crate) fn into_file(mut self) -> std::io::Result<File> {
        self.write_buf()?;
        Ok(self.file)
    }
}

impl Write for LargeWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let end = self.at + self.buf.len() as u64;
        let room = WRITE_BUF - (end % WRITE_BUF as u64) as usize;
        let n = b.len().min(room);
        self.buf.extend_from_slice(&b[..n]);
        if n == room {
            self.write_buf()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.write_buf()
    }
}

/// Writes rank `rank`'s slice of `ckpt` under `plan` to `path`: streamed one
/// tensor slice at a time from the mmapped safetensors (RAM O(write buffer +
/// small vectors), never O(model): each source tensor's pages leave the
/// resident set once it is written), into `path.with_extension("partial")`,
/// fsynced, then renamed over `path`; `model.json` beside it records the
/// model (see `cache.rs`). `progress` hears the bytes written (and the
/// hashing of the model, unless [`fingerprint`] already did it for `ckpt`).
pub fn write_slice(
    ckpt: &Checkpoint,
    plan: &Plan,
    rank: usize,
    path: &Path,
    progress: &mut dyn Progress,
) -> Result<(), SliceError> {
    let (cfg_text, gen_text) = config_texts(ckpt)?;
    let digests = shard_digests(&ckpt.weights, None, progress)?;
    let fp = fingerprint_with(ckpt, &cfg_text, gen_text.as_deref(), &digests);
    write_slice_with(ckpt, plan, rank, path, fp, cfg_text, gen_text, progress)?;
    if let Some(dir) = path.parent().filter(|d| cache::is_entry_dir(d)) {
        record(ckpt, dir)?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn write_slice_with(
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
    let st = &ckpt.weights;
    let part = check_plan(ckpt, plan, rank)?;

    // Pass 1: layout (no data touched beyond headers and small vectors).
    let kinds = block_kinds(cfg);
    let mut blocks = Vec::with_capacity(kinds.len());
    for &kind in &kinds {
        let tensors: Vec<TensorEntry> = block_sources(cfg, st, &part, kind)?
            .into_iter()
            .map(|(t, _, _)| t)
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
            let srcs = block_sources(cfg, st, &part, b.kind).map_err(std::io::Error::other)?;
            for (t, src, source) in srcs {
                out.pad_to(b.offset + t.offset)?;
                match src {
                    Src::Bytes(bytes) => out.put(bytes)?,
                    Src::Cols {
                        bytes,
                        rows,
                        row,
                        start,
                        end,
                    } => {
                        for r in 0..rows {
                            out.put(&bytes[r * row + start..r * row + end])?;
                        }
                    }
                    Src::F32(v) => {
                        for x in v {
                            out.put(&x.to_le_bytes())?;
                        }
                    }
                }
                if let Some(t) = source {
                    // Copied out: its pages leave this process's resident
                    // set (the page cache keeps them). Failing to advise
                    // costs memory, not correctness.
                    let _ = st.release(t);
                }
            }
            out.pad_to(b.offset + b.len)?;
            b.checksum = out.hash.finish();
        }
        out.w.flush()?;
        let mut head = Vec::with_capacity(PREAMBLE_LEN + manifest_len as usize);
        let m = encode_manifest(&manifest);
        head.extend_from_slice(&MAGIC);
        head.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        head.extend_from_slice(&0u32.to_le_bytes());
        head.extend_from_slice(&(m.len() as u64).to_le_bytes());
        head.extend_from_slice(&checksum64(&m).to_le_bytes());
        head.extend_from_slice(&m);
        let f = &mut out.w.file;
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

/// Path of rank `rank`'s slice under `cache_dir`.
pub fn slice_path(cache_dir: &Path, fingerprint: u64, plan: &Plan, rank: usize) -> PathBuf {
    cache_dir
        .join(format!("{fingerprint:016x}-{:016x}", plan.hash()))
        .join(format!("rank-{rank}-of-{}.slice", plan.world_size))
}

/// One slice file per rank under
/// `cache_dir/<fingerprint hex>-<plan hash hex>/rank-<r>-of-<n>.slice`.
/// A file is reused only if it opens and fully verifies (format version,
/// fingerprint, plan hash, rank, world size, part, every block checksum);
/// otherwise it is (re)written.
///
/// With `direct(bytes)` true for the cached slices' total size, the
/// verification reads bypass the page cache ([`SliceFile::verify_with`]).
/// The fingerprint covers every weight byte ([`fingerprint`]), so a model
/// whose weights were replaced gets new slices. `progress` hears the
/// hashing (when the digest cache misses) and each slice written. The
/// entry directory gets its `model.json` record and `used` stamp.
pub fn ensure_slices(
    ckpt: &Checkpoint,
    plan: &Plan,
    cache_dir: &Path,
    direct: impl Fn(u64) -> bool,
    progress: &mut dyn Progress,
) -> Result<Vec<PathBuf>, SliceError> {
    let (cfg_text, gen_text) = config_texts(ckpt)?;
    let digests = shard_digests(&ckpt.weights, Some(cache_dir), progress)?;
    let fp = fingerprint_with(ckpt, &cfg_text, gen_text.as_deref(), &digests);
    let all: Vec<PathBuf> = (0..plan.world_size)
        .map(|rank| slice_path(cache_dir, fp, plan, rank))
        .collect();
    let cached: u64 = all
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    let direct = direct(cached);
    let mut paths = Vec::with_capacity(plan.world_size);
    let mut wrote = false;
    for (rank, path) in all.into_iter().enumerate() {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(dir, "create cache directory"))?;
        }
        let expect = Expect {
            fingerprint: Some(fp),
            plan_hash: Some(plan.hash()),
            rank: Some(rank),
            world_size: Some(plan.world_size),
        };
        let want_part = check_plan(ckpt, plan, rank)?;
        let good = SliceFile::open(&path, expect)
            .and_then(|s| s.verify_with(direct).map(|()| s))
            .is_ok_and(|s| s.part() == &want_part);
        if !good {
            write_slice_with(
                ckpt,
                plan,
                rank,
                &path,
                fp,
                cfg_text.clone(),
                gen_text.clone(),
                progress,
            )?;
            wrote = true;
        }
        paths.push(path);
    }
    if let Some(entry) = paths.first().and_then(|p| p.parent()) {
        if wrote {
            record(ckpt, entry)?;
        } else if !entry.join(cache::RECORD).exists() {
            // Slices cut by an older tpi or copied in: recorded if the
            // cache is writable; if not, they still serve.
            let _ = record(ckpt, entry);
        } else {
            // A stamp that cannot be set (read-only cache) only makes the
            // entry look older to `cache::prune`.
            let _ = cache::touch_used(entry);
        }
    }
    Ok(paths)
}

// ---------------------------------------------------------------------------
// Reader

/// What the opener expects the file to be; `None` accepts any value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expect {
    pub fingerprint: Option<u64>,
    pub plan_hash: Option<u64>,
    pub rank: Option<usize>,
    pub world_size: Option<usize>,
}

/// An opened, structurally validated slice file.
#[derive(Debug)]
pub struct SliceFile {
    path: PathBuf,
    file: File,
    file_len: u64,
    manifest: Manifest,
    config: Config,
    /// Block indices: vecs, layers in order, embedding, lm_head.
    vecs: usize,
    layers: Vec<usize>,
    embedding: usize,
    lm_head: usize,
}

/// 8-byte aligned owned bytes.
#[derive(Debug, Default)]
struct Aligned {
    mem: AlignedMem,
    len: usize,
}

#[derive(Debug)]
enum AlignedMem {
    Words(Vec<u64>),
    /// Large buffers: an anonymous mapping advised to use huge pages, so
    /// streaming GEMVs take fewer TLB misses.
    Anon(memmap2::MmapMut),
}

impl Default for AlignedMem {
    fn default() -> AlignedMem {
        AlignedMem::Words(Vec::new())
    }
}

/// Buffers from this size on are anonymous huge-page mappings.
const HUGE_FROM: usize = 2 << 20;

impl Aligned {
    fn zeroed(len: usize) -> Aligned {
        if len >= HUGE_FROM && std::env::var_os("TPI_NO_HUGEPAGES").is_none() {
            if let Ok(m) = memmap2::MmapMut::map_anon(len) {
                #[cfg(target_os = "linux")]
                let _ = m.advise(memmap2::Advice::HugePage);
                return Aligned {
                    mem: AlignedMem::Anon(m),
                    len,
                };
            }
        }
        Aligned {
            mem: AlignedMem::Words(vec![0; len.div_ceil(8)]),
            len,
        }
    }
    fn bytes(&self) -> &[u8] {
        match &self.mem {
            AlignedMem::Words(w) => &bytemuck::cast_slice::<u64, u8>(w)[..self.len],
            AlignedMem::Anon(m) => &m[..self.len],
        }
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        match &mut self.mem {
            AlignedMem::Words(w) => &mut bytemuck::cast_slice_mut::<u64, u8>(w)[..self.len],
            AlignedMem::Anon(m) => &mut m[..self.len],
        }
    }
}

impl SliceFile {
    /// Opens and validates `path`: preamble, manifest checksum and structure,
    /// every block inside the file, the embedded config, blocks and tensors
    /// exactly as the config and part require, and `expect`. Block data is
    /// not read (see [`SliceFile::verify`]).
    pub fn open(path: &Path, expect: Expect) -> Result<SliceFile, SliceError> {
        let p = path.display().to_string();
        let file = File::open(path).map_err(io_err(path, "open"))?;
        let file_len = file.metadata().map_err(io_err(path, "stat"))?.len();
        let truncated = |what, need| SliceError::Truncated {
            path: p.clone(),
            what,
            need,
            file_len,
        };
        if file_len < PREAMBLE_LEN as u64 {
            return Err(truncated("preamble", PREAMBLE_LEN as u64));
        }
        let mut pre = [0u8; PREAMBLE_LEN];
        file.read_exact_at(&mut pre, 0)
            .map_err(io_err(path, "read preamble"))?;
        if pre[..8] != MAGIC {
            return Err(SliceError::BadMagic { path: p });
        }
        let version = u32::from_le_bytes([pre[8], pre[9], pre[10], pre[11]]);
        if version != FORMAT_VERSION {
            return Err(SliceError::Version {
                path: p,
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let flags = u32::from_le_bytes([pre[12], pre[13], pre[14], pre[15]]);
        if flags != 0 {
            return Err(SliceError::Manifest {
                path: p,
                msg: format!("preamble flags {flags:#x} unknown"),
            });
        }
        let mlen = le64(&pre[16..24]);
        let stored = le64(&pre[24..32]);
        if mlen > MAX_MANIFEST {
            return Err(SliceError::ManifestTooLarge {
                path: p,
                len: mlen,
                max: MAX_MANIFEST,
            });
        }
        let need = PREAMBLE_LEN as u64 + mlen;
        if file_len < need {
            return Err(truncated("manifest", need));
        }
        let mut mbytes = vec![0u8; mlen as usize];
        file.read_exact_at(&mut mbytes, PREAMBLE_LEN as u64)
            .map_err(io_err(path, "read manifest"))?;
        let computed = checksum64(&mbytes);
        if computed != stored {
            return Err(SliceError::ManifestChecksum {
                path: p,
                stored,
                computed,
            });
        }
        let manifest = decode_manifest(&mbytes).map_err(|e| match e {
            SliceError::Manifest { msg, .. } => SliceError::Manifest {
                path: p.clone(),
                msg,
            },
            e => e,
        })?;
        let rank = manifest.rank;
        let mismatch = |what, expected: u64, found: u64| SliceError::Mismatch {
            path: p.clone(),
            what,
            expected,
            found,
        };
        if let Some(f) = expect.fingerprint.filter(|&f| f != manifest.fingerprint) {
            return Err(mismatch("model fingerprint", f, manifest.fingerprint));
        }
        if let Some(h) = expect.plan_hash.filter(|&h| h != manifest.plan_hash) {
            return Err(mismatch("plan hash", h, manifest.plan_hash));
        }
        if let Some(r) = expect.rank.filter(|&r| r != rank) {
            return Err(mismatch("rank", r as u64, rank as u64));
        }
        if let Some(w) = expect.world_size.filter(|&w| w != manifest.world_size) {
            return Err(mismatch("world size", w as u64, manifest.world_size as u64));
        }
        let layout = |block: Option<BlockKind>, msg: String| SliceError::Layout {
            path: p.clone(),
            rank,
            block,
            msg,
        };
        // Blocks inside the file and after the manifest.
        let data_start = align_up(need, BLOCK_ALIGN);
        for b in &manifest.blocks {
            if b.offset < data_start {
                return Err(layout(
                    Some(b.kind),
                    format!("offset {} overlaps the manifest (ends {need})", b.offset),
                ));
            }
            if b.offset.checked_add(b.len).is_none_or(|e| e > file_len) {
                return Err(SliceError::BlockOutOfFile {
                    path: p.clone(),
                    rank,
                    block: b.kind,
                    offset: b.offset,
                    len: b.len,
                    file_len,
                });
            }
        }
        let config = Config::from_json(
            &manifest.config_json,
            manifest.generation_config_json.as_deref(),
            &p,
        )
        .map_err(|e| SliceError::Config {
            path: p.clone(),
            msg: e.to_string(),
        })?;
        check_part(&config, &manifest.part).map_err(|m| layout(None, m))?;
        if config.n_heads < manifest.world_size {
            return Err(layout(
                None,
                format!(
                    "world size {} exceeds the model's {} heads",
                    manifest.world_size, config.n_heads
                ),
            ));
        }
        let kinds = block_kinds(&config);
        let got: Vec<BlockKind> = manifest.blocks.iter().map(|b| b.kind).collect();
        if got != kinds {
            return Err(layout(
                None,
                format!(
                    "{} blocks do not follow the order vecs, layer 0..{}, embedding, lm_head",
                    got.len(),
                    config.n_layers
                ),
            ));
        }
        for b in &manifest.blocks {
            let want = expected_tensors(&config, &manifest.part, b.kind);
            let have: Vec<_> = b
                .tensors
                .iter()
                .map(|t| (t.role, t.layer, t.rows, t.cols))
                .collect();
            if want != have {
                return Err(layout(
                    Some(b.kind),
                    format!("tensors {have:?} differ from the expected {want:?}"),
                ));
            }
            if b.kind == BlockKind::Vecs {
                if let Some(t) = b.tensors.iter().find(|t| t.dtype != Dtype::F32) {
                    return Err(layout(
                        Some(b.kind),
                        format!("{:?} is {}, expected F32", t.role, t.dtype.name()),
                    ));
                }
            }
        }
        let n = manifest.blocks.len();
        Ok(SliceFile {
            path: path.to_path_buf(),
            file,
            file_len,
            config,
            vecs: 0,
            layers: (1..n - 2).collect(),
            embedding: n - 2,
            lm_head: n - 1,
            manifest,
        })
    }

    fn block_checksum_err(&self, b: &BlockEntry, computed: u64) -> SliceError {
        SliceError::BlockChecksum {
            path: self.path.display().to_string(),
            rank: self.manifest.rank,
            block: b.kind,
            offset: b.offset,
            stored: b.checksum,
            computed,
        }
    }

    /// Reads every block and checks its checksum (streamed in 1 MiB chunks).
    pub fn verify(&self) -> Result<(), SliceError> {
        let mut buf = vec![0u8; VERIFY_CHUNK];
        for b in &self.manifest.blocks {
            let mut h = Hasher64::new();
            let mut at = 0u64;
            while at < b.len {
                let n = (b.len - at).min(VERIFY_CHUNK as u64) as usize;
                self.file
                    .read_exact_at(&mut buf[..n], b.offset + at)
                    .map_err(io_err(&self.path, "read block"))?;
                h.update(&buf[..n]);
                at += n as u64;
            }
            let c = h.finish();
            if c != b.checksum {
                return Err(self.block_checksum_err(b, c));
            }
        }
        Ok(())
    }

    /// [`SliceFile::verify`], reading with `O_DIRECT` when `direct` (and the
    /// file system allows it): a rank that streams its weights past the
    /// page cache does not fill the page cache with them at start either.
    pub fn verify_with(&self, direct: bool) -> Result<(), SliceError> {
        if !direct {
            return self.verify();
        }
        // Every block in pieces of at most VERIFY_DIRECT_PIECE bytes, in
        // file order, through a two-slot window (which handles alignment
        // and falls back to buffered reads where O_DIRECT is refused).
        let mut pieces = Vec::new();
        for b in &self.manifest.blocks {
            let mut at = 0u64;
            while at < b.len {
                let n = (b.len - at).min(VERIFY_DIRECT_PIECE);
                pieces.push((b.offset + at, n));
                at += n;
            }
        }
        let io = |e: crate::window::WindowError| SliceError::Io {
            path: self.path.display().to_string(),
            what: "verify (O_DIRECT)",
            source: std::io::Error::other(e.to_string()),
        };
        let file = self
            .file
            .try_clone()
            .map_err(io_err(&self.path, "reopen to verify"))?;
        let mut w = Window::start(
            file,
            pieces,
            2,
            WindowOpts {
                reads: crate::window::Reads::Direct,
            },
        )
        .map_err(io)?;
        let mut i = 0usize;
        for b in &self.manifest.blocks {
            let mut h = Hasher64::new();
            let mut at = 0u64;
            while at < b.len {
                let bytes = w.acquire(i).map_err(io)?;
                h.update(bytes);
                at += bytes.len() as u64;
                w.release(i).map_err(io)?;
                i += 1;
            }
            let c = h.finish();
            if c != b.checksum {
                return Err(self.block_checksum_err(b, c));
            }
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn file_len(&self) -> u64 {
        self.file_len
    }
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    pub fn config(&self) -> &Config {
        &self.config
    }
    pub fn part(&self) -> &Part {
        &self.manifest.part
    }
    pub fn rank(&self) -> usize {
        self.manifest.rank
    }
    /// The underlying file, for positioned reads of blocks (window loader).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// `(offset, len)` of every layer block, layer order.
    pub fn layer_blocks(&self) -> Vec<(u64, u64)> {
        self.layers
            .iter()
            .map(|&i| (self.manifest.blocks[i].offset, self.manifest.blocks[i].len))
            .collect()
    }

    /// What a memory window streams, in order: the layer blocks, then the
    /// lm_head rows in parts no larger than the largest layer block (whole
    /// 4-row groups, the kernels' row block). Returns the `(offset, len)`
    /// of every block and each lm_head part's `(first row, rows)`.
    pub fn window_blocks(&self) -> (Vec<crate::window::Block>, Vec<LmPart>) {
        let mut blocks = self.layer_blocks();
        let largest = blocks.iter().map(|b| b.1).max().unwrap_or(0);
        let b = &self.manifest.blocks[self.lm_head];
        let t = &b.tensors[0];
        let row_bytes = (t.cols * t.dtype.size()) as u64;
        let rows_per = ((largest / row_bytes.max(1)) as usize / 4 * 4).max(4);
        let parts: Vec<(usize, usize)> = (0..t.rows)
            .step_by(rows_per)
            .map(|r0| (r0, rows_per.min(t.rows - r0)))
            .collect();
        for &(r0, rows) in &parts {
            let at = b.offset + t.offset + r0 as u64 * row_bytes;
            blocks.push((at, rows as u64 * row_bytes));
        }
        (blocks, parts)
    }

    /// Layer `l`'s block entry.
    pub fn layer_block(&self, l: usize) -> Result<&BlockEntry, SliceError> {
        self.layers
            .get(l)
            .map(|&i| &self.manifest.blocks[i])
            .ok_or_else(|| self.out_of_range("layer", l as u64, self.layers.len() as u64))
    }

    fn out_of_range(&self, what: &'static str, index: u64, len: u64) -> SliceError {
        SliceError::OutOfRange {
            path: self.path.display().to_string(),
            rank: self.manifest.rank,
            what,
            index,
            len,
        }
    }

    /// Reads a whole block into an aligned buffer and checks its checksum.
    fn read_block(&self, idx: usize) -> Result<Aligned, SliceError> {
        let b = &self.manifest.blocks[idx];
        let len = usize::try_from(b.len)
            .map_err(|_| self.out_of_range("block length", b.len, usize::MAX as u64))?;
        let mut buf = Aligned::zeroed(len);
        self.file
            .read_exact_at(buf.bytes_mut(), b.offset)
            .map_err(io_err(&self.path, "read block"))?;
        let c = checksum64(buf.bytes());
        if c != b.checksum {
            return Err(self.block_checksum_err(b, c));
        }
        Ok(buf)
    }

    fn mat<'a>(
        &self,
        b: &BlockEntry,
        t: &TensorEntry,
        bytes: &'a [u8],
    ) -> Result<Mat<'a>, SliceError> {
        let start = t.offset as usize;
        let end = start + t.byte_len() as usize;
        let data = bytes
            .get(start..end)
            .ok_or_else(|| self.out_of_range("block buffer length", end as u64, b.len))?;
        Ok(Mat {
            dtype: t.dtype,
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
    pub fn layer_mats_in<'a>(
        &self,
        l: usize,
        block_bytes: &'a [u8],
    ) -> Result<LayerMats<'a>, SliceError> {
        let b = self.layer_block(l)?;
        if !(block_bytes.as_ptr() as usize).is_multiple_of(4) {
            return Err(SliceError::Layout {
                path: self.path.display().to_string(),
                rank: self.manifest.rank,
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
    pub fn resident(&self) -> Result<Resident, SliceError> {
        let buf = self.read_block(self.vecs)?;
        let b = &self.manifest.blocks[self.vecs];
        let cfg = &self.config;
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

/// A rank's layers and lm_head read once into memory from its slice file
/// (each block checksummed as it is read); embedding rows are read on demand
/// by pread from the embedding block, so the table never sits in RAM.
pub struct SliceResident {
    slice: SliceFile,
    layers: Layers,
    lm_head: LmHead,
    row: Aligned,
}

/// Rows of a streamed lm_head part: `(first row, rows)`.
pub type LmPart = (usize, usize);

/// Where a rank's lm_head rows live.
enum LmHead {
    /// Read once and kept.
    Resident(Aligned),
    /// Streamed through the window as blocks `first..first + parts.len()`
    /// after the layers, each `(first row, rows)` of the rank's vocab rows.
    Streamed { first: usize, parts: Vec<LmPart> },
}

/// Where a rank's layer blocks live.
enum Layers {
    /// Every block read once and kept.
    Resident(Vec<Aligned>),
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
            .field("path", &self.slice.path)
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
            .file
            .try_clone()
            .map_err(io_err(&slice.path, "reopen for the window"))?;
        let window = Window::start(file, blocks, n_slots, opts).map_err(|e| SliceError::Io {
            path: slice.path.display().to_string(),
            what: "start the memory window",
            source: std::io::Error::other(e.to_string()),
        })?;
        let lm_head = LmHead::Streamed { first, parts };
        SliceResident::with_layers(slice, Layers::Window(Box::new(window)), lm_head)
    }

    fn with_layers(
        slice: SliceFile,
        layers: Layers,
        lm_head: LmHead,
    ) -> Result<SliceResident, SliceError> {
        let e = &slice.manifest.blocks[slice.embedding].tensors[0];
        let row = Aligned::zeroed(e.cols * e.dtype.size());
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
            Layers::Resident(l) => l.iter().map(|b| b.len).sum::<usize>(),
            Layers::Window(w) => {
                let s = w.stats();
                s.n_slots * s.slot_bytes
            }
        };
        let lm_head = match &self.lm_head {
            LmHead::Resident(a) => a.len,
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
    fn acquire(&mut self, l: usize) -> crate::error::Result<LayerMats<'_>> {
        let bytes = match &mut self.layers {
            Layers::Resident(v) => v
                .get(l)
                .ok_or_else(|| self.slice.out_of_range("layer", l as u64, v.len() as u64))?
                .bytes(),
            Layers::Window(w) => w.acquire(l).map_err(|e| {
                crate::error::Error::Model(format!("{}: layer {l}: {e}", self.slice.path.display()))
            })?,
        };
        Ok(self.slice.layer_mats_in(l, bytes)?)
    }

    fn release(&mut self, l: usize) -> crate::error::Result<()> {
        if let Layers::Window(w) = &mut self.layers {
            w.release(l).map_err(|e| {
                crate::error::Error::Model(format!("{}: layer {l}: {e}", self.slice.path.display()))
            })?;
        }
        Ok(())
    }
}

impl Head for SliceResident {
    fn embed(&mut self, token: u32, out: &mut [f32]) -> crate::error::Result<()> {
        let s = &self.slice;
        let b = &s.manifest.blocks[s.embedding];
        let t = &b.tensors[0];
        if token as usize >= t.rows {
            return Err(s
                .out_of_range("token id", u64::from(token), t.rows as u64)
                .into());
        }
        let row_len = self.row.len as u64;
        let at = b.offset + t.offset + u64::from(token) * row_len;
        s.file
            .read_exact_at(self.row.bytes_mut(), at)
            .map_err(io_err(&s.path, "read embedding row"))?;
        let m = Mat {
            dtype: t.dtype,
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

    fn lm_head(&mut self, part: usize) -> crate::error::Result<(usize, Mat<'_>)> {
        let s = &self.slice;
        let b = &s.manifest.blocks[s.lm_head];
        let t = &b.tensors[0];
        match (&self.lm_head, &mut self.layers) {
            (LmHead::Resident(a), _) => Ok((0, s.mat(b, t, a.bytes())?)),
            (LmHead::Streamed { first, parts }, Layers::Window(w)) => {
                let &(row0, rows) = parts.get(part).ok_or_else(|| {
                    s.out_of_range("lm_head part", part as u64, parts.len() as u64)
                })?;
                let bytes = w.acquire(first + part).map_err(|e| {
                    crate::error::Error::Model(format!(
                        "{}: lm_head part {part}: {e}",
                        s.path.display()
                    ))
                })?;
                let len = rows * t.cols * t.dtype.size();
                let data = bytes.get(..len).ok_or_else(|| {
                    s.out_of_range("lm_head part bytes", len as u64, bytes.len() as u64)
                })?;
                let m = Mat {
                    dtype: t.dtype,
                    rows,
                    cols: t.cols,
                    bytes: data,
                };
                Ok((row0, m))
            }
            (LmHead::Streamed { .. }, Layers::Resident(_)) => Err(crate::error::Error::Model(
                "lm_head streamed without a window".into(),
            )),
        }
    }

    fn release_lm_head(&mut self, part: usize) -> crate::error::Result<()> {
        if let (LmHead::Streamed { first, .. }, Layers::Window(w)) =
            (&self.lm_head, &mut self.layers)
        {
            w.release(first + part).map_err(|e| {
                crate::error::Error::Model(format!(
                    "{}: lm_head part {part}: {e}",
                    self.slice.path.display()
                ))
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{self, InPlace};
    use crate::plan::{split, Shape};
    use crate::progress::Silent;
    use proptest::prelude::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const FIXTURES: [&str; 3] = ["stories260K", "llama-mha-f32", "llama-gqa-bf16"];

    /// A unique temp directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!(
                "tpi-slice-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn large_writer_writes_whole_aligned_pieces_and_every_byte() {
        let tmp = TempDir::new("large-writer");
        let path = tmp.0.join("f");
        let head = vec![7u8; 100];
        std::fs::write(&path, &head).unwrap();
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        let mut w = LargeWriter::new(file, 100);
        // A write never crosses a WRITE_BUF boundary of the file, and
        // reaching one hands the piece to the file.
        let big: Vec<u8> = (0..2 * WRITE_BUF + 12345)
            .map(|i| (i % 251) as u8)
            .collect();
        assert_eq!(w.write(&big).unwrap(), WRITE_BUF - 100);
        assert!(w.buf.is_empty() && w.at == WRITE_BUF as u64);
        w.write_all(&big[WRITE_BUF - 100..]).unwrap();
        assert_eq!(w.at, 2 * WRITE_BUF as u64);
        assert_eq!(w.buf.len(), 12345 + 100);
        for chunk in [&[1u8, 2, 3][..], &[], &[4]] {
            w.write_all(chunk).unwrap();
        }
        w.into_file().unwrap();
        let got = std::fs::read(&path).unwrap();
        let mut want = head;
        want.extend_from_slice(&big);
        want.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(got.len(), want.len());
        assert!(got == want, "file contents differ");
    }

    /// The fingerprint, with a throw-away digest cache.
    fn fp_of(ckpt: &Checkpoint) -> u64 {
        let tmp = TempDir::new("fp");
        fingerprint(ckpt, &tmp.0, &mut Silent).unwrap()
    }

    fn fixture(name: &str) -> Checkpoint {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name);
        Checkpoint::open_dir(&dir).unwrap()
    }

    fn expect_for(fp: u64, plan: &Plan, rank: usize) -> Expect {
        Expect {
            fingerprint: Some(fp),
            plan_hash: Some(plan.hash()),
            rank: Some(rank),
            world_size: Some(plan.world_size),
        }
    }

    /// Rows `r` of a source matrix, bytes.
    fn src_rows(st: &SafeTensors, name: &str, r: Range<usize>) -> Vec<u8> {
        let t = st.tensor(name).unwrap();
        let row = t.shape[1] * t.dtype.size();
        st.bytes(t)[r.start * row..r.end * row].to_vec()
    }

    /// Columns `c` of a source matrix gathered row by row, bytes.
    fn src_cols(st: &SafeTensors, name: &str, c: Range<usize>) -> Vec<u8> {
        let t = st.tensor(name).unwrap();
        let s = t.dtype.size();
        let row = t.shape[1] * s;
        let all = st.bytes(t);
        let mut out = Vec::new();
        for r in 0..t.shape[0] {
            out.extend_from_slice(&all[r * row + c.start * s..r * row + c.end * s]);
        }
        out
    }

    fn check_mat(m: &Mat<'_>, want: &[u8], rows: usize, cols: usize, what: &str) {
        assert_eq!((m.rows, m.cols), (rows, cols), "{what} shape");
        assert!(m.bytes == want, "{what} bytes differ");
        m.weights().unwrap();
    }

    /// The decisive test: every rank of every world size, byte-exact against
    /// the source tensors, norms equal, union over ranks covers the model.
    #[test]
    fn slices_match_source_for_every_world_size_and_rank() {
        let tmp = TempDir::new("exact");
        for name in FIXTURES {
            let ckpt = fixture(name);
            let cfg = &ckpt.config;
            let st = &ckpt.weights;
            let hd = cfg.head_dim;
            let fp = fp_of(&ckpt);
            let whole = load::resident(cfg, st, &Part::whole(cfg)).unwrap();
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
                        assert_eq!(m.q.dtype, src_dt);
                        // layer_mats_in over a block read independently.
                        let mut slot = Aligned::zeroed(len as usize);
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
            let res_w = load::resident(cfg, &ckpt.weights, &Part::whole(cfg)).unwrap();
            let mut whole = InPlace::new(cfg, &ckpt.weights).unwrap();
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

    fn stories_slice(tmp: &TempDir, ws: usize, rank: usize) -> (Checkpoint, Plan, PathBuf) {
        let ckpt = fixture("stories260K");
        let plan = split(&Shape::of(&ckpt.config), ws, None).unwrap();
        let path = tmp.0.join(format!("s-{ws}-{rank}.slice"));
        write_slice(&ckpt, &plan, rank, &path, &mut Silent).unwrap();
        (ckpt, plan, path)
    }

    fn copy_with(src: &Path, dst: &Path, edit: impl FnOnce(&mut Vec<u8>)) {
        let mut b = std::fs::read(src).unwrap();
        edit(&mut b);
        std::fs::write(dst, b).unwrap();
    }

    #[test]
    fn damaged_or_foreign_files_give_named_errors() {
        let tmp = TempDir::new("errors");
        let (ckpt, plan, path) = stories_slice(&tmp, 2, 1);
        let fp = fp_of(&ckpt);
        let good = SliceFile::open(&path, expect_for(fp, &plan, 1)).unwrap();
        good.verify().unwrap();
        let bad = tmp.0.join("bad.slice");
        let open = |e: Expect| SliceFile::open(&bad, e).unwrap_err();
        let shown = |e: &SliceError| e.to_string();

        // Truncated by one page: the last block (lm_head) is cut.
        copy_with(&path, &bad, |b| b.truncate(b.len() - 4096));
        let e = open(Expect::default());
        assert!(
            matches!(
                e,
                SliceError::BlockOutOfFile {
                    rank: 1,
                    block: BlockKind::LmHead,
                    ..
                }
            ),
            "{e}"
        );
        assert!(shown(&e).contains("bad.slice") && shown(&e).contains("lm_head block"));
        // Truncated inside the preamble / the manifest.
        copy_with(&path, &bad, |b| b.truncate(20));
        assert!(matches!(
            open(Expect::default()),
            SliceError::Truncated {
                what: "preamble",
                ..
            }
        ));
        copy_with(&path, &bad, |b| b.truncate(100));
        assert!(matches!(
            open(Expect::default()),
            SliceError::Truncated {
                what: "manifest",
                ..
            }
        ));
        // Wrong plan hash, fingerprint, rank.
        copy_with(&path, &bad, |_| {});
        let mut e = expect_for(fp, &plan, 1);
        e.plan_hash = Some(plan.hash() ^ 1);
        let err = open(e);
        assert!(
            matches!(
                err,
                SliceError::Mismatch {
                    what: "plan hash",
                    ..
                }
            ),
            "{err}"
        );
        assert!(shown(&err).contains("plan hash"));
        let mut e = expect_for(fp, &plan, 1);
        e.fingerprint = Some(fp ^ 1);
        assert!(matches!(
            open(e),
            SliceError::Mismatch {
                what: "model fingerprint",
                ..
            }
        ));
        assert!(matches!(
            open(expect_for(fp, &plan, 0)),
            SliceError::Mismatch { what: "rank", .. }
        ));
        // Corrupted manifest byte, bad magic, unknown version.
        copy_with(&path, &bad, |b| b[PREAMBLE_LEN + 9] ^= 0x10);
        let err = open(Expect::default());
        assert!(matches!(err, SliceError::ManifestChecksum { .. }), "{err}");
        copy_with(&path, &bad, |b| b[0] = b'X');
        assert!(matches!(
            open(Expect::default()),
            SliceError::BadMagic { .. }
        ));
        copy_with(&path, &bad, |b| b[8] = 9);
        assert!(matches!(
            open(Expect::default()),
            SliceError::Version { found: 9, .. }
        ));
        // A flipped byte in layer 1's block: opens, verify names the block.
        let (off, _) = good.layer_blocks()[1];
        copy_with(&path, &bad, |b| b[off as usize + 77] ^= 1);
        let sf = SliceFile::open(&bad, expect_for(fp, &plan, 1)).unwrap();
        let err_direct = sf.verify_with(true).unwrap_err();
        assert_eq!(err_direct.to_string(), sf.verify().unwrap_err().to_string());
        good.verify_with(true).unwrap();
        let err = sf.verify().unwrap_err();
        assert!(
            matches!(
                err,
                SliceError::BlockChecksum {
                    rank: 1,
                    block: BlockKind::Layer(1),
                    ..
                }
            ),
            "{err}"
        );
        assert!(shown(&err).contains("layer 1 block") && shown(&err).contains("rank 1"));
        // ... and the resident loader refuses it too.
        assert!(SliceResident::load(sf).is_err());
        // Into the engine's error type.
        let e: crate::error::Error = err.into();
        assert!(e.to_string().contains("layer 1 block"));
        // A slot too short for layer_mats_in is an error, not a panic.
        assert!(good.layer_mats_in(0, &[0u8; 64]).is_err());
        assert!(good.layer_mats_in(99, &[]).is_err());
    }

    #[test]
    fn ensure_slices_reuses_only_verified_files() {
        let tmp = TempDir::new("ensure");
        let ckpt = fixture("stories260K");
        let plan = split(&Shape::of(&ckpt.config), 3, None).unwrap();
        let fp = fp_of(&ckpt);
        let paths = ensure_slices(&ckpt, &plan, &tmp.0, |_| false, &mut Silent).unwrap();
        assert_eq!(paths.len(), 3);
        for (r, p) in paths.iter().enumerate() {
            assert_eq!(p, &slice_path(&tmp.0, fp, &plan, r));
            assert!(p.ends_with(format!("rank-{r}-of-3.slice")));
            assert_eq!(
                p.parent().unwrap().file_name().unwrap().to_str().unwrap(),
                format!("{fp:016x}-{:016x}", plan.hash())
            );
        }
        let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
        let set_old = |p: &Path| {
            File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(old)
                .unwrap()
        };
        let mtime = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
        paths.iter().for_each(|p| set_old(p));
        // Valid cache: nothing rewritten.
        assert_eq!(
            ensure_slices(&ckpt, &plan, &tmp.0, |_| true, &mut Silent).unwrap(),
            paths
        );
        assert!(paths.iter().all(|p| mtime(p) == old));
        // A flipped byte in rank 1's layer 0 block: only rank 1 is rewritten.
        let sf = SliceFile::open(&paths[1], Expect::default()).unwrap();
        let (off, _) = sf.layer_blocks()[0];
        drop(sf);
        let f = File::options().write(true).open(&paths[1]).unwrap();
        let mut byte = [0u8; 1];
        File::open(&paths[1])
            .unwrap()
            .read_exact_at(&mut byte, off + 5)
            .unwrap();
        f.write_all_at(&[byte[0] ^ 0x80], off + 5).unwrap();
        f.set_modified(old).unwrap();
        drop(f);
        // (verified with O_DIRECT reads where the file system allows them)
        ensure_slices(&ckpt, &plan, &tmp.0, |_| true, &mut Silent).unwrap();
        assert_eq!(mtime(&paths[0]), old);
        assert_ne!(mtime(&paths[1]), old);
        assert_eq!(mtime(&paths[2]), old);
        let sf = SliceFile::open(&paths[1], expect_for(fp, &plan, 1)).unwrap();
        sf.verify().unwrap();
        // A file that merely exists (empty), or a truncated one, is rewritten.
        std::fs::write(&paths[2], b"").unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&paths[0])
            .unwrap()
            .set_len(5000)
            .unwrap();
        ensure_slices(&ckpt, &plan, &tmp.0, |_| false, &mut Silent).unwrap();
        for (r, p) in paths.iter().enumerate() {
            SliceFile::open(p, expect_for(fp, &plan, r))
                .unwrap()
                .verify()
                .unwrap();
        }
    }

    #[test]
    fn fingerprint_is_stable_and_tracks_headers() {
        let a = fixture("stories260K");
        assert_eq!(fp_of(&a), fp_of(&a));
        assert_eq!(fp_of(&a), fp_of(&fixture("stories260K")));
        assert_ne!(fp_of(&a), fp_of(&fixture("llama-mha-f32")));
        // The bundled model is the same files as the stories260K fixture.
        assert_eq!(fp_of(&Checkpoint::bundled().unwrap()), fp_of(&a));
    }

    /// Counts the hashing jobs it hears of.
    #[derive(Default)]
    struct Jobs(Vec<(String, u64)>);

    impl Progress for Jobs {
        fn begin(&mut self, what: &str, total: u64) {
            self.0.push((what.to_string(), total));
        }
        fn update(&mut self, _: u64) {}
        fn end(&mut self) {}
    }

    /// A copy of a fixture whose files' mtimes are `age` in the past.
    fn aged_copy(name: &str, dst: &Path, age: std::time::Duration) {
        std::fs::create_dir_all(dst).unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name);
        for f in ["config.json", "generation_config.json", "model.safetensors"] {
            std::fs::copy(src.join(f), dst.join(f)).unwrap();
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(dst.join(f))
                .unwrap();
            file.set_modified(std::time::SystemTime::now() - age)
                .unwrap();
        }
    }

    #[test]
    fn fingerprint_covers_weight_bytes_and_caches_their_digest() {
        let tmp = TempDir::new("fpbytes");
        let (model, cache) = (tmp.0.join("m"), tmp.0.join("cache"));
        aged_copy("stories260K", &model, std::time::Duration::from_secs(60));
        let fp = |p: &mut Jobs| {
            let ckpt = Checkpoint::open_dir(&model).unwrap();
            fingerprint(&ckpt, &cache, p).unwrap()
        };
        let size = std::fs::metadata(model.join("model.safetensors"))
            .unwrap()
            .len();
        let mut first = Jobs::default();
        let a = fp(&mut first);
        assert_eq!(first.0, vec![("hashing model weights".to_string(), size)]);
        assert_eq!(a, fp_of(&fixture("stories260K")));
        // Cached: the second open only stats the file.
        let mut second = Jobs::default();
        assert_eq!(fp(&mut second), a);
        assert!(second.0.is_empty(), "hashed again: {:?}", second.0);
        // One weight value changed in place, same layout: another model.
        let ckpt = Checkpoint::open_dir(&model).unwrap();
        let t = ckpt
            .weights
            .tensor("model.layers.0.mlp.up_proj.weight")
            .unwrap();
        let at = (t.offset + t.len / 2) as u64;
        drop(ckpt);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(model.join("model.safetensors"))
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x40], at).unwrap();
        drop(f);
        let mut third = Jobs::default();
        let c = fp(&mut third);
        assert_eq!(third.0.len(), 1, "the changed file was not hashed again");
        assert_ne!(c, a, "a changed weight kept the fingerprint");
    }

    fn real_manifest() -> Vec<u8> {
        static M: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        M.get_or_init(|| {
            let tmp = TempDir::new("manifest");
            let (_, _, path) = stories_slice(&tmp, 3, 2);
            let b = std::fs::read(&path).unwrap();
            let len = le64(&b[16..24]) as usize;
            b[PREAMBLE_LEN..PREAMBLE_LEN + len].to_vec()
        })
        .clone()
    }

    #[test]
    fn manifest_round_trips() {
        let bytes = real_manifest();
        let m = decode_manifest(&bytes).unwrap();
        assert_eq!(m.rank, 2);
        assert_eq!(m.world_size, 3);
        assert_eq!(encode_manifest(&m), bytes);
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(decode_manifest(&extra).is_err());
        assert!(decode_manifest(&bytes[..bytes.len() - 1]).is_err());
    }

    proptest! {
        #[test]
        fn hasher_equals_checksum64(
            data in proptest::collection::vec(any::<u8>(), 0..400),
            cuts in proptest::collection::vec(0usize..400, 0..6),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort_unstable();
            let mut h = Hasher64::new();
            let mut at = 0;
            for c in cuts {
                h.update(&data[at..c]);
                at = c;
            }
            h.update(&data[at..]);
            prop_assert_eq!(h.finish(), checksum64(&data));
        }

        #[test]
        fn decode_manifest_never_panics_on_random_bytes(
            data in proptest::collection::vec(any::<u8>(), 0..2048),
        ) {
            let _ = decode_manifest(&data);
        }

        #[test]
        fn decode_manifest_never_panics_on_mutations(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let mut b = real_manifest();
            for (i, v) in edits {
                let i = i.index(b.len());
                b[i] = v;
            }
            if truncate {
                b.truncate(cut.index(b.len()));
            }
            if let Ok(m) = decode_manifest(&b) {
                // Whatever decodes re-encodes to the same bytes (canonical).
                prop_assert_eq!(encode_manifest(&m), b);
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
        for t in src.weights.tensors() {
            let bytes = src.weights.bytes(t);
            if t.shape.len() == 2 {
                let f16: Vec<u8> = load::widen(t.dtype, bytes)
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
                let want = load::resident(cfg, &ckpt.weights, sf.part()).unwrap();
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
                assert_eq!(m.q.dtype, Dtype::F16);
                let name =
                    crate::model::names::layer_name(cfg.n_layers - 1, "self_attn.o_proj.weight");
                let want_o = src_cols(&ckpt.weights, &name, p.heads.start * hd..p.heads.end * hd);
                assert!(m.o.bytes == want_o.as_slice());
            }
        }
    }
}
