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
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::ops::Range;
use std::path::{Path, PathBuf};
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
        }
    }
}

impl std::error::Error for NetError {}

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
        })
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
            Err(FrameError::UnexpectedKind {
                got: Kind::Error, ..
            }) => Err(NetError::Protocol {
                peer: self.peer.to_string(),
                rank: Some(self.rank),
                what: "sent an error and left".into(),
            }),
            Err(e) => Err(self.frame_err(
                step,
                format!("waiting for {kind:?} of {}", describe_seq(seq)),
                e,
            )),
        }
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

/// What a handshake thread tells the join loop.
enum JoinEvent {
    /// A worker's hello (and key proof) checked out; it holds `rank`.
    Joined(usize),
    /// The worker has its slice and waits for the first step.
    Ready(Link),
    /// The connection was dropped (junk, mismatch, failed authentication).
    Failed(NetError),
}

/// Waits until ranks 1..N-1 have joined, serving slice files meanwhile.
/// `slices[r]` is the slice file of rank r. The join deadline bounds the
/// time until every worker has said a valid hello; slice transfers then run
/// under the per-operation peer deadline. Joined workers get a heartbeat
/// every second while others are still on their way.
pub fn hub_join(
    listener: &TcpListener,
    id: SessionId,
    slices: Vec<PathBuf>,
    secret: Option<Secret>,
    opts: NetOpts,
    quiet: bool,
) -> Result<Vec<Link>, NetError> {
    let n = id.world_size;
    listener.set_nonblocking(true).map_err(|e| NetError::Io {
        peer: "listener".into(),
        rank: None,
        what: "listen".into(),
        source: e,
    })?;
    let claimed = Arc::new(Mutex::new(vec![false; n]));
    let slices = Arc::new(slices);
    let (tx, rx) = mpsc::channel::<JoinEvent>();
    let mut joined = vec![false; n];
    let mut links: Vec<Option<Link>> = (0..n).map(|_| None).collect();
    let mut last_failure: Option<String> = None;
    let start = Instant::now();
    let mut last_beat = Instant::now();
    while links.iter().skip(1).any(Option::is_none) {
        if start.elapsed() > opts.join_timeout && joined.iter().skip(1).any(|j| !j) {
            let missing = (1..n).filter(|&r| !joined[r]).collect();
            if let Some(f) = last_failure {
                return Err(NetError::Protocol { peer: "join".into(), rank: None, what: format!("ranks {missing:?} did not join within {:.1} s; last refused connection: {f}", opts.join_timeout.as_secs_f64()) });
            }
            return Err(NetError::JoinTimeout {
                waited: start.elapsed(),
                missing,
            });
        }
        match listener.accept() {
            Ok((stream, _)) => {
                let (tx, claimed, slices, secret) =
                    (tx.clone(), claimed.clone(), slices.clone(), secret.clone());
                let _ = stream.set_nonblocking(false);
                std::thread::spawn(move || {
                    let res =
                        hub_handshake(stream, id, &claimed, &slices, secret.as_deref(), opts, &tx);
                    let _ = tx.send(match res {
                        Ok(link) => JoinEvent::Ready(link),
                        Err(e) => JoinEvent::Failed(e),
                    });
                });
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                return Err(NetError::Io {
                    peer: "listener".into(),
                    rank: None,
                    what: "accept".into(),
                    source: e,
                })
            }
        }
        while let Ok(ev) = rx.try_recv() {
            match ev {
                JoinEvent::Joined(r) => joined[r] = true,
                JoinEvent::Ready(link) => {
                    let r = link.rank;
                    joined[r] = true;
                    links[r] = Some(link);
                }
                JoinEvent::Failed(e) => {
                    // A worker that failed after joining is a real failure.
                    if let NetError::Rejected { .. }
                    | NetError::Protocol { .. }
                    | NetError::Io { .. }
                    | NetError::Frame { .. } = &e
                    {
                        let text = e.to_string();
                        if text.contains("authentication failed") {
                            eprintln!("[tpi] rank 0: {text}");
                        } else if !quiet {
                            eprintln!("[tpi] rank 0: dropped a connection: {text}");
                        }
                        last_failure = Some(text);
                    }
                    let c = claimed.lock().map(|c| c.clone()).unwrap_or_default();
                    for r in 1..n {
                        if joined[r] && !c[r] && links[r].is_none() {
                            return Err(e);
                        }
                    }
                }
            }
        }
        if last_beat.elapsed() > Duration::from_secs(1) {
            last_beat = Instant::now();
            for l in links.iter_mut().flatten() {
                l.send(Kind::Heartbeat, 0, 0, &[])?;
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut out = Vec::with_capacity(n - 1);
    for link in links.into_iter().skip(1).flatten() {
        link.set_timeout(opts.peer_timeout)?;
        out.push(link);
    }
    Ok(out)
}

fn hub_handshake(
    stream: TcpStream,
    id: SessionId,
    claimed: &Mutex<Vec<bool>>,
    slices: &[PathBuf],
    secret: Option<&[u8]>,
    opts: NetOpts,
    events: &mpsc::Sender<JoinEvent>,
) -> Result<Link, NetError> {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    let mut link = Link::new(stream, 0, 0, opts.hello_timeout).map_err(|e| NetError::Io {
        peer: peer.clone(),
        rank: None,
        what: "configuring socket".into(),
        source: e,
    })?;
    let unknown = |what: String| NetError::Protocol {
        peer: peer.clone(),
        rank: None,
        what,
    };
    // The first frame must be a Hello, within the hello deadline. A frame
    // header is read and checked before any payload, so junk costs at most
    // 40 bytes (spec F1-F8).
    let (h, hello_bytes) = link
        .recv(0, "hello")
        .map_err(|e| unknown(format!("no valid hello: {e}")))?;
    if h.kind != Kind::Hello {
        return Err(unknown(format!("expected Hello, got {:?}", h.kind)));
    }
    let hello = Hello::decode(&hello_bytes).map_err(|e| unknown(format!("bad hello: {e}")))?;
    let rank = hello.rank as usize;
    let refuse = |link: &mut Link, why: String| -> NetError {
        let _ = link.send(
            Kind::Reject,
            0,
            0,
            &Reject::truncated(&why).encode().unwrap_or_default(),
        );
        NetError::Rejected {
            peer: peer.clone(),
            reason: why,
        }
    };
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err(refuse(
            &mut link,
            format!(
                "protocol version: rank 0 speaks {PROTOCOL_VERSION}, rank {rank} speaks {}",
                hello.protocol_version
            ),
        ));
    }
    if hello.world_size as usize != id.world_size {
        return Err(refuse(
            &mut link,
            format!(
                "world size: rank 0 has {}, rank {rank} has {}",
                id.world_size, hello.world_size
            ),
        ));
    }
    if rank == 0 || rank >= id.world_size {
        return Err(refuse(
            &mut link,
            format!(
                "rank {rank} is not a worker rank of a world of {}",
                id.world_size
            ),
        ));
    }
    // Spec M6: the worker proves the key before it learns anything.
    let hub_nonce = nonce();
    if let Some(key) = secret {
        link.send(
            Kind::Auth,
            0,
            0,
            &Auth {
                nonce: hub_nonce,
                tag: [0; 32],
            }
            .encode(),
        )?;
        let (h, payload) = link
            .recv(0, "key proof")
            .map_err(|e| unknown(format!("no key proof: {e}")))?;
        let proof = match h.kind {
            Kind::Auth => Auth::decode(&payload).map_err(|e| unknown(format!("bad key proof: {e}")))?,
            k => return Err(refuse(&mut link, format!("authentication failed: rank 0 requires a pre-shared key, rank {rank} at {peer} sent {k:?}"))),
        };
        if !auth_ok(key, AUTH_WORKER, &hub_nonce, &hello_bytes, &proof.tag) {
            return Err(refuse(
                &mut link,
                format!("authentication failed: rank {rank} at {peer} does not hold rank 0's key"),
            ));
        }
    }
    // A worker that holds the model itself states what it runs: it must be
    // rank 0's model and plan (spec M1), else nothing about the session is sent.
    if hello.model_fingerprint != 0 && hello.model_fingerprint != id.fingerprint {
        return Err(refuse(
            &mut link,
            format!(
                "model fingerprint: rank 0 runs {:016x}, rank {rank} has {:016x}",
                id.fingerprint, hello.model_fingerprint
            ),
        ));
    }
    if hello.plan_hash != 0 && hello.plan_hash != id.plan_hash {
        return Err(refuse(
            &mut link,
            format!(
                "split plan: rank 0 uses {:016x}, rank {rank} computed {:016x}",
                id.plan_hash, hello.plan_hash
            ),
        ));
    }
    {
        let mut c = claimed
            .lock()
            .map_err(|_| unknown("join state poisoned".into()))?;
        if c[rank] {
            drop(c);
            return Err(refuse(&mut link, format!("rank {rank} has already joined")));
        }
        c[rank] = true;
    }
    let _ = events.send(JoinEvent::Joined(rank));
    link.rank = rank;
    let ack = Hello {
        protocol_version: PROTOCOL_VERSION,
        world_size: id.world_size as u16,
        rank: 0,
        model_fingerprint: id.fingerprint,
        plan_hash: id.plan_hash,
        nonce: hello.nonce,
    };
    let res = (|| {
        let ack = ack.encode();
        link.send(Kind::HelloAck, 0, 0, &ack)?;
        if let Some(key) = secret {
            let tag = auth_tag(key, AUTH_HUB, &hello.nonce, &ack);
            link.send(
                Kind::Auth,
                0,
                0,
                &Auth {
                    nonce: hub_nonce,
                    tag,
                }
                .encode(),
            )?;
        }
        // Serve the worker's slice until it says it is ready (Heartbeat).
        link.set_timeout(opts.peer_timeout)?;
        serve_files(&mut link, &slices[rank])
    })();
    match res {
        Ok(()) => Ok(link),
        Err(e) => {
            if let Ok(mut c) = claimed.lock() {
                c[rank] = false;
            }
            Err(e)
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

/// Connects to rank 0 (retrying until the join deadline) and says hello.
/// Returns the link and the session rank 0 runs.
pub fn worker_join(
    master: &str,
    rank: usize,
    world_size: usize,
    secret: Option<&[u8]>,
    claim: Option<(u64, u64)>,
    opts: NetOpts,
) -> Result<(Link, SessionId), NetError> {
    let start = Instant::now();
    let stream = loop {
        match connect_once(master) {
            Ok(s) => break s,
            Err(source) if start.elapsed() > opts.join_timeout => {
                return Err(NetError::Io {
                    peer: master.to_string(),
                    rank: Some(0),
                    what: format!("connecting for {:.0} s", opts.join_timeout.as_secs_f64()),
                    source,
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let mut link = Link::new(stream, 0, rank, opts.join_timeout).map_err(|e| NetError::Io {
        peer: master.into(),
        rank: Some(0),
        what: "socket".into(),
        source: e,
    })?;
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        world_size: world_size as u16,
        rank: rank as u16,
        model_fingerprint: claim.map_or(0, |c| c.0),
        plan_hash: claim.map_or(0, |c| c.1),
        nonce: nonce(),
    };
    let hello_bytes = hello.encode();
    link.send(Kind::Hello, 0, 0, &hello_bytes)?;
    let protocol = |what: String| NetError::Protocol {
        peer: master.to_string(),
        rank: Some(0),
        what,
    };
    let rejected = |payload: &[u8]| match Reject::decode(payload) {
        Ok(r) => NetError::Rejected {
            peer: master.to_string(),
            reason: r.reason,
        },
        Err(e) => protocol(format!("bad reject: {e}")),
    };
    let (mut h, mut payload) = link.recv(0, "hello answer")?;
    // Spec M6: answer rank 0's challenge with proof of the key.
    match (h.kind, secret) {
        (Kind::Auth, Some(key)) => {
            let challenge =
                Auth::decode(&payload).map_err(|e| protocol(format!("bad challenge: {e}")))?;
            let tag = auth_tag(key, AUTH_WORKER, &challenge.nonce, &hello_bytes);
            link.send(
                Kind::Auth,
                0,
                0,
                &Auth {
                    nonce: hello.nonce,
                    tag,
                }
                .encode(),
            )?;
            (h, payload) = link.recv(0, "hello answer")?;
        }
        (Kind::Auth, None) => {
            return Err(protocol("authentication failed: rank 0 requires a pre-shared key (set TPI_SECRET or --secret-file)".into()));
        }
        (Kind::HelloAck, Some(_)) => {
            return Err(protocol("authentication failed: rank 0 did not ask for the pre-shared key this worker holds".into()));
        }
        _ => {}
    }
    match h.kind {
        Kind::HelloAck => {}
        Kind::Reject => return Err(rejected(&payload)),
        k => return Err(protocol(format!("expected HelloAck, got {k:?}"))),
    }
    if let Some(key) = secret {
        let (h2, p2) = link.recv(0, "rank 0's key proof")?;
        let proof = match h2.kind {
            Kind::Auth => Auth::decode(&p2).map_err(|e| protocol(format!("bad key proof: {e}")))?,
            k => return Err(protocol(format!("expected rank 0's key proof, got {k:?}"))),
        };
        if !auth_ok(key, AUTH_HUB, &hello.nonce, &payload, &proof.tag) {
            let _ = link.send(
                Kind::Error,
                0,
                0,
                &Reject::truncated("authentication failed: rank 0's proof does not match")
                    .encode()
                    .unwrap_or_default(),
            );
            return Err(protocol(
                "authentication failed: rank 0 does not hold this worker's key".into(),
            ));
        }
    }
    let ack = Hello::decode(&payload).map_err(|e| protocol(format!("bad hello ack: {e}")))?;
    if ack.protocol_version != PROTOCOL_VERSION
        || ack.world_size as usize != world_size
        || ack.nonce != hello.nonce
    {
        return Err(protocol(format!(
            "hello ack mismatch: protocol {} vs ours {PROTOCOL_VERSION}, world size {} vs ours {world_size}",
            ack.protocol_version, ack.world_size
        )));
    }
    Ok((
        link,
        SessionId {
            world_size,
            fingerprint: ack.model_fingerprint,
            plan_hash: ack.plan_hash,
        },
    ))
}

fn connect_once(master: &str) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "address did not resolve");
    for a in master.to_socket_addrs()? {
        match TcpStream::connect_timeout(&a, Duration::from_secs(1)) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Fetches rank 0's slice file into `path`: into `path.partial`, resuming
/// from its current length, then renamed. The caller verifies it.
pub fn fetch_slice(link: &mut Link, path: &Path) -> Result<u64, NetError> {
    let partial = path.with_extension("partial");
    let io = |what: &str, e: io::Error| NetError::Io {
        peer: partial.display().to_string(),
        rank: None,
        what: what.into(),
        source: e,
    };
    if let Some(dir) = partial.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io("creating cache dir", e))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&partial)
        .map_err(|e| io("opening", e))?;
    let mut offset = file.metadata().map_err(|e| io("stat", e))?.len();
    // Large writes leave the slice in the page cache in large folios,
    // which a mapped memory window maps several times faster.
    let mut file = crate::slice::LargeWriter::new(file, offset);
    let mut fetched = 0;
    loop {
        let req = FileRequest {
            offset,
            len: FETCH_CHUNK,
        };
        link.send(Kind::FileRequest, 0, 0, &req.encode())?;
        let got = recv_bytes_into(link, &mut file, FETCH_CHUNK)?;
        offset += got;
        fetched += got;
        if got < FETCH_CHUNK {
            break;
        }
    }
    let file = file.into_file().map_err(|e| io("writing slice", e))?;
    file.sync_all().map_err(|e| io("sync", e))?;
    drop(file);
    std::fs::rename(&partial, path).map_err(|e| io("rename", e))?;
    Ok(fetched)
}

/// Receives one FileChunk message (at most `max` bytes) into `out`.
fn recv_bytes_into(link: &mut Link, out: &mut impl Write, max: u64) -> Result<u64, NetError> {
    let mut written = 0u64;
    let mut expect_index = 0u16;
    loop {
        let (h, payload) = link.recv(0, "slice bytes")?;
        let bad = |what: String| NetError::Protocol {
            peer: link.peer.to_string(),
            rank: Some(0),
            what,
        };
        if h.kind == Kind::Error {
            let r = Reject::decode(&payload)
                .map(|r| r.reason)
                .unwrap_or_default();
            return Err(bad(format!("rank 0 could not serve the slice: {r}")));
        }
        if h.kind != Kind::FileChunk
            || h.chunk_index != expect_index
            || u64::from(h.total_len) > max
        {
            return Err(bad(format!(
                "unexpected {:?} chunk {}/{} of {} bytes",
                h.kind, h.chunk_index, h.chunk_count, h.total_len
            )));
        }
        out.write_all(&payload)
            .map_err(|e| link.io_err("writing slice", e))?;
        written += payload.len() as u64;
        if h.chunk_index + 1 == h.chunk_count {
            return Ok(written);
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
        let payload = Reject::truncated(reason).encode().unwrap_or_default();
        let _ = self.link.send(Kind::Error, self.step, 0, &payload);
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
            Kind::Error => {
                let r = Reject::decode(&payload)
                    .map(|r| r.reason)
                    .unwrap_or_default();
                Err(bad(format!("rank 0 stopped the session: {r}"), &self.link))
            }
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
}
