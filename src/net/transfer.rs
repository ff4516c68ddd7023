//! Slice transfer (spec M4, J7): rank 0 serves a worker its slice file;
//! the worker fetches it into its cache.
//!
//! Data flow, once the worker has its HelloAck: [`fetch_slice`] first calls
//! `fetch_head`, which asks for the 32-byte preamble, then for the manifest
//! (its length checked against `split::manifest::MAX_MANIFEST` before any request,
//! its checksum after); the manifest's last block gives the slice's size.
//! The rest follows in requests of at most `FETCH_CHUNK` bytes into
//! `path.partial` (resuming from its length), never past that size. Each
//! `request` is one FileRequest, answered by one FileChunk message that
//! [`serve_files`] reads from the file and `send_bytes` cuts into frames
//! (spec F8); an answer longer than asked is refused. [`worker_ready`] (a
//! Heartbeat) ends `serve_files`. It lives here, not with the allreduce,
//! because it is the last message of this exchange: a worker whose cache
//! already holds its slice sends it without fetching anything.

use super::error::NetError;
use super::frame::{write_frame, Header, Kind, MAX_PAYLOAD};
use super::link::Link;
use super::msg::FileRequest;
use crate::progress::Progress;
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::path::Path;
use std::time::Duration;

/// Answers FileRequests for `path` until the worker sends a Heartbeat.
pub(super) fn serve_files(link: &mut Link, path: &Path) -> Result<(), NetError> {
    let mut file =
        File::open(path).map_err(|e| link.io_err(format!("opening {}", path.display()), e))?;
    let size = file
        .metadata()
        .map_err(|e| link.io_err("stat slice", e))?
        .len();
    loop {
        let (h, payload) = link.recv(0, "file request")?;
        match h.kind {
            Kind::Heartbeat => return Ok(()),
            Kind::FileRequest => {
                let req = FileRequest::decode(&payload).map_err(|e| NetError::Protocol {
                    peer: link.peer.to_string(),
                    rank: Some(link.rank),
                    what: format!("bad file request: {e}"),
                })?;
                let len = req
                    .len
                    .min(size.saturating_sub(req.offset))
                    .min(FETCH_CHUNK);
                let mut data = vec![0u8; len as usize];
                file.seek(io::SeekFrom::Start(req.offset))
                    .and_then(|_| file.read_exact(&mut data))
                    .map_err(|e| link.io_err("reading slice", e))?;
                send_bytes(link, Kind::FileChunk, &data)?;
            }
            // The worker says why it stops (e.g. its disk is full).
            Kind::Error => return Err(link.peer_failed("serving its slice", &payload)),
            other => {
                return Err(NetError::Protocol {
                    peer: link.peer.to_string(),
                    rank: Some(link.rank),
                    what: format!("expected FileRequest or Heartbeat, got {other:?}"),
                })
            }
        }
    }
}

/// Bytes of slice file per request.
const FETCH_CHUNK: u64 = 4 << 20;

fn send_bytes(link: &mut Link, kind: Kind, data: &[u8]) -> Result<(), NetError> {
    let mut h = link.header(kind, 0, 0);
    h.chunk_count = Header::chunks_for(data.len() as u64) as u16;
    h.total_len = data.len() as u32;
    let chunks: Vec<&[u8]> = if data.is_empty() {
        vec![&[][..]]
    } else {
        data.chunks(MAX_PAYLOAD).collect()
    };
    let sent = {
        let mut w = link.writer();
        chunks.into_iter().enumerate().try_for_each(|(i, c)| {
            h.chunk_index = i as u16;
            write_frame(&mut w, &h, c)
        })
    };
    sent.map_err(|e| link.io_err("sending slice bytes", e))
}

/// Fetches rank 0's slice file into `path` (spec J7): first its head
/// (preamble and manifest, whose blocks give the file's size), then the
/// rest into `path.partial`, resuming from its current length, never past
/// that size; then renamed. The caller verifies it. Returns the bytes
/// fetched. A full disk is this worker's error, named with the file.
pub fn fetch_slice(
    link: &mut Link,
    path: &Path,
    progress: &mut dyn Progress,
) -> crate::Result<u64> {
    let (head, size) = fetch_head(link)?;
    let partial = path.with_extension("partial");
    let disk = |what: &str, source: io::Error| crate::Error::Io {
        path: format!("{what} {}", partial.display()),
        source,
    };
    if let Some(dir) = partial.parent() {
        std::fs::create_dir_all(dir).map_err(|e| disk("creating the directory of", e))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&partial)
        .map_err(|e| disk("opening", e))?;
    let mut offset = file.metadata().map_err(|e| disk("stat", e))?.len();
    if offset > size {
        // A partial longer than the slice is from another session.
        file.set_len(0).map_err(|e| disk("truncating", e))?;
        offset = 0;
    }
    let resumed_at = offset;
    // Large writes leave the slice in the page cache in large folios,
    // which a mapped memory window maps several times faster.
    let mut out = crate::sys::LargeWriter::new(file, offset);
    progress.begin("downloading slice", size);
    if let Some(rest) = head
        .get(offset as usize..)
        .filter(|_| offset < head.len() as u64)
    {
        out.write_all(rest).map_err(|e| disk("writing slice", e))?;
        offset = head.len() as u64;
    }
    progress.update(offset);
    while offset < size {
        let want = (size - offset).min(FETCH_CHUNK);
        request(link, offset, want, size, &mut |b| {
            out.write_all(b).map_err(|e| disk("writing slice", e))
        })?;
        offset += want;
        progress.update(offset);
    }
    let file = out.into_file().map_err(|e| disk("writing slice", e))?;
    file.sync_all().map_err(|e| disk("syncing slice", e))?;
    drop(file);
    std::fs::rename(&partial, path).map_err(|e| disk("renaming", e))?;
    progress.end();
    Ok(offset - resumed_at)
}

/// Fetches a slice's preamble and manifest; returns those bytes and the
/// size of the file they describe: the end of its last block (spec J7).
fn fetch_head(link: &mut Link) -> crate::Result<(Vec<u8>, u64)> {
    use crate::split::manifest::{decode_manifest, Preamble, MAGIC, MAX_MANIFEST, PREAMBLE_LEN};
    use crate::split::SliceError;
    let peer = link.peer.to_string();
    let what = || "rank 0's slice".to_string();
    let bad = |source| NetError::SliceHead {
        peer: peer.clone(),
        source: Box::new(source),
    };
    let mut head = Vec::with_capacity(PREAMBLE_LEN);
    request(
        link,
        0,
        PREAMBLE_LEN as u64,
        PREAMBLE_LEN as u64,
        &mut |b| {
            head.extend_from_slice(b);
            Ok(())
        },
    )?;
    let pre: [u8; PREAMBLE_LEN] = head
        .as_slice()
        .try_into()
        .map_err(|_| bad(SliceError::BadMagic { path: what() }))?;
    let pre = Preamble::decode(&pre);
    if pre.magic != MAGIC {
        return Err(bad(SliceError::BadMagic { path: what() }).into());
    }
    let (mlen, stored) = (pre.manifest_len, pre.manifest_checksum);
    // The manifest's length is checked against its maximum before any
    // request; its bytes land in `head` only as they arrive.
    if mlen == 0 || mlen > MAX_MANIFEST {
        let e = SliceError::ManifestTooLarge {
            path: what(),
            len: mlen,
            max: MAX_MANIFEST,
        };
        return Err(bad(e).into());
    }
    let mut at = PREAMBLE_LEN as u64;
    let end = at + mlen;
    while at < end {
        let want = (end - at).min(FETCH_CHUNK);
        request(link, at, want, end, &mut |b| {
            head.extend_from_slice(b);
            Ok(())
        })?;
        at += want;
    }
    let manifest = head.get(PREAMBLE_LEN..).unwrap_or_default();
    let computed = crate::codec::checksum::checksum64(manifest);
    if computed != stored {
        let e = SliceError::ManifestChecksum {
            path: what(),
            stored,
            computed,
        };
        return Err(bad(e).into());
    }
    let m = decode_manifest(manifest).map_err(|source| {
        bad(SliceError::Manifest {
            path: what(),
            source,
        })
    })?;
    let size = m
        .blocks
        .iter()
        .map(|b| b.offset.saturating_add(b.len))
        .max()
        .unwrap_or(0)
        .max(end);
    Ok((head, size))
}

/// Asks rank 0 for `len` bytes at `offset` of the slice (announced to be
/// `announced` bytes) and hands them to `sink` frame by frame. Refuses an
/// answer longer than asked (spec J7), never allocating from its length.
fn request(
    link: &mut Link,
    offset: u64,
    len: u64,
    announced: u64,
    sink: &mut dyn FnMut(&[u8]) -> crate::Result<()>,
) -> crate::Result<()> {
    link.send(
        Kind::FileRequest,
        0,
        0,
        &FileRequest { offset, len }.encode(),
    )?;
    let mut got = 0u64;
    let mut expect_index = 0u16;
    loop {
        let (h, payload) = link.recv(0, "slice bytes")?;
        let bad = |what: String| NetError::Protocol {
            peer: link.peer.to_string(),
            rank: Some(0),
            what,
        };
        if h.kind == Kind::Error {
            return Err(link
                .peer_failed("sending this worker's slice", &payload)
                .into());
        }
        if h.kind != Kind::FileChunk || h.chunk_index != expect_index {
            return Err(bad(format!(
                "unexpected {:?} chunk {}/{} of {} bytes",
                h.kind, h.chunk_index, h.chunk_count, h.total_len
            ))
            .into());
        }
        let offered = u64::from(h.total_len);
        if offered > len {
            return Err(NetError::Oversized {
                peer: link.peer.to_string(),
                offset,
                asked: len,
                offered,
                announced,
            }
            .into());
        }
        if offered < len {
            return Err(bad(format!(
                "sent {offered} bytes at offset {offset} where {len} were asked for: \
                 its slice is shorter than the {announced} bytes its manifest announces"
            ))
            .into());
        }
        sink(&payload)?;
        got += payload.len() as u64;
        if h.chunk_index + 1 == h.chunk_count {
            return if got == len {
                Ok(())
            } else {
                Err(bad(format!("sent {got} of {len} bytes at offset {offset}")).into())
            };
        }
        expect_index += 1;
    }
}

/// Tells rank 0 this worker has its slice and is ready.
pub fn worker_ready(link: &mut Link, peer_timeout: Duration) -> Result<(), NetError> {
    link.send(Kind::Heartbeat, 0, 0, &[])?;
    link.set_timeout(peer_timeout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::link::tests::loopback;
    use std::path::PathBuf;

    /// Records what a download reports.
    #[derive(Default)]
    struct Recorded {
        total: u64,
        last: u64,
        ended: bool,
    }

    impl Progress for Recorded {
        fn begin(&mut self, _: &str, total: u64) {
            self.total = total;
        }
        fn update(&mut self, done: u64) {
            assert!(done >= self.last, "progress went back");
            self.last = done;
        }
        fn end(&mut self) {
            self.ended = true;
        }
    }

    /// Rank 1's slice of the bundled test model, written into `dir`.
    fn a_slice(dir: &Path) -> PathBuf {
        let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stories260K");
        let ckpt = crate::model::checkpoint::Checkpoint::open_dir(&model).expect("model");
        let plan = crate::split::plan::split(&crate::split::plan::Shape::of(&ckpt.config), 2, None)
            .expect("plan");
        let path = dir.join("served.slice");
        crate::split::cache::write_slice(&ckpt, &plan, 1, &path, &mut crate::progress::Silent)
            .expect("slice");
        path
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tpi-transfer-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    }

    #[test]
    fn fetched_slice_is_the_manifest_size_and_reports_progress() {
        let dir = temp_dir("fetch");
        let served = a_slice(&dir);
        let (mut hub, mut worker) = loopback();
        let src = served.clone();
        let t = std::thread::spawn(move || serve_files(&mut hub, &src));
        let got = dir.join("fetched.slice");
        let mut progress = Recorded::default();
        fetch_slice(&mut worker, &got, &mut progress).expect("fetch");
        worker_ready(&mut worker, Duration::from_secs(5)).expect("ready");
        t.join().expect("hub").expect("served");
        let (a, b) = (
            std::fs::read(&served).expect("served"),
            std::fs::read(&got).expect("got"),
        );
        assert!(a == b, "fetched bytes differ from the served slice");
        assert_eq!(
            (progress.total, progress.last),
            (a.len() as u64, a.len() as u64)
        );
        assert!(progress.ended);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn worker_refuses_more_slice_bytes_than_asked_for() {
        let dir = temp_dir("oversized");
        let served = a_slice(&dir);
        let bytes = std::fs::read(&served).expect("served");
        let size = bytes.len() as u64;
        let (mut hub, mut worker) = loopback();
        // A rank 0 that answers the head honestly, then offers 1 MiB more
        // than each request.
        let t = std::thread::spawn(move || {
            let head_len = crate::split::manifest::PREAMBLE_LEN as u64;
            loop {
                let Ok((_, p)) = hub.recv(0, "request") else {
                    return;
                };
                let req = FileRequest::decode(&p).expect("request");
                let extra = if req.offset <= head_len { 0 } else { 1 << 20 };
                let start = req.offset as usize;
                let end = (req.offset + req.len) as usize;
                let mut data = bytes.get(start..end).expect("in file").to_vec();
                data.resize(data.len() + extra, 0);
                if send_bytes(&mut hub, Kind::FileChunk, &data).is_err() {
                    return;
                }
            }
        });
        let err = fetch_slice(
            &mut worker,
            &dir.join("fetched.slice"),
            &mut Recorded::default(),
        )
        .expect_err("refused")
        .to_string();
        drop(worker);
        let _ = t.join();
        assert!(
            err.contains("rank 0 at 127.0.0.1")
                && err.contains(&format!("the slice its manifest announces is {size} bytes"))
                && err.contains("offered"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
