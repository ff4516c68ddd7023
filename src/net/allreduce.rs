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
//!
//! Partial and Reduced travel in the wire dtype agreed at join (spec W1,
//! W7): rank 0 decodes each Partial to f32, sums in f32 in rank order,
//! encodes the sum once, sends those bytes to every worker and keeps their
//! decoded values itself, so every rank continues with the same bits. With
//! f32 nothing is encoded. Values a q8_0 wire cannot carry stop the rank
//! that holds them with the engine's non-finite error (spec W6).

use super::error::NetError;
use super::frame::Kind;
use super::link::{describe_message, Link};
use super::msg::{Reject, Step, STEP_PREFILL, STEP_WANT_LOGITS};
use super::wire::{decode, encode, WireDtype, WireError};
use crate::engine::PREFILL_BATCH;
use crate::engine::{Collective, CommError, EngineError, Op};
use std::ops::Range;
use std::time::Duration;

/// Where the values of an allreduce message sit: its step's first
/// position and token count, so a value index names a position.
#[derive(Clone, Copy, Debug, Default)]
struct At {
    step: u32,
    pos: usize,
    n_tokens: usize,
}

impl At {
    /// The error for values of message `seq` (`kind`, `len` values) that
    /// the wire dtype cannot carry (spec W6): a NaN or infinity is the
    /// engine's non-finite error at its position, as the f32 wire would
    /// end; a too-large value names the message.
    fn unsendable(
        &self,
        e: WireError,
        kind: Kind,
        seq: u32,
        len: usize,
        wire: WireDtype,
    ) -> CommError {
        let (layer, op) = Op::of_seq(seq);
        match e {
            WireError::NonFinite { index } => Box::new(EngineError::NonFinite {
                stage: format!(
                    "the output of layer {layer} ({op} partial sum, stopped before the {wire} wire)"
                ),
                pos: self.pos + index / (len / self.n_tokens.max(1)).max(1),
            }),
            source => Box::new(NetError::Encode {
                step: self.step,
                what: format!("{} ({wire})", describe_message(kind, seq)),
                source,
            }),
        }
    }
}

/// Bytes through one worker's socket during the session (after the join
/// and the slice transfer), as rank 0 counted them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkBytes {
    pub rank: usize,
    /// Rank 0 -> this worker.
    pub sent: u64,
    /// This worker -> rank 0.
    pub received: u64,
}

/// Star allreduce and logits gather, hub side.
pub struct HubComm {
    pub links: Vec<Link>,
    /// vocab rows of each worker (index = rank - 1).
    vocab: Vec<Range<usize>>,
    /// my vocab rows.
    my_vocab: Range<usize>,
    at: At,
    /// One decoded Partial: [dim * n_tokens].
    scratch: Vec<f32>,
    /// Allreduce payload type agreed at join (spec W1).
    wire: WireDtype,
    /// The encoded sum, the same bytes for every worker (spec W7).
    encoded: Vec<u8>,
    /// Each link's (sent, received) when the session began.
    base: Vec<(u64, u64)>,
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
        // The join gave every link the same wire dtype (rank 0's).
        let wire = links.first().map_or(WireDtype::F32, Link::wire);
        let base = links
            .iter()
            .map(|l| (l.bytes_sent, l.bytes_received))
            .collect();
        Ok(HubComm {
            links,
            vocab: vocab_ranges.into_iter().skip(1).collect(),
            my_vocab,
            at: At::default(),
            scratch: Vec::new(),
            wire,
            encoded: Vec::new(),
            base,
        })
    }

    /// The session's allreduce payload type.
    pub fn wire(&self) -> WireDtype {
        self.wire
    }

    /// Bytes sent and received over all links since the session began.
    pub fn bytes(&self) -> (u64, u64) {
        self.link_bytes()
            .iter()
            .fold((0, 0), |(s, r), l| (s + l.sent, r + l.received))
    }

    /// Bytes through each worker's socket since the session began (the
    /// join and slice transfer not counted).
    pub fn link_bytes(&self) -> Vec<LinkBytes> {
        self.links
            .iter()
            .zip(&self.base)
            .map(|(l, (s, r))| LinkBytes {
                rank: l.rank,
                sent: l.bytes_sent - s,
                received: l.bytes_received - r,
            })
            .collect()
    }

    /// Tells every worker that rank 0 is alive while no step runs (a
    /// server between requests): workers wait for the next step with their
    /// peer deadline and skip heartbeats.
    pub fn heartbeat(&mut self) -> Result<(), NetError> {
        for l in &mut self.links {
            l.send(Kind::Heartbeat, self.at.step, 0, &[])?;
        }
        Ok(())
    }

    /// Tells every worker the session is over.
    pub fn stop(&mut self) {
        for l in &mut self.links {
            let _ = l.send(Kind::Stop, self.at.step, crate::net::frame::FLAG_STOP, &[]);
        }
    }

    /// Tells every worker to stop because of `reason`.
    pub fn abort(&mut self, reason: &str) {
        let payload = Reject::truncated(reason).encode().unwrap_or_default();
        for l in &mut self.links {
            let _ = l.send(Kind::Error, self.at.step, 0, &payload);
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
        self.at = At {
            step: self.at.step.wrapping_add(1),
            pos,
            n_tokens: tokens.len(),
        };
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
            l.send(Kind::Step, self.at.step, 0, &payload)?;
        }
        Ok(())
    }

    fn allreduce_sum(&mut self, x: &mut [f32], layer: usize, op: Op) -> Result<(), CommError> {
        let (seq, step, wire) = (op.seq(layer), self.at.step, self.wire);
        // Spec W6: rank 0's own partial, which q8_0 could not carry in the
        // sum, stops it before it waits on anyone.
        if wire == WireDtype::Q8_0 {
            if let Some(index) = x.iter().position(|v| !v.is_finite()) {
                let e = WireError::NonFinite { index };
                return Err(self.at.unsendable(e, Kind::Partial, seq, x.len(), wire));
            }
        }
        self.scratch.resize(x.len(), 0.0);
        // Sum in rank order, so every run (and every rank) gets the same bits.
        for l in &mut self.links {
            l.recv_wire(Kind::Partial, step, seq, &mut self.scratch)?;
            for (a, b) in x.iter_mut().zip(&self.scratch) {
                *a += b;
            }
        }
        if wire == WireDtype::F32 {
            for l in &mut self.links {
                l.send_f32s(Kind::Reduced, step, seq, x)?;
            }
            return Ok(());
        }
        // Spec W7: one encoding for every worker; rank 0 keeps its values.
        encode(wire, x, &mut self.encoded)
            .map_err(|e| self.at.unsendable(e, Kind::Reduced, seq, x.len(), wire))?;
        for l in &mut self.links {
            l.send_bytes(Kind::Reduced, step, seq, &self.encoded)?;
        }
        decode(wire, &self.encoded, x).map_err(|source| NetError::Encode {
            step,
            what: format!("{} ({wire})", describe_message(Kind::Reduced, seq)),
            source,
        })?;
        Ok(())
    }

    fn gather_logits(&mut self, mine: &[f32], full: &mut [f32]) -> Result<bool, CommError> {
        full[self.my_vocab.clone()].copy_from_slice(mine);
        for (l, v) in self.links.iter_mut().zip(&self.vocab) {
            l.recv_f32s(Kind::Logits, self.at.step, 0, &mut full[v.clone()])?;
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
    at: At,
    /// My encoded Partial.
    encoded: Vec<u8>,
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
            at: At::default(),
            encoded: Vec::new(),
            idle_timeout: peer_timeout,
            peer_timeout,
        })
    }

    /// Tells rank 0 why this worker stops.
    pub fn fail(&mut self, reason: &str) {
        self.link.fail(self.at.step, reason);
    }

    /// Waits for rank 0's next command.
    pub fn next_command(&mut self) -> Result<Command, NetError> {
        self.link.set_timeout(self.idle_timeout)?;
        let (h, payload) = loop {
            let (h, payload) = self.link.recv(self.at.step, "waiting for the next step")?;
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
                self.at = At {
                    step: h.step,
                    pos: s.pos as usize,
                    n_tokens: s.ids.len(),
                };
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
        let (seq, step, wire) = (op.seq(layer), self.at.step, self.link.wire());
        if wire == WireDtype::F32 {
            self.link.send_f32s(Kind::Partial, step, seq, x)?;
        } else {
            encode(wire, x, &mut self.encoded)
                .map_err(|e| self.at.unsendable(e, Kind::Partial, seq, x.len(), wire))?;
            self.link
                .send_bytes(Kind::Partial, step, seq, &self.encoded)?;
        }
        self.link.recv_wire(Kind::Reduced, step, seq, x)?;
        Ok(())
    }

    fn gather_logits(&mut self, mine: &[f32], _full: &mut [f32]) -> Result<bool, CommError> {
        self.link.send_f32s(Kind::Logits, self.at.step, 0, mine)?;
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

    /// Rank 0 and rank 1 over loopback in wire dtype `wire`, each with a
    /// step of `n_tokens` tokens at position 5.
    fn pair_in(wire: WireDtype, n_tokens: usize) -> (HubComm, WorkerComm) {
        let (mut hub, mut worker) = loopback();
        hub.wire = wire;
        worker.wire = wire;
        let t = Duration::from_secs(5);
        let mut hub = HubComm::new(vec![hub], vec![0..0, 0..0], Duration::ZERO).expect("hub");
        let mut worker = WorkerComm::new(worker, t, Duration::ZERO).expect("worker comm");
        let at = At {
            step: 1,
            pos: 5,
            n_tokens,
        };
        (hub.at, worker.at) = (at, at);
        (hub, worker)
    }

    fn partial(n: usize, seed: f32) -> Vec<f32> {
        (0..n).map(|i| (i as f32 * seed).sin() * 3.0).collect()
    }

    #[test]
    fn every_rank_holds_the_same_decoded_sum_and_the_bytes_are_the_encoded_length() {
        // 2053: a ragged q8_0 tail in one frame; 40_000: several chunks.
        for n in [2053, 40_000] {
            for wire in WireDtype::ALL {
                let (mut hub, mut worker) = pair_in(wire, 1);
                let (x0, x1) = (partial(n, 0.37), partial(n, 0.11));
                let mut xw = x1.clone();
                let t = std::thread::spawn(move || {
                    worker.allreduce_sum(&mut xw, 3, Op::Mlp).expect("worker");
                    (xw, worker.link.bytes_sent, worker.link.bytes_received)
                });
                let mut xh = x0.clone();
                hub.allreduce_sum(&mut xh, 3, Op::Mlp).expect("hub");
                let (xw, w_sent, w_received) = t.join().expect("worker thread");
                // Spec W7: bit-identical on every rank.
                assert!(
                    xh.iter()
                        .map(|v| v.to_bits())
                        .eq(xw.iter().map(|v| v.to_bits())),
                    "{wire} n {n}: ranks differ"
                );
                // Close to the exact sum: two roundings of |x| <= 6.
                let tol = match wire {
                    WireDtype::F32 => 0.0,
                    WireDtype::F16 => 3.0 * 2f32.powi(-9),
                    WireDtype::Q8_0 => 3.0 * 6.0 / 127.0,
                };
                for ((a, b), s) in x0.iter().zip(&x1).zip(&xh) {
                    assert!((a + b - s).abs() <= tol, "{wire}: {a} + {b} -> {s}");
                }
                // Real socket bytes, both ways: the frames' headers and the
                // encoded payload (spec W2), nothing else.
                let len = wire.encoded_len(n);
                let frames = len.div_ceil(crate::net::MAX_PAYLOAD as u64);
                let want = frames * crate::net::frame::HEADER_LEN as u64 + len;
                let l = hub.link_bytes()[0];
                assert_eq!(
                    (l.rank, l.sent, l.received),
                    (1, want, want),
                    "{wire} n {n}"
                );
                assert_eq!((w_sent, w_received), (want, want), "{wire} n {n}");
            }
        }
    }

    #[test]
    fn q8_0_partial_with_a_nan_is_the_non_finite_error_at_its_position() {
        let (mut hub, mut worker) = pair_in(WireDtype::Q8_0, 2);
        let mut x = partial(128, 0.2);
        x[64 + 7] = f32::NAN; // token 1 of 2: position 6
        let e = worker.allreduce_sum(&mut x, 2, Op::Attention).unwrap_err();
        let text = e.to_string();
        assert!(
            e.downcast_ref::<EngineError>().is_some()
                && text.contains("non-finite")
                && text.contains("the output of layer 2 (attention partial sum")
                && text.contains("at position 6"),
            "{text}"
        );
        // The worker tells rank 0, which names it and the message.
        worker.fail(&text);
        let mut y = partial(128, 0.3);
        let e = hub
            .allreduce_sum(&mut y, 2, Op::Attention)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("rank 1")
                && e.contains("Partial of layer 2 attention")
                && e.contains("non-finite"),
            "{e}"
        );
        // Rank 0's own NaN stops it before it waits for anyone.
        let (mut hub, _worker) = pair_in(WireDtype::Q8_0, 1);
        let mut y = partial(64, 0.3);
        y[3] = f32::INFINITY;
        let e = hub
            .allreduce_sum(&mut y, 0, Op::Mlp)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("non-finite") && e.contains("at position 5"),
            "{e}"
        );
    }

    #[test]
    fn malformed_q8_0_partial_is_refused_naming_rank_step_and_message() {
        let (mut hub, mut worker) = pair_in(WireDtype::Q8_0, 1);
        let mut bytes = Vec::new();
        encode(WireDtype::Q8_0, &partial(64, 0.5), &mut bytes).expect("encode");
        bytes[34..36].copy_from_slice(&0x7e00u16.to_le_bytes()); // block 1 scale: NaN
        worker
            .link
            .send_bytes(Kind::Partial, 1, Op::Mlp.seq(4), &bytes)
            .expect("send");
        let mut y = partial(64, 0.3);
        let e = hub
            .allreduce_sum(&mut y, 4, Op::Mlp)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("rank 1 at 127.0.0.1")
                && e.contains("step 1")
                && e.contains("Partial of layer 4 mlp (q8_0)")
                && e.contains("block 1")
                && e.contains("scale NaN"),
            "{e}"
        );
        // One byte short: the frame layer's length check (spec F10, W2).
        let (mut hub, mut worker) = pair_in(WireDtype::Q8_0, 1);
        encode(WireDtype::Q8_0, &partial(64, 0.5), &mut bytes).expect("encode");
        worker
            .link
            .send_bytes(Kind::Partial, 1, 0, &bytes[..67])
            .expect("send");
        let e = hub
            .allreduce_sum(&mut y, 0, Op::Attention)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("rank 1") && e.contains("step 1") && e.contains("67 bytes, expected 68"),
            "{e}"
        );
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
