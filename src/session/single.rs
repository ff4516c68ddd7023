//! One rank alone: the model read in place from its mmapped safetensors,
//! or, when the weights are windowed or large, from its slice file (cut
//! once, cached). No network; the collective is [`Solo`].

use super::{open_weights, Generator, HubReport};
use crate::engine::{generate_in, Context, GenOptions, GenOutput, OnText, Par, Rank, Solo};
use crate::error::Result;
use crate::model::checkpoint::Checkpoint;
use crate::model::names::{layer_matrix_shapes, layer_name, lm_head_name};
use crate::model::safetensors::SafeTensors;
use crate::model::tokenizer::Tokenizer;
use crate::progress::Observer;
use crate::split::cache::ensure_slices;
use crate::split::plan::Plan;
use crate::split::plan::RankSlice;
use crate::split::reader::{Expect, SliceFile};
use crate::sys::available_memory;
use crate::weights::in_place::{resident, InPlace};
use crate::weights::sliced::{SliceResident, SliceWeights};
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

/// A single rank's weights: in place from the mmapped safetensors, or
/// from its slice (resident or windowed).
enum SoloWeights<'a> {
    InPlace(InPlace<'a>),
    Slice(Box<SliceResident>),
}

/// One rank alone, loaded: generates many times, keeping the KV cache of
/// the last generation for the next prompt's common prefix.
pub struct Single<'a> {
    res: Resident,
    weights: SoloWeights<'a>,
    par: Par,
    ctx: Context,
    tokenizer: Option<&'a Tokenizer>,
}

impl<'a> Single<'a> {
    /// Loads the weights, in place or from the slice file as their size
    /// and the memory mode decide (always from the slice file for
    /// quantized or GGUF weights).
    pub fn start(setup: &SingleSetup<'a>) -> Result<Single<'a>> {
        let cfg = &setup.ckpt.config;
        let (res, weights) = match setup.ckpt.weights.safetensors() {
            Some(st)
                if setup.plan.quant.is_none()
                    && !from_slice(setup.ckpt, st, setup.memory.mode)? =>
            {
                let res = resident(cfg, st, &RankSlice::whole(cfg))?;
                (res, SoloWeights::InPlace(InPlace::new(cfg, st)?))
            }
            _ => {
                let (res, w) = from_slice_file(setup)?;
                (res, SoloWeights::Slice(Box::new(w)))
            }
        };
        Ok(Single {
            res,
            weights,
            par: Par::new(setup.threads, Backend::detect()),
            ctx: Context::default(),
            tokenizer: setup.ckpt.tokenizer.as_ref(),
        })
    }

    /// Traffic and timing of `out` (the window's, when windowed).
    pub fn report(&self, out: GenOutput) -> HubReport {
        let window = match &self.weights {
            SoloWeights::Slice(w) => w.window_stats(),
            SoloWeights::InPlace(_) => None,
        };
        HubReport {
            steps: out.forwards,
            out,
            window,
            ..HubReport::default()
        }
    }
}

impl Generator for Single<'_> {
    fn generate(
        &mut self,
        prompt_ids: &[u32],
        opts: &GenOptions,
        on_text: &mut OnText<'_>,
    ) -> Result<GenOutput> {
        let weights: &mut dyn RankWeights = match &mut self.weights {
            SoloWeights::InPlace(w) => w,
            SoloWeights::Slice(w) => w.as_mut(),
        };
        let mut rank = Rank {
            res: &self.res,
            weights,
            comm: &mut Solo,
            par: self.par.clone(),
        };
        Ok(generate_in(
            &mut rank,
            &mut self.ctx,
            self.tokenizer,
            prompt_ids,
            opts,
            on_text,
        )?)
    }

    fn finish(self: Box<Self>, out: GenOutput) -> HubReport {
        self.report(out)
    }
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

/// One rank's slice file, cut or reused: resident in anonymous memory,
/// or windowed.
fn from_slice_file(setup: &SingleSetup<'_>) -> Result<(Resident, SliceResident)> {
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
    let weights = open_weights(slice, setup.memory, setup.observer)?;
    Ok((res, weights))
}
