//! What the library tells the person running it, without printing: the
//! bytes done of long jobs (cutting slices, hashing, downloading) through
//! [`Progress`], and notes and warnings through an [`Observer`]. The binary
//! decides how to show them (`crate::ui`); tests pass [`Silent`].

/// Receives the progress of one job at a time.
pub trait Progress: Send {
    /// A job of `total` bytes starts (`what` names it, e.g. "slicing rank 1").
    fn begin(&mut self, what: &str, total: u64);
    /// `done` bytes of the current job are finished (monotonic).
    fn update(&mut self, done: u64);
    /// The current job is finished.
    fn end(&mut self);
}

/// Receives a session's notes (what was cached, chosen, dropped) and
/// warnings, and hands out a [`Progress`] per long job. Shared between
/// threads (the hub's accepting threads note dropped connections).
pub trait Observer: Send + Sync {
    /// A one-line note from `rank`.
    fn note(&self, rank: usize, text: &str);
    /// Something the user should act on (e.g. listening without a key, a
    /// peer that failed to authenticate).
    fn warn(&self, text: &str);
    /// A sink for one long job of `rank`.
    fn progress(&self, rank: usize) -> Box<dyn Progress>;
}

/// Reports nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct Silent;

impl Progress for Silent {
    fn begin(&mut self, _: &str, _: u64) {}
    fn update(&mut self, _: u64) {}
    fn end(&mut self) {}
}

impl Observer for Silent {
    fn note(&self, _: usize, _: &str) {}
    fn warn(&self, _: &str) {}
    fn progress(&self, _: usize) -> Box<dyn Progress> {
        Box::new(Silent)
    }
}

/// `1536` -> "1.5 KiB".
pub fn human_bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_picks_the_unit() {
        assert_eq!(human_bytes(0.0), "0 B");
        assert_eq!(human_bytes(1536.0), "1.5 KiB");
        assert_eq!(human_bytes(4.4e9), "4.1 GiB");
    }
}
