//! Pre-shared-key authentication (spec M6): the key ([`Secret`]), fresh
//! nonces, and the HMAC-SHA256 tags both sides compute.
//!
//! Data flow: rank 0 challenges a worker with its nonce; the worker answers
//! `auth_tag(K, AUTH_WORKER, nonce_h, hello)`, which rank 0 checks in
//! constant time with `auth_ok` before it says anything about the session;
//! rank 0 then proves itself with `auth_tag(K, AUTH_HUB, nonce_w,
//! helloack)`, which the worker checks the same way. The exchanges are in
//! `join::hub` (`greet`, `serve_joined`) and `join::worker` (`Me::hello`);
//! this file holds only the arithmetic, so both sides share one spelling of
//! the labels.

use std::sync::Arc;

/// A pre-shared key (`TPI_SECRET` or `--secret-file`).
pub type Secret = Arc<[u8]>;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// HMAC-SHA256(key, label | a | b).
pub(super) fn auth_tag(key: &[u8], label: &str, a: &[u8], b: &[u8]) -> [u8; 32] {
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
pub(super) fn auth_ok(key: &[u8], label: &str, a: &[u8], b: &[u8], tag: &[u8; 32]) -> bool {
    use hmac::Mac;
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        return false;
    };
    mac.update(label.as_bytes());
    mac.update(a);
    mac.update(b);
    mac.verify_slice(tag).is_ok()
}

pub(super) const AUTH_WORKER: &str = "tpi-auth-worker";
pub(super) const AUTH_HUB: &str = "tpi-auth-hub";

pub(super) fn nonce() -> [u8; 32] {
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
        let h = crate::codec::checksum::checksum64(format!("{seed}-{i}").as_bytes());
        c.copy_from_slice(&h.to_le_bytes());
    }
    out
}
