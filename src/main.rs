//! The `voxgate` binary: parses the command line and runs the command (see `voxgate::cli`).

use std::process::ExitCode;

use clap::Parser;

/// rustpotter allocates and frees many small vectors per 10 ms of audio; mimalloc halves what that costs.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    voxgate::small_pages();
    voxgate::cli::main(voxgate::cli::Cli::parse())
}
