//! [`NetError`]: every network failure, naming the peer, its rank and the
//! step, with its cause chained as the error's `source`.
//!
//! Errors are made where a failure is seen, mostly by a
//! [`Link`](super::Link), which knows its peer and rank, and travel up
//! unchanged into `crate::Error::Net`; `describe_io` words a passed deadline
//! or a closed socket for the user who reads the chain.

use super::frame::FrameError;
use super::wire::WireError;
use std::fmt;
use std::io;
use std::time::Duration;

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
        source: Box<crate::split::SliceError>,
    },
    /// An allreduce payload from the peer that does not decode (spec W5):
    /// `what` names the message ("Partial of layer 3 mlp (q8_0)").
    Payload {
        peer: String,
        rank: Option<usize>,
        step: u32,
        what: String,
        source: WireError,
    },
    /// This rank's values that the session's wire dtype cannot carry
    /// (spec W6), before anything is sent.
    Encode {
        step: u32,
        what: String,
        source: WireError,
    },
    /// A message this side cannot encode (more ids than a Step carries).
    Message {
        what: &'static str,
        source: crate::codec::cursor::DecodeError,
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
            NetError::Payload {
                peer,
                rank,
                step,
                what,
                source,
            } => write!(f, "{} at {peer}, step {step}, {what}: {source}", rank_str(rank)),
            NetError::Encode { step, what, source } => {
                write!(f, "step {step}, sending {what}: {source}")
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
            NetError::Message { what, source } => write!(f, "{what} message: {source}"),
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
            NetError::Message { source, .. } => Some(source),
            NetError::Payload { source, .. } | NetError::Encode { source, .. } => Some(source),
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
