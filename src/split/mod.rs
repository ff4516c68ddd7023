//! Splitting a model into per-rank slice files: what a slice file is, and
//! how it is made, read and cached.
//!
//! A *slice file* holds one rank's share of every layer of a model under a
//! split [`plan`], kernel-ready (matrices in their stored dtype, o_proj and
//! down_proj columns gathered into contiguous rows), so a worker with no
//! model directory can run from it alone. It carries the model's
//! config.json, the model fingerprint and the plan hash, so a stale or
//! foreign file is refused by name.
//!
//! - [`plan`]: which slice of every layer each rank holds (a pure function
//!   of the model shape, the world size and per-rank weights).
//! - [`manifest`]: the on-disk format (layout, limits, the manifest codec
//!   through the bounded [`crate::codec::cursor::Cursor`]) and the blocks
//!   and tensors a config and a rank's slice require.
//! - [`types`]: the type each matrix class is stored in (`--quantize` and
//!   its exceptions) and the weight bytes a rank reads per token.
//! - [`writer`]: cutting a slice from the mmapped safetensors, streamed one
//!   tensor at a time (RAM never O(model)), written to `.partial`, fsynced,
//!   renamed into place.
//! - [`reader`]: [`reader::SliceFile`] opens and validates a file step by
//!   step (preamble, manifest, expectations, block layout), verifies block
//!   checksums and hands out layer matrices from block bytes. The weights
//!   the forward reads from it are [`crate::weights::sliced`].
//! - [`cache`]: the cache directory: where a rank's slice lives
//!   ([`cache::slice_path`]), the cached-or-cut decision
//!   ([`cache::ensure_slices`]), entry records, list and prune.
//! - [`digest`]: model identity: the fingerprint over config texts and
//!   every shard's bytes, and the digest cache that spares re-hashing.
//! - [`error`]: [`SliceError`], naming file, rank, block and offset.

pub mod cache;
pub mod digest;
pub mod error;
pub mod interleave;
pub mod manifest;
pub mod plan;
pub mod reader;
pub mod types;
pub mod writer;

pub use error::SliceError;

/// Helpers shared by the split tests: temp directories, fixtures, slices
/// cut from them, and source bytes to compare slices against.
#[cfg(test)]
pub(crate) mod testutil {
    use std::ops::Range;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::cache::write_slice;
    use super::digest::fingerprint;
    use super::plan::{split, Plan, Shape};
    use super::reader::Expect;
    use crate::model::checkpoint::Checkpoint;
    use crate::model::safetensors::SafeTensors;
    use crate::progress::Silent;
    use crate::weights::Mat;

    /// The fixtures every slice test runs on.
    pub const FIXTURES: [&str; 3] = ["stories260K", "llama-mha-f32", "llama-gqa-bf16"];

    /// A unique temp directory, removed on drop.
    pub struct TempDir(pub PathBuf);

    impl TempDir {
        pub fn new(tag: &str) -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!(
                "tpi-split-{tag}-{}-{}",
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

    /// The fingerprint, with a throw-away digest cache.
    pub fn fp_of(ckpt: &Checkpoint) -> u64 {
        let tmp = TempDir::new("fp");
        fingerprint(ckpt, &tmp.0, &mut Silent).unwrap()
    }

    pub fn fixture_dir(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    pub fn fixture(name: &str) -> Checkpoint {
        Checkpoint::open_dir(&fixture_dir(name)).unwrap()
    }

    pub fn expect_for(fp: u64, plan: &Plan, rank: usize) -> Expect {
        Expect {
            fingerprint: Some(fp),
            plan_hash: Some(plan.hash()),
            rank: Some(rank),
            world_size: Some(plan.world_size),
        }
    }

    /// Rows `r` of a source matrix, bytes.
    pub fn src_rows(st: &SafeTensors, name: &str, r: Range<usize>) -> Vec<u8> {
        let t = st.tensor(name).unwrap();
        let row = t.shape[1] * t.dtype.size();
        st.bytes(t)[r.start * row..r.end * row].to_vec()
    }

    /// Columns `c` of a source matrix gathered row by row, bytes.
    pub fn src_cols(st: &SafeTensors, name: &str, c: Range<usize>) -> Vec<u8> {
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

    pub fn check_mat(m: &Mat<'_>, want: &[u8], rows: usize, cols: usize, what: &str) {
        assert_eq!((m.rows, m.cols), (rows, cols), "{what} shape");
        assert!(m.bytes == want, "{what} bytes differ");
        m.weights().unwrap();
    }

    /// Rank `rank` of `ws` of the stories260K fixture, written under `tmp`.
    pub fn stories_slice(tmp: &TempDir, ws: usize, rank: usize) -> (Checkpoint, Plan, PathBuf) {
        let ckpt = fixture("stories260K");
        let plan = split(&Shape::of(&ckpt.config), ws, None).unwrap();
        let path = tmp.0.join(format!("s-{ws}-{rank}.slice"));
        write_slice(&ckpt, &plan, rank, &path, &mut Silent).unwrap();
        (ckpt, plan, path)
    }

    /// A copy of `src` at `dst`, edited.
    pub fn copy_with(src: &Path, dst: &Path, edit: impl FnOnce(&mut Vec<u8>)) {
        let mut b = std::fs::read(src).unwrap();
        edit(&mut b);
        std::fs::write(dst, b).unwrap();
    }

    /// `secs` seconds ago.
    pub fn ago(secs: u64) -> std::time::SystemTime {
        std::time::SystemTime::now() - std::time::Duration::from_secs(secs)
    }

    /// Writes `bytes` to `path` and sets its mtime to `when`.
    pub fn write_aged(path: &Path, bytes: &[u8], when: std::time::SystemTime) {
        std::fs::write(path, bytes).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.set_modified(when).unwrap();
    }
}
