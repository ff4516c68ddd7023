//! Tensor-parallel sessions: rank 0 (hub) and workers, and local mode.
//!
//! Rank 0 opens the model, computes the split plan, writes one slice file
//! per rank into the cache (streaming from the mmapped safetensors), then
//! listens. Each worker connects, says hello, fetches its slice if its cache
//! lacks a verified copy, and then follows rank 0's steps until Stop. In
//! local mode rank 0 spawns ranks 1..N-1 as child processes of the same
//! binary on loopback, sharing its cache directory.

use crate::engine::{forward, Par, State, Timing};
use crate::engine::{generate, GenOptions, GenOutput, Rank};
use crate::error::{Error, Result};
use crate::model::checkpoint::Checkpoint;
use crate::model::config::Config;
use crate::net::{
    fetch_slice, resolve, slice_path, worker_join, worker_ready, Command, HubComm, HubListener,
    Link, NetOpts, Secret, SessionId, WorkerComm,
};
use crate::plan::{split, Plan, Shape};
use crate::slice::{ensure_slices, fingerprint, write_slice, Expect, SliceFile, SliceResident};
use crate::window::{Reads, WindowOpts};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// The split plan for `cfg` over `world_size` ranks.
pub fn plan_for(cfg: &Config, world_size: usize, weights: Option<&[u32]>) -> Result<Plan> {
    split(&Shape::of(cfg), world_size, weights)
        .map_err(|e| Error::Usage(format!("split plan: {e}")))
}

/// The default slice cache: `$TPI_CACHE_DIR`, else `$XDG_CACHE_HOME/tpi`,
/// else `$HOME/.cache/tpi`, else `<temp>/tpi-cache`.
pub fn default_cache_dir() -> PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("TPI_CACHE_DIR")
        .or_else(|| env("XDG_CACHE_HOME").map(|p| p.join("tpi")))
        .or_else(|| env("HOME").map(|p| p.join(".cache/tpi")))
        .unwrap_or_else(|| std::env::temp_dir().join("tpi-cache"))
}

/// How a rank holds its layer weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MemoryMode {
    /// Resident if the slice fits comfortably in available RAM, else the
    /// largest window that does.
    #[default]
    Auto,
    /// Every layer block in RAM.
    Resident,
    /// W layer blocks in RAM, streamed by the I/O thread.
    Window(usize),
}

/// How a rank reads its slice file (window passes and the verification
/// of a cached slice).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IoMode {
    /// `O_DIRECT` when the weights cannot stay in the page cache (more bytes
    /// than MemAvailable); mapped from the page cache otherwise.
    #[default]
    Auto,
    /// `pread` through the page cache.
    Buffered,
    /// `O_DIRECT` (falls back to buffered where the file system refuses it).
    Direct,
    /// Window blocks mapped from the page cache (no copy); reads that are
    /// not window passes (verification) are buffered.
    Mapped,
}

impl IoMode {
    /// Whether reading `bytes` of weights bypasses the page cache. Auto:
    /// when they exceed MemAvailable, the page cache cannot keep them for
    /// the next pass, so buffered reads go to the disk anyway while evicting
    /// everything else, and a 1 GiB-limited rank was measured as fast or
    /// faster with `O_DIRECT` (README, "Memory window").
    pub fn direct_for(self, bytes: u64, available: Option<u64>) -> bool {
        match self {
            IoMode::Buffered | IoMode::Mapped => false,
            IoMode::Direct => true,
            IoMode::Auto => available.is_some_and(|a| bytes > a),
        }
    }

    /// How a window over `bytes` of weights reads its blocks. Auto: through
    /// the page cache, by mapping, when the page cache can keep them
    /// (a warm pass then costs no copy; README, "Memory window").
    pub fn reads_for(self, bytes: u64, available: Option<u64>) -> Reads {
        match self {
            IoMode::Buffered => Reads::Buffered,
            IoMode::Direct => Reads::Direct,
            IoMode::Mapped => Reads::Mapped,
            IoMode::Auto if self.direct_for(bytes, available) => Reads::Direct,
            IoMode::Auto => Reads::Mapped,
        }
    }
}

/// Memory settings of a rank.
#[derive(Clone, Copy, Debug, Default)]
pub struct MemoryOpts {
    pub mode: MemoryMode,
    pub io: IoMode,
}

/// MemAvailable from /proc/meminfo, in bytes.
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Share of available memory the weights may take when choosing by default.
const COMFORTABLE: f64 = 0.6;

/// Resident or a window of how many blocks, for layer blocks `blocks`
/// (bytes each) and an lm_head of `lm_head` bytes (resident with the
/// layers; streamed through the window after them otherwise, in parts no
/// larger than a layer block).
pub fn choose_window(
    mode: MemoryMode,
    blocks: &[u64],
    lm_head: u64,
    available: Option<u64>,
) -> Option<usize> {
    let n = blocks.len();
    let total: u64 = blocks.iter().sum();
    let largest = blocks.iter().copied().max().unwrap_or(0).max(1);
    match mode {
        MemoryMode::Resident => None,
        MemoryMode::Window(w) if w >= n => None,
        MemoryMode::Window(w) => Some(w),
        MemoryMode::Auto => {
            let budget = (available? as f64 * COMFORTABLE) as u64;
            if total + lm_head <= budget {
                None
            } else {
                let w = (budget / largest) as usize;
                Some(w.clamp(2, n.saturating_sub(1).max(2)))
            }
        }
    }
}

/// Opens a rank's weights from its slice, resident or windowed, and says
/// which and the expected peak.
pub fn open_weights(slice: SliceFile, mem: MemoryOpts, quiet: bool) -> Result<SliceResident> {
    let blocks: Vec<u64> = slice.layer_blocks().iter().map(|b| b.1).collect();
    let lm_head: u64 = slice
        .manifest()
        .blocks
        .iter()
        .filter(|b| b.kind == crate::slice::BlockKind::LmHead)
        .map(|b| b.len)
        .sum();
    let rank = slice.rank();
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    match choose_window(mem.mode, &blocks, lm_head, available_memory()) {
        None => {
            if !quiet {
                eprintln!(
                    "[tpi] rank {rank}: weights resident: {:.1} MiB of layers + {:.1} MiB lm_head",
                    mib(blocks.iter().sum()),
                    mib(lm_head)
                );
            }
            Ok(SliceResident::load(slice)?)
        }
        Some(w) => {
            let largest = blocks.iter().copied().max().unwrap_or(0);
            let reads = mem.io.reads_for(slice.file_len(), available_memory());
            if !quiet {
                eprintln!(
                    "[tpi] rank {rank}: memory window of {w} x {:.1} MiB blocks ({} layers and {:.1} MiB of lm_head streamed, {:.1} MiB on disk); expected weight peak {:.1} MiB{}",
                    mib(largest),
                    blocks.len(),
                    mib(lm_head),
                    mib(blocks.iter().sum::<u64>() + lm_head),
                    mib(w as u64 * largest),
                    match reads {
                        Reads::Buffered => ", pread",
                        Reads::Direct => ", O_DIRECT",
                        Reads::Mapped => ", mapped",
                    }
                );
            }
            let opts = WindowOpts { reads };
            Ok(SliceResident::windowed(slice, w, opts)?)
        }
    }
}

/// Traffic and timing of a hub session.
#[derive(Clone, Debug, Default)]
pub struct HubReport {
    pub out: GenOutput,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Forward passes run (prompt batches + generated tokens but the last).
    pub steps: u64,
    /// Rank 0's window, when its weights are windowed.
    pub window: Option<crate::window::WindowStats>,
}

/// Everything rank 0 needs besides generation options.
pub struct HubSetup<'a> {
    pub ckpt: &'a Checkpoint,
    pub plan: &'a Plan,
    pub cache_dir: &'a Path,
    /// Address to listen on; port 0 picks a free one.
    pub listen: &'a str,
    /// Spawn ranks 1..N-1 locally (with this many threads each).
    pub spawn_local: Option<usize>,
    pub threads: usize,
    pub memory: MemoryOpts,
    pub net: NetOpts,
    pub quiet: bool,
    /// Pre-shared key workers must prove.
    pub secret: Option<Secret>,
    /// `--secret-file` to hand to local workers (else they inherit TPI_SECRET).
    pub secret_file: Option<PathBuf>,
}

/// Runs rank 0 of a tensor-parallel session.
pub fn run_hub(
    setup: &HubSetup<'_>,
    prompt_ids: &[u32],
    opts: &GenOptions,
    on_text: &mut crate::engine::OnText<'_>,
) -> Result<HubReport> {
    let (ckpt, plan) = (setup.ckpt, setup.plan);
    let n = plan.world_size;
    // The port opens first (spec J1): a bad --master fails before any
    // slicing, and workers started early join while the slices are cut.
    let flag = if setup.spawn_local.is_some() {
        "local listen address"
    } else {
        "--master"
    };
    let hub = HubListener::open(
        flag,
        setup.listen,
        n,
        setup.secret.clone(),
        setup.net,
        setup.quiet,
    )?;
    let addr = hub.local_addr();
    if !addr.ip().is_loopback() && setup.secret.is_none() {
        eprintln!("[tpi] WARNING: listening on {addr} without authentication: any machine that can reach this port can join.");
    }
    let mut children = Children(Vec::new());
    if let Some(threads) = setup.spawn_local {
        for r in 1..n {
            children
                .0
                .push(spawn_worker(r, n, &addr.to_string(), setup, threads)?);
        }
    }
    let t0 = Instant::now();
    let io = setup.memory.io;
    let mut progress = crate::progress::meter_unless(setup.quiet, "[tpi] rank 0");
    let paths = ensure_slices(
        ckpt,
        plan,
        setup.cache_dir,
        |bytes| io.direct_for(bytes, available_memory()),
        &mut *progress,
    )?;
    if !setup.quiet {
        eprintln!(
            "[tpi] rank 0: {n} slices ready in {} ({:.0} ms)",
            setup.cache_dir.display(),
            t0.elapsed().as_secs_f64() * 1e3
        );
    }
    // The session id is known once the slices are (the fingerprint may be
    // computed while slicing); joined workers get it only now (spec J4).
    let id = SessionId {
        world_size: n,
        fingerprint: fingerprint(ckpt, setup.cache_dir, &mut *progress)?,
        plan_hash: plan.hash(),
    };
    let links = hub.join(id, paths.clone())?;
    let vocab = plan.ranks.iter().map(|r| r.vocab.clone()).collect();
    let mut comm = HubComm::new(links, vocab, setup.net.spin)?;

    let slice = SliceFile::open(
        &paths[0],
        Expect {
            rank: Some(0),
            world_size: Some(n),
            ..Expect::default()
        },
    )?;
    let res = slice.resident()?;
    let mut weights = open_weights(slice, setup.memory, setup.quiet)?;
    let mut rank = Rank {
        res: &res,
        weights: &mut weights,
        comm: &mut comm,
        par: Par::new(setup.threads, tpi_kernels::Backend::detect()),
    };
    let result = generate(
        &mut rank,
        ckpt.tokenizer.as_ref(),
        prompt_ids,
        opts,
        on_text,
    );
    match result {
        Ok(out) => {
            comm.stop();
            children.wait(Duration::from_secs(5));
            let (bytes_sent, bytes_received) = comm.bytes();
            let steps = out.forwards;
            Ok(HubReport {
                out,
                bytes_sent,
                bytes_received,
                steps,
                window: weights.window_stats(),
            })
        }
        Err(e) => {
            comm.abort(&format!("rank 0 failed: {e}"));
            Err(e)
        }
    }
}

/// Local worker processes; killed if still running when dropped.
struct Children(Vec<Child>);

impl Children {
    fn wait(&mut self, limit: Duration) {
        let start = Instant::now();
        for c in &mut self.0 {
            loop {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if start.elapsed() > limit => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }
        self.0.clear();
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn_worker(
    rank: usize,
    n: usize,
    master: &str,
    setup: &HubSetup<'_>,
    threads: usize,
) -> Result<Child> {
    let exe = std::env::current_exe().map_err(|source| Error::Io {
        path: "current executable".into(),
        source,
    })?;
    let mut cmd = std::process::Command::new(&exe);
    cmd.args([
        "--rank",
        &rank.to_string(),
        "--world-size",
        &n.to_string(),
        "--master",
        master,
    ])
    .arg("--cache-dir")
    .arg(setup.cache_dir)
    .args(["--threads", &threads.to_string()])
    .args([
        "--join-timeout",
        &setup.net.join_timeout.as_secs_f64().to_string(),
    ])
    .args([
        "--peer-timeout",
        &setup.net.peer_timeout.as_secs_f64().to_string(),
    ])
    .args(["--net-spin-us", &setup.net.spin.as_micros().to_string()])
    .arg("--quiet")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::inherit());
    match setup.memory.mode {
        MemoryMode::Auto => {}
        MemoryMode::Resident => {
            cmd.arg("--no-memory-window");
        }
        MemoryMode::Window(w) => {
            cmd.args(["--memory-window", &w.to_string()]);
        }
    }
    match setup.memory.io {
        IoMode::Auto => {}
        IoMode::Buffered => {
            cmd.arg("--buffered-io");
        }
        IoMode::Direct => {
            cmd.arg("--direct-io");
        }
        IoMode::Mapped => {
            cmd.arg("--mapped-io");
        }
    }
    if let Some(f) = &setup.secret_file {
        cmd.arg("--secret-file").arg(f);
    }
    cmd.spawn().map_err(|source| Error::Io {
        path: exe.display().to_string(),
        source,
    })
}

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
    pub master: &'a str,
    pub rank: usize,
    pub world_size: usize,
    pub cache_dir: &'a Path,
    pub threads: usize,
    pub force_download: bool,
    pub memory: MemoryOpts,
    pub net: NetOpts,
    pub quiet: bool,
    pub secret: Option<Secret>,
}

/// Runs worker `rank` until rank 0 ends the session. Whatever stops it
/// after joining is told to rank 0 too (spec J6).
pub fn run_worker(w: &WorkerSetup<'_>) -> Result<()> {
    // A typo in --master fails here, before any model is opened.
    resolve("--master", w.master)?;
    // With its own copy of the model, a worker states fingerprint and plan
    // (rank 0 refuses a mismatch) and cuts its slice locally.
    let mut progress = crate::progress::meter_unless(w.quiet, &format!("[tpi] rank {}", w.rank));
    let local = match w.model {
        Some(dir) => {
            let ckpt = Checkpoint::open_dir(dir)?;
            let plan = plan_for(&ckpt.config, w.world_size, w.split_weights)?;
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
        let _ = crate::cache::touch_used(entry);
    }
    worker_ready(&mut link, w.net.peer_timeout)?;
    let opened = slice
        .resident()
        .map_err(Error::from)
        .and_then(|res| Ok((res, open_weights(slice, w.memory, w.quiet)?)));
    let (res, mut weights) = match opened {
        Ok(o) => o,
        Err(e) => {
            link.fail(0, &e.to_string());
            return Err(e);
        }
    };
    let mut comm = WorkerComm::new(link, w.net.peer_timeout, w.net.spin)?;
    let par = Par::new(w.threads, tpi_kernels::Backend::detect());
    let mut state = State::new(&res.dims, 64)?;
    let mut timing = Timing::default();
    loop {
        let step = match comm.next_command()? {
            Command::Stop => return Ok(()),
            Command::Step {
                tokens,
                pos,
                want_logits,
            } => forward(
                &res,
                &mut weights,
                &mut comm,
                &par,
                &mut state,
                &tokens,
                pos,
                want_logits,
                &mut timing,
            ),
        };
        if let Err(e) = step {
            comm.fail(&e.to_string());
            return Err(e);
        }
    }
}

/// The worker's verified slice: cached, cut from its own model, or fetched
/// from rank 0 (with progress on stderr unless quiet).
fn local_or_fetched_slice(
    w: &WorkerSetup<'_>,
    link: &mut Link,
    id: &SessionId,
    local: Option<(&Plan, &Checkpoint)>,
) -> Result<SliceFile> {
    let path = slice_path(w.cache_dir, id, w.rank);
    let log = |m: String| {
        if !w.quiet {
            eprintln!("[tpi] rank {}: {m}", w.rank);
        }
    };
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
        let mut progress =
            crate::progress::meter_unless(w.quiet, &format!("[tpi] rank {}", w.rank));
        write_slice(ckpt, plan, w.rank, &path, &mut *progress)?;
        log(format!("cut slice locally from {}", ckpt.origin));
        return open_verified(&path, id, w.rank, w.memory.io);
    }
    if path.exists() {
        log(format!("cached slice rejected ({why}); fetching again"));
        let _ = std::fs::remove_file(&path);
    }
    let mut progress = crate::progress::meter_unless(w.quiet, &format!("[tpi] rank {}", w.rank));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_mode_reads_direct_only_what_cannot_stay_in_the_page_cache() {
        let gib = 1u64 << 30;
        assert!(!IoMode::Auto.direct_for(gib, Some(2 * gib)));
        assert!(IoMode::Auto.direct_for(3 * gib, Some(2 * gib)));
        // Unknown memory (no /proc/meminfo): the page cache decides.
        assert!(!IoMode::Auto.direct_for(3 * gib, None));
        assert!(IoMode::Direct.direct_for(1, Some(2 * gib)));
        assert!(!IoMode::Buffered.direct_for(3 * gib, Some(2 * gib)));
        assert!(!IoMode::Mapped.direct_for(3 * gib, Some(2 * gib)));
    }

    #[test]
    fn window_reads_map_what_the_page_cache_keeps() {
        let gib = 1u64 << 30;
        assert_eq!(IoMode::Auto.reads_for(gib, Some(2 * gib)), Reads::Mapped);
        assert_eq!(
            IoMode::Auto.reads_for(3 * gib, Some(2 * gib)),
            Reads::Direct
        );
        assert_eq!(IoMode::Auto.reads_for(3 * gib, None), Reads::Mapped);
        assert_eq!(
            IoMode::Buffered.reads_for(gib, Some(2 * gib)),
            Reads::Buffered
        );
        assert_eq!(IoMode::Direct.reads_for(gib, Some(2 * gib)), Reads::Direct);
        assert_eq!(
            IoMode::Mapped.reads_for(3 * gib, Some(2 * gib)),
            Reads::Mapped
        );
    }

    #[test]
    fn window_choice_follows_the_budget() {
        let blocks = [100u64; 10];
        // 60% of 2000 = 1200 >= 1000 + 100: resident.
        assert_eq!(
            choose_window(MemoryMode::Auto, &blocks, 100, Some(2000)),
            None
        );
        // 60% of 1000 = 600: six blocks fit.
        assert_eq!(
            choose_window(MemoryMode::Auto, &blocks, 100, Some(1000)),
            Some(6)
        );
        // Never fewer than two slots, never all of them.
        assert_eq!(
            choose_window(MemoryMode::Auto, &blocks, 0, Some(10)),
            Some(2)
        );
        assert_eq!(
            choose_window(MemoryMode::Auto, &blocks, 0, Some(1660)),
            Some(9)
        );
        assert_eq!(
            choose_window(MemoryMode::Window(3), &blocks, 0, None),
            Some(3)
        );
        assert_eq!(
            choose_window(MemoryMode::Window(10), &blocks, 0, None),
            None
        );
        assert_eq!(
            choose_window(MemoryMode::Resident, &blocks, 0, Some(1)),
            None
        );
        assert_eq!(choose_window(MemoryMode::Auto, &blocks, 0, None), None);
    }
}
