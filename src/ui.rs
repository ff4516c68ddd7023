//! How `tpi-run` shows what the library reports (the library itself never
//! prints): notes as `[tpi] rank N: ...` lines on stderr unless `--quiet`,
//! warnings always, and progress as a [`Meter`]: a line redrawn with rate
//! and ETA on a terminal, one summary line per job otherwise (logs stay
//! readable). Writes to a closed stderr are ignored: stderr is for people.

use crate::progress::{human_bytes, Observer, Progress, Silent};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// The stderr observer of `tpi-run`.
#[derive(Clone, Copy, Debug)]
pub struct Console {
    pub quiet: bool,
}

impl Observer for Console {
    fn note(&self, rank: usize, text: &str) {
        if !self.quiet {
            let _ = writeln!(std::io::stderr(), "[tpi] rank {rank}: {text}");
        }
    }

    fn warn(&self, text: &str) {
        let _ = writeln!(std::io::stderr(), "[tpi] WARNING: {text}");
    }

    fn progress(&self, rank: usize) -> Box<dyn Progress> {
        if self.quiet {
            Box::new(Silent)
        } else {
            Box::new(Meter::stderr(&format!("[tpi] rank {rank}")))
        }
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
    /// A meter whose lines start with `prefix` (e.g. `"[tpi] rank 0"`).
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

#[cfg(test)]
mod tests {
    use super::*;

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
