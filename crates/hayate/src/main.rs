//! The `hayate` command line.

use clap::Parser;

fn main() -> std::process::ExitCode {
    match hayate::cli::run(hayate::cli::Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
