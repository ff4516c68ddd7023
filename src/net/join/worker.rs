//! A worker's side of joining: [`worker_join`] (spec J4, J5, M1, M6).
//!
//! Data flow: `resolve` the `--master` address, then per attempt `connect`
//! (retrying until the join deadline) and `Me::hello`: send the Hello, read
//! rank 0's first answer within the join deadline, answer its key challenge,
//! wait through its heartbeats while it prepares the session, check its
//! HelloAck and key proof. A connection closed before rank 0's first answer
//! (it was full, spec J2) is an `Attempt::Again`, tried anew after `RETRY`.

use super::{resolve, SessionId};
use crate::net::auth::{auth_ok, auth_tag, nonce, AUTH_HUB, AUTH_WORKER};
use crate::net::error::NetError;
use crate::net::frame::{Kind, PROTOCOL_VERSION};
use crate::net::link::{Link, NetOpts};
use crate::net::msg::{Auth, Hello, Reject};
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Pause before a worker tries again when rank 0 closed its connection
/// before answering (spec J5).
const RETRY: Duration = Duration::from_millis(200);

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
            wire_dtype: self.opts.wire,
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
        // Spec J8: rank 0 states its wire dtype; a worker started with
        // another one stops (rank 0 refuses it first).
        let Some(wire) = ack.wire_dtype else {
            return Err(self
                .protocol("hello ack states no wire dtype".into())
                .into());
        };
        if let Some(mine) = self.opts.wire.filter(|&d| d != wire) {
            let why =
                format!("wire dtype: rank 0 uses {wire}, rank {rank} was started with {mine}");
            link.fail(0, &why);
            return Err(self.protocol(why).into());
        }
        link.wire = wire;
        let id = SessionId {
            world_size,
            fingerprint: ack.model_fingerprint,
            plan_hash: ack.plan_hash,
        };
        Ok((link, id))
    }
}
