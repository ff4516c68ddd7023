//! The slice cache directory: where a rank's slice lives ([`slice_path`]),
//! whether a cached slice serves or is cut again ([`ensure_slices`]), what
//! an entry records, and what may be dropped from it ([`list`], [`prune`]).
//! The digests of model files that give slices their model identity are
//! [`super::digest`].
//!
//! # Layout
//!
//! ```text
//! cache_dir/
//!   digests                          digest cache, one line per model file
//!   <fingerprint:016x>-<plan:016x>/  one entry per (model, split plan)
//!     rank-<r>-of-<n>.slice          a rank's slice (split/manifest.rs)
//!     rank-<r>-of-<n>.partial        being written or fetched (stale when old)
//!     model.json                     where the model came from, when sliced
//!     used                           empty; its mtime is the entry's last use
//! ```
//!
//! 1. An entry is a real directory (not a symlink) named by two 16-digit
//!    lower-case hex numbers joined by `-`, holding only the files above.
//!    Anything else in the cache directory is not ours: [`list`] skips it
//!    and [`prune`] never touches it. Inside an entry, [`prune`] removes
//!    only the files it recognises, then the directory if it is empty.
//! 2. `model.json` records the model's origin directory and, for each file
//!    the fingerprint covers (config.json, generation_config.json, every
//!    safetensors shard), its canonical path, size and mtime (ns). The
//!    model is [`ModelStatus::Same`] while all of them are unchanged.
//! 3. A digest line is `v1 <digest> <size> <mtime_ns> <dev> <ino> <check>
//!    <path>`, `check` being XXH64 of everything before it plus the path;
//!    a line that does not parse or check is ignored (the file is hashed
//!    again). A digest is stored only for a file whose mtime is at least
//!    `RACY_NS` older than the start of its hashing: a rewrite in the same
//!    clock tick as the hash could otherwise keep its old key (git's "racily
//!    clean" problem).

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::digest::{
    config_texts, digest_line, fingerprint_with, read_digests, shard_digests, write_digests,
};
pub use super::error::CacheError;
use super::error::{cache_io_err as io_err, io_err as slice_io, SliceError};
use super::plan::Plan;
use super::reader::{Expect, SliceFile};
use super::writer::{check_plan, write_slice_with};
use crate::model::bundled;
use crate::model::checkpoint::Checkpoint;
use crate::model::files::FileId;
use crate::progress::Progress;

/// An entry's record of its model.
pub const RECORD: &str = "model.json";
/// An entry's last-use stamp.
pub const USED: &str = "used";
/// Largest `model.json` read.
const MAX_RECORD_BYTES: u64 = 1 << 20;
/// Most files a `model.json` lists.
const MAX_RECORD_FILES: usize = 4096 + 2;

// ---------------------------------------------------------------------------
// Entries

/// A file the fingerprint covers, as it was when the model was sliced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamp {
    pub path: PathBuf,
    pub size: u64,
    pub mtime_ns: i64,
}

impl FileStamp {
    /// `path`'s stamp now (canonical path, size, mtime).
    pub fn of(path: &Path) -> std::io::Result<FileStamp> {
        let m = std::fs::metadata(path)?;
        Ok(FileStamp {
            path: std::fs::canonicalize(path)?,
            size: m.len(),
            mtime_ns: mtime_ns(&m),
        })
    }
}

fn mtime_ns(m: &std::fs::Metadata) -> i64 {
    m.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(m.mtime_nsec())
}

/// Writes an entry's `model.json` (rule 2) and stamps it used.
pub fn record_entry(entry: &Path, origin: &str, files: &[FileStamp]) -> Result<(), CacheError> {
    let files: Vec<serde_json::Value> = files
        .iter()
        .map(|f| {
            serde_json::json!({
                "path": f.path.to_string_lossy(),
                "size": f.size,
                "mtime_ns": f.mtime_ns,
            })
        })
        .collect();
    let v = serde_json::json!({ "tpi_cache_entry": 1, "origin": origin, "files": files });
    let tmp = entry.join(format!("{RECORD}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, v.to_string()).map_err(io_err(&tmp, "write"))?;
    let path = entry.join(RECORD);
    std::fs::rename(&tmp, &path).map_err(io_err(&path, "rename"))?;
    touch_used(entry)
}

/// Marks an entry used now (its `used` stamp's mtime).
pub fn touch_used(entry: &Path) -> Result<(), CacheError> {
    let path = entry.join(USED);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(&path, "open"))?;
    f.set_modified(SystemTime::now())
        .map_err(io_err(&path, "set mtime"))
}

/// Whether the model an entry was cut from is still there, unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelStatus {
    /// Every recorded file exists with its recorded size and mtime.
    Same,
    /// All files exist, but one has another size or mtime: the model now
    /// has another fingerprint, so the entry is unreachable.
    Changed,
    /// A recorded file is gone.
    Gone,
    /// No usable record (a slice fetched from rank 0, the bundled model, an
    /// older tpi): never removed as an orphan.
    Unknown,
}

/// One cached (model, plan) directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    pub path: PathBuf,
    pub fingerprint: u64,
    pub plan_hash: u64,
    /// Bytes on disk (allocated blocks) of the files tpi recognises in it.
    pub bytes: u64,
    /// The `used` stamp's mtime, or the newest slice file's.
    pub last_used: SystemTime,
    /// The model directory as recorded when it was sliced.
    pub origin: Option<String>,
    pub model: ModelStatus,
}

/// What an entry's file is (rule 1), or `None` when tpi does not know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Member {
    Slice,
    Partial,
    Record,
    Used,
}

fn member(name: &str) -> Option<Member> {
    match name {
        RECORD => return Some(Member::Record),
        USED => return Some(Member::Used),
        _ => {}
    }
    let (stem, kind) = if let Some(s) = name.strip_suffix(".slice") {
        (s, Member::Slice)
    } else if let Some(s) = name.strip_suffix(".partial") {
        (s, Member::Partial)
    } else {
        return None;
    };
    let (r, n) = stem.strip_prefix("rank-")?.split_once("-of-")?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
    (digits(r) && digits(n)).then_some(kind)
}

/// `(fingerprint, plan hash)` of an entry directory name (rule 1).
fn entry_name(name: &str) -> Option<(u64, u64)> {
    let (a, b) = name.split_once('-')?;
    let hex = |s: &str| {
        (s.len() == 16 && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| u64::from_str_radix(s, 16).ok())
            .flatten()
    };
    Some((hex(a)?, hex(b)?))
}

/// Whether `dir`'s name is that of a cache entry (rule 1).
pub fn is_entry_dir(dir: &Path) -> bool {
    dir.file_name()
        .and_then(|n| n.to_str())
        .and_then(entry_name)
        .is_some()
}

/// The recognised regular files of an entry: (path, kind, metadata).
fn members(dir: &Path) -> Result<Vec<(PathBuf, Member, std::fs::Metadata)>, CacheError> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io_err(dir, "list"))? {
        let e = e.map_err(io_err(dir, "list"))?;
        let Some(kind) = e.file_name().to_str().and_then(member) else {
            continue;
        };
        let path = e.path();
        let m = std::fs::symlink_metadata(&path).map_err(io_err(&path, "stat"))?;
        if m.file_type().is_file() {
            out.push((path, kind, m));
        }
    }
    Ok(out)
}

fn read_record(path: &Path) -> Option<(String, Vec<FileStamp>)> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|f| f.take(MAX_RECORD_BYTES).read_to_end(&mut bytes))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    if v.get("tpi_cache_entry")?.as_u64()? != 1 {
        return None;
    }
    let origin = v.get("origin")?.as_str()?.to_string();
    let files = v.get("files")?.as_array()?;
    if files.len() > MAX_RECORD_FILES {
        return None;
    }
    let stamps = files
        .iter()
        .map(|f| {
            Some(FileStamp {
                path: PathBuf::from(f.get("path")?.as_str()?),
                size: f.get("size")?.as_u64()?,
                mtime_ns: f.get("mtime_ns")?.as_i64()?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some((origin, stamps))
}

fn model_status(files: &[FileStamp]) -> ModelStatus {
    if files.is_empty() {
        return ModelStatus::Unknown;
    }
    let mut status = ModelStatus::Same;
    for f in files {
        match std::fs::metadata(&f.path) {
            Err(_) => return ModelStatus::Gone,
            Ok(m) if m.len() != f.size || mtime_ns(&m) != f.mtime_ns => {
                status = ModelStatus::Changed;
            }
            Ok(_) => {}
        }
    }
    status
}

fn entry(dir: PathBuf, fingerprint: u64, plan_hash: u64) -> Result<CacheEntry, CacheError> {
    let files = members(&dir)?;
    let bytes = files
        .iter()
        .map(|(_, _, m)| m.blocks().saturating_mul(512))
        .sum();
    let stamp = |kinds: &[Member]| {
        files
            .iter()
            .filter(|(_, k, _)| kinds.contains(k))
            .filter_map(|(_, _, m)| m.modified().ok())
            .max()
    };
    let last_used = stamp(&[Member::Used])
        .into_iter()
        .chain(stamp(&[Member::Slice]))
        .max()
        .or_else(|| stamp(&[Member::Partial, Member::Record]))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let record = read_record(&dir.join(RECORD));
    let model = record
        .as_ref()
        .map_or(ModelStatus::Unknown, |(_, files)| model_status(files));
    Ok(CacheEntry {
        path: dir,
        fingerprint,
        plan_hash,
        bytes,
        last_used,
        origin: record.map(|(o, _)| o),
        model,
    })
}

/// Every cache entry under `cache_dir` (rule 1), oldest use first. A
/// missing cache directory is empty.
pub fn list(cache_dir: &Path) -> Result<Vec<CacheEntry>, CacheError> {
    let rd = match std::fs::read_dir(cache_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(cache_dir, "list")(e)),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(io_err(cache_dir, "list"))?;
        let Some((fp, plan)) = e.file_name().to_str().and_then(entry_name) else {
            continue;
        };
        let path = e.path();
        let m = std::fs::symlink_metadata(&path).map_err(io_err(&path, "stat"))?;
        if m.file_type().is_dir() {
            out.push(entry(path, fp, plan)?);
        }
    }
    out.sort_by(|a, b| a.last_used.cmp(&b.last_used).then(a.path.cmp(&b.path)));
    Ok(out)
}

/// What [`prune`] removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrunePolicy {
    /// Remove entries whose model is [`ModelStatus::Gone`] or
    /// [`ModelStatus::Changed`].
    pub remove_orphans: bool,
    /// Then evict least recently used entries until the total is at most
    /// this many bytes.
    pub max_bytes: Option<u64>,
    /// `*.partial` files not modified for this long are removed (an
    /// interrupted write or fetch; a live one is written continuously).
    pub partial_age: Duration,
}

impl Default for PrunePolicy {
    /// Orphans removed, no size cap, partials older than 30 minutes removed.
    fn default() -> PrunePolicy {
        PrunePolicy {
            remove_orphans: true,
            max_bytes: None,
            partial_age: Duration::from_secs(30 * 60),
        }
    }
}

/// Removes an entry's recognised files, then the directory if that left it
/// empty (something foreign inside keeps it).
fn remove_entry(e: &CacheEntry) -> Result<(), CacheError> {
    for (path, _, _) in members(&e.path)? {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(io_err(&path, "remove")(err)),
        }
    }
    let _ = std::fs::remove_dir(&e.path);
    Ok(())
}

/// How long ago `m` was modified (zero if in the future or unknown).
fn age(m: &std::fs::Metadata, now: SystemTime) -> Duration {
    m.modified()
        .ok()
        .and_then(|t| now.duration_since(t).ok())
        .unwrap_or_default()
}

/// Applies `policy` to `cache_dir` and returns the entries removed (as
/// listed before removal): first stale `*.partial` files (an entry left
/// with no slice or partial, untouched for `partial_age`, is removed), then
/// orphans, then least recently used entries over `max_bytes`. An entry
/// with a live `*.partial` (a slice being written or fetched now) is never
/// removed, so the cap may stay exceeded while one is. Touches only what
/// [`list`] recognises.
pub fn prune(cache_dir: &Path, policy: &PrunePolicy) -> Result<Vec<CacheEntry>, CacheError> {
    let now = SystemTime::now();
    let mut removed = Vec::new();
    let mut busy = Vec::new();
    for e in list(cache_dir)? {
        // Before any removal (which moves the directory's mtime).
        let dir_age = std::fs::symlink_metadata(&e.path).map_or(Duration::ZERO, |m| age(&m, now));
        let mut left = 0usize;
        for (path, kind, m) in members(&e.path)? {
            let stale = age(&m, now) >= policy.partial_age;
            if kind == Member::Partial && stale {
                std::fs::remove_file(&path).map_err(io_err(&path, "remove"))?;
            } else if matches!(kind, Member::Slice | Member::Partial) {
                left += 1;
                if kind == Member::Partial {
                    busy.push(e.path.clone());
                }
            }
        }
        if left == 0 && dir_age >= policy.partial_age {
            remove_entry(&e)?;
            removed.push(e);
        }
    }
    let mut kept = Vec::new();
    for e in list(cache_dir)? {
        if busy.contains(&e.path) {
            continue;
        }
        if policy.remove_orphans && matches!(e.model, ModelStatus::Gone | ModelStatus::Changed) {
            remove_entry(&e)?;
            removed.push(e);
        } else {
            kept.push(e);
        }
    }
    if let Some(cap) = policy.max_bytes {
        // `kept` is oldest use first.
        let mut total: u64 = kept.iter().map(|e| e.bytes).sum();
        for e in kept {
            if total <= cap {
                break;
            }
            total = total.saturating_sub(e.bytes);
            remove_entry(&e)?;
            removed.push(e);
        }
    }
    if policy.remove_orphans {
        // Digest lines of files that are gone or changed only cost space.
        let lines = read_digests(cache_dir);
        let live: Vec<String> = lines
            .iter()
            .filter(|(_, id)| {
                let f = File::open(&id.path);
                f.and_then(|f| FileId::of(&f, id.path.clone()))
                    .is_ok_and(|now| now == *id)
            })
            .filter_map(|(d, id)| digest_line(*d, id))
            .collect();
        if live.len() != lines.len() {
            write_digests(cache_dir, &live)?;
        }
    }
    Ok(removed)
}

/// The files the fingerprint covers, as they are now (for the entry record).
fn model_stamps(ckpt: &Checkpoint) -> Vec<FileStamp> {
    let mut v = Vec::new();
    if ckpt.origin != bundled::NAME && !ckpt.weights.is_gguf() {
        let dir = Path::new(&ckpt.origin);
        for name in ["config.json", "generation_config.json"] {
            if let Ok(s) = FileStamp::of(&dir.join(name)) {
                v.push(s);
            }
        }
    }
    let files = ckpt.weights.files();
    for i in 0..files.len() {
        if let Some((_, id)) = files.file(i) {
            v.push(FileStamp {
                path: id.path.clone(),
                size: id.size,
                mtime_ns: id.mtime_ns,
            });
        }
    }
    v
}

/// Writes rank `rank`'s slice of `ckpt` under `plan` to `path`: streamed one
/// tensor slice at a time from the mmapped safetensors (RAM O(write buffer +
/// small vectors), never O(model): each source tensor's pages leave the
/// resident set once it is written), into `path.with_extension("partial")`,
/// fsynced, then renamed over `path`; `model.json` beside it records the
/// model (see [`super::cache`]). `progress` hears the bytes written (and the
/// hashing of the model, unless [`super::digest::fingerprint`] already
/// did it for `ckpt`).
pub fn write_slice(
    ckpt: &Checkpoint,
    plan: &Plan,
    rank: usize,
    path: &Path,
    progress: &mut dyn Progress,
) -> Result<(), SliceError> {
    let (cfg_text, gen_text) = config_texts(ckpt)?;
    let digests = shard_digests(ckpt.weights.files(), None, progress)?;
    let fp = fingerprint_with(ckpt, &cfg_text, gen_text.as_deref(), &digests);
    write_slice_with(ckpt, plan, rank, path, fp, cfg_text, gen_text, progress)?;
    if let Some(dir) = path.parent().filter(|d| is_entry_dir(d)) {
        record(ckpt, dir)?;
    }
    Ok(())
}

/// Records in a cache entry directory where its slices came from.
pub(crate) fn record(ckpt: &Checkpoint, entry: &Path) -> Result<(), SliceError> {
    let origin = match std::fs::canonicalize(&ckpt.origin) {
        Ok(p) => p.display().to_string(),
        Err(_) => ckpt.origin.clone(),
    };
    Ok(record_entry(entry, &origin, &model_stamps(ckpt))?)
}

// ---------------------------------------------------------------------------
// Slices

/// Path of rank `rank`'s slice under `cache_dir`, for a model `fingerprint`
/// split by the plan of `plan_hash` over `world_size` ranks (layout above).
/// Rank 0 cuts and a worker fetches into the same path.
pub fn slice_path(
    cache_dir: &Path,
    fingerprint: u64,
    plan_hash: u64,
    world_size: usize,
    rank: usize,
) -> PathBuf {
    cache_dir
        .join(format!("{fingerprint:016x}-{plan_hash:016x}"))
        .join(format!("rank-{rank}-of-{world_size}.slice"))
}

/// One slice file per rank under
/// `cache_dir/<fingerprint hex>-<plan hash hex>/rank-<r>-of-<n>.slice`.
/// A file is reused only if it opens and fully verifies (format version,
/// fingerprint, plan hash, rank, world size, part, every block checksum);
/// otherwise it is (re)written.
///
/// With `direct(bytes)` true for the cached slices' total size, the
/// verification reads bypass the page cache ([`SliceFile::verify_with`]).
/// The fingerprint covers every weight byte (`fingerprint`), so a model
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
    let digests = shard_digests(ckpt.weights.files(), Some(cache_dir), progress)?;
    let fp = fingerprint_with(ckpt, &cfg_text, gen_text.as_deref(), &digests);
    let all: Vec<PathBuf> = (0..plan.world_size)
        .map(|rank| slice_path(cache_dir, fp, plan.hash(), plan.world_size, rank))
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
            std::fs::create_dir_all(dir).map_err(slice_io(dir, "create cache directory"))?;
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
        } else if !entry.join(RECORD).exists() {
            // Slices cut by an older tpi or copied in: recorded if the
            // cache is writable; if not, they still serve.
            let _ = record(ckpt, entry);
        } else {
            // A stamp that cannot be set (read-only cache) only makes the
            // entry look older to [`prune`].
            let _ = touch_used(entry);
        }
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Silent;
    use crate::split::plan::{split, Shape};
    use crate::split::testutil::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn ensure_slices_reuses_only_verified_files() {
        let tmp = TempDir::new("ensure");
        let ckpt = fixture("stories260K");
        let plan = split(&Shape::of(&ckpt.config), 3, None).unwrap();
        let fp = fp_of(&ckpt);
        let paths = ensure_slices(&ckpt, &plan, &tmp.0, |_| false, &mut Silent).unwrap();
        assert_eq!(paths.len(), 3);
        for (r, p) in paths.iter().enumerate() {
            assert_eq!(p, &slice_path(&tmp.0, fp, plan.hash(), plan.world_size, r));
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

    /// An entry with a slice of `slice_len` bytes recorded as cut from
    /// `model` (whose file stamps are taken now), used at `used`.
    fn make_entry(
        cache: &Path,
        name: &str,
        slice_len: usize,
        model: Option<&Path>,
        used: SystemTime,
    ) -> PathBuf {
        let dir = cache.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        write_aged(&dir.join("rank-0-of-1.slice"), &vec![7u8; slice_len], used);
        if let Some(m) = model {
            let stamp = FileStamp::of(&m.join("model.safetensors")).unwrap();
            record_entry(&dir, &m.display().to_string(), &[stamp]).unwrap();
            File::options()
                .write(true)
                .open(dir.join(USED))
                .unwrap()
                .set_modified(used)
                .unwrap();
        }
        dir
    }

    const A: &str = "00000000000000aa-0000000000000001";
    const B: &str = "00000000000000bb-0000000000000001";
    const C: &str = "00000000000000cc-0000000000000002";

    #[test]
    fn list_reports_entries_their_model_and_skips_what_is_not_ours() {
        let tmp = TempDir::new("list");
        let cache = tmp.0.join("cache");
        let (m1, m2) = (tmp.0.join("m1"), tmp.0.join("m2"));
        for m in [&m1, &m2] {
            std::fs::create_dir_all(m).unwrap();
            write_aged(&m.join("model.safetensors"), b"weights", ago(100));
        }
        make_entry(&cache, A, 5000, Some(&m1), ago(30));
        make_entry(&cache, B, 9000, Some(&m2), ago(20));
        make_entry(&cache, C, 100, None, ago(10));
        // Not ours: other names, a file, a symlink to a directory.
        std::fs::create_dir_all(cache.join("notes")).unwrap();
        std::fs::write(cache.join("0000000000000000-0000000000000000"), b"x").unwrap();
        std::os::unix::fs::symlink(&m1, cache.join("00000000000000dd-0000000000000001")).unwrap();
        std::fs::remove_file(m2.join("model.safetensors")).unwrap();
        let e = list(&cache).unwrap();
        let names: Vec<_> = e
            .iter()
            .map(|e| e.path.file_name().unwrap().to_str().unwrap().to_string())
            .collect();
        assert_eq!(names, [A, B, C], "oldest use first");
        assert_eq!((e[0].fingerprint, e[0].plan_hash), (0xaa, 1));
        assert_eq!(e[0].model, ModelStatus::Same);
        assert_eq!(e[0].origin.as_deref(), Some(m1.to_str().unwrap()));
        assert_eq!(e[1].model, ModelStatus::Gone);
        assert_eq!(e[2].model, ModelStatus::Unknown);
        assert_eq!(e[2].origin, None);
        assert!(e[1].bytes >= 9000 && e[0].bytes >= 5000, "{e:?}");
        // Rewriting the model changes its mtime: the entry is unreachable.
        write_aged(&m1.join("model.safetensors"), b"weightz", ago(5));
        assert_eq!(list(&cache).unwrap()[0].model, ModelStatus::Changed);
        assert!(list(&tmp.0.join("absent")).unwrap().is_empty());
    }

    #[test]
    fn prune_removes_orphans_then_least_recently_used_and_nothing_foreign() {
        let tmp = TempDir::new("prune");
        let cache = tmp.0.join("cache");
        let (m1, m2) = (tmp.0.join("m1"), tmp.0.join("m2"));
        for m in [&m1, &m2] {
            std::fs::create_dir_all(m).unwrap();
            write_aged(&m.join("model.safetensors"), b"weights", ago(100));
        }
        let a = make_entry(&cache, A, 40000, Some(&m1), ago(300));
        let b = make_entry(&cache, B, 40000, Some(&m2), ago(200));
        let c = make_entry(&cache, C, 40000, None, ago(100));
        std::fs::write(cache.join("README"), b"mine").unwrap();
        std::fs::remove_file(m2.join("model.safetensors")).unwrap();
        // Orphans only: b goes, with every file in it.
        let gone = prune(&cache, &PrunePolicy::default()).unwrap();
        assert_eq!(
            gone.iter().map(|e| e.path.as_path()).collect::<Vec<_>>(),
            [b.as_path()]
        );
        assert!(!b.exists() && a.exists() && c.exists());
        // A cap under the two left evicts the older (a), keeps c.
        let cap = list(&cache).unwrap().iter().map(|e| e.bytes).max().unwrap();
        // Something foreign inside a stays, and so does a's directory.
        std::fs::write(a.join("keep.txt"), b"not tpi's").unwrap();
        let policy = PrunePolicy {
            remove_orphans: false,
            max_bytes: Some(cap),
            ..PrunePolicy::default()
        };
        let gone = prune(&cache, &policy).unwrap();
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].path, a);
        assert!(a.join("keep.txt").exists() && !a.join("rank-0-of-1.slice").exists());
        assert!(c.join("rank-0-of-1.slice").exists());
        assert_eq!(std::fs::read(cache.join("README")).unwrap(), b"mine");
        assert!(m1.join("model.safetensors").exists());
    }

    #[test]
    fn prune_removes_stale_partials_only() {
        let tmp = TempDir::new("partial");
        let cache = tmp.0.join("cache");
        let a = make_entry(&cache, A, 100, None, ago(10));
        write_aged(&a.join("rank-1-of-2.partial"), b"old", ago(3600));
        write_aged(&a.join("rank-2-of-3.partial"), b"live", ago(1));
        // An entry holding only a stale partial disappears.
        let b = cache.join(B);
        std::fs::create_dir_all(&b).unwrap();
        write_aged(&b.join("rank-0-of-2.partial"), b"old", ago(3600));
        File::open(&b).unwrap().set_modified(ago(3600)).unwrap();
        let policy = PrunePolicy {
            remove_orphans: false,
            ..PrunePolicy::default()
        };
        let gone = prune(&cache, &policy).unwrap();
        assert_eq!(
            gone.iter().map(|e| e.path.as_path()).collect::<Vec<_>>(),
            [b.as_path()]
        );
        assert!(!b.exists());
        assert!(!a.join("rank-1-of-2.partial").exists());
        assert!(a.join("rank-2-of-3.partial").exists());
        assert!(a.join("rank-0-of-1.slice").exists());
        // An entry being written is not evicted, even over the cap.
        let cap = PrunePolicy {
            max_bytes: Some(0),
            ..PrunePolicy::default()
        };
        assert!(prune(&cache, &cap).unwrap().is_empty());
        assert!(a.join("rank-0-of-1.slice").exists());
    }
}
