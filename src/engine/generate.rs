//! Generation: prefill the prompt, then sample token by token with a KV cache.

use super::collective::Collective;
use super::error::{Cause, EngineError};
use super::forward::{forward, State, Timing};
use super::par::Par;
use super::sampler::{Sampler, SamplerConfig};
use crate::model::tokenizer::Tokenizer;
use crate::weights::{RankWeights, Resident};
use std::time::{Duration, Instant};

/// Prompt tokens per prefill forward: each weight chunk is read from DRAM
/// (or disk, with a memory window) once per batch and reused from cache
/// for the batch's other tokens; the activations of a batch stay small
/// (64 x (3 dim + 2 MLP + q + 2 kv) floats, 24 MB for a 70B model).
pub const PREFILL_BATCH: usize = 128;

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenOptions {
    /// Tokens to generate at most.
    pub length: usize,
    pub sampler: SamplerConfig,
    /// Token ids that end generation (ignored with `ignore_eos`).
    pub eos_ids: Vec<u32>,
    pub ignore_eos: bool,
    /// Keep the logits of every prompt position (tests, `--logits-out`).
    pub keep_prompt_logits: bool,
}

/// Why a generation ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Finish {
    /// `length` tokens were generated.
    #[default]
    Length,
    /// An end-of-sequence id was sampled (not part of the output).
    Eos,
    /// The text receiver asked to stop ([`Flow::Stop`]): a stop string, or
    /// a client that went away.
    Stopped,
}

/// What a text receiver wants after a piece.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// What a generation produced, and how fast.
#[derive(Clone, Debug, Default)]
pub struct GenOutput {
    pub prompt_ids: Vec<u32>,
    /// Leading prompt tokens whose keys and values were reused from the
    /// previous generation of the same [`Context`] (not computed again).
    pub cached_tokens: usize,
    pub finish: Finish,
    pub generated_ids: Vec<u32>,
    /// The decoded continuation (empty without a tokenizer).
    pub text: String,
    /// Logits at the last prompt position.
    pub last_logits: Vec<f32>,
    /// Logits at every prompt position, when asked for.
    pub prompt_logits: Vec<Vec<f32>>,
    /// Time to the first generated token (prefill + first sample).
    pub ttft: Duration,
    /// Mean time per generated token after the first.
    pub per_token: Duration,
    /// Time spent waiting on other ranks, over the decode steps.
    pub comm_per_token: Duration,
    /// Forward passes run: prompt batches (or positions) and generated
    /// tokens but the last; each streams every weight once.
    pub forwards: u64,
}

impl GenOutput {
    pub fn tokens_per_s(&self) -> f64 {
        let s = self.per_token.as_secs_f64();
        if s > 0.0 {
            1.0 / s
        } else {
            0.0
        }
    }
}

/// Receives each newly decoded piece of text and says whether to go on
/// ([`Flow::Stop`] ends the generation with [`Finish::Stopped`]); an error
/// (stdout closed or full) stops it and is returned by [`generate`].
pub type OnText<'a> = dyn FnMut(&str) -> Result<Flow, Cause> + 'a;

/// What rank 0 keeps between the generations of a conversation: the KV
/// cache (inside the forward's state) and the ids whose keys and values it
/// holds, by position. A generation whose prompt starts with some of those
/// ids computes only the rest ([`GenOutput::cached_tokens`]); the workers
/// keep their own KV caches in step, since every step names its positions.
#[derive(Default)]
pub struct Context {
    state: Option<State>,
    ids: Vec<u32>,
}

impl Context {
    /// Forgets the cached positions (the next prompt is computed whole).
    pub fn clear(&mut self) {
        self.ids.clear();
    }

    /// Ids whose keys and values the cache holds.
    pub fn cached_ids(&self) -> &[u32] {
        &self.ids
    }
}

/// Errs when `prompt` tokens plus `length` to generate run past a context
/// of `limit` positions: the same answer at every world size, before any
/// weight is read (rank 0 checks; workers follow rank 0's steps).
pub fn check_context(prompt: usize, length: usize, limit: usize) -> Result<(), EngineError> {
    if prompt.saturating_add(length) > limit {
        return Err(EngineError::Context {
            prompt,
            length,
            limit,
        });
    }
    Ok(())
}

/// The parts of a rank that a generation runs on.
pub struct Rank<'a> {
    pub res: &'a Resident,
    pub weights: &'a mut dyn RankWeights,
    pub comm: &'a mut dyn Collective,
    pub par: Par,
}

/// Generates from `prompt_ids`, calling `on_text` with each newly decoded piece.
pub fn generate(
    rank: &mut Rank<'_>,
    tokenizer: Option<&Tokenizer>,
    prompt_ids: &[u32],
    opts: &GenOptions,
    on_text: &mut OnText<'_>,
) -> Result<GenOutput, EngineError> {
    let mut ctx = Context::default();
    generate_in(rank, &mut ctx, tokenizer, prompt_ids, opts, on_text)
}

/// [`generate`] in a conversation: the longest common prefix of
/// `prompt_ids` and the ids `ctx` holds is not computed again (at least
/// the last prompt id is, for its logits; all of them with
/// `keep_prompt_logits`). On success `ctx` holds the prompt and the
/// generated ids fed back; on an error it is cleared.
pub fn generate_in(
    rank: &mut Rank<'_>,
    ctx: &mut Context,
    tokenizer: Option<&Tokenizer>,
    prompt_ids: &[u32],
    opts: &GenOptions,
    on_text: &mut OnText<'_>,
) -> Result<GenOutput, EngineError> {
    let reuse = match opts.keep_prompt_logits {
        true => 0,
        false => common_prefix(&ctx.ids, prompt_ids).min(prompt_ids.len().saturating_sub(1)),
    };
    ctx.ids.truncate(reuse);
    let state = ctx.state.take();
    let result = run(rank, state, reuse, tokenizer, prompt_ids, opts, on_text);
    match result {
        Ok((out, state)) => {
            ctx.ids.clear();
            ctx.ids.extend_from_slice(prompt_ids);
            let fed = out.generated_ids.len().saturating_sub(1);
            ctx.ids.extend_from_slice(&out.generated_ids[..fed]);
            ctx.state = Some(state);
            Ok(out)
        }
        Err(e) => {
            ctx.ids.clear();
            Err(e)
        }
    }
}

/// Length of the common prefix of `a` and `b`.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The generation proper: prefill `prompt_ids[reuse..]` at positions
/// `reuse..` on `state` (a new one when `None`), then decode.
fn run(
    rank: &mut Rank<'_>,
    state: Option<State>,
    reuse: usize,
    tokenizer: Option<&Tokenizer>,
    prompt_ids: &[u32],
    opts: &GenOptions,
    on_text: &mut OnText<'_>,
) -> Result<(GenOutput, State), EngineError> {
    if prompt_ids.is_empty() {
        return Err(EngineError::EmptyPrompt);
    }
    let vocab = rank.res.dims.vocab_total;
    if let Some(&id) = prompt_ids.iter().find(|&&id| id as usize >= vocab) {
        return Err(EngineError::TokenOutOfVocab { id, vocab });
    }
    let dims = &rank.res.dims;
    check_context(prompt_ids.len(), opts.length, dims.max_seq_len)?;
    // The last generated token is not fed back: prompt + length - 1 positions.
    let seq_len = (prompt_ids.len() + opts.length).min(dims.max_seq_len);
    let mut state = match state {
        Some(s) => s,
        None => State::new(dims, seq_len)?,
    };
    let mut sampler = Sampler::new(opts.sampler);
    let mut stream = tokenizer.map(|t| t.stream(prompt_ids));
    let mut out = GenOutput {
        prompt_ids: prompt_ids.to_vec(),
        cached_tokens: reuse,
        ..GenOutput::default()
    };
    let todo = prompt_ids.get(reuse..).unwrap_or(&[]);
    let mut timing = Timing::default();
    let start = Instant::now();

    if rank.comm.batches() && !opts.keep_prompt_logits {
        // Prefill in batches: every weight is read once per batch.
        for (c, ids) in todo.chunks(PREFILL_BATCH).enumerate() {
            let last = (c + 1) * PREFILL_BATCH >= todo.len();
            step(
                rank,
                &mut state,
                ids,
                reuse + c * PREFILL_BATCH,
                last,
                &mut timing,
            )?;
            out.forwards += 1;
        }
    } else {
        for (pos, &id) in todo.iter().enumerate().map(|(i, id)| (reuse + i, id)) {
            let last = pos + 1 == prompt_ids.len();
            let want = last || opts.keep_prompt_logits;
            step(rank, &mut state, &[id], pos, want, &mut timing)?;
            out.forwards += 1;
            if want && opts.keep_prompt_logits {
                out.prompt_logits.push(state.logits.clone());
            }
        }
    }
    out.last_logits = state.logits.clone();

    let mut decode_start = start;
    let mut comm_at_decode = Duration::ZERO;
    for (i, pos) in (prompt_ids.len()..).enumerate().take(opts.length) {
        let next = sampler.sample(&state.logits);
        if i == 0 {
            out.ttft = start.elapsed();
            decode_start = Instant::now();
            comm_at_decode = timing.comm;
        }
        if !opts.ignore_eos && opts.eos_ids.contains(&next) {
            out.finish = Finish::Eos;
            break;
        }
        out.generated_ids.push(next);
        if let Some(s) = stream.as_mut() {
            let piece = s.push(next)?;
            if !piece.is_empty() && on_text(&piece).map_err(EngineError::Output)? == Flow::Stop {
                out.finish = Finish::Stopped;
                break;
            }
        }
        if i + 1 == opts.length {
            break;
        }
        step(rank, &mut state, &[next], pos, true, &mut timing)?;
        out.forwards += 1;
    }
    let steps = out.generated_ids.len().saturating_sub(1) as u32;
    if steps > 0 {
        out.per_token = decode_start.elapsed() / steps;
        out.comm_per_token = (timing.comm - comm_at_decode) / steps;
    }
    if let Some(mut s) = stream {
        let tail = s.flush()?;
        if !tail.is_empty() && out.finish != Finish::Stopped {
            on_text(&tail).map_err(EngineError::Output)?;
        }
        out.text = s.text().to_string();
    }
    Ok((out, state))
}

/// A worker's generation: the forward of every step rank 0 sends, until
/// rank 0 ends the session. Returns the forwards run.
pub fn follow(rank: &mut Rank<'_>) -> Result<u64, EngineError> {
    let mut state = State::new(&rank.res.dims, PREFILL_BATCH)?;
    let mut timing = Timing::default();
    let mut forwards = 0;
    while let Some(s) = rank.comm.next_step().map_err(EngineError::Comm)? {
        forward(
            rank.res,
            rank.weights,
            rank.comm,
            &rank.par,
            &mut state,
            &s.tokens,
            s.pos,
            s.want_logits,
            &mut timing,
        )?;
        forwards += 1;
    }
    Ok(forwards)
}

/// One forward for `ids` at positions `pos..pos + ids.len()` (several ids
/// only when the collective [batches](Collective::batches)).
fn step(
    rank: &mut Rank<'_>,
    s: &mut State,
    ids: &[u32],
    pos: usize,
    want: bool,
    timing: &mut Timing,
) -> Result<(), EngineError> {
    rank.comm
        .begin_step(ids, pos, want)
        .map_err(EngineError::Comm)?;
    forward(
        rank.res,
        rank.weights,
        rank.comm,
        &rank.par,
        s,
        ids,
        pos,
        want,
        timing,
    )?;
    Ok(())
}

/// Peak resident set size of this process (VmHWM), in bytes, where known
/// (read by [`crate::sys`]).
pub use crate::sys::peak_rss_bytes;
