//! The one engine thread (Q1-Q4 in the [module doc](super)): it owns the
//! [`Generator`], takes jobs from a bounded FIFO queue one at a time, sends
//! each job's text back through the job's own channel, and heartbeats the
//! cluster while idle.

use super::stop::StopText;
use crate::engine::{Finish, Flow, GenOptions};
use crate::session::Generator;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender, TrySendError};
use std::time::{Duration, Instant};

/// Longest an idle engine goes without a heartbeat to its workers (Q3:
/// they count rank 0 dead after `--peer-timeout` of silence).
pub const KEEPALIVE_EVERY: Duration = Duration::from_millis(500);

/// One generation asked for by a connection.
pub struct Job {
    pub prompt_ids: Vec<u32>,
    pub opts: GenOptions,
    pub stop: Vec<String>,
    /// Where the text goes; once the receiver is gone the job stops (Q4).
    pub events: Sender<Event>,
}

/// What the engine tells a waiting connection.
#[derive(Debug)]
pub enum Event {
    /// The job left the queue and runs.
    Started,
    /// Text to pass on (stop strings already held back).
    Text(String),
    /// The job ended.
    Done(Result<Done, String>),
}

/// Why a generation ended, in OpenAI's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// End of sequence or a stop string.
    Stop,
    /// `max_tokens` (or the context) reached.
    Length,
    /// The client went away.
    Cancelled,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

/// A finished job's counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Done {
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
    pub completion_tokens: usize,
    pub finish: FinishReason,
}

/// The submitting side of the queue.
#[derive(Clone)]
pub struct Queue(SyncSender<Job>);

impl Queue {
    /// A queue holding at most `depth` waiting jobs, and its receiving end
    /// for [`run`].
    pub fn new(depth: usize) -> (Queue, Receiver<Job>) {
        let (tx, rx) = std::sync::mpsc::sync_channel(depth);
        (Queue(tx), rx)
    }

    /// Queues `job`; `false` when the queue is full or the engine has
    /// stopped (the caller answers 503, Q2).
    pub fn submit(&self, job: Job) -> bool {
        match self.0.try_send(job) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
        }
    }
}

/// What the engine has done, for `/health`.
#[derive(Debug, Default)]
pub struct Stats {
    pub generations: AtomicU64,
    /// Of those, ended because the client went away.
    pub cancelled: AtomicU64,
    /// Tokens the last finished generation produced.
    pub last_completion_tokens: AtomicU64,
}

/// Runs jobs from `jobs` one at a time until every [`Queue`] is dropped;
/// returns the error that ended the cluster (a failed heartbeat).
pub fn run(gen: &mut dyn Generator, jobs: Receiver<Job>, stats: &Stats) -> crate::Result<()> {
    let mut last_beat = Instant::now();
    loop {
        let wait = KEEPALIVE_EVERY.saturating_sub(last_beat.elapsed());
        match jobs.recv_timeout(wait) {
            Ok(job) => {
                let failed = run_job(gen, job, stats);
                // Q3: a generation that failed may have ended a cluster
                // session; the heartbeat tells (and ends the server).
                if failed {
                    gen.keepalive()?;
                }
                last_beat = Instant::now();
            }
            Err(RecvTimeoutError::Timeout) => {
                gen.keepalive()?;
                last_beat = Instant::now();
            }
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        }
    }
}

/// Runs one job; `true` when the generation failed.
fn run_job(gen: &mut dyn Generator, job: Job, stats: &Stats) -> bool {
    // Q4: a client that left while queued costs nothing.
    if job.events.send(Event::Started).is_err() {
        return false;
    }
    let mut stop = StopText::new(job.stop);
    let mut gone = false;
    let events = &job.events;
    let mut on_text = |piece: &str| -> Result<Flow, crate::engine::error::Cause> {
        let (text, hit) = stop.push(piece);
        if !text.is_empty() && events.send(Event::Text(text)).is_err() {
            gone = true;
            return Ok(Flow::Stop);
        }
        Ok(if hit { Flow::Stop } else { Flow::Continue })
    };
    let result = gen.generate(&job.prompt_ids, &job.opts, &mut on_text);
    let result = match result {
        Ok(out) => {
            let tail = stop.finish();
            if !tail.is_empty() && job.events.send(Event::Text(tail)).is_err() {
                gone = true;
            }
            let finish = match (gone, stop.stopped(), out.finish) {
                (true, _, _) => FinishReason::Cancelled,
                (_, true, _) | (_, _, Finish::Eos) => FinishReason::Stop,
                (_, _, Finish::Length) | (_, _, Finish::Stopped) => FinishReason::Length,
            };
            stats.generations.fetch_add(1, Ordering::Relaxed);
            if finish == FinishReason::Cancelled {
                stats.cancelled.fetch_add(1, Ordering::Relaxed);
            }
            let completion_tokens = out.generated_ids.len();
            stats
                .last_completion_tokens
                .store(completion_tokens as u64, Ordering::Relaxed);
            Ok(Done {
                prompt_tokens: out.prompt_ids.len(),
                cached_tokens: out.cached_tokens,
                completion_tokens,
                finish,
            })
        }
        Err(e) => Err(e.chain().join(": ")),
    };
    let failed = result.is_err();
    let _ = job.events.send(Event::Done(result));
    failed
}
