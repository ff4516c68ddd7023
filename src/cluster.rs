//! Ranks over TCP: joining, slice transfer and the star allreduce.
//!
//! Rank 0 (the hub) listens; every worker holds one connection to it. The
//! frames and messages are specified in [`crate::net`]. This module adds the
//! sockets (socket2: TCP_NODELAY, keepalive, read/write deadlines), the join
//! phase (one short-lived thread per incoming connection, so junk on the
//! port never blocks a real worker), slice file transfer, and the
//! [`Collective`] implementations of both roles.

use crate::engine::PREFILL_BATCH;
use crate::model::{Collective, Op};
use crate::net::frame::PROTOCOL_VERSION;
use crate::net::frame::{
    read_frame, recv_f32s_into, send_f32s, write_frame, FrameError, Header, Kind, MAX_PAYLOAD,
};
use crate::net::msg::{Auth, FileRequest, Hello, Reject, Step, STEP_PREFILL, STEP_WANT_LOGITS};
use crate::progress::Progress;
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Deadlines of the cluster.
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
}

impl Default for NetOpts {
    fn default() -> NetOpts {
        NetOpts {
            join_timeout: Duration::from_secs(30),
            peer_timeout: Duration::from_secs(10),
            hello_timeout: Duration::from_secs(2),
            spin: Duration::from_micros(100),
        }
    }
}

/// Network failures, naming the peer, its rank and the step.
#[derive(Debug)]
pub enum NetError {
    Io {
        peer: String,
        rank: Option<usize>,
        what: String,
        source: io::Error,
    },
    Frame {
        peer: String,
        rank: Option<usize>,
        step: u32,
        what: String,
        source: FrameError,
    },
    Rejected {
        peer: String,
        reason: String,
    },
    JoinTimeout {
        waited: Duration,
        missing: Vec<usize>,
    },
    Protocol {
        peer: String,
        rank: Option<usize>,
        what: String,
    },
    /// An address flag (`--master`) that does not resolve, or that rank 0
    /// cannot listen on.
    Address {
        flag: &'static str,
        value: String,
        what: &'static str,
        source: io::Error,
    },
    /// The peer stopped and sent its reason (an Error frame, spec M2).
    PeerFailed {
        peer: String,
        rank: Option<usize>,
        /// What this side was doing when the reason arrived.
        during: String,
        reason: String,
    },
    /// Rank 0 sent more slice bytes than asked for, past the size its
    /// slice's manifest announces (spec J7).
    Oversized {
        peer: String,
        offset: u64,
        asked: u64,
        offered: u64,
        announced: u64,
    },
    /// The head (preamble and manifest) of the slice rank 0 serves does
    /// not decode, so its size is unknown (spec J7).
    SliceHead {
        peer: String,
        source: Box<crate::slice::SliceError>,
    },
}

fn rank_str(rank: &Option<usize>) -> String {
    rank.map_or_else(|| "peer".to_string(), |r| format!("rank {r}"))
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetError::Io {
                peer,
                rank,
                what,
                source,
            } => {
                write!(
                    f,
                    "{} at {peer}: {what}: {}",
                    rank_str(rank),
                    describe_io(source)
                )
            }
            NetError::Frame {
                peer,
                rank,
                step,
                what,
                source,
            } => {
                write!(
                    f,
                    "{} at {peer}, step {step}, {what}: {source}",
                    rank_str(rank)
                )
            }
            NetError::Rejected { peer, reason } => write!(f, "rejected by {peer}: {reason}"),
            NetError::JoinTimeout { waited, missing } => {
                write!(
                    f,
                    "ranks {missing:?} did not join within {:.1} s",
                    waited.as_secs_f64()
                )
            }
            NetError::Protocol { peer, rank, what } => {
                write!(f, "{} at {peer}: {what}", rank_str(rank))
            }
            NetError::Address {
                flag,
                value,
                what,
                source,
            } => write!(f, "{flag} {value}: {what}: {source}"),
            NetError::PeerFailed {
                peer,
                rank,
                during,
                reason,
            } => write!(
                f,
                "{} at {peer} stopped ({during}): {reason}",
                rank_str(rank)
            ),
            NetError::Oversized {
                peer,
                offset,
                asked,
                offered,
                announced,
            } => write!(
                f,
                "rank 0 at {peer} offered {offered} bytes at offset {offset} where {asked} were asked for: \
                 the slice its manifest announces is {announced} bytes; refused"
            ),
            NetError::SliceHead { peer, source } => {
                write!(f, "rank 0 at {peer}: the slice head it sent: {source}")
            }
        }
    }
}

impl std::error::Error for NetError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            NetError::Io { source, .. } | NetError::Address { source, .. } => Some(source),
            NetError::Frame { source, .. } => Some(source),
            NetError::SliceHead { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}

fn describe_io(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            format!("no answer before the deadline ({e})")
        }
        io::ErrorKind::UnexpectedEof => "connection closed".to_string(),
        _ => e.to_string(),
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
}

/// Counts bytes through a stream, and waits for data as the link's
/// strategy says: with a non-zero `spin` the socket is non-blocking and a
/// read that finds nothing retries with `yield_now` for up to `spin`, then
/// switches the socket to blocking for one read (which the read deadline
/// bounds) and back. A write that finds the send buffer full blocks the
/// same way.
struct Counted<'a> {
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
    fn new(stream: TcpStream, rank: usize, me: usize, timeout: Duration) -> io::Result<Link> {
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
        })
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

    fn io_err(&self, what: impl Into<String>, source: io::Error) -> NetError {
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

    fn set_timeout(&self, t: Duration) -> Result<(), NetError> {
        self.stream
            .set_read_timeout(Some(t))
            .and_then(|_| self.stream.set_write_timeout(Some(t)))
            .map_err(|e| self.io_err("setting deadline", e))
    }

    /// Whether the peer has sent something (or closed) within `poll`;
    /// reads then go back to the `deadline` per read. Consumes nothing.
    fn readable_within(&mut self, poll: Duration, deadline: Duration) -> Result<bool, NetError> {
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

    /// Sends one single-frame message.
    pub fn send(
        &mut self,
        kind: Kind,
        step: u32,
        flags: u8,
        payload: &[u8],
    ) -> Result<(), NetError> {
        let mut h = Header::new(kind, self.me, step, 0);
        h.flags = flags;
        let mut w = Counted {
            stream: &self.stream,
            n: &mut self.bytes_sent,
            spin: self.spin,
            deadline: self.deadline,
        };
        write_frame(&mut w, &h, payload).map_err(|e| NetError::Io {
            peer: self.peer.to_string(),
            rank: Some(self.rank),
            what: format!("sending {kind:?} at step {step}"),
            source: e,
        })
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

    fn send_f32s(&mut self, kind: Kind, step: u32, seq: u32, data: &[f32]) -> Result<(), NetError> {
        let h = Header::new(kind, self.me, step, seq);
        let mut w = Counted {
            stream: &self.stream,
            n: &mut self.bytes_sent,
            spin: self.spin,
            deadline: self.deadline,
        };
        send_f32s(&mut w, &h, data).map_err(|e| NetError::Io {
            peer: self.peer.to_string(),
            rank: Some(self.rank),
            what: format!("sending {kind:?} at step {step}, message {seq}"),
            source: e,
        })
    }

    fn recv_f32s(
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
    fn peer_failed(&self, during: &str, payload: &[u8]) -> NetError {
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
fn describe_message(kind: Kind, seq: u32) -> String {
    match kind {
        Kind::Partial | Kind::Reduced => format!("{kind:?} of {}", describe_seq(seq)),
        k => format!("{k:?} (lm_head)"),
    }
}

/// "layer 3 attention" for allreduce message `seq = 2*layer + op`.
fn describe_seq(seq: u32) -> String {
    format!(
        "layer {} {}",
        seq / 2,
        if seq.is_multiple_of(2) {
            "attention"
        } else {
            "mlp"
        }
    )
}

/// What both sides of a handshake must agree on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionId {
    pub world_size: usize,
    pub fingerprint: u64,
    pub plan_hash: u64,
}

fn nonce() -> [u8; 32] {
    // Unique per connection; authentication (if any) strengthens it.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let seed = format!(
        "{}-{}-{:?}",
        t.as_nanos(),
        std::process::id(),
        std::thread::current().id()
    );
    let mut out = [0u8; 32];
    for (i, c) in out.chunks_mut(8).enumerate() {
        let h = crate::net::checksum::checksum64(format!("{seed}-{i}").as_bytes());
        c.copy_from_slice(&h.to_le_bytes());
    }
    out
}

/// Where a worker keeps (and rank 0 writes) the slice of `rank`.
pub fn slice_path(cache_dir: &Path, id: &SessionId, rank: usize) -> PathBuf {
    cache_dir
        .join(format!("{:016x}-{:016x}", id.fingerprint, id.plan_hash))
        .join(format!("rank-{rank}-of-{}.slice", id.world_size))
}

// ---------------------------------------------------------------- hub side

/// A pre-shared key (`TPI_SECRET` or `--secret-file`).
pub type Secret = Arc<[u8]>;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// HMAC-SHA256(key, label | a | b).
fn auth_tag(key: &[u8], label: &str, a: &[u8], b: &[u8]) -> [u8; 32] {
    use hmac::Mac;
    // HMAC accepts keys of any length; this cannot fail.
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        return [0; 32];
    };
    mac.update(label.as_bytes());
    mac.update(a);
    mac.update(b);
    mac.finalize().into_bytes().into()
}

/// Constant-time check of a tag.
fn auth_ok(key: &[u8], label: &str, a: &[u8], b: &[u8], tag: &[u8; 32]) -> bool {
    use hmac::Mac;
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        return false;
    };
    mac.update(label.as_bytes());
    mac.update(a);
    mac.update(b);
    mac.verify_slice(tag).is_ok()
}

const AUTH_WORKER: &str = "tpi-auth-worker";
const AUTH_HUB: &str = "tpi-auth-hub";

/// Most connections rank 0 holds that have not joined yet (spec J2).
pub use crate::net::MAX_PENDING;

/// Rank 0 sends a Heartbeat to a waiting worker at least this often (spec J4).
use crate::net::HEARTBEAT;
/// How often a waiting join thread looks at the session and its socket.
const SESSION_POLL: Duration = Duration::from_millis(50);
/// How often the accepting thread looks for a new connection.
const ACCEPT_POLL: Duration = Duration::from_millis(5);
/// Stack of a join thread: a hello, a key proof and file serving need
/// little (the receive buffer is on the heap); 64 of them stay small on a
/// 32-bit board.
const JOIN_STACK: usize = 512 << 10;

/// What a join thread tells rank 0's main thread about a worker that holds
/// a rank. Connections that never join are only logged (spec J2).
enum JoinEvent {
    /// A worker's hello (and key proof) checked out; it holds `rank`.
    Joined(usize),
    /// The worker has its slice and waits for the first step.
    Ready(Link),
    /// The worker holding this rank failed: the session cannot start.
    Failed(NetError),
}

/// The session join threads wait for (spec J4).
#[derive(Clone)]
enum Prepared {
    /// Rank 0 is still cutting slices.
    Preparing,
    /// The session id and every rank's slice file.
    Ready(SessionId, Arc<Vec<PathBuf>>),
    /// Rank 0 gave up before the session started.
    Closed,
}

/// What the accepting thread, the join threads and rank 0's main thread share.
struct Lobby {
    world_size: usize,
    secret: Option<Secret>,
    opts: NetOpts,
    quiet: bool,
    prepared: Mutex<Prepared>,
    /// Ranks held by a joined worker.
    claimed: Mutex<Vec<bool>>,
    /// Connections accepted and not joined, each on its own thread (spec J2).
    pending: AtomicUsize,
    /// Set when rank 0 stops accepting.
    closed: AtomicBool,
    /// Why the last connection that never joined was dropped.
    last_failure: Mutex<Option<String>>,
}

impl Lobby {
    fn prepared(&self) -> Prepared {
        self.prepared.lock().map_or(Prepared::Closed, |p| p.clone())
    }

    /// A connection that never joined was dropped: said on stderr when it
    /// failed to authenticate (or always unless quiet), kept for the join
    /// timeout's message.
    fn dropped(&self, e: &NetError) {
        let text = e.to_string();
        if text.contains("authentication failed") {
            eprintln!("[tpi] rank 0: {text}");
        } else if !self.quiet {
            eprintln!("[tpi] rank 0: dropped a connection: {text}");
        }
        if let Ok(mut f) = self.last_failure.lock() {
            *f = Some(text);
        }
    }

    fn release(&self, rank: usize) {
        if let Ok(mut c) = self.claimed.lock() {
            if let Some(c) = c.get_mut(rank) {
                *c = false;
            }
        }
    }
}

/// One of the [`MAX_PENDING`] places of a connection that has not joined
/// (spec J2), given back when dropped.
struct Slot(Arc<Lobby>);

impl Slot {
    fn take(lobby: &Arc<Lobby>) -> Option<Slot> {
        // Relaxed: the count only bounds the threads; it publishes no data
        // (each thread gets its connection by move).
        lobby
            .pending
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < MAX_PENDING).then_some(n + 1)
            })
            .ok()?;
        Some(Slot(lobby.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Rank 0's open port. From [`HubListener::open`] on, a thread accepts
/// workers and checks their hello and key while rank 0 still prepares the
/// session (spec J1); [`HubListener::join`] then hands them the session.
pub struct HubListener {
    addr: SocketAddr,
    lobby: Arc<Lobby>,
    events: mpsc::Receiver<JoinEvent>,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

impl HubListener {
    /// Listens on `listen` (given by `flag`, which errors name) and starts
    /// accepting. Fails at once on an address that does not resolve or
    /// cannot be bound.
    pub fn open(
        flag: &'static str,
        listen: &str,
        world_size: usize,
        secret: Option<Secret>,
        opts: NetOpts,
        quiet: bool,
    ) -> Result<HubListener, NetError> {
        let addrs = resolve(flag, listen)?;
        let err = |what, source| NetError::Address {
            flag,
            value: listen.to_string(),
            what,
            source,
        };
        let listener = TcpListener::bind(&addrs[..]).map_err(|e| err("cannot listen", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| err("cannot listen", e))?;
        let addr = listener.local_addr().map_err(|e| err("cannot listen", e))?;
        let lobby = Arc::new(Lobby {
            world_size,
            secret,
            opts,
            quiet,
            prepared: Mutex::new(Prepared::Preparing),
            claimed: Mutex::new(vec![false; world_size]),
            pending: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            last_failure: Mutex::new(None),
        });
        let (tx, events) = mpsc::channel();
        let shared = lobby.clone();
        let acceptor = std::thread::Builder::new()
            .name("tpi-accept".into())
            .spawn(move || accept_loop(&listener, &shared, &tx))
            .map_err(|e| err("cannot start the accepting thread", e))?;
        Ok(HubListener {
            addr,
            lobby,
            events,
            acceptor: Some(acceptor),
        })
    }

    /// The address listened on (with the port picked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Publishes the session (`slices[r]` is rank r's slice file) to the
    /// workers that joined while it was prepared and to those still to
    /// come, and waits until ranks 1..N-1 are ready, serving slice files
    /// meanwhile. The join deadline runs from here and bounds the time
    /// until every worker has said a valid hello; slice transfers run under
    /// the per-operation peer deadline. Ready workers get a heartbeat every
    /// second while others are still on their way.
    pub fn join(self, id: SessionId, slices: Vec<PathBuf>) -> Result<Vec<Link>, NetError> {
        let n = self.lobby.world_size;
        let opts = self.lobby.opts;
        if let Ok(mut p) = self.lobby.prepared.lock() {
            *p = Prepared::Ready(id, Arc::new(slices));
        }
        let mut joined = vec![false; n];
        let mut links: Vec<Option<Link>> = (0..n).map(|_| None).collect();
        let start = Instant::now();
        let mut last_beat = Instant::now();
        while links.iter().skip(1).any(Option::is_none) {
            if start.elapsed() > opts.join_timeout && joined.iter().skip(1).any(|j| !j) {
                let missing = (1..n).filter(|&r| !joined[r]).collect();
                let last = self.lobby.last_failure.lock().ok().and_then(|f| f.clone());
                if let Some(f) = last {
                    return Err(NetError::Protocol {
                        peer: "join".into(),
                        rank: None,
                        what: format!(
                            "ranks {missing:?} did not join within {:.1} s; last refused connection: {f}",
                            opts.join_timeout.as_secs_f64()
                        ),
                    });
                }
                return Err(NetError::JoinTimeout {
                    waited: start.elapsed(),
                    missing,
                });
            }
            match self.events.recv_timeout(Duration::from_millis(20)) {
                Ok(JoinEvent::Joined(r)) => joined[r] = true,
                Ok(JoinEvent::Ready(link)) => {
                    let r = link.rank;
                    joined[r] = true;
                    links[r] = Some(link);
                }
                // A worker that failed after joining is a real failure.
                Ok(JoinEvent::Failed(e)) => return Err(e),
                Err(_) => {}
            }
            if last_beat.elapsed() > HEARTBEAT {
                last_beat = Instant::now();
                for l in links.iter_mut().flatten() {
                    l.send(Kind::Heartbeat, 0, 0, &[])?;
                }
            }
        }
        let mut out = Vec::with_capacity(n - 1);
        for link in links.into_iter().skip(1).flatten() {
            link.set_timeout(opts.peer_timeout)?;
            out.push(link);
        }
        Ok(out)
    }
}

impl Drop for HubListener {
    fn drop(&mut self) {
        // Relaxed: the accepting thread only needs to see the flag
        // eventually; it publishes no data.
        self.lobby.closed.store(true, Ordering::Relaxed);
        if let Ok(mut p) = self.lobby.prepared.lock() {
            if matches!(*p, Prepared::Preparing) {
                *p = Prepared::Closed;
            }
        }
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

/// Accepts connections until rank 0 closes the lobby.
fn accept_loop(listener: &TcpListener, lobby: &Arc<Lobby>, events: &mpsc::Sender<JoinEvent>) {
    while !lobby.closed.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => admit(stream, lobby, events),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                std::thread::sleep(ACCEPT_POLL)
            }
            Err(e) => {
                // Out of descriptors, or a connection reset before it was
                // accepted: transient; go on after a pause.
                lobby.dropped(&NetError::Io {
                    peer: "listener".into(),
                    rank: None,
                    what: "accepting a connection".into(),
                    source: e,
                });
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Gives a new connection its own thread, within the bound of spec J2.
fn admit(stream: TcpStream, lobby: &Arc<Lobby>, events: &mpsc::Sender<JoinEvent>) {
    // Spec J2: beyond MAX_PENDING the connection is closed unread.
    let Some(slot) = Slot::take(lobby) else {
        return;
    };
    let (shared, tx) = (lobby.clone(), events.clone());
    let spawned = std::thread::Builder::new()
        .name("tpi-join".into())
        .stack_size(JOIN_STACK)
        .spawn(move || join_thread(stream, slot, &shared, &tx));
    if let Err(e) = spawned {
        // The connection and its slot went down with the closure.
        lobby.dropped(&NetError::Io {
            peer: "listener".into(),
            rank: None,
            what: "starting a thread for a new connection".into(),
            source: e,
        });
    }
}

fn join_thread(stream: TcpStream, slot: Slot, lobby: &Lobby, events: &mpsc::Sender<JoinEvent>) {
    let _ = stream.set_nonblocking(false);
    let (mut link, g) = match claim_rank(stream, slot, lobby) {
        Ok(joined) => joined,
        Err(e) => return lobby.dropped(&e),
    };
    let _ = events.send(JoinEvent::Joined(g.rank));
    // From here on the connection holds a rank: its failure ends the join.
    match serve_joined(&mut link, &g, lobby) {
        Ok(()) => {
            let _ = events.send(JoinEvent::Ready(link));
        }
        Err(e) => {
            lobby.release(g.rank);
            let _ = events.send(JoinEvent::Failed(e));
        }
    }
}

/// A connection's hello, checked and (with a key) proved: the rank it
/// claims, its hello, rank 0's nonce.
struct Greeting {
    rank: usize,
    hello: Hello,
    hub_nonce: [u8; 32],
}

/// Takes a connection from accept to a claimed rank: its hello checked and
/// its key proved within the total hello deadline (spec J3), then its rank
/// held; the pending `slot` is given back then (spec J2).
fn claim_rank(stream: TcpStream, slot: Slot, lobby: &Lobby) -> Result<(Link, Greeting), NetError> {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    let opts = lobby.opts;
    let mut link = Link::new(stream, 0, 0, opts.hello_timeout).map_err(|e| NetError::Io {
        peer: peer.clone(),
        rank: None,
        what: "configuring socket".into(),
        source: e,
    })?;
    link.set_deadline(Some(Instant::now() + opts.hello_timeout));
    let g = greet(&mut link, &peer, lobby)?;
    let rank = g.rank;
    {
        let mut c = lobby.claimed.lock().map_err(|_| NetError::Protocol {
            peer: peer.clone(),
            rank: None,
            what: "join state poisoned".into(),
        })?;
        // greet checked rank < world size.
        match c.get_mut(rank) {
            Some(held) if !*held => *held = true,
            _ => {
                drop(c);
                let why = format!("rank {rank} has already joined");
                return Err(refuse(&mut link, &peer, why));
            }
        }
    }
    drop(slot);
    link.set_deadline(None);
    Ok((link, g))
}

/// Tells the peer why it is refused and makes that the error.
fn refuse(link: &mut Link, peer: &str, why: String) -> NetError {
    let _ = link.send(
        Kind::Reject,
        0,
        0,
        &Reject::truncated(&why).encode().unwrap_or_default(),
    );
    NetError::Rejected {
        peer: peer.to_string(),
        reason: why,
    }
}

/// Reads and checks a connection's hello and, with a key, its proof (spec
/// M1, M6). Nothing about the session is sent.
fn greet(link: &mut Link, peer: &str, lobby: &Lobby) -> Result<Greeting, NetError> {
    let n = lobby.world_size;
    let unknown = |what: String| NetError::Protocol {
        peer: peer.to_string(),
        rank: None,
        what,
    };
    // The first frame must be a Hello. A frame header is read and checked
    // before any payload, so junk costs at most 40 bytes (spec F1-F8).
    let (h, hello_bytes) = link
        .recv(0, "hello")
        .map_err(|e| unknown(format!("no valid hello: {e}")))?;
    if h.kind != Kind::Hello {
        return Err(unknown(format!("expected Hello, got {:?}", h.kind)));
    }
    let hello = Hello::decode(&hello_bytes).map_err(|e| unknown(format!("bad hello: {e}")))?;
    let rank = hello.rank as usize;
    if hello.protocol_version != PROTOCOL_VERSION {
        let why = format!(
            "protocol version: rank 0 speaks {PROTOCOL_VERSION}, rank {rank} speaks {}",
            hello.protocol_version
        );
        return Err(refuse(link, peer, why));
    }
    if hello.world_size as usize != n {
        let why = format!(
            "world size: rank 0 has {n}, rank {rank} has {}",
            hello.world_size
        );
        return Err(refuse(link, peer, why));
    }
    if rank == 0 || rank >= n {
        let why = format!("rank {rank} is not a worker rank of a world of {n}");
        return Err(refuse(link, peer, why));
    }
    link.rank = rank;
    // Spec M6: the worker proves the key before it learns anything.
    let hub_nonce = nonce();
    if let Some(key) = lobby.secret.as_deref() {
        let challenge = Auth {
            nonce: hub_nonce,
            tag: [0; 32],
        };
        link.send(Kind::Auth, 0, 0, &challenge.encode())?;
        let (h, payload) = link
            .recv(0, "key proof")
            .map_err(|e| unknown(format!("no key proof: {e}")))?;
        let proof = match h.kind {
            Kind::Auth => {
                Auth::decode(&payload).map_err(|e| unknown(format!("bad key proof: {e}")))?
            }
            // The worker says why it will not answer (e.g. it has no key).
            Kind::Error => {
                return Err(link.peer_failed("answering rank 0's key challenge", &payload))
            }
            k => {
                let why = format!("authentication failed: rank 0 requires a pre-shared key, rank {rank} at {peer} sent {k:?}");
                return Err(refuse(link, peer, why));
            }
        };
        if !auth_ok(key, AUTH_WORKER, &hub_nonce, &hello_bytes, &proof.tag) {
            let why =
                format!("authentication failed: rank {rank} at {peer} does not hold rank 0's key");
            return Err(refuse(link, peer, why));
        }
    }
    Ok(Greeting {
        rank,
        hello,
        hub_nonce,
    })
}

/// A joined worker: keeps it alive until the session is ready (spec J4),
/// checks what it claims against the session, answers its hello and serves
/// its slice until it is ready.
fn serve_joined(link: &mut Link, g: &Greeting, lobby: &Lobby) -> Result<(), NetError> {
    let peer = &link.peer.to_string();
    link.set_timeout(lobby.opts.peer_timeout)?;
    let (id, slices) = wait_for_session(link, lobby)?;
    let (rank, hello) = (g.rank, &g.hello);
    // A worker that holds the model itself states what it runs: it must be
    // rank 0's model and plan (spec M1), else nothing about the session is sent.
    if hello.model_fingerprint != 0 && hello.model_fingerprint != id.fingerprint {
        let why = format!(
            "model fingerprint: rank 0 runs {:016x}, rank {rank} has {:016x}",
            id.fingerprint, hello.model_fingerprint
        );
        return Err(refuse(link, peer, why));
    }
    if hello.plan_hash != 0 && hello.plan_hash != id.plan_hash {
        let why = format!(
            "split plan: rank 0 uses {:016x}, rank {rank} computed {:016x}",
            id.plan_hash, hello.plan_hash
        );
        return Err(refuse(link, peer, why));
    }
    let ack = Hello {
        protocol_version: PROTOCOL_VERSION,
        world_size: id.world_size as u16,
        rank: 0,
        model_fingerprint: id.fingerprint,
        plan_hash: id.plan_hash,
        nonce: hello.nonce,
    }
    .encode();
    link.send(Kind::HelloAck, 0, 0, &ack)?;
    if let Some(key) = lobby.secret.as_deref() {
        let proof = Auth {
            nonce: g.hub_nonce,
            tag: auth_tag(key, AUTH_HUB, &hello.nonce, &ack),
        };
        link.send(Kind::Auth, 0, 0, &proof.encode())?;
    }
    // Serve the worker's slice until it says it is ready (Heartbeat).
    let path = slices.get(rank).ok_or_else(|| NetError::Protocol {
        peer: peer.to_string(),
        rank: Some(rank),
        what: "no slice for this rank".into(),
    })?;
    serve_files(link, path)
}

/// Heartbeats a joined worker until rank 0 publishes the session (spec
/// J4). Anything the worker sends meanwhile is its reason to leave.
fn wait_for_session(
    link: &mut Link,
    lobby: &Lobby,
) -> Result<(SessionId, Arc<Vec<PathBuf>>), NetError> {
    let mut last_beat: Option<Instant> = None;
    loop {
        match lobby.prepared() {
            Prepared::Ready(id, slices) => return Ok((id, slices)),
            Prepared::Closed => {
                let why = "rank 0 stopped before the session started";
                link.fail(0, why);
                return Err(NetError::Protocol {
                    peer: link.peer.to_string(),
                    rank: Some(link.rank),
                    what: why.into(),
                });
            }
            Prepared::Preparing => {}
        }
        if last_beat.is_none_or(|t| t.elapsed() >= HEARTBEAT) {
            link.send(Kind::Heartbeat, 0, 0, &[])?;
            last_beat = Some(Instant::now());
        }
        if link.readable_within(SESSION_POLL, lobby.opts.peer_timeout)? {
            let (h, payload) = link.recv(0, "waiting for the session")?;
            return Err(match h.kind {
                Kind::Error => {
                    link.peer_failed("waiting for rank 0 to prepare the session", &payload)
                }
                k => NetError::Protocol {
                    peer: link.peer.to_string(),
                    rank: Some(link.rank),
                    what: format!("sent {k:?} before the session started"),
                },
            });
        }
    }
}

/// Answers FileRequests for `path` until the worker sends a Heartbeat.
fn serve_files(link: &mut Link, path: &Path) -> Result<(), NetError> {
    let mut file =
        File::open(path).map_err(|e| link.io_err(format!("opening {}", path.display()), e))?;
    let size = file
        .metadata()
        .map_err(|e| link.io_err("stat slice", e))?
        .len();
    loop {
        let (h, payload) = link.recv(0, "file request")?;
        match h.kind {
            Kind::Heartbeat => return Ok(()),
            Kind::FileRequest => {
                let req = FileRequest::decode(&payload).map_err(|e| NetError::Protocol {
                    peer: link.peer.to_string(),
                    rank: Some(link.rank),
                    what: format!("bad file request: {e}"),
                })?;
                let len = req
                    .len
                    .min(size.saturating_sub(req.offset))
                    .min(FETCH_CHUNK);
                let mut data = vec![0u8; len as usize];
                file.seek(io::SeekFrom::Start(req.offset))
                    .and_then(|_| file.read_exact(&mut data))
                    .map_err(|e| link.io_err("reading slice", e))?;
                send_bytes(link, Kind::FileChunk, &data)?;
            }
            // The worker says why it stops (e.g. its disk is full).
            Kind::Error => return Err(link.peer_failed("serving its slice", &payload)),
            other => {
                return Err(NetError::Protocol {
                    peer: link.peer.to_string(),
                    rank: Some(link.rank),
                    what: format!("expected FileRequest or Heartbeat, got {other:?}"),
                })
            }
        }
    }
}

/// Bytes of slice file per request.
const FETCH_CHUNK: u64 = 4 << 20;

fn send_bytes(link: &mut Link, kind: Kind, data: &[u8]) -> Result<(), NetError> {
    let mut h = Header::new(kind, link.me, 0, 0);
    h.chunk_count = Header::chunks_for(data.len() as u64) as u16;
    h.total_len = data.len() as u32;
    let mut w = Counted {
        stream: &link.stream,
        n: &mut link.bytes_sent,
        spin: link.spin,
        deadline: link.deadline,
    };
    let chunks: Vec<&[u8]> = if data.is_empty() {
        vec![&[][..]]
    } else {
        data.chunks(MAX_PAYLOAD).collect()
    };
    for (i, c) in chunks.into_iter().enumerate() {
        h.chunk_index = i as u16;
        write_frame(&mut w, &h, c).map_err(|e| NetError::Io {
            peer: link.peer.to_string(),
            rank: Some(link.rank),
            what: "sending slice bytes".into(),
            source: e,
        })?;
    }
    Ok(())
}

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
    fn begin_step(&mut self, tokens: &[u32], pos: usize, want_logits: bool) -> crate::Result<()> {
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
        let payload = step
            .encode()
            .map_err(|e| crate::Error::Model(format!("step message: {e}")))?;
        for l in &mut self.links {
            l.send(Kind::Step, self.step, 0, &payload)?;
        }
        Ok(())
    }

    fn allreduce_sum(&mut self, x: &mut [f32], layer: usize, op: Op) -> crate::Result<()> {
        let seq = (2 * layer + usize::from(op == Op::Mlp)) as u32;
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

    fn gather_logits(&mut self, mine: &[f32], full: &mut [f32]) -> crate::Result<bool> {
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

// ------------------------------------------------------------- worker side

/// Pause before a worker tries again when rank 0 closed its connection
/// before answering (spec J5).
const RETRY: Duration = Duration::from_millis(200);

/// Resolves an address flag (`--master HOST:PORT`); fails at once, naming
/// the flag and its value.
pub fn resolve(flag: &'static str, value: &str) -> Result<Vec<SocketAddr>, NetError> {
    let err = |what, source| NetError::Address {
        flag,
        value: value.to_string(),
        what,
        source,
    };
    let addrs: Vec<SocketAddr> = value
        .to_socket_addrs()
        .map_err(|e| err("not a HOST:PORT that resolves", e))?
        .collect();
    if addrs.is_empty() {
        let none = io::Error::new(io::ErrorKind::NotFound, "no address");
        return Err(err("not a HOST:PORT that resolves", none));
    }
    Ok(addrs)
}

/// How one attempt to join ended, when not joined.
enum Attempt {
    /// Rank 0 closed the connection before it answered (it was full, spec
    /// J2): try again within the join deadline (spec J5).
    Again(NetError),
    Stop(NetError),
}

impl From<NetError> for Attempt {
    fn from(e: NetError) -> Attempt {
        Attempt::Stop(e)
    }
}

/// Connects to rank 0 (retrying until the join deadline) and says hello;
/// then waits, with the peer deadline per frame, while rank 0 prepares the
/// session (spec J4). Returns the link and the session rank 0 runs.
pub fn worker_join(
    master: &str,
    rank: usize,
    world_size: usize,
    secret: Option<&[u8]>,
    claim: Option<(u64, u64)>,
    opts: NetOpts,
) -> Result<(Link, SessionId), NetError> {
    let addrs = resolve("--master", master)?;
    let deadline = Instant::now() + opts.join_timeout;
    let me = Me {
        master,
        rank,
        world_size,
        secret,
        claim,
        opts,
        deadline,
    };
    loop {
        let stream = connect(&addrs, master, deadline, opts.join_timeout)?;
        match me.hello(stream) {
            Ok(joined) => return Ok(joined),
            Err(Attempt::Again(_)) if Instant::now() + RETRY < deadline => {
                std::thread::sleep(RETRY);
            }
            Err(Attempt::Again(e) | Attempt::Stop(e)) => return Err(e),
        }
    }
}

/// Connects to one of `addrs`, trying again until `deadline`.
fn connect(
    addrs: &[SocketAddr],
    master: &str,
    deadline: Instant,
    join_timeout: Duration,
) -> Result<TcpStream, NetError> {
    loop {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        for a in addrs {
            let left = deadline.saturating_duration_since(Instant::now());
            let t = left
                .min(Duration::from_secs(1))
                .max(Duration::from_millis(10));
            match TcpStream::connect_timeout(a, t) {
                Ok(s) => return Ok(s),
                Err(e) => last = e,
            }
        }
        if Instant::now() >= deadline {
            return Err(NetError::Io {
                peer: master.to_string(),
                rank: Some(0),
                what: format!("connecting for {:.1} s", join_timeout.as_secs_f64()),
                source: last,
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether an error means the connection was closed under us.
fn closed(e: &NetError) -> bool {
    matches!(e, NetError::Io { source, .. } if matches!(
        source.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    ))
}

/// A worker's side of the handshake.
struct Me<'a> {
    master: &'a str,
    rank: usize,
    world_size: usize,
    secret: Option<&'a [u8]>,
    claim: Option<(u64, u64)>,
    opts: NetOpts,
    deadline: Instant,
}

impl Me<'_> {
    fn protocol(&self, what: String) -> NetError {
        NetError::Protocol {
            peer: self.master.to_string(),
            rank: Some(0),
            what,
        }
    }

    /// Ends the handshake on a key set on one side only: tells rank 0
    /// (which names this rank), and returns the same words.
    fn one_sided(&self, link: &mut Link, worker_has_key: bool) -> NetError {
        let r = self.rank;
        let why = if worker_has_key {
            format!("authentication failed: rank {r} holds a pre-shared key but rank 0 has none (a key is set on one side only; give every rank the same TPI_SECRET or --secret-file)")
        } else {
            format!("authentication failed: rank 0 requires a pre-shared key but rank {r} has none (a key is set on one side only; give every rank the same TPI_SECRET or --secret-file)")
        };
        link.fail(0, &why);
        self.protocol(why)
    }

    fn hello(&self, stream: TcpStream) -> Result<(Link, SessionId), Attempt> {
        let (rank, world_size, master) = (self.rank, self.world_size, self.master);
        let mut link =
            Link::new(stream, 0, rank, self.opts.join_timeout).map_err(|e| NetError::Io {
                peer: master.into(),
                rank: Some(0),
                what: "socket".into(),
                source: e,
            })?;
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            world_size: world_size as u16,
            rank: rank as u16,
            model_fingerprint: self.claim.map_or(0, |c| c.0),
            plan_hash: self.claim.map_or(0, |c| c.1),
            nonce: nonce(),
        };
        let hello_bytes = hello.encode();
        // Rank 0's first answer comes within the join deadline; a
        // connection closed before it is rank 0 being full (spec J5).
        link.set_deadline(Some(self.deadline));
        let again = |e: NetError| {
            if closed(&e) {
                Attempt::Again(e)
            } else {
                Attempt::Stop(e)
            }
        };
        link.send(Kind::Hello, 0, 0, &hello_bytes).map_err(again)?;
        let mut frame = link.recv(0, "hello answer").map_err(again)?;
        link.set_deadline(None);
        link.set_timeout(self.opts.peer_timeout)?;
        let mut proved = false;
        let payload = loop {
            let (h, payload) = frame;
            match (h.kind, self.secret) {
                // Spec J4: rank 0 still prepares the session.
                (Kind::Heartbeat, None) => {}
                (Kind::Heartbeat, Some(_)) if proved => {}
                // Spec M6: answer rank 0's challenge with proof of the key.
                (Kind::Auth, Some(key)) if !proved => {
                    let challenge = Auth::decode(&payload)
                        .map_err(|e| self.protocol(format!("bad challenge: {e}")))?;
                    let tag = auth_tag(key, AUTH_WORKER, &challenge.nonce, &hello_bytes);
                    let proof = Auth {
                        nonce: hello.nonce,
                        tag,
                    };
                    link.send(Kind::Auth, 0, 0, &proof.encode())?;
                    proved = true;
                }
                (Kind::Auth, None) => return Err(self.one_sided(&mut link, false).into()),
                (Kind::Heartbeat | Kind::HelloAck, Some(_)) if !proved => {
                    return Err(self.one_sided(&mut link, true).into())
                }
                (Kind::HelloAck, _) => break payload,
                (Kind::Reject, _) => {
                    return Err(match Reject::decode(&payload) {
                        Ok(r) => NetError::Rejected {
                            peer: master.to_string(),
                            reason: r.reason,
                        },
                        Err(e) => self.protocol(format!("bad reject: {e}")),
                    }
                    .into())
                }
                (Kind::Error, _) => {
                    return Err(link
                        .peer_failed("answering this worker's hello", &payload)
                        .into())
                }
                (k, _) => {
                    return Err(self
                        .protocol(format!("expected HelloAck, got {k:?}"))
                        .into())
                }
            }
            frame = link.recv(0, "waiting for rank 0 to prepare the session")?;
        };
        if let Some(key) = self.secret {
            let (h2, p2) = link.recv(0, "rank 0's key proof")?;
            let proof = match h2.kind {
                Kind::Auth => {
                    Auth::decode(&p2).map_err(|e| self.protocol(format!("bad key proof: {e}")))?
                }
                k => {
                    let what = format!("expected rank 0's key proof, got {k:?}");
                    return Err(self.protocol(what).into());
                }
            };
            if !auth_ok(key, AUTH_HUB, &hello.nonce, &payload, &proof.tag) {
                link.fail(0, "authentication failed: rank 0's proof does not match");
                let what = "authentication failed: rank 0 does not hold this worker's key";
                return Err(self.protocol(what.into()).into());
            }
        }
        let ack =
            Hello::decode(&payload).map_err(|e| self.protocol(format!("bad hello ack: {e}")))?;
        if ack.protocol_version != PROTOCOL_VERSION
            || ack.world_size as usize != world_size
            || ack.nonce != hello.nonce
        {
            return Err(self
                .protocol(format!(
                    "hello ack mismatch: protocol {} vs ours {PROTOCOL_VERSION}, world size {} vs ours {world_size}",
                    ack.protocol_version, ack.world_size
                ))
                .into());
        }
        let id = SessionId {
            world_size,
            fingerprint: ack.model_fingerprint,
            plan_hash: ack.plan_hash,
        };
        Ok((link, id))
    }
}

/// Fetches rank 0's slice file into `path` (spec J7): first its head
/// (preamble and manifest, whose blocks give the file's size), then the
/// rest into `path.partial`, resuming from its current length, never past
/// that size; then renamed. The caller verifies it. Returns the bytes
/// fetched. A full disk is this worker's error, named with the file.
pub fn fetch_slice(
    link: &mut Link,
    path: &Path,
    progress: &mut dyn Progress,
) -> crate::Result<u64> {
    let (head, size) = fetch_head(link)?;
    let partial = path.with_extension("partial");
    let disk = |what: &str, source: io::Error| crate::Error::Io {
        path: format!("{what} {}", partial.display()),
        source,
    };
    if let Some(dir) = partial.parent() {
        std::fs::create_dir_all(dir).map_err(|e| disk("creating the directory of", e))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&partial)
        .map_err(|e| disk("opening", e))?;
    let mut offset = file.metadata().map_err(|e| disk("stat", e))?.len();
    if offset > size {
        // A partial longer than the slice is from another session.
        file.set_len(0).map_err(|e| disk("truncating", e))?;
        offset = 0;
    }
    let resumed_at = offset;
    // Large writes leave the slice in the page cache in large folios,
    // which a mapped memory window maps several times faster.
    let mut out = crate::slice::LargeWriter::new(file, offset);
    progress.begin("downloading slice", size);
    if let Some(rest) = head
        .get(offset as usize..)
        .filter(|_| offset < head.len() as u64)
    {
        out.write_all(rest).map_err(|e| disk("writing slice", e))?;
        offset = head.len() as u64;
    }
    progress.update(offset);
    while offset < size {
        let want = (size - offset).min(FETCH_CHUNK);
        request(link, offset, want, size, &mut |b| {
            out.write_all(b).map_err(|e| disk("writing slice", e))
        })?;
        offset += want;
        progress.update(offset);
    }
    let file = out.into_file().map_err(|e| disk("writing slice", e))?;
    file.sync_all().map_err(|e| disk("syncing slice", e))?;
    drop(file);
    std::fs::rename(&partial, path).map_err(|e| disk("renaming", e))?;
    progress.end();
    Ok(offset - resumed_at)
}

/// Fetches a slice's preamble and manifest; returns those bytes and the
/// size of the file they describe: the end of its last block (spec J7).
fn fetch_head(link: &mut Link) -> crate::Result<(Vec<u8>, u64)> {
    use crate::slice::{decode_manifest, SliceError, MAGIC, MAX_MANIFEST, PREAMBLE_LEN};
    let peer = link.peer.to_string();
    let what = || "rank 0's slice".to_string();
    let bad = |source| NetError::SliceHead {
        peer: peer.clone(),
        source: Box::new(source),
    };
    let mut head = Vec::with_capacity(PREAMBLE_LEN);
    request(
        link,
        0,
        PREAMBLE_LEN as u64,
        PREAMBLE_LEN as u64,
        &mut |b| {
            head.extend_from_slice(b);
            Ok(())
        },
    )?;
    let pre: [u8; PREAMBLE_LEN] = head
        .as_slice()
        .try_into()
        .map_err(|_| bad(SliceError::BadMagic { path: what() }))?;
    if pre[..8] != MAGIC {
        return Err(bad(SliceError::BadMagic { path: what() }).into());
    }
    let le64 = |b: &[u8]| {
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        u64::from_le_bytes(a)
    };
    let (mlen, stored) = (le64(&pre[16..24]), le64(&pre[24..32]));
    // The manifest's length is checked against its maximum before any
    // request; its bytes land in `head` only as they arrive.
    if mlen == 0 || mlen > MAX_MANIFEST {
        let e = SliceError::ManifestTooLarge {
            path: what(),
            len: mlen,
            max: MAX_MANIFEST,
        };
        return Err(bad(e).into());
    }
    let mut at = PREAMBLE_LEN as u64;
    let end = at + mlen;
    while at < end {
        let want = (end - at).min(FETCH_CHUNK);
        request(link, at, want, end, &mut |b| {
            head.extend_from_slice(b);
            Ok(())
        })?;
        at += want;
    }
    let manifest = head.get(PREAMBLE_LEN..).unwrap_or_default();
    let computed = crate::net::checksum::checksum64(manifest);
    if computed != stored {
        let e = SliceError::ManifestChecksum {
            path: what(),
            stored,
            computed,
        };
        return Err(bad(e).into());
    }
    let m = decode_manifest(manifest).map_err(bad)?;
    let size = m
        .blocks
        .iter()
        .map(|b| b.offset.saturating_add(b.len))
        .max()
        .unwrap_or(0)
        .max(end);
    Ok((head, size))
}

/// Asks rank 0 for `len` bytes at `offset` of the slice (announced to be
/// `announced` bytes) and hands them to `sink` frame by frame. Refuses an
/// answer longer than asked (spec J7), never allocating from its length.
fn request(
    link: &mut Link,
    offset: u64,
    len: u64,
    announced: u64,
    sink: &mut dyn FnMut(&[u8]) -> crate::Result<()>,
) -> crate::Result<()> {
    link.send(
        Kind::FileRequest,
        0,
        0,
        &FileRequest { offset, len }.encode(),
    )?;
    let mut got = 0u64;
    let mut expect_index = 0u16;
    loop {
        let (h, payload) = link.recv(0, "slice bytes")?;
        let bad = |what: String| NetError::Protocol {
            peer: link.peer.to_string(),
            rank: Some(0),
            what,
        };
        if h.kind == Kind::Error {
            return Err(link
                .peer_failed("sending this worker's slice", &payload)
                .into());
        }
        if h.kind != Kind::FileChunk || h.chunk_index != expect_index {
            return Err(bad(format!(
                "unexpected {:?} chunk {}/{} of {} bytes",
                h.kind, h.chunk_index, h.chunk_count, h.total_len
            ))
            .into());
        }
        let offered = u64::from(h.total_len);
        if offered > len {
            return Err(NetError::Oversized {
                peer: link.peer.to_string(),
                offset,
                asked: len,
                offered,
                announced,
            }
            .into());
        }
        if offered < len {
            return Err(bad(format!(
                "sent {offered} bytes at offset {offset} where {len} were asked for: \
                 its slice is shorter than the {announced} bytes its manifest announces"
            ))
            .into());
        }
        sink(&payload)?;
        got += payload.len() as u64;
        if h.chunk_index + 1 == h.chunk_count {
            return if got == len {
                Ok(())
            } else {
                Err(bad(format!("sent {got} of {len} bytes at offset {offset}")).into())
            };
        }
        expect_index += 1;
    }
}

/// Tells rank 0 this worker has its slice and is ready.
pub fn worker_ready(link: &mut Link, peer_timeout: Duration) -> Result<(), NetError> {
    link.send(Kind::Heartbeat, 0, 0, &[])?;
    link.set_timeout(peer_timeout)
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
    fn allreduce_sum(&mut self, x: &mut [f32], layer: usize, op: Op) -> crate::Result<()> {
        let seq = (2 * layer + usize::from(op == Op::Mlp)) as u32;
        self.link.send_f32s(Kind::Partial, self.step, seq, x)?;
        self.link.recv_f32s(Kind::Reduced, self.step, seq, x)?;
        Ok(())
    }

    fn gather_logits(&mut self, mine: &[f32], _full: &mut [f32]) -> crate::Result<bool> {
        self.link.send_f32s(Kind::Logits, self.step, 0, mine)?;
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hub link and a worker over loopback.
    fn pair() -> (Link, WorkerComm) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        let t = Duration::from_secs(5);
        let hub = Link::new(server, 1, 0, t).expect("hub link");
        let worker = Link::new(client, 0, 1, t).expect("worker link");
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

    /// Records what a download reports.
    #[derive(Default)]
    struct Recorded {
        total: u64,
        last: u64,
        ended: bool,
    }

    impl Progress for Recorded {
        fn begin(&mut self, _: &str, total: u64) {
            self.total = total;
        }
        fn update(&mut self, done: u64) {
            assert!(done >= self.last, "progress went back");
            self.last = done;
        }
        fn end(&mut self) {
            self.ended = true;
        }
    }

    /// Rank 1's slice of the bundled test model, written into `dir`.
    fn a_slice(dir: &Path) -> PathBuf {
        let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stories260K");
        let ckpt = crate::checkpoint::Checkpoint::open_dir(&model).expect("model");
        let plan = crate::tp::plan_for(&ckpt.config, 2, None).expect("plan");
        let path = dir.join("served.slice");
        crate::slice::write_slice(&ckpt, &plan, 1, &path).expect("slice");
        path
    }

    /// A hub link and a worker's raw link over loopback.
    fn raw_pair() -> (Link, Link) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        let t = Duration::from_secs(5);
        let hub = Link::new(server, 1, 0, t).expect("hub link");
        let worker = Link::new(client, 0, 1, t).expect("worker link");
        (hub, worker)
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tpi-cluster-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    }

    #[test]
    fn fetched_slice_is_the_manifest_size_and_reports_progress() {
        let dir = temp_dir("fetch");
        let served = a_slice(&dir);
        let (mut hub, mut worker) = raw_pair();
        let src = served.clone();
        let t = std::thread::spawn(move || serve_files(&mut hub, &src));
        let got = dir.join("fetched.slice");
        let mut progress = Recorded::default();
        fetch_slice(&mut worker, &got, &mut progress).expect("fetch");
        worker_ready(&mut worker, Duration::from_secs(5)).expect("ready");
        t.join().expect("hub").expect("served");
        let (a, b) = (
            std::fs::read(&served).expect("served"),
            std::fs::read(&got).expect("got"),
        );
        assert!(a == b, "fetched bytes differ from the served slice");
        assert_eq!(
            (progress.total, progress.last),
            (a.len() as u64, a.len() as u64)
        );
        assert!(progress.ended);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn worker_refuses_more_slice_bytes_than_asked_for() {
        let dir = temp_dir("oversized");
        let served = a_slice(&dir);
        let bytes = std::fs::read(&served).expect("served");
        let size = bytes.len() as u64;
        let (mut hub, mut worker) = raw_pair();
        // A rank 0 that answers the head honestly, then offers 1 MiB more
        // than each request.
        let t = std::thread::spawn(move || {
            let head_len = crate::slice::PREAMBLE_LEN as u64;
            loop {
                let Ok((_, p)) = hub.recv(0, "request") else {
                    return;
                };
                let req = FileRequest::decode(&p).expect("request");
                let extra = if req.offset <= head_len { 0 } else { 1 << 20 };
                let start = req.offset as usize;
                let end = (req.offset + req.len) as usize;
                let mut data = bytes.get(start..end).expect("in file").to_vec();
                data.resize(data.len() + extra, 0);
                if send_bytes(&mut hub, Kind::FileChunk, &data).is_err() {
                    return;
                }
            }
        });
        let err = fetch_slice(
            &mut worker,
            &dir.join("fetched.slice"),
            &mut Recorded::default(),
        )
        .expect_err("refused")
        .to_string();
        drop(worker);
        let _ = t.join();
        assert!(
            err.contains("rank 0 at 127.0.0.1")
                && err.contains(&format!("the slice its manifest announces is {size} bytes"))
                && err.contains("offered"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
