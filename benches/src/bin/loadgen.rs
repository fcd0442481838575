//! OpAMP load generator: `loadgen --help`, and `benches/README.md`.

use std::process::ExitCode;

use clap::Parser as _;
use opamp_benches::{LoadArgs, run_loadgen};

fn main() -> ExitCode {
    run_loadgen(LoadArgs::parse())
}
