//! `walletbench`: see the `bench` library for what it does; this file only parses flags and exits.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    ExitCode::from(bench::cli::main_with_args(bench::cli::Args::parse()))
}
