//! Model identity: the fingerprint a slice file carries, and the digest
//! cache that spares hashing a model's files on every run.
//!
//! The fingerprint is `checksum64` (XXH64) over a tag, the config.json and
//! generation_config.json texts, and for every safetensors shard its size and
//! the XXH64 of all its bytes ([`fingerprint`]). A shard's digest is kept in
//! the cache directory's `digests` file (layout rule 3 in [`super::cache`])
//! under the file's canonical path, size, mtime and inode, so later runs only
//! `stat` it.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::error::{cache_io_err as cache_io, CacheError};
use super::error::{io_err, SliceError};
use crate::codec::checksum::{checksum64, Hasher64};
use crate::model::bundled;
use crate::model::checkpoint::Checkpoint;
use crate::model::config::Config;
use crate::model::files::{FileId, ModelFiles};
use crate::model::source::Weights;
use crate::progress::Progress;
use crate::split::manifest::MAX_CONFIG_TEXT;

/// The digest cache file, in the cache directory.
pub const DIGESTS: &str = "digests";
/// Largest digest cache file read.
const MAX_DIGESTS_BYTES: u64 = 4 << 20;
/// Most lines kept in the digest cache (oldest dropped first).
const MAX_DIGEST_LINES: usize = 4096;
/// Rule 3: a file modified less than this before hashing began is not cached.
pub const RACY_NS: i64 = 2_000_000_000;
/// Read size when hashing a model file.
const HASH_CHUNK: usize = 8 << 20;

// ---------------------------------------------------------------------------
// Model file digests

/// XXH64 of every byte of `file`, read with `pread` in `HASH_CHUNK`
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
            .map_err(cache_io(&id.path, "read to hash"))?;
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
    let after = FileId::of(file, id.path.clone()).map_err(cache_io(&id.path, "stat"))?;
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
pub(super) fn digest_line(digest: u64, id: &FileId) -> Option<String> {
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
pub(super) fn read_digests(cache_dir: &Path) -> Vec<(u64, FileId)> {
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

pub(super) fn write_digests(cache_dir: &Path, lines: &[String]) -> Result<(), CacheError> {
    std::fs::create_dir_all(cache_dir).map_err(cache_io(cache_dir, "create"))?;
    let tmp = cache_dir.join(format!("{DIGESTS}.{}.tmp", std::process::id()));
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(&tmp, text).map_err(cache_io(&tmp, "write"))?;
    let path = cache_dir.join(DIGESTS);
    std::fs::rename(&tmp, &path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        cache_io(&path, "rename")(e)
    })
}

// ---------------------------------------------------------------------------
// Fingerprint

/// The raw config.json and generation_config.json texts of a checkpoint.
/// `Checkpoint` keeps only the parsed config, so they are re-read from its
/// origin directory (or taken from the bundled model, or the JSON a GGUF
/// model's metadata became) and checked to parse to the same `Config`.
pub(crate) fn config_texts(ckpt: &Checkpoint) -> Result<(String, Option<String>), SliceError> {
    let src = |msg: String| SliceError::Source {
        origin: ckpt.origin.clone(),
        msg,
    };
    let (cfg, gen, origin) = if let Weights::Gguf(g) = &ckpt.weights {
        (g.config_json().to_string(), None, ckpt.origin.clone())
    } else if ckpt.origin == bundled::NAME {
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

pub(crate) fn fingerprint_with(
    ckpt: &Checkpoint,
    cfg: &str,
    gen: Option<&str>,
    digests: &[u64],
) -> u64 {
    let mut h = Hasher64::new();
    h.update(b"tpi-fingerprint-v2");
    hash_text(&mut h, b"config", Some(cfg));
    hash_text(&mut h, b"generation_config", gen);
    let files = ckpt.weights.files();
    if ckpt.weights.is_gguf() {
        h.update(b"gguf");
    }
    h.update(&(files.len() as u64).to_le_bytes());
    for i in 0..files.len() {
        h.update(&(files.bytes(i).len() as u64).to_le_bytes());
        h.update(&digests.get(i).copied().unwrap_or(0).to_le_bytes());
    }
    h.finish()
}

/// Every file's whole-file XXH64, in order: remembered by the
/// [`ModelFiles`] once computed, else taken from the digest cache in
/// `cache_dir` under the shard's (canonical path, size, mtime, inode), else
/// read and hashed (reported to `progress`) and stored there.
pub(crate) fn shard_digests(
    st: &ModelFiles,
    cache_dir: Option<&Path>,
    progress: &mut dyn Progress,
) -> Result<Vec<u64>, SliceError> {
    let n = st.len();
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
        let d = match st.file(i) {
            // In-memory bytes (the bundled model): cheap to hash.
            None => checksum64(st.bytes(i)),
            Some((_, id)) => match cache_dir.and_then(|c| lookup_digest(c, id)) {
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
        .filter_map(|&i| st.file(i))
        .map(|(_, id)| id.size)
        .sum();
    progress.begin("hashing model weights", total);
    let started = std::time::SystemTime::now();
    let mut done = 0u64;
    for i in todo {
        let (Some((file, id)), Some(cell), Some(slot)) =
            (st.file(i), st.digest_cell(i), out.get_mut(i))
        else {
            continue;
        };
        let d = hash_file(file, id, &mut |n| {
            done += n;
            progress.update(done);
        })?;
        if let Some(dir) = cache_dir {
            // A digest that cannot be stored is only hashed again next time.
            let _ = store_digest(dir, id, d, started);
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
/// the digest cache in `cache_dir` (see [`super::cache`]) keyed by the file's
/// canonical path, size, mtime and inode, so later runs only `stat` it.
/// `progress` hears of the hashing when it happens.
pub fn fingerprint(
    ckpt: &Checkpoint,
    cache_dir: &Path,
    progress: &mut dyn Progress,
) -> Result<u64, SliceError> {
    let (c, g) = config_texts(ckpt)?;
    let digests = shard_digests(ckpt.weights.files(), Some(cache_dir), progress)?;
    Ok(fingerprint_with(ckpt, &c, g.as_deref(), &digests))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::split::testutil::*;

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

    /// `TPI_HASH_FILE=<path> cargo test --release --lib split::digest::tests::hash_throughput
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
            .safetensors()
            .unwrap()
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
}
