//! [`Link`]: one TCP connection to a peer, and [`NetOpts`], the deadlines
//! every link runs under.
//!
//! Data flow: a message goes `Link::send` / `send_f32s` -> the `frame`
//! encoder -> [`Counted`] (counts the bytes, applies the waiting strategy
//! and the total deadline) -> the socket; a frame comes back the same way
//! into the link's one preallocated `[u8; MAX_PAYLOAD]` buffer (spec F6),
//! so nothing is allocated from a wire length. `configure` sets every
//! socket up once (TCP_NODELAY, keepalive, read/write deadlines). Every
//! failure leaves as a [`NetError`] naming the peer, its rank and the step;
//! `describe_message` names an f32 message in model terms ("Partial of
//! layer 3 attention"). An allreduce message in the session's wire dtype
//! (spec W1, agreed at join and kept here) arrives whole in the link's
//! staging buffer, sized from the plan, and is decoded from there. The
//! join, transfer and allreduce rooms reach the socket only through a
//! `Link`.

use super::error::NetError;
use super::frame::{
    read_frame, recv_bytes_into, recv_f32s_into, send_bytes, send_f32s, write_frame, FrameError,
    Header, Kind, MAX_MESSAGE, MAX_PAYLOAD,
};
use super::msg::Reject;
use super::wire::{decode, WireDtype};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// How the cluster talks: deadlines, the waiting strategy, the allreduce
/// payload type.
#[derive(Clone, Copy, Debug)]
pub struct NetOpts {
    /// How long rank 0 waits for all workers, and workers for rank 0.
    pub join_timeout: Duration,
    /// A peer silent this long during a session is considered dead.
    pub peer_timeout: Duration,
    /// A new connection must send its Hello within this time.
    pub hello_timeout: Duration,
    /// During a session, a read that finds no data retries (yielding the
    /// CPU between attempts) for up to this long before it sleeps in the
    /// kernel; zero means plain blocking reads. See [`Link::set_spin`].
    pub spin: Duration,
    /// Allreduce payloads (spec W1): rank 0's choice (`None`: f32); on a
    /// worker the type it insists on (`None`: whatever rank 0 chose).
    pub wire: Option<WireDtype>,
}

impl Default for NetOpts {
    fn default() -> NetOpts {
        NetOpts {
            join_timeout: Duration::from_secs(30),
            peer_timeout: Duration::from_secs(10),
            hello_timeout: Duration::from_secs(2),
            spin: Duration::from_micros(100),
            wire: None,
        }
    }
}

/// One TCP connection to a peer, with its receive buffer and byte counters.
pub struct Link {
    stream: TcpStream,
    pub peer: SocketAddr,
    /// The peer's rank (for the hub: the worker's; for a worker: 0).
    pub rank: usize,
    /// This side's rank, written into every header.
    me: u16,
    buf: Box<[u8; MAX_PAYLOAD]>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Waiting strategy of reads (see [`Counted`]); zero = blocking.
    spin: Duration,
    /// When set, every read ends by this instant in total.
    deadline: Option<Instant>,
    /// Allreduce payload type of the session (spec W1), set by the join.
    pub(super) wire: WireDtype,
    /// One encoded allreduce message, received whole (spec W2); its length
    /// comes from the plan.
    staging: Vec<u8>,
}

/// Counts bytes through a stream, and waits for data as the link's
/// strategy says: with a non-zero `spin` the socket is non-blocking and a
/// read that finds nothing retries with `yield_now` for up to `spin`, then
/// switches the socket to blocking for one read (which the read deadline
/// bounds) and back. A write that finds the send buffer full blocks the
/// same way.
pub(super) struct Counted<'a> {
    stream: &'a TcpStream,
    n: &'a mut u64,
    spin: Duration,
    /// A total deadline over all reads (see [`Link::set_deadline`]).
    deadline: Option<Instant>,
}

impl Counted<'_> {
    fn blocking<T>(&self, f: impl FnOnce(&TcpStream) -> io::Result<T>) -> io::Result<T> {
        self.stream.set_nonblocking(false)?;
        let r = f(self.stream);
        self.stream.set_nonblocking(true)?;
        r
    }

    fn read_spinning(&self, b: &mut [u8]) -> io::Result<usize> {
        let mut since: Option<Instant> = None;
        loop {
            match (&mut &*self.stream).read(b) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let t0 = *since.get_or_insert_with(Instant::now);
                    if t0.elapsed() >= self.spin {
                        return self.blocking(|mut s| s.read(b));
                    }
                    std::thread::yield_now();
                }
                r => return r,
            }
        }
    }

    fn write_with(&self, f: impl Fn(&TcpStream) -> io::Result<usize>) -> io::Result<usize> {
        match f(self.stream) {
            Err(e) if !self.spin.is_zero() && e.kind() == io::ErrorKind::WouldBlock => {
                self.blocking(f)
            }
            r => r,
        }
    }
}

impl Read for Counted<'_> {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        if let Some(d) = self.deadline {
            // The read deadline is what is left of the total, so a peer
            // dribbling a byte at a time cannot stretch it (spec J3).
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "total deadline passed",
                ));
            }
            self.stream.set_read_timeout(Some(left))?;
        }
        let k = if self.spin.is_zero() {
            self.stream.read(b)?
        } else {
            self.read_spinning(b)?
        };
        *self.n += k as u64;
        Ok(k)
    }
}

impl Write for Counted<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let k = self.write_with(|mut s| s.write(b))?;
        *self.n += k as u64;
        Ok(k)
    }
    fn write_vectored(&mut self, b: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let k = self.write_with(|mut s| s.write_vectored(b))?;
        *self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

fn configure(stream: &TcpStream, timeout: Duration) -> io::Result<()> {
    let sock = socket2::SockRef::from(stream);
    sock.set_tcp_nodelay(true)?;
    sock.set_keepalive(true)?;
    sock.set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(5))
            .with_interval(Duration::from_secs(1)),
    )?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(())
}

impl Link {
    pub(super) fn new(
        stream: TcpStream,
        rank: usize,
        me: usize,
        timeout: Duration,
    ) -> io::Result<Link> {
        configure(&stream, timeout)?;
        let peer = stream.peer_addr()?;
        Ok(Link {
            stream,
            peer,
            rank,
            me: me as u16,
            buf: Box::new([0u8; MAX_PAYLOAD]),
            bytes_sent: 0,
            bytes_received: 0,
            spin: Duration::ZERO,
            deadline: None,
            wire: WireDtype::F32,
            staging: Vec::new(),
        })
    }

    /// The allreduce payload type agreed at join (spec W1).
    pub fn wire(&self) -> WireDtype {
        self.wire
    }

    /// Bounds all further reads by `deadline` in total, not per read (a
    /// hello trickling in a byte at a time still ends on time); `None`
    /// returns to the per-read deadline, which the caller sets again.
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }

    /// Sets how long a read spins (yielding) before it sleeps; zero restores
    /// blocking reads. Worth it when the peer answers within tens of µs: a
    /// blocked reader pays a wake-up (~10-60 µs on a VM) per message. The
    /// yield keeps it from starving ranks that share its core.
    pub fn set_spin(&mut self, spin: Duration) -> Result<(), NetError> {
        self.stream
            .set_nonblocking(!spin.is_zero())
            .map_err(|e| self.io_err("setting the waiting strategy", e))?;
        self.spin = spin;
        Ok(())
    }

    fn peer_rank(&self) -> Option<usize> {
        Some(self.rank)
    }

    pub(super) fn io_err(&self, what: impl Into<String>, source: io::Error) -> NetError {
        NetError::Io {
            peer: self.peer.to_string(),
            rank: self.peer_rank(),
            what: what.into(),
            source,
        }
    }

    fn frame_err(&self, step: u32, what: impl Into<String>, source: FrameError) -> NetError {
        // A read deadline or a closed socket reads better as I/O.
        match source {
            FrameError::Io(e) => self.io_err(format!("step {step}, {}", what.into()), e),
            FrameError::Truncated { .. } => self.io_err(
                format!("step {step}, {}", what.into()),
                io::Error::new(io::ErrorKind::UnexpectedEof, "closed"),
            ),
            source => NetError::Frame {
                peer: self.peer.to_string(),
                rank: self.peer_rank(),
                step,
                what: what.into(),
                source,
            },
        }
    }

    pub(super) fn set_timeout(&self, t: Duration) -> Result<(), NetError> {
        self.stream
            .set_read_timeout(Some(t))
            .and_then(|_| self.stream.set_write_timeout(Some(t)))
            .map_err(|e| self.io_err("setting deadline", e))
    }

    /// Whether the peer has sent something (or closed) within `poll`;
    /// reads then go back to the `deadline` per read. Consumes nothing.
    pub(super) fn readable_within(
        &mut self,
        poll: Duration,
        deadline: Duration,
    ) -> Result<bool, NetError> {
        self.stream
            .set_read_timeout(Some(poll))
            .map_err(|e| self.io_err("setting deadline", e))?;
        let mut one = [0u8; 1];
        let seen = match self.stream.peek(&mut one) {
            Ok(_) => Ok(true),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(self.io_err("waiting for the session", e)),
        };
        self.set_timeout(deadline)?;
        seen
    }

    /// A header from this side (its rank) for a message of `kind`.
    pub(super) fn header(&self, kind: Kind, step: u32, seq: u32) -> Header {
        Header::new(kind, self.me, step, seq)
    }

    /// The socket as a writer that counts what is sent, under this link's
    /// waiting strategy and deadline. (Readers are built in place: they
    /// borrow the receive buffer beside the counter.)
    pub(super) fn writer(&mut self) -> Counted<'_> {
        Counted {
            stream: &self.stream,
            n: &mut self.bytes_sent,
            spin: self.spin,
            deadline: self.deadline,
        }
    }

    /// Sends one single-frame message.
    pub fn send(
        &mut self,
        kind: Kind,
        step: u32,
        flags: u8,
        payload: &[u8],
    ) -> Result<(), NetError> {
        let mut h = self.header(kind, step, 0);
        h.flags = flags;
        let sent = write_frame(&mut self.writer(), &h, payload);
        sent.map_err(|e| self.io_err(format!("sending {kind:?} at step {step}"), e))
    }

    /// Receives one frame; returns its header and a copy of its payload.
    pub fn recv(&mut self, step: u32, what: &str) -> Result<(Header, Vec<u8>), NetError> {
        let mut r = Counted {
            stream: &self.stream,
            n: &mut self.bytes_received,
            spin: self.spin,
            deadline: self.deadline,
        };
        match read_frame(&mut r, &mut self.buf) {
            Ok((h, p)) => Ok((h, p.to_vec())),
            Err(e) => Err(self.frame_err(step, what, e)),
        }
    }

    pub(super) fn send_f32s(
        &mut self,
        kind: Kind,
        step: u32,
        seq: u32,
        data: &[f32],
    ) -> Result<(), NetError> {
        let h = self.header(kind, step, seq);
        let sent = send_f32s(&mut self.writer(), &h, data);
        sent.map_err(|e| self.io_err(format!("sending {kind:?} at step {step}, message {seq}"), e))
    }

    /// Sends one message of already encoded bytes (an allreduce payload in
    /// the session's wire dtype, spec W2).
    pub(super) fn send_bytes(
        &mut self,
        kind: Kind,
        step: u32,
        seq: u32,
        bytes: &[u8],
    ) -> Result<(), NetError> {
        let h = self.header(kind, step, seq);
        let sent = send_bytes(&mut self.writer(), &h, bytes);
        sent.map_err(|e| self.io_err(format!("sending {kind:?} at step {step}, message {seq}"), e))
    }

    pub(super) fn recv_f32s(
        &mut self,
        kind: Kind,
        step: u32,
        seq: u32,
        out: &mut [f32],
    ) -> Result<(), NetError> {
        let mut r = Counted {
            stream: &self.stream,
            n: &mut self.bytes_received,
            spin: self.spin,
            deadline: self.deadline,
        };
        let res = recv_f32s_into(&mut r, kind, step, out, &mut self.buf);
        self.received(kind, step, seq, res)
    }

    /// Receives one allreduce message of `out.len()` values in the
    /// session's wire dtype and decodes it (spec W2, W5); f32 goes straight
    /// into `out`. A payload that does not decode names the message.
    pub(super) fn recv_wire(
        &mut self,
        kind: Kind,
        step: u32,
        seq: u32,
        out: &mut [f32],
    ) -> Result<(), NetError> {
        let wire = self.wire;
        if wire == WireDtype::F32 {
            return self.recv_f32s(kind, step, seq, out);
        }
        // The length comes from the plan (out.len()), checked against the
        // largest message before the staging buffer grows to it.
        let len = wire.encoded_len(out.len());
        if len > MAX_MESSAGE {
            return Err(self.frame_err(
                step,
                describe_message(kind, seq),
                FrameError::LengthMismatch {
                    expected: MAX_MESSAGE,
                    got: len,
                },
            ));
        }
        self.staging.resize(len as usize, 0);
        let mut r = Counted {
            stream: &self.stream,
            n: &mut self.bytes_received,
            spin: self.spin,
            deadline: self.deadline,
        };
        let res = recv_bytes_into(&mut r, kind, step, &mut self.staging, &mut self.buf);
        self.received(kind, step, seq, res)?;
        decode(wire, &self.staging, out).map_err(|source| NetError::Payload {
            peer: self.peer.to_string(),
            rank: Some(self.rank),
            step,
            what: format!("{} ({wire})", describe_message(kind, seq)),
            source,
        })
    }

    /// A received message's outcome: its seq checked, a failure named.
    fn received(
        &self,
        kind: Kind,
        step: u32,
        seq: u32,
        res: Result<Header, FrameError>,
    ) -> Result<(), NetError> {
        match res {
            Ok(h) if h.seq == seq => Ok(()),
            Ok(h) => Err(self.frame_err(
                step,
                format!("{kind:?}"),
                FrameError::UnexpectedSeq {
                    expected: seq,
                    got: h.seq,
                },
            )),
            Err(FrameError::PeerError { reason }) => Err(NetError::PeerFailed {
                peer: self.peer.to_string(),
                rank: Some(self.rank),
                during: format!("step {step}, waiting for {}", describe_message(kind, seq)),
                reason,
            }),
            Err(e) => Err(self.frame_err(
                step,
                format!("waiting for {}", describe_message(kind, seq)),
                e,
            )),
        }
    }

    /// Tells the peer why this side stops (an Error frame, spec M2); a
    /// failure to send is ignored, the caller is stopping anyway.
    pub fn fail(&mut self, step: u32, reason: &str) {
        let payload = Reject::truncated(reason).encode().unwrap_or_default();
        let _ = self.send(Kind::Error, step, 0, &payload);
    }

    /// An Error frame's payload as the peer's failure during `during`.
    pub(super) fn peer_failed(&self, during: &str, payload: &[u8]) -> NetError {
        NetError::PeerFailed {
            peer: self.peer.to_string(),
            rank: Some(self.rank),
            during: during.to_string(),
            reason: Reject::decode(payload)
                .map(|r| r.reason)
                .unwrap_or_else(|e| format!("(unreadable reason: {e})")),
        }
    }
}

/// What an f32 message carries: "Partial of layer 3 attention" for
/// allreduce message `seq = 2*layer + op`; "Logits (lm_head)" for the
/// logits gather, whose seq is 0.
pub(super) fn describe_message(kind: Kind, seq: u32) -> String {
    match kind {
        Kind::Partial | Kind::Reduced => format!("{kind:?} of {}", describe_seq(seq)),
        k => format!("{k:?} (lm_head)"),
    }
}

/// "layer 3 attention" for allreduce message `seq = 2*layer + op`.
fn describe_seq(seq: u32) -> String {
    let (layer, op) = crate::engine::Op::of_seq(seq);
    format!("layer {layer} {op}")
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::net::TcpListener;

    /// Rank 0's link to rank 1 and rank 1's link to rank 0, over loopback.
    pub(in crate::net) fn loopback() -> (Link, Link) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        let t = Duration::from_secs(5);
        let hub = Link::new(server, 1, 0, t).expect("hub link");
        let worker = Link::new(client, 0, 1, t).expect("worker link");
        (hub, worker)
    }

    #[test]
    fn f32_messages_are_named_in_model_terms() {
        assert_eq!(
            describe_message(Kind::Partial, 6),
            "Partial of layer 3 attention"
        );
        assert_eq!(describe_message(Kind::Reduced, 7), "Reduced of layer 3 mlp");
        assert_eq!(describe_message(Kind::Logits, 0), "Logits (lm_head)");
    }
}
