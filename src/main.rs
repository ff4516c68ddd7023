//! `tpi-run`: see `tpi::cli`.

use clap::Parser;
use std::io::Write;
use std::process::ExitCode;

/// Exit status of a run that failed on the way (a file, a peer, the model).
const EXIT_FAILURE: u8 = 1;
/// Exit status of a request that cannot be run as asked (clap's own usage
/// errors exit 2 as well).
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let args = tpi::cli::Args::parse();
    match tpi::cli::run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Writes to a closed stderr are ignored: the exit status still tells.
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "tpi-run: error: {e}");
            // Each error's text includes its cause's; print only causes
            // that add something.
            let mut shown = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                let text = s.to_string();
                if !shown.contains(&text) {
                    let _ = writeln!(err, "  caused by: {text}");
                    shown = text;
                }
                src = s.source();
            }
            ExitCode::from(if e.is_usage() {
                EXIT_USAGE
            } else {
                EXIT_FAILURE
            })
        }
    }
}
