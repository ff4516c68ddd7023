//! One rank alone: the model read in place from its mmapped safetensors,
//! or, when the weights are windowed or large, from its slice file (cut
//! once, cached). No network; the collective is [`Solo`].

use super::{open_weights, HubReport};
use crate::engine::{generate, GenOptions, GenOutput, OnText, Par, Rank, Solo};
use crate::error::Result;
use crate::model::checkpoint::Checkpoint;
use crate::model::names::{layer_matrix_shapes, layer_name, lm_head_name};
use crate::model::safetensors::SafeTensors;
use crate::progress::Observer;
use crate::split::cache::ensure_slices;
use crate::split::plan::Plan;
use crate::split::plan::RankSlice;
use crate::split::reader::{Expect, SliceFile};
use crate::sys::available_memory;
use crate::weights::in_place::{resident, InPlace};
use crate::weights::sliced::SliceWeights;
use crate::weights::{RankWeights, Resident};
use crate::window::policy::{choose_window, MemoryMode, MemoryOpts};
use std::path::Path;
use tpi_kernels::Backend;

/// Layer matrices from this size on are copied from the slice file into
/// anonymous, huge-page-advised memory rather than read from the mmapped
/// safetensors: 4 KiB file pages cost TLB misses on every streamed GEMV
/// (measured 14% slower decode on the 1.1B model).
const SLICE_FROM_BYTES: u64 = 256 << 20;

/// Everything a single rank needs besides generation options.
pub struct SingleSetup<'a> {
    pub ckpt: &'a Checkpoint,
    /// The one-rank plan (the slice file's identity).
    pub plan: &'a Plan,
    pub cache_dir: &'a Path,
    pub memory: MemoryOpts,
    pub threads: usize,
    pub observer: &'a dyn Observer,
}

/// Generates on one rank, in place or from the slice file as the weights'
/// size and the memory mode decide (always from the slice file with
/// `--quantize`).
pub fn run_single(
    setup: &SingleSetup<'_>,
    prompt_ids: &[u32],
    opts: &GenOptions,
    on_text: &mut OnText<'_>,
) -> Result<HubReport> {
    // Quantized weights exist only in slice files.
    let st = match setup.ckpt.weights.safetensors() {
        Some(st)
            if setup.plan.quant.is_none() && !from_slice(setup.ckpt, st, setup.memory.mode)? =>
        {
            st
        }
        // Quantized or GGUF weights exist only in slice files.
        _ => return run_from_slice(setup, prompt_ids, opts, on_text),
    };
    let cfg = &setup.ckpt.config;
    let res = resident(cfg, st, &RankSlice::whole(cfg))?;
    let mut weights = InPlace::new(cfg, st)?;
    let out = solo(setup, &res, &mut weights, prompt_ids, opts, on_text)?;
    Ok(HubReport {
        out,
        ..HubReport::default()
    })
}

/// Whether a single rank runs from its slice file (windowed, or large)
/// instead of the mmapped safetensors in place.
fn from_slice(ckpt: &Checkpoint, st: &SafeTensors, mode: MemoryMode) -> Result<bool> {
    let cfg = &ckpt.config;
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let mut b = 0u64;
        for (leaf, _, _) in layer_matrix_shapes(cfg) {
            b += st.tensor(&layer_name(l, leaf))?.len as u64;
        }
        blocks.push(b);
    }
    let lm_head = st.tensor(lm_head_name(cfg, st))?.len as u64;
    let windowed = choose_window(mode, &blocks, lm_head, available_memory()).is_some();
    Ok(windowed || blocks.iter().sum::<u64>() >= SLICE_FROM_BYTES)
}

/// One rank from its slice file: resident in anonymous memory, or windowed.
fn run_from_slice(
    setup: &SingleSetup<'_>,
    prompt_ids: &[u32],
    opts: &GenOptions,
    on_text: &mut OnText<'_>,
) -> Result<HubReport> {
    let io = setup.memory.io;
    let mut progress = setup.observer.progress(0);
    let paths = ensure_slices(
        setup.ckpt,
        setup.plan,
        setup.cache_dir,
        |bytes| io.direct_for(bytes, available_memory()),
        &mut *progress,
    )?;
    let slice = SliceFile::open(
        &paths[0],
        Expect {
            rank: Some(0),
            world_size: Some(1),
            ..Expect::default()
        },
    )?;
    let res = slice.resident()?;
    let mut weights = open_weights(slice, setup.memory, setup.observer)?;
    let out = solo(setup, &res, &mut weights, prompt_ids, opts, on_text)?;
    let steps = out.forwards;
    Ok(HubReport {
        out,
        steps,
        window: weights.window_stats(),
        ..HubReport::default()
    })
}

/// Generates on `weights` with nothing to exchange.
fn solo(
    setup: &SingleSetup<'_>,
    res: &Resident,
    weights: &mut dyn RankWeights,
    prompt_ids: &[u32],
    opts: &GenOptions,
    on_text: &mut OnText<'_>,
) -> Result<GenOutput> {
    let mut rank = Rank {
        res,
        weights,
        comm: &mut Solo,
        par: Par::new(setup.threads, Backend::detect()),
    };
    let tokenizer = setup.ckpt.tokenizer.as_ref();
    Ok(generate(&mut rank, tokenizer, prompt_ids, opts, on_text)?)
}
