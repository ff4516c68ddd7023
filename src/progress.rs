//! Progress of long byte-moving jobs (cutting slices, downloading them):
//! the library reports bytes done through [`Progress`]; the binary decides
//! how to show them ([`Meter`]: a redrawn line with rate and ETA on a
//! terminal, one summary line otherwise, nothing with `--quiet`).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Receives the progress of one job at a time.
pub trait Progress: Send {
    /// A job of `total` bytes starts (`what` names it, e.g. "slicing rank 1").
    fn begin(&mut self, what: &str, total: u64);
    /// `done` bytes of the current job are finished (monotonic).
    fn update(&mut self, done: u64);
    /// The current job is finished.
    fn end(&mut self);
}

/// Reports nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct Silent;

impl Progress for Silent {
    fn begin(&mut self, _: &str, _: u64) {}
    fn update(&mut self, _: u64) {}
    fn end(&mut self) {}
}

/// A [`Meter`] on stderr with `prefix`, or [`Silent`] when `quiet`.
pub fn meter_unless(quiet: bool, prefix: &str) -> Box<dyn Progress> {
    if quiet {
        Box::new(Silent)
    } else {
        Box::new(Meter::stderr(prefix))
    }
}

/// Least time between two redraws on a terminal.
const REDRAW: Duration = Duration::from_millis(250);

/// Shows progress on stderr: redrawn in place on a terminal, one summary
/// line per job otherwise (logs stay readable).
pub struct Meter {
    prefix: String,
    tty: bool,
    what: String,
    total: u64,
    done: u64,
    start: Instant,
    drawn: Option<Instant>,
}

impl Meter {
    /// A meter whose lines start with `prefix` (e.g. "[tpi] rank 0").
    pub fn stderr(prefix: &str) -> Meter {
        Meter {
            prefix: prefix.to_string(),
            tty: std::io::stderr().is_terminal(),
            what: String::new(),
            total: 0,
            done: 0,
            start: Instant::now(),
            drawn: None,
        }
    }

    fn line(&self) -> String {
        let secs = self.start.elapsed().as_secs_f64();
        let rate = if secs > 0.0 {
            self.done as f64 / secs
        } else {
            0.0
        };
        let mut s = format!(
            "{}: {}: {} of {}, {}/s",
            self.prefix,
            self.what,
            human_bytes(self.done as f64),
            human_bytes(self.total as f64),
            human_bytes(rate)
        );
        if self.done < self.total && rate > 0.0 {
            let eta = (self.total - self.done) as f64 / rate;
            s.push_str(&format!(", ETA {eta:.0} s"));
        } else {
            s.push_str(&format!(", {secs:.1} s"));
        }
        s
    }
}

impl Progress for Meter {
    fn begin(&mut self, what: &str, total: u64) {
        self.what = what.to_string();
        self.total = total;
        self.done = 0;
        self.start = Instant::now();
        self.drawn = None;
    }

    fn update(&mut self, done: u64) {
        self.done = done;
        if !self.tty || self.drawn.is_some_and(|t| t.elapsed() < REDRAW) {
            return;
        }
        self.drawn = Some(Instant::now());
        // Errors writing progress are not worth stopping a job for.
        let _ = write!(std::io::stderr(), "\r\x1b[2K{}", self.line());
    }

    fn end(&mut self) {
        let lead = if self.tty { "\r\x1b[2K" } else { "" };
        let _ = writeln!(std::io::stderr(), "{lead}{}", self.line());
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

    #[test]
    fn meter_line_names_job_bytes_and_eta() {
        let mut m = Meter::stderr("[tpi] rank 0");
        m.tty = false;
        m.begin("slicing", 1000);
        m.start -= Duration::from_secs(1);
        m.update(250);
        let l = m.line();
        assert!(
            l.starts_with("[tpi] rank 0: slicing: 250 B of 1000 B"),
            "{l}"
        );
        assert!(l.contains("ETA"), "{l}");
    }
}
