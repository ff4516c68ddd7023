//! Sessions: what one `tpi-run` process does, as short conductors over
//! the layers below. [`single`] runs one rank alone (the model read in
//! place, or from its slice); [`hub`] is rank 0 of a cluster (port, slices,
//! joins, generation); [`worker`] is any other rank (join, obtain its
//! slice, follow rank 0's steps). Each reports through a
//! [`crate::progress::Observer`] and returns what it measured; only the
//! binary prints.

pub mod hub;
pub mod single;
pub mod worker;

use crate::error::{Error, Result, UsageError};
use crate::model::checkpoint::Checkpoint;
use crate::model::config::Config;
use crate::model::dtype::Quant;
use crate::progress::Observer;
use crate::split::plan::{split, Plan, Shape};
use crate::split::reader::SliceFile;
use crate::split::types::stored_quant;
use crate::sys::available_memory;
use crate::weights::sliced::SliceResident;
use crate::window::policy::{choose_window, MemoryOpts};
use crate::window::{Reads, WindowOpts};
use std::path::PathBuf;

pub use hub::{HubReport, HubSetup};
pub use worker::{run_worker, WorkerSetup};

/// The split plan for `cfg` over `world_size` ranks.
pub fn plan_for(cfg: &Config, world_size: usize, weights: Option<&[u32]>) -> Result<Plan> {
    split(&Shape::of(cfg), world_size, weights).map_err(Error::Plan)
}

/// A loaded model answering many prompts: one rank alone
/// ([`single::Single`]) or rank 0 of a cluster ([`hub::Hub`]). Each keeps
/// the KV cache of its last generation, so a prompt that continues it (the
/// next turn of a conversation) computes only its new tokens
/// ([`crate::engine::GenOutput::cached_tokens`]).
pub trait Generator {
    /// Generates from `prompt_ids`, calling `on_text` with each piece.
    fn generate(
        &mut self,
        prompt_ids: &[u32],
        opts: &crate::engine::GenOptions,
        on_text: &mut crate::engine::OnText<'_>,
    ) -> Result<crate::engine::GenOutput>;

    /// Called at least every second while no generation runs, so that the
    /// workers of a cluster see rank 0 alive; nothing to do alone.
    fn keepalive(&mut self) -> Result<()> {
        Ok(())
    }

    /// Ends the session (a cluster's workers stop) and reports its
    /// traffic and timing with `out`, the last generation's output.
    fn finish(self: Box<Self>, out: crate::engine::GenOutput) -> HubReport;
}

/// The split plan for `ckpt` over `world_size` ranks: for HF weights with
/// `quant` (`--quantize`), for a GGUF model with head and MLP ranges on
/// the blocks its column-split matrices hold (spec §6 of the plan; a
/// GGUF keeps its own types, so `quant` is refused). Rank 0 and a worker
/// with its own copy compute it alike.
pub fn plan_for_model(
    ckpt: &Checkpoint,
    world_size: usize,
    weights: Option<&[u32]>,
    quant: Option<Quant>,
) -> Result<Plan> {
    let plan = plan_for(&ckpt.config, world_size, weights)?;
    if !ckpt.weights.is_gguf() {
        return Ok(plan.with_quant(quant)?);
    }
    if quant.is_some() {
        return Err(Error::Usage(UsageError {
            flag: "--quantize",
            problem: format!(
                "re-quantizes HF safetensors weights; {} is a GGUF file and keeps its own types",
                ckpt.origin
            ),
        }));
    }
    Ok(plan.with_quant(stored_quant(ckpt)?)?)
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

/// Opens a rank's weights from its slice, resident or windowed, and notes
/// which and the expected peak.
pub fn open_weights(
    slice: SliceFile,
    mem: MemoryOpts,
    observer: &dyn Observer,
) -> Result<SliceResident> {
    let blocks: Vec<u64> = slice.layer_blocks().iter().map(|b| b.1).collect();
    let lm_head: u64 = slice
        .manifest()
        .blocks
        .iter()
        .filter(|b| b.kind == crate::split::manifest::BlockKind::LmHead)
        .map(|b| b.len)
        .sum();
    let rank = slice.rank();
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    match choose_window(mem.mode, &blocks, lm_head, available_memory()) {
        None => {
            observer.note(
                rank,
                &format!(
                    "weights resident: {:.1} MiB of layers + {:.1} MiB lm_head",
                    mib(blocks.iter().sum()),
                    mib(lm_head)
                ),
            );
            Ok(SliceResident::load(slice)?)
        }
        Some(w) => {
            let largest = blocks.iter().copied().max().unwrap_or(0);
            let reads = mem.io.reads_for(slice.file_len(), available_memory());
            observer.note(
                rank,
                &format!(
                    "memory window of {w} x {:.1} MiB blocks ({} layers and {:.1} MiB of lm_head streamed, {:.1} MiB on disk); expected weight peak {:.1} MiB{}",
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
                ),
            );
            let opts = WindowOpts { reads };
            Ok(SliceResident::windowed(slice, w, opts)?)
        }
    }
}
