//! Any rank but 0: joins rank 0 (proving the key, stating its own model's
//! fingerprint when it has one), obtains its slice (cached and verified,
//! cut from its own copy, or fetched), then follows rank 0's steps through
//! the engine until rank 0 ends the session. Whatever stops it after
//! joining is told to rank 0 (spec J6).

use super::{open_weights, plan_for_model};
use crate::engine::{follow, Par, Rank};
use crate::error::{Error, Result};
use crate::model::checkpoint::Checkpoint;
use crate::model::dtype::Quant;
use crate::net::{
    fetch_slice, resolve, slice_path, worker_join, worker_ready, Link, NetOpts, Secret, SessionId,
    WorkerComm,
};
use crate::progress::Observer;
use crate::split::cache::write_slice;
use crate::split::digest::fingerprint;
use crate::split::plan::Plan;
use crate::split::reader::{Expect, SliceFile};
use crate::sys::available_memory;
use crate::weights::sliced::SliceWeights;
use crate::window::policy::{IoMode, MemoryOpts};
use std::path::Path;
use std::time::Instant;

/// Opens and fully verifies a cached slice.
/// `io` decides whether the verification reads bypass the page cache.
fn open_verified(path: &Path, id: &SessionId, rank: usize, io: IoMode) -> Result<SliceFile> {
    let expect = Expect {
        fingerprint: Some(id.fingerprint),
        plan_hash: Some(id.plan_hash),
        rank: Some(rank),
        world_size: Some(id.world_size),
    };
    let s = SliceFile::open(path, expect)?;
    s.verify_with(io.direct_for(s.file_len(), available_memory()))?;
    Ok(s)
}

/// What a worker needs to know.
pub struct WorkerSetup<'a> {
    /// The worker's own copy of the model, if it has one.
    pub model: Option<&'a Path>,
    /// `--split-weights`, needed with `model` to compute the same plan.
    pub split_weights: Option<&'a [u32]>,
    /// `--quantize`, needed with `model` to compute the same plan.
    pub quant: Option<Quant>,
    pub master: &'a str,
    pub rank: usize,
    pub world_size: usize,
    pub cache_dir: &'a Path,
    pub threads: usize,
    pub force_download: bool,
    pub memory: MemoryOpts,
    pub net: NetOpts,
    pub observer: &'a dyn Observer,
    pub secret: Option<Secret>,
}

/// Runs worker `rank` until rank 0 ends the session. Whatever stops it
/// after joining is told to rank 0 too (spec J6).
pub fn run_worker(w: &WorkerSetup<'_>) -> Result<()> {
    // A typo in --master fails here, before any model is opened.
    resolve("--master", w.master)?;
    // With its own copy of the model, a worker states fingerprint and plan
    // (rank 0 refuses a mismatch) and cuts its slice locally.
    let mut progress = w.observer.progress(w.rank);
    let local = match w.model {
        Some(dir) => {
            let ckpt = Checkpoint::open(Some(dir))?;
            let plan = plan_for_model(&ckpt, w.world_size, w.split_weights, w.quant)?;
            Some((fingerprint(&ckpt, w.cache_dir, &mut *progress)?, plan, ckpt))
        }
        None => None,
    };
    let claim = local.as_ref().map(|(fp, plan, _)| (*fp, plan.hash()));
    let (mut link, id) = worker_join(
        w.master,
        w.rank,
        w.world_size,
        w.secret.as_deref(),
        claim,
        w.net,
    )?;
    let local = local.as_ref().map(|(_, plan, ckpt)| (plan, ckpt));
    let slice = match local_or_fetched_slice(w, &mut link, &id, local) {
        Ok(s) => s,
        Err(e) => {
            link.fail(0, &e.to_string());
            return Err(e);
        }
    };
    if let Some(entry) = slice.path().parent() {
        // For `tpi-run cache prune`: this entry is in use (a read-only
        // cache is no reason to stop).
        let _ = crate::split::cache::touch_used(entry);
    }
    worker_ready(&mut link, w.net.peer_timeout)?;
    let opened = slice
        .resident()
        .map_err(Error::from)
        .and_then(|res| Ok((res, open_weights(slice, w.memory, w.observer)?)));
    let (res, mut weights) = match opened {
        Ok(o) => o,
        Err(e) => {
            link.fail(0, &e.to_string());
            return Err(e);
        }
    };
    if link.wire() != crate::net::WireDtype::F32 {
        w.observer.note(
            w.rank,
            &format!(
                "allreduce payloads travel as {} (rank 0's choice)",
                link.wire()
            ),
        );
    }
    let mut comm = WorkerComm::new(link, w.net.peer_timeout, w.net.spin)?;
    let mut rank = Rank {
        res: &res,
        weights: &mut weights,
        comm: &mut comm,
        par: Par::new(w.threads, tpi_kernels::Backend::detect()),
    };
    if let Err(e) = follow(&mut rank) {
        comm.fail(&e.to_string());
        return Err(e.into());
    }
    Ok(())
}

/// The worker's verified slice: cached, cut from its own model, or fetched
/// from rank 0 (with progress).
fn local_or_fetched_slice(
    w: &WorkerSetup<'_>,
    link: &mut Link,
    id: &SessionId,
    local: Option<(&Plan, &Checkpoint)>,
) -> Result<SliceFile> {
    let path = slice_path(w.cache_dir, id, w.rank);
    let log = |m: String| w.observer.note(w.rank, &m);
    if w.force_download {
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(path.with_extension("partial"));
    }
    let why = match open_verified(&path, id, w.rank, w.memory.io) {
        Ok(s) => {
            log(format!("using cached slice {}", path.display()));
            return Ok(s);
        }
        Err(why) => why,
    };
    if let Some((plan, ckpt)) = local {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let mut progress = w.observer.progress(w.rank);
        write_slice(ckpt, plan, w.rank, &path, &mut *progress)?;
        log(format!("cut slice locally from {}", ckpt.origin));
        return open_verified(&path, id, w.rank, w.memory.io);
    }
    if path.exists() {
        log(format!("cached slice rejected ({why}); fetching again"));
        let _ = std::fs::remove_file(&path);
    }
    let mut progress = w.observer.progress(w.rank);
    let t0 = Instant::now();
    let mut got = fetch_slice(link, &path, &mut *progress)?;
    let s = match open_verified(&path, id, w.rank, w.memory.io) {
        Ok(s) => s,
        Err(e) => {
            // A stale partial from another session: start over once.
            log(format!(
                "fetched slice failed verification ({e}); fetching from scratch"
            ));
            let _ = std::fs::remove_file(&path);
            got = fetch_slice(link, &path, &mut *progress)?;
            open_verified(&path, id, w.rank, w.memory.io)?
        }
    };
    log(format!(
        "fetched {got} bytes of slice in {:.0} ms",
        t0.elapsed().as_secs_f64() * 1e3
    ));
    Ok(s)
}
