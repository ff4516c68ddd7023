//! Ranks over TCP: the wire protocol (the spec below, with every limit it
//! owns as a constant at the end of this file) and the code that speaks it,
//! one file per concept, lowest layer first:
//!
//! | file | holds |
//! |---|---|
//! | [`crate::codec::checksum`] | `checksum32`/`checksum64` (XXH64), shared with slice files |
//! | [`msg`] | typed payloads (M1-M6), decoded through a bounded cursor; a leaf |
//! | [`wire`] | allreduce payloads in the session's [`WireDtype`] (W1-W7): f32, f16, q8_0 codec; a leaf |
//! | [`frame`] | the 40-byte header and chunked messages (F1-F10); socket agnostic: byte slices, `io::Read`/`io::Write` |
//! | `error` | [`NetError`]: what failed, naming the peer, its rank and the step |
//! | `link` | [`Link`]: one TCP connection (socket options, spinning reads, deadlines, byte counts, its wire dtype); [`NetOpts`] |
//! | `auth` | the pre-shared key ([`Secret`]), nonces, HMAC tags (M6) |
//! | `join` | both sides of joining (J1-J8): `join/hub.rs` ([`HubListener`]), `join/worker.rs` ([`worker_join`]); [`SessionId`] |
//! | `transfer` | slice files from rank 0 to a worker (M4, J7): [`fetch_slice`], `serve_files`, [`worker_ready`] |
//! | `allreduce` | both sides of the star allreduce and logits gather: [`HubComm`], [`WorkerComm`] |
//!
//! A session's data flows join -> transfer -> allreduce over one [`Link`]
//! per worker; every file above `frame` reaches the socket only through
//! that link. The public API is re-exported here.
//!
//! # Spec (protocol version 2)
//!
//! Topology: a star. Rank 0 is the hub; every worker holds one TCP
//! connection to it. Each direction is a sequence of frames.
//!
//! ## F1. Frame header (40 bytes, all integers little-endian)
//!
//! | field            | offset | width | meaning                                                        |
//! |------------------|-------:|------:|----------------------------------------------------------------|
//! | magic            |      0 |     4 | `b"TPI1"` (u32 `0x31495054`)                                   |
//! | version          |      4 |     2 | protocol version, `2` (1 had no wire dtype in the Hello)       |
//! | kind             |      6 |     1 | message kind, see F3                                           |
//! | flags            |      7 |     1 | bit 0 `STOP`: sender stops after this step; others 0           |
//! | rank             |      8 |     2 | sender's rank                                                  |
//! | reserved         |     10 |     2 | must be 0                                                      |
//! | step             |     12 |     4 | generation step the frame belongs to (0 during handshake)      |
//! | seq              |     16 |     4 | message number within the step (allreduce index: `2*layer + {0 attn, 1 mlp}`); same for all chunks of a message |
//! | chunk_index      |     20 |     2 | index of this chunk in its message                             |
//! | chunk_count      |     22 |     2 | chunks in the message, `>= 1`                                  |
//! | payload_len      |     24 |     4 | bytes following the header, `<= MAX_PAYLOAD`                   |
//! | payload_checksum |     28 |     4 | `checksum32(payload)`                                          |
//! | total_len        |     32 |     4 | sum of payload_len over all chunks of the message              |
//! | header_checksum  |     36 |     4 | `checksum32(header[0..36])`                                    |
//!
//! `checksum32` is XXH64 (seed 0) folded to 32 bits, see [`crate::codec::checksum`].
//!
//! ## Validation, in this order (a failure is a [`frame::FrameError`])
//!
//! - F2. `magic == b"TPI1"`, then `version == 2`, then header checksum.
//! - F3. `kind` is one of: 1 Hello, 2 HelloAck, 3 Reject, 4 Step, 5 Partial,
//!   6 Reduced, 7 Logits, 8 FileRequest, 9 FileChunk, 10 Stop, 11 Heartbeat,
//!   12 Error, 13 Auth. Anything else is an error.
//! - F4. `flags & !STOP == 0`.
//! - F5. `reserved == 0`.
//! - F6. `payload_len <= MAX_PAYLOAD` (65536). Receivers read into a
//!   preallocated `[u8; MAX_PAYLOAD]`; nothing is allocated from a wire length.
//! - F7. `chunk_count >= 1` and `chunk_index < chunk_count`.
//! - F8. Canonical chunking: `chunk_count == max(1, ceil(total_len /
//!   MAX_PAYLOAD))`, every chunk but the last carries exactly `MAX_PAYLOAD`
//!   bytes, the last the rest. So a message is at most `MAX_MESSAGE =
//!   65535 * 65536` bytes, and f32 data never splits an element.
//! - F9. `checksum32(payload) == payload_checksum`.
//! - F10. Multi-chunk receivers ([`frame::recv_f32s_into`]) also require:
//!   expected kind and step, `total_len` equal to the length the receiver
//!   derives from the plan, chunks in order `0..chunk_count`, same seq,
//!   rank and flags on every chunk.
//!
//! ## Payloads (a failure is a [`msg::MsgError`]; trailing bytes are an error)
//!
//! - M1. Hello / HelloAck ([`msg::Hello`], 55 bytes): `protocol_version
//!   u16, world_size u16 (>= 1), rank u16 (< world_size), model_fingerprint
//!   u64, plan_hash u64, wire_dtype u8 (0 not stated, 1 f32, 2 f16, 3 q8_0;
//!   others are an error), nonce [u8; 32]`. A worker's Hello states the
//!   wire dtype it was started with, or 0 to follow rank 0; the HelloAck
//!   states rank 0's (never 0, spec W1, J8).
//! - M2. Reject / Error ([`msg::Reject`]): `len u16 (<= 1024), reason
//!   [u8; len]` UTF-8.
//! - M3. Step ([`msg::Step`]): `pos u32, flags u32 (bit 0 WANT_LOGITS, bit 1
//!   PREFILL, others 0), count u32 (<= MAX_STEP_IDS = 4096), ids [u32; count]`.
//!   Token `ids[i]` sits at position `pos + i`; one forward runs them all (a
//!   prompt goes in batches, PREFILL set). A worker runs steps of 1 to
//!   `PREFILL_BATCH` (128) ids and ends the session on any other count, so a
//!   step never sizes its activations beyond that.
//! - M4. FileRequest ([`msg::FileRequest`], 16 bytes): `offset u64, len u64`,
//!   `1 <= len <= MAX_MESSAGE`, `offset + len` does not overflow. Answered
//!   by one FileChunk message (raw bytes, chunked per F8) of exactly `len`
//!   bytes, or an Error.
//! - M5. Stop, Heartbeat: empty payload.
//! - M6. Auth ([`msg::Auth`], 64 bytes): `nonce [u8; 32], tag [u8; 32]`.
//!   With a pre-shared key K, after the worker's Hello: hub -> worker
//!   `Auth{nonce_h, 0}` (challenge); worker -> hub `Auth{nonce_w, tag_w}`
//!   with `tag_w = HMAC-SHA256(K, "tpi-auth-worker" | nonce_h | hello)`;
//!   hub checks it in constant time, then sends HelloAck followed by
//!   `Auth{nonce_h, tag_h}` with `tag_h = HMAC-SHA256(K, "tpi-auth-hub" |
//!   nonce_w | helloack)`, which the worker checks. Nothing about the session
//!   (fingerprint, plan) is sent before the worker's proof verifies; fresh
//!   nonces on both sides make a recorded exchange useless.
//! - Partial, Reduced: `dim * n_tokens` values (from the plan) in the
//!   session's wire dtype, spec W1-W7. Logits: little-endian f32 always,
//!   sent with [`frame::send_f32s`], the sender's `vocab` range length
//!   values (rank 0 samples from them; they cross once per token).
//!
//! ## Allreduce payloads (a failure is a [`wire::WireError`])
//!
//! Errors name the peer, its rank, the step and the message.
//!
//! - W1. The wire dtype is rank 0's `--wire-dtype` (default f32), agreed at
//!   join (M1, J8). It holds for every Partial and Reduced of the session.
//! - W2. A message of `n` values (`n = dim * n_tokens`, from the plan) is
//!   `total_len` bytes: f32 `4n`, f16 `2n`, q8_0 `34 * ceil(n / 32)`;
//!   chunked as any message (F8: 65536-byte chunks, the last the rest; a
//!   q8_0 block may straddle two). The receiver derives `total_len` from
//!   the plan (F10), receives the whole message into a buffer of that
//!   size, then decodes. Frames per message and bytes on the wire, for one
//!   token at TinyLlama's dim 2048 / a 64-token prefill step:
//!
//!   | dtype | payload, 1 token | frames | on the wire | payload, 64 tokens | frames |
//!   |---|---:|---:|---:|---:|---:|
//!   | f32  | 8192 | 1 | 8232 | 524288 | 8 |
//!   | f16  | 4096 | 1 | 4136 | 262144 | 4 |
//!   | q8_0 | 2176 | 1 | 2216 | 139264 | 3 |
//!
//! - W3. f32: IEEE binary32 LE. f16: IEEE binary16 LE, rounded to nearest
//!   even from f32 (`half`); every f16 is valid, NaN and infinity included
//!   (as f32 carries them); a value beyond 65504 becomes infinity, and the
//!   receivers' check of each layer's output stops the session.
//! - W4. q8_0: ggml `block_q8_0`, `d f16 LE, qs [i8; 32]`, value `qs[j] *
//!   d`, quantized by ggml's `quantize_row_q8_0_ref` (`d = amax / 127`,
//!   `q = round(x / d)`, ties away from zero) over consecutive blocks of 32
//!   of the message's values in row order. Tail: when `n % 32 != 0` the
//!   last block is quantized over the remaining values padded with zeros
//!   (which never raise `amax`); its padding quants are 0 and are dropped
//!   on decoding. A block whose scale is 0 in f16 (`amax < 127 * 2^-25`)
//!   is sent with all quants 0: it decodes to zeros either way, and below
//!   about `amax = 127 * 2^-128` the reference's `1 / d` overflows and its casts
//!   saturate (to -128 among others).
//! - W5. A q8_0 decoder rejects a block whose scale is NaN, infinite or
//!   negative, a quant of -128, and a non-zero padding quant.
//! - W6. q8_0 cannot carry a NaN or infinity (the quantizer would silently
//!   make it 0) nor a block with `amax > 127 * 65504`. The rank holding
//!   such a value sends nothing: a NaN or infinity stops it with the
//!   engine's non-finite error naming the layer and the position, as the
//!   f32 wire ends one step later on every rank; a value too large is an
//!   error naming it. A worker tells rank 0 why it stops (J6).
//! - W7. Reduction: rank 0 adds to its own partial (f32, never encoded) the
//!   decoded Partial of each worker in rank order 1..N-1, in f32; encodes
//!   the sum once, sends the same bytes to every worker, and continues with
//!   their decoded values itself, so every rank holds bit-identical
//!   activations. With f32 nothing is encoded.
//!
//! ## Handshake and state machine
//!
//! ```text
//! worker                                   hub
//! Connect --- Hello{ver, N, rank, fp, plan_hash, wire, nonce} -->  check ver, N, rank unused, wire
//!         <--- Heartbeat (every 1 s) ------------------------  while slicing (J4)
//!                                                             fp and plan_hash equal to hub's
//!         <--- HelloAck{hub's values, wire, same nonce} ---  ok
//!         <--- Reject{reason}, close ------------------------  mismatch
//! (optional) FileRequest / FileChunk* until the slice is local
//! Ready:
//!   step s:   <--- Step{pos, ids, flags} (step=s)
//!             per allreduce k = 0..2*n_layers:
//!               --- Partial (step=s, seq=k, dim*n values, W2) -->  hub sums its own + decoded
//!                                                             partials in rank order (W7)
//!               <--- Reduced (step=s, seq=k, W2) ----------  the same bytes to every worker
//!             if WANT_LOGITS: --- Logits (step=s) ------->  hub concatenates by vocab range
//!   idle:     Heartbeat either way (step = last step)
//!   end:      <--- Stop (or STOP flag on the last Step), close
//!   failure:  either side sends Error{reason} and closes; any FrameError
//!             or MsgError closes the connection (no resync inside a stream).
//! ```
//!
//! ## Joining (limits and order)
//!
//! - J1. Rank 0 opens its port before it prepares the session (cuts the
//!   slices, computes the fingerprint) and accepts workers meanwhile.
//! - J2. At most [`MAX_PENDING`] (64) connections are pending: accepted,
//!   their Hello (and key proof) not yet checked. Each has its own thread;
//!   a connection beyond the bound is closed at once, unread, and one whose
//!   thread cannot be created is closed the same way. A worker that has
//!   joined (valid Hello, key proved, rank claimed) no longer counts, so
//!   rank 0 runs at most `MAX_PENDING + N - 1` join threads.
//! - J3. A pending connection completes its Hello (and Auth proof) within
//!   one total deadline (`hello_timeout`, 2 s), however its bytes trickle in.
//! - J4. A worker that has joined before the session is ready gets a
//!   Heartbeat at least every second (`HEARTBEAT`) instead of its HelloAck;
//!   the HelloAck (fingerprint, plan hash) and rank 0's Auth proof follow
//!   once the slices are ready. Meanwhile the worker reads each frame with
//!   its peer deadline; anything it sends is an Error{reason}, and ends its
//!   join.
//! - J5. A worker's join deadline bounds connecting and rank 0's first
//!   answer. A connection closed before that answer (rank 0 was full, J2)
//!   is tried again within the deadline.
//! - J6. An Error frame carries the reason of the side that stops; the
//!   receiver reports it naming the sender's rank (a key held on one side
//!   only, a full disk, a failed forward).
//! - J7. A worker fetches its slice head first (the 32-byte preamble, then
//!   the manifest of at most `split::manifest::MAX_MANIFEST` bytes, checksum checked);
//!   the slice's size is the end of its last block. It never requests past
//!   that size, and refuses a FileChunk message longer than it asked for.
//! - J8. A worker whose Hello states a wire dtype other than rank 0's is
//!   refused (after its key proof), the reason naming both; a worker
//!   checks the HelloAck's the same way. A Hello stating none joins with
//!   rank 0's.

use std::time::Duration;

// Limits of the spec, each with its rule. `frame` and `msg` both read them
// from here, so neither imports the other for a number (`msg` is a leaf,
// `frame` uses its error and `Reject`); they re-export the ones they
// enforce under their old paths.

/// Largest payload of one frame (spec F6): 64 KiB, a multiple of 4 so f32
/// chunks never split an element.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Largest message, the sum of all chunks' payloads (spec F8).
pub const MAX_MESSAGE: u64 = u16::MAX as u64 * MAX_PAYLOAD as u64;
/// Largest `Reject`/`Error` reason in bytes (spec M2).
pub const MAX_REASON: usize = 1024;
/// Most token ids in one `Step` (spec M3).
pub const MAX_STEP_IDS: usize = 4096;
/// Most connections rank 0 holds that have not joined yet (spec J2).
pub const MAX_PENDING: usize = 64;
/// Rank 0 sends a Heartbeat to a waiting worker at least this often (spec J4).
pub const HEARTBEAT: Duration = Duration::from_secs(1);

pub mod frame;
pub mod msg;
pub mod wire;

mod allreduce;
mod auth;
mod error;
mod join;
mod link;
mod transfer;

pub use allreduce::{Command, HubComm, LinkBytes, WorkerComm};
pub use auth::Secret;
pub use error::NetError;
pub use join::{resolve, slice_path, worker_join, HubListener, SessionId};
pub use link::{Link, NetOpts};
pub use transfer::{fetch_slice, worker_ready};
pub use wire::WireDtype;
