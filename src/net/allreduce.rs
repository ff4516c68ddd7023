//! The star allreduce and logits gather: both sides of [`Collective`] over
//! TCP ("Ready" in the spec's state machine).
//!
//! Data flow per step s: rank 0's [`HubComm`] sends Step{pos, ids, flags}
//! to every worker, and each [`WorkerComm`] returns it from `next_command`
//! as a [`Command`] (1 to `PREFILL_BATCH` ids, else the session ends). Per
//! allreduce k = 2*layer + {0 attention, 1 mlp}, every worker sends its
//! Partial; rank 0 adds them to its own in rank order (the same bits on
//! every run) and sends the Reduced sum back. With WANT_LOGITS each worker
//! sends the Logits of its vocab range, which rank 0 places by range.
//! Lengths come from the plan (`dim * n_tokens`, vocab range * n_tokens),
//! never from the wire (spec F10).

use super::error::NetError;
use super::frame::Kind;
use super::link::Link;
use super::msg::{Reject, Step, STEP_PREFILL, STEP_WANT_LOGITS};
use crate::engine::PREFILL_BATCH;
use crate::engine::{Collective, CommError, Op};
use std::ops::Range;
use std::time::Duration;

/// Star allreduce and logits gather, hub side.
pub struct HubComm {
    pub links: Vec<Link>,
    /// vocab rows of each worker (index = rank - 1).
    vocab: Vec<Range<usize>>,
    /// my vocab rows.
    my_vocab: Range<usize>,
    step: u32,
    scratch: Vec<f32>,
}

impl HubComm {
    /// `spin`: the links' waiting strategy for the session
    /// ([`Link::set_spin`]).
    pub fn new(
        mut links: Vec<Link>,
        vocab_ranges: Vec<Range<usize>>,
        spin: Duration,
    ) -> Result<HubComm, NetError> {
        for l in &mut links {
            l.set_spin(spin)?;
        }
        let my_vocab = vocab_ranges.first().cloned().unwrap_or(0..0);
        Ok(HubComm {
            links,
            vocab: vocab_ranges.into_iter().skip(1).collect(),
            my_vocab,
            step: 0,
            scratch: Vec::new(),
        })
    }

    pub fn bytes(&self) -> (u64, u64) {
        self.links
            .iter()
            .fold((0, 0), |(s, r), l| (s + l.bytes_sent, r + l.bytes_received))
    }

    /// Tells every worker the session is over.
    pub fn stop(&mut self) {
        for l in &mut self.links {
            let _ = l.send(Kind::Stop, self.step, crate::net::frame::FLAG_STOP, &[]);
        }
    }

    /// Tells every worker to stop because of `reason`.
    pub fn abort(&mut self, reason: &str) {
        let payload = Reject::truncated(reason).encode().unwrap_or_default();
        for l in &mut self.links {
            let _ = l.send(Kind::Error, self.step, 0, &payload);
        }
    }
}

impl Collective for HubComm {
    fn begin_step(
        &mut self,
        tokens: &[u32],
        pos: usize,
        want_logits: bool,
    ) -> Result<(), CommError> {
        self.step = self.step.wrapping_add(1);
        let mut flags = if want_logits { STEP_WANT_LOGITS } else { 0 };
        if tokens.len() > 1 {
            flags |= STEP_PREFILL;
        }
        let step = Step {
            pos: pos as u32,
            ids: tokens.to_vec(),
            flags,
        };
        let payload = step.encode().map_err(|e| NetError::Message {
            what: "step",
            source: e,
        })?;
        for l in &mut self.links {
            l.send(Kind::Step, self.step, 0, &payload)?;
        }
        Ok(())
    }

    fn allreduce_sum(&mut self, x: &mut [f32], layer: usize, op: Op) -> Result<(), CommError> {
        let seq = op.seq(layer);
        self.scratch.resize(x.len(), 0.0);
        // Sum in rank order, so every run (and every rank) gets the same bits.
        for l in &mut self.links {
            l.recv_f32s(Kind::Partial, self.step, seq, &mut self.scratch)?;
            for (a, b) in x.iter_mut().zip(&self.scratch) {
                *a += b;
            }
        }
        for l in &mut self.links {
            l.send_f32s(Kind::Reduced, self.step, seq, x)?;
        }
        Ok(())
    }

    fn gather_logits(&mut self, mine: &[f32], full: &mut [f32]) -> Result<bool, CommError> {
        full[self.my_vocab.clone()].copy_from_slice(mine);
        for (l, v) in self.links.iter_mut().zip(&self.vocab) {
            l.recv_f32s(Kind::Logits, self.step, 0, &mut full[v.clone()])?;
        }
        Ok(true)
    }

    /// Workers run every token of a `Step` (up to `PREFILL_BATCH`) in one
    /// forward, so the prompt is prefilled in batches across the cluster.
    fn batches(&self) -> bool {
        true
    }
}

/// What the hub asks of a worker next.
pub enum Command {
    Step {
        tokens: Vec<u32>,
        pos: usize,
        want_logits: bool,
    },
    Stop,
}

/// Star allreduce, worker side.
pub struct WorkerComm {
    pub link: Link,
    step: u32,
    /// How long a worker waits for the next step (rank 0 may be sampling,
    /// or a user may be typing): the session's idle allowance.
    pub idle_timeout: Duration,
    peer_timeout: Duration,
}

impl WorkerComm {
    /// `first_timeout` bounds the wait for the first step (rank 0 may still
    /// be waiting for other workers; it sends heartbeats meanwhile).
    /// `spin`: the link's waiting strategy for the session
    /// ([`Link::set_spin`]).
    pub fn new(
        mut link: Link,
        peer_timeout: Duration,
        spin: Duration,
    ) -> Result<WorkerComm, NetError> {
        link.set_spin(spin)?;
        Ok(WorkerComm {
            link,
            step: 0,
            idle_timeout: peer_timeout,
            peer_timeout,
        })
    }

    /// Tells rank 0 why this worker stops.
    pub fn fail(&mut self, reason: &str) {
        self.link.fail(self.step, reason);
    }

    /// Waits for rank 0's next command.
    pub fn next_command(&mut self) -> Result<Command, NetError> {
        self.link.set_timeout(self.idle_timeout)?;
        let (h, payload) = loop {
            let (h, payload) = self.link.recv(self.step, "waiting for the next step")?;
            if h.kind != Kind::Heartbeat {
                break (h, payload);
            }
        };
        self.link.set_timeout(self.peer_timeout)?;
        let bad = |what: String, l: &Link| NetError::Protocol {
            peer: l.peer.to_string(),
            rank: Some(0),
            what,
        };
        match h.kind {
            Kind::Step => {
                let s = Step::decode(&payload)
                    .map_err(|e| bad(format!("bad step: {e}"), &self.link))?;
                // The batch bounds what the forward allocates per token.
                if s.ids.is_empty() || s.ids.len() > PREFILL_BATCH {
                    return Err(bad(
                        format!(
                            "step with {} ids; a step runs 1 to {PREFILL_BATCH}",
                            s.ids.len()
                        ),
                        &self.link,
                    ));
                }
                self.step = h.step;
                Ok(Command::Step {
                    tokens: s.ids,
                    pos: s.pos as usize,
                    want_logits: s.flags & STEP_WANT_LOGITS != 0,
                })
            }
            Kind::Stop => Ok(Command::Stop),
            Kind::Error => Err(self.link.peer_failed("waiting for the next step", &payload)),
            k => Err(bad(format!("expected Step or Stop, got {k:?}"), &self.link)),
        }
    }
}

impl Collective for WorkerComm {
    fn next_step(&mut self) -> Result<Option<crate::engine::Step>, CommError> {
        Ok(match self.next_command()? {
            Command::Stop => None,
            Command::Step {
                tokens,
                pos,
                want_logits,
            } => Some(crate::engine::Step {
                tokens,
                pos,
                want_logits,
            }),
        })
    }

    fn allreduce_sum(&mut self, x: &mut [f32], layer: usize, op: Op) -> Result<(), CommError> {
        let seq = op.seq(layer);
        self.link.send_f32s(Kind::Partial, self.step, seq, x)?;
        self.link.recv_f32s(Kind::Reduced, self.step, seq, x)?;
        Ok(())
    }

    fn gather_logits(&mut self, mine: &[f32], _full: &mut [f32]) -> Result<bool, CommError> {
        self.link.send_f32s(Kind::Logits, self.step, 0, mine)?;
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::link::tests::loopback;

    /// A hub link and a worker over loopback.
    fn pair() -> (Link, WorkerComm) {
        let (hub, worker) = loopback();
        let t = Duration::from_secs(5);
        let comm = WorkerComm::new(worker, t, Duration::ZERO).expect("worker comm");
        (hub, comm)
    }

    fn step_payload(ids: Vec<u32>) -> Vec<u8> {
        let step = Step {
            pos: 3,
            ids,
            flags: STEP_PREFILL,
        };
        step.encode().expect("encode")
    }

    #[test]
    fn worker_runs_steps_of_one_to_prefill_batch_ids() {
        let (mut hub, mut worker) = pair();
        for n in [1, 2, PREFILL_BATCH] {
            let ids: Vec<u32> = (0..n as u32).collect();
            hub.send(Kind::Step, n as u32, 0, &step_payload(ids.clone()))
                .expect("send");
            match worker.next_command().expect("command") {
                Command::Step {
                    tokens,
                    pos,
                    want_logits,
                } => {
                    assert_eq!((tokens, pos, want_logits), (ids, 3, false));
                }
                Command::Stop => panic!("expected a step"),
            }
        }
    }

    #[test]
    fn worker_refuses_empty_and_oversized_steps() {
        for n in [0, PREFILL_BATCH + 1] {
            let (mut hub, mut worker) = pair();
            let ids: Vec<u32> = (0..n as u32).collect();
            hub.send(Kind::Step, 1, 0, &step_payload(ids))
                .expect("send");
            let err = worker.next_command().err().expect("refused").to_string();
            assert!(
                err.contains(&format!(
                    "step with {n} ids; a step runs 1 to {PREFILL_BATCH}"
                )),
                "{err}"
            );
        }
    }
}
