//! The slice file format: its layout, limits and the manifest codec, and
//! the blocks and tensors a config and a rank's slice require (shared by the
//! writer and the reader). Decoding goes through the bounded
//! [`Cursor`]; every count and length is checked against a constant maximum
//! before use, trailing bytes are rejected.
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
//!     u8 role, u8 dtype (0 F32, 1 F16, 2 BF16, 3 Q8_0, 4 Q4_0, 5 Q4_K,
//!     6 Q6_K, 7 Q4_K interleaved by 8 rows), u16 zero,
//!     u32 layer (u32::MAX when none), u64 rows, u64 cols,
//!     u64 offset within the block (64-byte aligned)
//! ```
//!
//! Blocks, in this order: `Vecs` (every layer's two RMSNorm weights, its
//! sliced q/k/v biases when the model has them, then the final norm; all
//! f32), `Layer(0..n_layers)` (q, k, v, o, gate, up, down of this rank, in
//! the stored dtype, never upcast, or with `--quantize` in ggml Q8_0 / Q4_0
//! blocks: `rows x cols` weights take `rows * cols/32 * 34` / `* 18` bytes,
//! and `cols` must be a multiple of 32; Q4_K / Q6_K super-blocks take
//! `rows * cols/256 * 144` / `* 210`, `cols` a multiple of 256; Q4_K
//! matrices whose `rows` are a multiple of 8 are stored interleaved by 8
//! rows, `rows/8 * cols/256` blocks of 1184 bytes, `tpi_kernels::kx8`), `Embedding` (the whole table, replicated,
//! read by row on demand) and `LmHead` (this rank's vocab rows of `lm_head`,
//! or of the embedding when tied). Layer matrices are laid out exactly as
//! [`crate::weights::LayerMats`] documents them: o_proj and down_proj columns of this rank are
//! gathered row by row into contiguous `[dim][my_cols]` matrices.

use std::fmt;

use crate::codec::cursor::{Cursor, DecodeError};
use crate::model::config::Config;
use crate::model::dtype::WeightType;
use crate::split::plan::RankSlice;

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
pub(crate) const NO_LAYER: u32 = u32::MAX;
/// Encoded bytes per block entry without its tensors.
const BLOCK_ENTRY_LEN: usize = 1 + 3 + 4 + 8 + 8 + 8 + 4;
/// Encoded bytes per tensor entry.
const TENSOR_ENTRY_LEN: usize = 1 + 1 + 2 + 4 + 8 + 8 + 8;

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

pub use crate::model::role::Role;

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

/// Codes 0..=2 are those of format version 1 before quantization; the
/// block types took new codes, so old files read as they always did.
fn dtype_code(d: WeightType) -> u8 {
    match d {
        WeightType::F32 => 0,
        WeightType::F16 => 1,
        WeightType::BF16 => 2,
        WeightType::Q8_0 => 3,
        WeightType::Q4_0 => 4,
        WeightType::Q4_K => 5,
        WeightType::Q6_K => 6,
        WeightType::Q4_Kx8 => 7,
    }
}

/// One tensor of a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    pub role: Role,
    pub layer: Option<usize>,
    pub wtype: WeightType,
    pub rows: usize,
    pub cols: usize,
    /// Byte offset within the block (multiple of [`TENSOR_ALIGN`]).
    pub offset: u64,
}

impl TensorEntry {
    /// Bytes of data (`rows * row bytes`); decoded entries never overflow
    /// and block types have whole blocks per row (0 otherwise).
    pub fn byte_len(&self) -> u64 {
        (self.rows as u64).saturating_mul(self.row_bytes() as u64)
    }

    /// Bytes of one row (0 for a block type whose rows are not whole
    /// blocks, which the decoder and the writer rule out).
    pub fn row_bytes(&self) -> usize {
        self.wtype.row_bytes(self.cols).unwrap_or(0)
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
    pub part: RankSlice,
    pub blocks: Vec<BlockEntry>,
}

// ---------------------------------------------------------------------------
// Errors

/// Why manifest bytes do not decode (structure, bounds, alignment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestError {
    /// A field is short, or bytes are left after the last one.
    Decode(DecodeError),
    /// A decoded value breaks a rule of the layout above.
    Invalid(String),
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ManifestError::Decode(e) => write!(f, "{e}"),
            ManifestError::Invalid(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for ManifestError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ManifestError::Decode(e) => Some(e),
            ManifestError::Invalid(_) => None,
        }
    }
}

// ---------------------------------------------------------------------------
// Preamble

/// The fixed [`PREAMBLE_LEN`] bytes before the manifest, as stored (the
/// reader checks each field in layout order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preamble {
    pub magic: [u8; 8],
    pub version: u32,
    pub flags: u32,
    /// Manifest length in bytes.
    pub manifest_len: u64,
    /// `checksum64` of the manifest bytes.
    pub manifest_checksum: u64,
}

impl Preamble {
    /// The preamble of a current-version file holding `manifest`.
    pub fn of(manifest: &[u8]) -> Preamble {
        Preamble {
            magic: MAGIC,
            version: FORMAT_VERSION,
            flags: 0,
            manifest_len: manifest.len() as u64,
            manifest_checksum: crate::codec::checksum::checksum64(manifest),
        }
    }

    /// Reads the fields (layout: offsets 0, 8, 12, 16, 24); no check.
    pub fn decode(bytes: &[u8; PREAMBLE_LEN]) -> Preamble {
        let mut c = Cursor::new(bytes);
        // A fixed-size array of exactly the layout's length: no read can
        // fall short, so the zero defaults are never used.
        Preamble {
            magic: c.array::<8>("magic").unwrap_or_default(),
            version: c.u32("format version").unwrap_or_default(),
            flags: c.u32("flags").unwrap_or_default(),
            manifest_len: c.u64("manifest length").unwrap_or_default(),
            manifest_checksum: c.u64("manifest checksum").unwrap_or_default(),
        }
    }

    pub fn encode(&self) -> [u8; PREAMBLE_LEN] {
        let mut b = [0u8; PREAMBLE_LEN];
        b[..8].copy_from_slice(&self.magic);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&self.flags.to_le_bytes());
        b[16..24].copy_from_slice(&self.manifest_len.to_le_bytes());
        b[24..32].copy_from_slice(&self.manifest_checksum.to_le_bytes());
        b
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
            b.extend_from_slice(&[t.role.code(), dtype_code(t.wtype), 0, 0]);
            put_u32(&mut b, layer_code(t.layer));
            put_u64(&mut b, t.rows as u64);
            put_u64(&mut b, t.cols as u64);
            put_u64(&mut b, t.offset);
        }
    }
    b
}

fn merr(msg: impl Into<String>) -> ManifestError {
    ManifestError::Invalid(msg.into())
}

fn cur<T>(r: Result<T, DecodeError>) -> Result<T, ManifestError> {
    r.map_err(ManifestError::Decode)
}

/// A bounded index (`<= MAX_INDEX`) as usize.
fn index(v: u64, field: &str) -> Result<usize, ManifestError> {
    if v > MAX_INDEX {
        return Err(merr(format!("{field} = {v} exceeds {MAX_INDEX}")));
    }
    usize::try_from(v).map_err(|_| merr(format!("{field} = {v} does not fit usize")))
}

fn text(c: &mut Cursor<'_>, field: &'static str) -> Result<String, ManifestError> {
    let len = cur(c.u32(field))? as usize;
    if len > MAX_CONFIG_TEXT {
        return Err(merr(format!(
            "{field} is {len} bytes, maximum {MAX_CONFIG_TEXT}"
        )));
    }
    let bytes = cur(c.bytes(len, field))?;
    String::from_utf8(bytes.to_vec()).map_err(|_| merr(format!("{field} is not UTF-8")))
}

fn layer_field(v: u32, field: &str) -> Result<Option<usize>, ManifestError> {
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
/// embedded config and the file length is checked by
/// [`crate::split::reader::SliceFile::open`].
pub fn decode_manifest(bytes: &[u8]) -> Result<Manifest, ManifestError> {
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
    let part = RankSlice {
        rank,
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
            let wtype = match cur(c.u8("tensor dtype"))? {
                0 => WeightType::F32,
                1 => WeightType::F16,
                2 => WeightType::BF16,
                3 => WeightType::Q8_0,
                4 => WeightType::Q4_0,
                5 => WeightType::Q4_K,
                6 => WeightType::Q6_K,
                7 => WeightType::Q4_Kx8,
                d => return Err(merr(format!("{kind} tensor {ti}: dtype {d} unknown"))),
            };
            if cur(c.u16("tensor reserved"))? != 0 {
                return Err(merr(format!("{kind} tensor {ti}: reserved bytes not zero")));
            }
            let layer = layer_field(cur(c.u32("tensor layer"))?, "tensor layer")?;
            let rows = index(cur(c.u64("tensor rows"))?, "tensor rows")?;
            let cols = index(cur(c.u64("tensor cols"))?, "tensor cols")?;
            let t_off = cur(c.u64("tensor offset"))?;
            // cols <= MAX_INDEX, so a row's bytes fit in usize on 64-bit.
            let row = wtype.row_bytes(cols).ok_or_else(|| {
                merr(format!(
                    "{kind} tensor {ti}: {} rows of {cols} are not whole blocks",
                    wtype.name()
                ))
            })?;
            if wtype == WeightType::Q4_Kx8 && !rows.is_multiple_of(8) {
                return Err(merr(format!(
                    "{kind} tensor {ti}: {rows} rows of Q4_Kx8 are not whole groups of 8"
                )));
            }
            let size = (rows as u64)
                .checked_mul(row as u64)
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
                wtype,
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

pub(crate) fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// The canonical block order for `cfg`.
pub(crate) fn block_kinds(cfg: &Config) -> Vec<BlockKind> {
    let mut k = Vec::with_capacity(cfg.n_layers + 3);
    k.push(BlockKind::Vecs);
    k.extend((0..cfg.n_layers).map(BlockKind::Layer));
    k.push(BlockKind::Embedding);
    k.push(BlockKind::LmHead);
    k
}

/// (role, layer, rows, cols) of every tensor of `kind`, in block order.
pub(crate) fn expected_tensors(
    cfg: &Config,
    part: &RankSlice,
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
pub(crate) fn check_part(cfg: &Config, part: &RankSlice) -> Result<(), String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::checksum::{checksum64, le64, Hasher64};
    use crate::split::testutil::*;
    use proptest::prelude::*;

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

    #[test]
    fn interleaved_q4_k_must_be_whole_groups_of_8_rows() {
        let mut m = decode_manifest(&real_manifest()).unwrap();
        let t = &mut m.blocks[1].tensors[0];
        (t.wtype, t.rows, t.cols) = (WeightType::Q4_Kx8, 12, 256);
        let err = decode_manifest(&encode_manifest(&m))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("12 rows of Q4_Kx8 are not whole groups of 8"),
            "{err}"
        );
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
}
