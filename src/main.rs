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
            let mut lines = e.chain().into_iter();
            if let Some(first) = lines.next() {
                let _ = writeln!(err, "tpi-run: error: {first}");
            }
            for cause in lines {
                let _ = writeln!(err, "  caused by: {cause}");
            }
            ExitCode::from(if e.is_usage() {
                EXIT_USAGE
            } else {
                EXIT_FAILURE
            })
        }
    }
}
