//! Rank 0's side of joining: [`HubListener`], its lobby and the accepting
//! and join threads (spec J1-J4, M1, M6).
//!
//! Data flow: [`HubListener::open`] binds the port and starts `accept_loop`,
//! which `admit`s each connection onto its own `join_thread` (so junk on
//! the port never blocks a real worker) while a pending `Slot` is free
//! (spec J2). The thread runs `claim_rank` (`greet`: Hello
//! and key proof within the hello deadline, spec J3; then the rank is held)
//! and `serve_joined` (`wait_for_session` heartbeats until rank 0 publishes
//! the session, spec J4; the HelloAck and rank 0's proof; then
//! `serve_files`). Each thread reports to rank 0's main thread through a
//! `JoinEvent`; [`HubListener::join`] collects the ready links.

use super::{resolve, SessionId};
use crate::net::auth::{auth_ok, auth_tag, nonce, Secret, AUTH_HUB, AUTH_WORKER};
use crate::net::error::NetError;
use crate::net::frame::{Kind, PROTOCOL_VERSION};
use crate::net::link::{Link, NetOpts};
use crate::net::msg::{Auth, Hello, Reject};
use crate::net::transfer::serve_files;
use crate::net::wire::WireDtype;
use crate::net::{HEARTBEAT, MAX_PENDING};
use crate::progress::Observer;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    observer: Arc<dyn Observer>,
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

    /// A connection that never joined was dropped: a warning when it
    /// failed to authenticate, else a note; kept for the join timeout's
    /// message.
    fn dropped(&self, e: &NetError) {
        let text = e.to_string();
        if text.contains("authentication failed") {
            self.observer.warn(&format!("rank 0: {text}"));
        } else {
            self.observer
                .note(0, &format!("dropped a connection: {text}"));
        }
        if let Ok(mut f) = self.last_failure.lock() {
            *f = Some(text);
        }
    }

    /// The session's allreduce payload type: rank 0's choice (spec W1).
    fn wire(&self) -> WireDtype {
        self.opts.wire.unwrap_or_default()
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
        observer: Arc<dyn Observer>,
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
            observer,
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
    // Spec J8: a worker started with --wire-dtype must ask for rank 0's.
    let wire = lobby.wire();
    if let Some(asked) = hello.wire_dtype.filter(|&d| d != wire) {
        let why = format!("wire dtype: rank 0 uses {wire}, rank {rank} was started with {asked}");
        return Err(refuse(link, peer, why));
    }
    link.wire = wire;
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
        wire_dtype: Some(lobby.wire()),
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
