//! Joining: how rank 0 and a worker meet before a session (spec J1-J7, M1,
//! M6), and what they must agree on, the [`SessionId`].
//!
//! One file per role, as each exchange has two halves that read on their
//! own against the handshake diagram in [`crate::net`] (together they would
//! be one file of some 900 lines):
//!
//! - `hub`: rank 0's open port, [`HubListener`]. An accepting thread hands
//!   each connection its own join thread (at most `MAX_PENDING` not joined,
//!   spec J2); the thread checks the Hello and key proof within one
//!   deadline (J3), claims the rank, heartbeats until rank 0 publishes the
//!   session (J4), answers the HelloAck and serves the slice
//!   (`transfer::serve_files`). The threads share the `Lobby`; rank 0's
//!   main thread gets the ready links from [`HubListener::join`].
//! - `worker`: [`worker_join`] connects (again and again within the join
//!   deadline, J5), says Hello, proves its key, waits through the heartbeats
//!   and returns its link and the session rank 0 runs.
//!
//! [`slice_path`] names a rank's slice in the cache from the session id
//! (through the cache's own [`crate::split::cache::slice_path`]).

mod hub;
mod worker;

pub use hub::HubListener;
pub use worker::worker_join;

use super::error::NetError;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

/// What both sides of a handshake must agree on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionId {
    pub world_size: usize,
    pub fingerprint: u64,
    pub plan_hash: u64,
}

/// Where a worker keeps (and rank 0 writes) the slice of `rank`: the
/// cache's [`crate::split::cache::slice_path`] for this session.
pub fn slice_path(cache_dir: &Path, id: &SessionId, rank: usize) -> PathBuf {
    crate::split::cache::slice_path(cache_dir, id.fingerprint, id.plan_hash, id.world_size, rank)
}

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
