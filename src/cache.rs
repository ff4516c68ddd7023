//! The slice cache directory: what it holds, what may be dropped from it,
//! and the digests of model files that give slices their model identity.
//!
//! # Layout
//!
//! ```text
//! cache_dir/
//!   digests                          digest cache, one line per model file
//!   <fingerprint:016x>-<plan:016x>/  one entry per (model, split plan)
//!     rank-<r>-of-<n>.slice          a rank's slice (src/slice.rs)
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
//!    [`RACY_NS`] older than the start of its hashing: a rewrite in the same
//!    clock tick as the hash could otherwise keep its old key (git's "racily
//!    clean" problem).

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::codec::checksum::{checksum64, Hasher64};
use crate::model::safetensors::FileId;

/// The digest cache file, in the cache directory.
pub const DIGESTS: &str = "digests";
/// An entry's record of its model.
pub const RECORD: &str = "model.json";
/// An entry's last-use stamp.
pub const USED: &str = "used";
/// Largest digest cache file read.
const MAX_DIGESTS_BYTES: u64 = 4 << 20;
/// Most lines kept in the digest cache (oldest dropped first).
const MAX_DIGEST_LINES: usize = 4096;
/// Largest `model.json` read.
const MAX_RECORD_BYTES: u64 = 1 << 20;
/// Most files a `model.json` lists.
const MAX_RECORD_FILES: usize = 4096 + 2;
/// Rule 3: a file modified less than this before hashing began is not cached.
pub const RACY_NS: i64 = 2_000_000_000;
/// Read size when hashing a model file.
const HASH_CHUNK: usize = 8 << 20;

/// Errors reading or changing the cache directory.
#[derive(Debug)]
pub enum CacheError {
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    /// A model file changed (size, mtime or inode) while it was hashed, or
    /// is shorter than when it was opened.
    Changed { path: PathBuf, what: String },
}

impl fmt::Display for CacheError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CacheError::Io { path, what, source } => {
                write!(f, "cache {}: {what}: {source}", path.display())
            }
            CacheError::Changed { path, what } => write!(
                f,
                "model file {} changed while tpi read it ({what}); \
                 model files must not change while tpi runs",
                path.display()
            ),
        }
    }
}

impl std::error::Error for CacheError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CacheError::Io { source, .. } => Some(source),
            CacheError::Changed { .. } => None,
        }
    }
}

fn io_err<'a>(
    path: &'a Path,
    what: &'static str,
) -> impl FnOnce(std::io::Error) -> CacheError + 'a {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        what,
        source,
    }
}

// ---------------------------------------------------------------------------
// Model file digests

/// XXH64 of every byte of `file`, read with `pread` in [`HASH_CHUNK`]
/// pieces (the page cache is used, the resident set is not), reporting the
/// bytes done to `on_bytes`. `id` is the file's identity when it was
/// opened: a file that is shorter, or whose size, mtime or inode differ
/// afterwards, is [`CacheError::Changed`].
pub fn hash_file(
    file: &File,
    id: &FileId,
    on_bytes: &mut dyn FnMut(u64),
) -> Result<u64, CacheError> {
    let mut buf = vec![0u8; HASH_CHUNK];
    let mut h = Hasher64::new();
    let mut at = 0u64;
    while at < id.size {
        let want = (id.size - at).min(HASH_CHUNK as u64) as usize;
        let n = file
            .read_at(&mut buf[..want], at)
            .map_err(io_err(&id.path, "read to hash"))?;
        if n == 0 {
            return Err(CacheError::Changed {
                path: id.path.clone(),
                what: format!("ends at {at} bytes, was {} when opened", id.size),
            });
        }
        let got = buf.get(..n).unwrap_or(&[]);
        h.update(got);
        at += n as u64;
        on_bytes(n as u64);
    }
    let after = FileId::of(file, id.path.clone()).map_err(io_err(&id.path, "stat"))?;
    if (after.size, after.mtime_ns, after.dev, after.ino) != (id.size, id.mtime_ns, id.dev, id.ino)
    {
        return Err(CacheError::Changed {
            path: id.path.clone(),
            what: format!(
                "size {} -> {}, mtime {} -> {} ns",
                id.size, after.size, id.mtime_ns, after.mtime_ns
            ),
        });
    }
    Ok(h.finish())
}

/// `XXH64("v1 <digest> <size> <mtime_ns> <dev> <ino> <path>")` (rule 3).
fn line_check(digest: u64, id: &FileId, path: &str) -> u64 {
    let body = format!(
        "v1 {digest:016x} {} {} {} {} {path}",
        id.size, id.mtime_ns, id.dev, id.ino
    );
    checksum64(body.as_bytes())
}

/// The digest line for `id`; `None` when its path cannot be stored on one
/// line (it is then simply never cached).
fn digest_line(digest: u64, id: &FileId) -> Option<String> {
    let path = id.path.to_str()?;
    if path.contains('\n') || path.is_empty() {
        return None;
    }
    Some(format!(
        "v1 {digest:016x} {} {} {} {} {:016x} {path}",
        id.size,
        id.mtime_ns,
        id.dev,
        id.ino,
        line_check(digest, id, path)
    ))
}

/// A digest line decoded: (digest, identity). `None` for anything malformed.
fn parse_digest_line(line: &str) -> Option<(u64, FileId)> {
    let mut it = line.splitn(8, ' ');
    if it.next()? != "v1" {
        return None;
    }
    let digest = u64::from_str_radix(it.next()?, 16).ok()?;
    let size = it.next()?.parse().ok()?;
    let mtime_ns = it.next()?.parse().ok()?;
    let dev = it.next()?.parse().ok()?;
    let ino = it.next()?.parse().ok()?;
    let check = u64::from_str_radix(it.next()?, 16).ok()?;
    let path = it.next()?;
    let id = FileId {
        path: PathBuf::from(path),
        size,
        mtime_ns,
        dev,
        ino,
    };
    (line_check(digest, &id, path) == check).then_some((digest, id))
}

/// The digest cache's valid lines, oldest first (empty when absent or
/// unreadable: a cache miss costs a hash, never a wrong answer).
fn read_digests(cache_dir: &Path) -> Vec<(u64, FileId)> {
    let mut text = String::new();
    let ok = File::open(cache_dir.join(DIGESTS))
        .and_then(|f| f.take(MAX_DIGESTS_BYTES).read_to_string(&mut text));
    if ok.is_err() {
        return Vec::new();
    }
    text.lines().filter_map(parse_digest_line).collect()
}

/// The cached digest of the file `id` names, if one was stored under
/// exactly that identity.
pub fn lookup_digest(cache_dir: &Path, id: &FileId) -> Option<u64> {
    read_digests(cache_dir)
        .into_iter()
        .rev()
        .find(|(_, k)| k == id)
        .map(|(d, _)| d)
}

/// Stores `digest` for `id` (rule 3: not when the file was modified less
/// than [`RACY_NS`] before `hash_started`). Written to a temporary file and
/// renamed, so readers see the old or the new cache, never half of one.
/// Returns whether it was stored.
pub fn store_digest(
    cache_dir: &Path,
    id: &FileId,
    digest: u64,
    hash_started: SystemTime,
) -> Result<bool, CacheError> {
    let started_ns = hash_started
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    let Some(line) = digest_line(digest, id) else {
        return Ok(false);
    };
    if id.mtime_ns > started_ns.saturating_sub(RACY_NS) {
        return Ok(false);
    }
    let mut lines: Vec<String> = read_digests(cache_dir)
        .into_iter()
        .filter(|(_, k)| k.path != id.path)
        .filter_map(|(d, k)| digest_line(d, &k))
        .collect();
    lines.push(line);
    let drop = lines.len().saturating_sub(MAX_DIGEST_LINES);
    write_digests(cache_dir, lines.get(drop..).unwrap_or(&[]))?;
    Ok(true)
}

fn write_digests(cache_dir: &Path, lines: &[String]) -> Result<(), CacheError> {
    std::fs::create_dir_all(cache_dir).map_err(io_err(cache_dir, "create"))?;
    let tmp = cache_dir.join(format!("{DIGESTS}.{}.tmp", std::process::id()));
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(&tmp, text).map_err(io_err(&tmp, "write"))?;
    let path = cache_dir.join(DIGESTS);
    std::fs::rename(&tmp, &path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_err(&path, "rename")(e)
    })
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A unique temp directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!(
                "tpi-cache-{tag}-{}-{}",
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

    fn ago(secs: u64) -> SystemTime {
        SystemTime::now() - Duration::from_secs(secs)
    }

    fn write_aged(path: &Path, bytes: &[u8], when: SystemTime) {
        std::fs::write(path, bytes).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.set_modified(when).unwrap();
    }

    fn id_of(path: &Path) -> (File, FileId) {
        let f = File::open(path).unwrap();
        let id = FileId::of(&f, std::fs::canonicalize(path).unwrap()).unwrap();
        (f, id)
    }

    #[test]
    fn hash_file_is_xxh64_of_the_bytes_and_the_digest_is_cached_by_identity() {
        let tmp = TempDir::new("digest");
        let cache = tmp.0.join("cache");
        let model = tmp.0.join("w.safetensors");
        // Longer than one read chunk, not a multiple of it.
        let bytes: Vec<u8> = (0..HASH_CHUNK + 12345)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        write_aged(&model, &bytes, ago(60));
        let (f, id) = id_of(&model);
        let mut seen = 0u64;
        let d = hash_file(&f, &id, &mut |n| seen += n).unwrap();
        assert_eq!(d, checksum64(&bytes));
        assert_eq!(seen, bytes.len() as u64);
        assert_eq!(lookup_digest(&cache, &id), None);
        assert!(store_digest(&cache, &id, d, SystemTime::now()).unwrap());
        assert_eq!(lookup_digest(&cache, &id), Some(d));
        // Another mtime, size or inode is another key.
        for k in [
            FileId {
                mtime_ns: id.mtime_ns + 1,
                ..id.clone()
            },
            FileId {
                size: id.size + 1,
                ..id.clone()
            },
            FileId {
                ino: id.ino + 1,
                ..id.clone()
            },
        ] {
            assert_eq!(lookup_digest(&cache, &k), None, "{k:?}");
        }
        // A file modified just before its hash began is not stored (rule 3).
        let fresh = tmp.0.join("fresh.safetensors");
        std::fs::write(&fresh, b"abc").unwrap();
        let (_, fid) = id_of(&fresh);
        assert!(!store_digest(&cache, &fid, 1, SystemTime::now()).unwrap());
        assert_eq!(lookup_digest(&cache, &fid), None);
        // A damaged line is ignored, not trusted.
        let text = std::fs::read_to_string(cache.join(DIGESTS)).unwrap();
        let bad = text.replacen(&format!("v1 {d:016x}"), &format!("v1 {:016x}", d ^ 1), 1);
        assert_ne!(bad, text);
        std::fs::write(cache.join(DIGESTS), bad).unwrap();
        assert_eq!(lookup_digest(&cache, &id), None);
    }

    /// `TPI_HASH_FILE=<path> cargo test --release --lib cache::tests::hash_throughput
    /// -- --ignored --nocapture`: `hash_file` against a plain read of the
    /// same file in the same run (page cache warm after the first pass).
    #[test]
    #[ignore]
    fn hash_throughput() {
        let Some(path) = std::env::var_os("TPI_HASH_FILE") else {
            return;
        };
        let (f, id) = id_of(Path::new(&path));
        let mut buf = vec![0u8; HASH_CHUNK];
        let mut read = || {
            let t = std::time::Instant::now();
            let mut at = 0u64;
            while at < id.size {
                at += f.read_at(&mut buf, at).unwrap().max(1) as u64;
            }
            t.elapsed().as_secs_f64()
        };
        read();
        let r = read();
        let t = std::time::Instant::now();
        hash_file(&f, &id, &mut |_| {}).unwrap();
        let h = t.elapsed().as_secs_f64();
        let gib = id.size as f64 / (1u64 << 30) as f64;
        eprintln!(
            "{gib:.2} GiB: pread {:.0} MiB/s, pread+XXH64 {:.0} MiB/s ({:.2}x the read time)",
            gib * 1024.0 / r,
            gib * 1024.0 / h,
            h / r
        );
    }

    #[test]
    fn hash_file_refuses_a_file_changed_since_it_was_opened() {
        let tmp = TempDir::new("changed");
        let model = tmp.0.join("w.safetensors");
        write_aged(&model, &[1u8; 1000], ago(60));
        let (f, id) = id_of(&model);
        write_aged(&model, &[2u8; 1000], ago(30));
        let e = hash_file(&f, &id, &mut |_| {}).unwrap_err();
        assert!(matches!(e, CacheError::Changed { .. }), "{e}");
        // Shorter than when opened.
        let (f, id) = id_of(&model);
        std::fs::write(&model, [3u8; 10]).unwrap();
        let e = hash_file(&f, &id, &mut |_| {}).unwrap_err();
        assert!(e.to_string().contains("changed while tpi read it"), "{e}");
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
