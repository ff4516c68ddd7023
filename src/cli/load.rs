//! A model made ready to generate: the checkpoint and its split plan,
//! then one rank alone or rank 0 of a cluster (local or remote workers)
//! as a [`Generator`]. A one-shot run, `serve` and `chat` all start here.

use super::{cores, memory_opts, net_opts, parse_weights, secret, ModelArgs};
use crate::error::Result;
use crate::model::checkpoint::Checkpoint;
use crate::session::hub::Hub;
use crate::session::single::{Single, SingleSetup};
use crate::session::{default_cache_dir, plan_for_model, Generator, HubSetup};
use crate::split::plan::Plan;
use crate::ui::Console;
use std::path::PathBuf;
use std::sync::Arc;

/// The model of `--model` with its plan over `--world-size` ranks and
/// where and how rank 0 runs it.
pub(super) struct Loaded {
    pub ckpt: Checkpoint,
    pub plan: Plan,
    /// Compute threads per rank.
    pub threads: usize,
    pub observer: Arc<Console>,
    cache_dir: PathBuf,
    /// Where rank 0 listens for workers.
    listen: String,
    /// Workers are spawned on this machine (no `--rank`).
    local: bool,
}

impl Loaded {
    /// Opens `--model` and plans its split; nothing is cut or loaded yet.
    pub fn open(m: &ModelArgs) -> Result<Loaded> {
        let ckpt = Checkpoint::open(m.model.as_deref())?;
        let weights = m
            .split_weights
            .as_deref()
            .map(|s| parse_weights(s, m.world_size))
            .transpose()?;
        let plan = plan_for_model(&ckpt, m.world_size, weights.as_deref(), m.quantize)?;
        let local = m.rank.is_none();
        // Local mode shares the cores among the ranks.
        let cores = cores();
        let threads = m.threads.unwrap_or(if local {
            (cores / m.world_size).max(1)
        } else {
            cores
        });
        let listen = match local {
            true => "127.0.0.1:0".to_string(),
            false => m.master.clone().unwrap_or_default(),
        };
        Ok(Loaded {
            ckpt,
            plan,
            threads,
            observer: Arc::new(Console { quiet: m.quiet }),
            cache_dir: m.cache_dir.clone().unwrap_or_else(default_cache_dir),
            listen,
            local,
        })
    }

    /// Loads the weights (cutting or reusing the slices) and, with more
    /// than one rank, spawns or waits for the workers.
    pub fn start<'a>(&'a self, m: &ModelArgs) -> Result<Box<dyn Generator + 'a>> {
        if self.plan.world_size == 1 {
            let setup = SingleSetup {
                ckpt: &self.ckpt,
                plan: &self.plan,
                cache_dir: &self.cache_dir,
                memory: memory_opts(m),
                threads: self.threads,
                observer: &*self.observer,
            };
            return Ok(Box::new(Single::start(&setup)?));
        }
        let setup = HubSetup {
            ckpt: &self.ckpt,
            plan: &self.plan,
            cache_dir: &self.cache_dir,
            listen: &self.listen,
            spawn_local: self.local.then_some(self.threads),
            threads: self.threads,
            memory: memory_opts(m),
            net: net_opts(m),
            quiet: m.quiet,
            observer: self.observer.clone(),
            secret: secret(m)?,
            secret_file: m.secret_file.clone(),
        };
        Ok(Box::new(Hub::start(&setup)?))
    }
}
