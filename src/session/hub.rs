//! Rank 0 of a cluster: opens its port first (workers join while the
//! slices are cut, spec J1), cuts or reuses the slices, hands joined
//! workers the session, then generates with the star allreduce. In local
//! mode it spawns ranks 1..N-1 as child processes of the same binary on
//! loopback, sharing its cache directory.

use super::{open_weights, Generator};
use crate::engine::{generate_in, Context, GenOptions, GenOutput, OnText, Par, Rank};
use crate::error::{Error, Result};
use crate::model::checkpoint::Checkpoint;
use crate::model::tokenizer::Tokenizer;
use crate::net::{HubComm, HubListener, LinkBytes, NetOpts, Secret, SessionId, WireDtype};
use crate::progress::Observer;
use crate::split::cache::ensure_slices;
use crate::split::digest::fingerprint;
use crate::split::plan::Plan;
use crate::split::reader::{Expect, SliceFile};
use crate::sys::available_memory;
use crate::weights::sliced::{SliceResident, SliceWeights};
use crate::weights::Resident;
use crate::window::policy::{IoMode, MemoryMode, MemoryOpts};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// Allreduce payload type of the session (spec W1).
    pub wire: WireDtype,
    /// Bytes through each worker's socket during generation.
    pub links: Vec<LinkBytes>,
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
    /// `--quiet`, handed to local workers.
    pub quiet: bool,
    pub observer: Arc<dyn Observer>,
    /// Pre-shared key workers must prove.
    pub secret: Option<Secret>,
    /// `--secret-file` to hand to local workers (else they inherit TPI_SECRET).
    pub secret_file: Option<PathBuf>,
}

/// Rank 0 of a tensor-parallel session, joined and loaded: generates many
/// times over the same workers, keeping the KV cache of the last
/// generation for the next prompt's common prefix. A failed generation
/// ends the session (every worker is told why); later calls fail.
pub struct Hub<'a> {
    comm: HubComm,
    res: Resident,
    weights: SliceResident,
    par: Par,
    ctx: Context,
    tokenizer: Option<&'a Tokenizer>,
    children: Children,
    /// Why the session ended, once it has.
    failed: Option<String>,
}

impl<'a> Hub<'a> {
    /// Opens the port, spawns local workers, cuts or reuses the slices,
    /// waits for every worker to join and loads rank 0's weights.
    pub fn start(setup: &HubSetup<'a>) -> Result<Hub<'a>> {
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
            setup.observer.clone(),
        )?;
        let addr = hub.local_addr();
        if !addr.ip().is_loopback() && setup.secret.is_none() {
            setup.observer.warn(&format!("listening on {addr} without authentication: any machine that can reach this port can join."));
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
        let mut progress = setup.observer.progress(0);
        let paths = ensure_slices(
            ckpt,
            plan,
            setup.cache_dir,
            |bytes| io.direct_for(bytes, available_memory()),
            &mut *progress,
        )?;
        setup.observer.note(
            0,
            &format!(
                "{n} slices ready in {} ({:.0} ms)",
                setup.cache_dir.display(),
                t0.elapsed().as_secs_f64() * 1e3
            ),
        );
        // The session id is known once the slices are (the fingerprint may be
        // computed while slicing); joined workers get it only now (spec J4).
        let id = SessionId {
            world_size: n,
            fingerprint: fingerprint(ckpt, setup.cache_dir, &mut *progress)?,
            plan_hash: plan.hash(),
        };
        let links = hub.join(id, paths.clone())?;
        let vocab = plan.ranks.iter().map(|r| r.vocab.clone()).collect();
        let comm = HubComm::new(links, vocab, setup.net.spin)?;
        if comm.wire() != WireDtype::F32 {
            setup
                .observer
                .note(0, &format!("allreduce payloads travel as {}", comm.wire()));
        }
        let slice = SliceFile::open(
            &paths[0],
            Expect {
                rank: Some(0),
                world_size: Some(n),
                ..Expect::default()
            },
        )?;
        let res = slice.resident()?;
        let weights = open_weights(slice, setup.memory, &*setup.observer)?;
        Ok(Hub {
            comm,
            res,
            weights,
            par: Par::new(setup.threads, tpi_kernels::Backend::detect()),
            ctx: Context::default(),
            tokenizer: ckpt.tokenizer.as_ref(),
            children,
            failed: None,
        })
    }

    /// Ends the session (workers stop) and reports its traffic with `out`.
    pub fn finish(mut self, out: GenOutput) -> HubReport {
        self.comm.stop();
        self.children.wait(Duration::from_secs(5));
        let (bytes_sent, bytes_received) = self.comm.bytes();
        HubReport {
            steps: out.forwards,
            out,
            bytes_sent,
            bytes_received,
            window: self.weights.window_stats(),
            wire: self.comm.wire(),
            links: self.comm.link_bytes(),
        }
    }

    fn check_alive(&self) -> Result<()> {
        match &self.failed {
            Some(why) => Err(Error::SessionEnded(why.clone())),
            None => Ok(()),
        }
    }
}

impl Generator for Hub<'_> {
    fn generate(
        &mut self,
        prompt_ids: &[u32],
        opts: &GenOptions,
        on_text: &mut OnText<'_>,
    ) -> Result<GenOutput> {
        self.check_alive()?;
        let mut rank = Rank {
            res: &self.res,
            weights: &mut self.weights,
            comm: &mut self.comm,
            par: self.par.clone(),
        };
        let result = generate_in(
            &mut rank,
            &mut self.ctx,
            self.tokenizer,
            prompt_ids,
            opts,
            on_text,
        );
        result.map_err(|e| {
            let why = format!("rank 0 failed: {e}");
            self.comm.abort(&why);
            self.failed = Some(why);
            e.into()
        })
    }

    fn keepalive(&mut self) -> Result<()> {
        self.check_alive()?;
        self.comm.heartbeat().map_err(|e| {
            let why = format!("a worker is gone: {e}");
            self.failed = Some(why);
            Error::Net(e)
        })
    }

    fn finish(self: Box<Self>, out: GenOutput) -> HubReport {
        Hub::finish(*self, out)
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
    if let Some(q) = setup.plan.quant.filter(|_| !setup.ckpt.weights.is_gguf()) {
        // Workers get their slices from rank 0; the flag keeps a worker's
        // own plan (should it have a model) the same as rank 0's.
        cmd.args(["--quantize", q.name()]);
    }
    if setup.quiet {
        cmd.arg("--quiet");
    }
    if let Some(f) = &setup.secret_file {
        cmd.arg("--secret-file").arg(f);
    }
    cmd.spawn().map_err(|source| Error::Io {
        path: exe.display().to_string(),
        source,
    })
}
