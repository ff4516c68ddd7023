//! Window policy: how a rank holds its layer weights ([`MemoryMode`]:
//! resident, or a window of W blocks) and how it reads its slice file
//! ([`IoMode`]: pread, `O_DIRECT`, or mapped from the page cache), chosen
//! from the block sizes and the memory available. Pure functions of their
//! inputs, so every rule is a unit test.

use super::Reads;

/// How a rank holds its layer weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MemoryMode {
    /// Resident if the slice fits comfortably in available RAM, else the
    /// largest window that does.
    #[default]
    Auto,
    /// Every layer block in RAM.
    Resident,
    /// W layer blocks in RAM, streamed by the I/O thread.
    Window(usize),
}

/// How a rank reads its slice file (window passes and the verification
/// of a cached slice).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IoMode {
    /// `O_DIRECT` when the weights cannot stay in the page cache (more bytes
    /// than MemAvailable); mapped from the page cache otherwise.
    #[default]
    Auto,
    /// `pread` through the page cache.
    Buffered,
    /// `O_DIRECT` (falls back to buffered where the file system refuses it).
    Direct,
    /// Window blocks mapped from the page cache (no copy); reads that are
    /// not window passes (verification) are buffered.
    Mapped,
}

impl IoMode {
    /// Whether reading `bytes` of weights bypasses the page cache. Auto:
    /// when they exceed MemAvailable, the page cache cannot keep them for
    /// the next pass, so buffered reads go to the disk anyway while evicting
    /// everything else, and a 1 GiB-limited rank was measured as fast or
    /// faster with `O_DIRECT` (README, "Memory window").
    pub fn direct_for(self, bytes: u64, available: Option<u64>) -> bool {
        match self {
            IoMode::Buffered | IoMode::Mapped => false,
            IoMode::Direct => true,
            IoMode::Auto => available.is_some_and(|a| bytes > a),
        }
    }

    /// How a window over `bytes` of weights reads its blocks. Auto: through
    /// the page cache, by mapping, when the page cache can keep them
    /// (a warm pass then costs no copy; README, "Memory window").
    pub fn reads_for(self, bytes: u64, available: Option<u64>) -> Reads {
        match self {
            IoMode::Buffered => Reads::Buffered,
            IoMode::Direct => Reads::Direct,
            IoMode::Mapped => Reads::Mapped,
            IoMode::Auto if self.direct_for(bytes, available) => Reads::Direct,
            IoMode::Auto => Reads::Mapped,
        }
    }
}

/// Memory settings of a rank.
#[derive(Clone, Copy, Debug, Default)]
pub struct MemoryOpts {
    pub mode: MemoryMode,
    pub io: IoMode,
}

/// Share of available memory the weights may take when choosing by default.
const COMFORTABLE: f64 = 0.6;

/// Resident or a window of how many blocks, for layer blocks `blocks`
/// (bytes each) and an lm_head of `lm_head` bytes (resident with the
/// layers; streamed through the window after them otherwise, in parts no
/// larger than a layer block).
pub fn choose_window(
    mode: MemoryMode,
    blocks: &[u64],
    lm_head: u64,
    available: Option<u64>,
) -> Option<usize> {
    let n = blocks.len();
    let total: u64 = blocks.iter().sum();
    let largest = blocks.iter().copied().max().unwrap_or(0).max(1);
    match mode {
        MemoryMode::Resident => None,
        MemoryMode::Window(w) if w >= n => None,
        MemoryMode::Window(w) => Some(w),
        MemoryMode::Auto => {
            let budget = (available? as f64 * COMFORTABLE) as u64;
            if total + lm_head <= budget {
                None
            } else {
                let w = (budget / largest) as usize;
                Some(w.clamp(2, n.saturating_sub(1).max(2)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_mode_reads_direct_only_what_cannot_stay_in_the_page_cache() {
        let gib = 1u64 << 30;
        assert!(!IoMode::Auto.direct_for(gib, Some(2 * gib)));
        assert!(IoMode::Auto.direct_for(3 * gib, Some(2 * gib)));
        // Unknown memory (no /proc/meminfo): the page cache decides.
        assert!(!IoMode::Auto.direct_for(3 * gib, None));
        assert!(IoMode::Direct.direct_for(1, Some(2 * gib)));
        assert!(!IoMode::Buffered.direct_for(3 * gib, Some(2 * gib)));
        assert!(!IoMode::Mapped.direct_for(3 * gib, Some(2 * gib)));
    }

    #[test]
    fn window_reads_map_what_the_page_cache_keeps() {
        let gib = 1u64 << 30;
        assert_eq!(IoMode::Auto.reads_for(gib, Some(2 * gib)), Reads::Mapped);
        assert_eq!(
            IoMode::Auto.reads_for(3 * gib, Some(2 * gib)),
            Reads::Direct
        );
        assert_eq!(IoMode::Auto.reads_for(3 * gib, None), Reads::Mapped);
        assert_eq!(
            IoMode::Buffered.reads_for(gib, Some(2 * gib)),
            Reads::Buffered
        );
        assert_eq!(IoMode::Direct.reads_for(gib, Some(2 * gib)), Reads::Direct);
        assert_eq!(
            IoMode::Mapped.reads_for(3 * gib, Some(2 * gib)),
            Reads::Mapped
        );
    }

    #[test]
    fn window_choice_follows_the_budget() {
        let blocks = [100u64; 10];
        // 60% of 2000 = 1200 >= 1000 + 100: resident.
        assert_eq!(
            choose_window(MemoryMode::Auto, &blocks, 100, Some(2000)),
            None
        );
        // 60% of 1000 = 600: six blocks fit.
        assert_eq!(
            choose_window(MemoryMode::Auto, &blocks, 100, Some(1000)),
            Some(6)
        );
        // Never fewer than two slots, never all of them.
        assert_eq!(
            choose_window(MemoryMode::Auto, &blocks, 0, Some(10)),
            Some(2)
        );
        assert_eq!(
            choose_window(MemoryMode::Auto, &blocks, 0, Some(1660)),
            Some(9)
        );
        assert_eq!(
            choose_window(MemoryMode::Window(3), &blocks, 0, None),
            Some(3)
        );
        assert_eq!(
            choose_window(MemoryMode::Window(10), &blocks, 0, None),
            None
        );
        assert_eq!(
            choose_window(MemoryMode::Resident, &blocks, 0, Some(1)),
            None
        );
        assert_eq!(choose_window(MemoryMode::Auto, &blocks, 0, None), None);
    }
}
