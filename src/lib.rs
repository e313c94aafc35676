//! voxgate: a wake-word gated voice streaming daemon for small Linux devices.
//!
//! The pipeline reads like the module list: [`audio`] sources produce frames, the detector thread listens
//! for the wake word, and sessions stream to a speech server. [`config`], [`logging`] and the [`daemon`]
//! entry point sit beside them; `src/main.rs` only parses the command line and calls in here.

pub mod audio;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod demo;
pub mod fault;
pub mod logging;
pub mod record;
pub mod serve;
pub mod session;
pub mod wake;

/// Process exit codes (DESIGN: CLI).
pub mod exit {
    /// Configuration error; systemd's `RestartPreventExitStatus=78` keeps a broken file from restart loops.
    pub const CONFIG: u8 = 78;
    /// The daemon could not be reached (control client).
    pub const UNREACHABLE: u8 = 69;
    /// Anything else.
    pub const FAILURE: u8 = 1;
}

/// Keeps this process's memory in small pages: no transparent huge pages. mimalloc is built without its
/// huge-page advice (the `no_thp` feature); this turns them off for everything else the process maps, on
/// kernels where they are on for all memory. A huge page's first touch zeroes 2 MiB at once: on the path
/// from a wake word to the first audio sent that cost up to 25 ms, and it grew the resident size in 2 MiB
/// steps (19 MB against 8 MB for 1,000 sessions). Call it first thing; children inherit it. On a kernel
/// without the setting this does nothing.
pub fn small_pages() {
    let _ = nix::sys::prctl::set_thp_disable(true);
}
