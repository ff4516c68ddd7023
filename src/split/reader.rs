//! Reading a slice file: [`SliceFile::open`] validates it in small steps
//! (preamble and manifest, what the caller expects, blocks inside the file,
//! blocks and tensors as the embedded config requires), [`SliceFile::verify`]
//! checks every block's checksum, and the block readers hand out the vecs
//! block's norms (`SliceWeights::resident` in `crate::weights::sliced`) and a layer's matrices from its
//! block bytes ([`SliceFile::tensor_bytes`]). The weights the forward reads
//! from a slice, resident or streamed, are [`crate::weights::sliced`].

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::error::{io_err, SliceError};
use super::manifest::{
    align_up, block_kinds, check_part, decode_manifest, expected_tensors, BlockEntry, BlockKind,
    Manifest, ManifestError, Preamble, TensorEntry, BLOCK_ALIGN, FORMAT_VERSION, MAGIC,
    MAX_MANIFEST, PREAMBLE_LEN, TENSOR_ALIGN,
};
use super::plan::RankSlice;
use crate::codec::checksum::{checksum64, Hasher64};
use crate::model::config::Config;
use crate::model::dtype::WeightType;
use crate::sys::AlignedBuf;
use crate::window::{Window, WindowOpts};

/// Chunk size when hashing a block from the file.
const VERIFY_CHUNK: usize = 1 << 20;
/// Largest read of [`SliceFile::verify_with`] with `O_DIRECT` (two are in
/// memory at once).
const VERIFY_DIRECT_PIECE: u64 = 8 << 20;

/// Rows of a streamed lm_head part: `(first row, rows)`.
pub type LmPart = (usize, usize);

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
    pub(crate) layers: Vec<usize>,
    pub(crate) embedding: usize,
    pub(crate) lm_head: usize,
}

impl SliceFile {
    /// Opens and validates `path`, step by step: the preamble
    /// (`read_manifest`: magic, version, flags, manifest length), the
    /// manifest checksum and structure, `expect` (`check_expect`), every
    /// block inside the file (`check_blocks_in_file`), then the embedded
    /// config and the blocks and tensors exactly as it and the rank's slice
    /// require (`check_layout`). Block data is not read (see
    /// [`SliceFile::verify`]).
    pub fn open(path: &Path, expect: Expect) -> Result<SliceFile, SliceError> {
        let p = path.display().to_string();
        let file = File::open(path).map_err(io_err(path, "open"))?;
        let file_len = file.metadata().map_err(io_err(path, "stat"))?.len();
        let (manifest, manifest_end) = read_manifest(&file, path, file_len)?;
        check_expect(&manifest, &expect, &p)?;
        check_blocks_in_file(&manifest, &p, manifest_end, file_len)?;
        let config = check_layout(&manifest, &p)?;
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
        let io = |source| SliceError::Window {
            path: self.path.display().to_string(),
            what: "verify (O_DIRECT)".into(),
            source,
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
    pub fn part(&self) -> &RankSlice {
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
    /// 8-row groups: the kernels' row block, and the groups of a Q4_Kx8
    /// lm_head). Returns the `(offset, len)`
    /// of every block and each lm_head part's `(first row, rows)`.
    pub fn window_blocks(&self) -> (Vec<crate::window::Block>, Vec<LmPart>) {
        let mut blocks = self.layer_blocks();
        let largest = blocks.iter().map(|b| b.1).max().unwrap_or(0);
        let b = &self.manifest.blocks[self.lm_head];
        let t = &b.tensors[0];
        let row_bytes = t.row_bytes() as u64;
        let rows_per = ((largest / row_bytes.max(1)) as usize / 8 * 8).max(8);
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

    pub(crate) fn out_of_range(&self, what: &'static str, index: u64, len: u64) -> SliceError {
        SliceError::OutOfRange {
            path: self.path.display().to_string(),
            rank: self.manifest.rank,
            what,
            index,
            len,
        }
    }

    /// Reads a whole block into an aligned buffer and checks its checksum.
    pub(crate) fn read_block(&self, idx: usize) -> Result<AlignedBuf, SliceError> {
        let b = &self.manifest.blocks[idx];
        let len = usize::try_from(b.len)
            .map_err(|_| self.out_of_range("block length", b.len, usize::MAX as u64))?;
        let mut buf = aligned(len)
            .ok_or_else(|| self.out_of_range("block length", b.len, usize::MAX as u64))?;
        self.file
            .read_exact_at(buf.bytes_mut(), b.offset)
            .map_err(io_err(&self.path, "read block"))?;
        let c = checksum64(buf.bytes());
        if c != b.checksum {
            return Err(self.block_checksum_err(b, c));
        }
        Ok(buf)
    }

    /// The bytes of tensor `t` of block `b` within `bytes` (the block's
    /// bytes from its start), range-checked.
    pub fn tensor_bytes<'a>(
        &self,
        b: &BlockEntry,
        t: &TensorEntry,
        bytes: &'a [u8],
    ) -> Result<&'a [u8], SliceError> {
        let start = t.offset as usize;
        let end = start.saturating_add(t.byte_len() as usize);
        bytes
            .get(start..end)
            .ok_or_else(|| self.out_of_range("block buffer length", end as u64, b.len))
    }

    /// The vecs block (norms, biases, final norm), read and checksummed.
    pub fn read_vecs(&self) -> Result<(AlignedBuf, &BlockEntry), SliceError> {
        let buf = self.read_block(self.vecs)?;
        Ok((buf, &self.manifest.blocks[self.vecs]))
    }
}

// ---------------------------------------------------------------------------
// The steps of `SliceFile::open`

/// Reads the preamble and checks it in layout order (magic, version, flags,
/// manifest length against [`MAX_MANIFEST`] before reading it), then the
/// manifest's checksum and structure. Returns the manifest and the file
/// offset where it ends.
fn read_manifest(file: &File, path: &Path, file_len: u64) -> Result<(Manifest, u64), SliceError> {
    let p = || path.display().to_string();
    let truncated = |what, need| SliceError::Truncated {
        path: p(),
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
    let pre = Preamble::decode(&pre);
    if pre.magic != MAGIC {
        return Err(SliceError::BadMagic { path: p() });
    }
    if pre.version != FORMAT_VERSION {
        return Err(SliceError::Version {
            path: p(),
            found: pre.version,
            supported: FORMAT_VERSION,
        });
    }
    if pre.flags != 0 {
        return Err(SliceError::Manifest {
            path: p(),
            source: ManifestError::Invalid(format!("preamble flags {:#x} unknown", pre.flags)),
        });
    }
    let mlen = pre.manifest_len;
    if mlen > MAX_MANIFEST {
        return Err(SliceError::ManifestTooLarge {
            path: p(),
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
    if computed != pre.manifest_checksum {
        return Err(SliceError::ManifestChecksum {
            path: p(),
            stored: pre.manifest_checksum,
            computed,
        });
    }
    let manifest =
        decode_manifest(&mbytes).map_err(|source| SliceError::Manifest { path: p(), source })?;
    Ok((manifest, need))
}

/// The file is the model, plan, rank and world size `expect` names.
fn check_expect(manifest: &Manifest, expect: &Expect, p: &str) -> Result<(), SliceError> {
    let mismatch = |what, expected: u64, found: u64| SliceError::Mismatch {
        path: p.to_string(),
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
    if let Some(r) = expect.rank.filter(|&r| r != manifest.rank) {
        return Err(mismatch("rank", r as u64, manifest.rank as u64));
    }
    if let Some(w) = expect.world_size.filter(|&w| w != manifest.world_size) {
        return Err(mismatch("world size", w as u64, manifest.world_size as u64));
    }
    Ok(())
}

/// Every block starts after the manifest (which ends at `manifest_end`)
/// and ends inside the file.
fn check_blocks_in_file(
    manifest: &Manifest,
    p: &str,
    manifest_end: u64,
    file_len: u64,
) -> Result<(), SliceError> {
    let data_start = align_up(manifest_end, BLOCK_ALIGN);
    for b in &manifest.blocks {
        if b.offset < data_start {
            return Err(SliceError::Layout {
                path: p.to_string(),
                rank: manifest.rank,
                block: Some(b.kind),
                msg: format!(
                    "offset {} overlaps the manifest (ends {manifest_end})",
                    b.offset
                ),
            });
        }
        if b.offset.checked_add(b.len).is_none_or(|e| e > file_len) {
            return Err(SliceError::BlockOutOfFile {
                path: p.to_string(),
                rank: manifest.rank,
                block: b.kind,
                offset: b.offset,
                len: b.len,
                file_len,
            });
        }
    }
    Ok(())
}

/// Parses the embedded config and checks the rank's slice against it, the
/// block order, and every block's tensors (roles, layers, shapes; the vecs
/// block in f32). Returns the config.
fn check_layout(manifest: &Manifest, p: &str) -> Result<Config, SliceError> {
    let layout = |block: Option<BlockKind>, msg: String| SliceError::Layout {
        path: p.to_string(),
        rank: manifest.rank,
        block,
        msg,
    };
    let config = Config::from_json(
        &manifest.config_json,
        manifest.generation_config_json.as_deref(),
        p,
    )
    .map_err(|e| SliceError::Config {
        path: p.to_string(),
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
            if let Some(t) = b.tensors.iter().find(|t| t.wtype != WeightType::F32) {
                return Err(layout(
                    Some(b.kind),
                    format!("{:?} is {}, expected F32", t.role, t.wtype.name()),
                ));
            }
        }
    }
    Ok(config)
}

/// `len` zeroed bytes for block data, aligned for every dtype a tensor
/// may hold (tensors sit at [`TENSOR_ALIGN`] offsets within a block).
pub(crate) fn aligned(len: usize) -> Option<AlignedBuf> {
    AlignedBuf::zeroed(len, TENSOR_ALIGN as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::split::testutil::*;
    use crate::weights::sliced::SliceResident;
    use crate::weights::sliced::SliceWeights;

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
}
