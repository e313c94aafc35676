//! voxgate: a wake-word gated voice streaming daemon for small Linux devices.
//!
//! The modules follow the data, and each owns its decisions: [`audio`] captures, [`wake`] listens (the
//! detector thread), [`session`] streams (the supervisor and its sessions), [`control`] takes requests, and
//! [`daemon`] wires them together for `voxgate run`. [`cli`] holds the commands of the binary; `src/main.rs`
//! only parses the command line and calls it.
//!
//! Threads, tasks, channels and their owners in a running daemon:
//!
//! ```text
//!  capture thread ──Frame (crossbeam, bounded 1 s; live: drop+count, file fast: wait)──▶ detector thread
//!  (audio::device|file|stdin;                                                           (wake::listener; owns
//!   cpal callback ─rtrb ring + loss ring─▶ capture thread)                              detection, pre-roll,
//!                                                                                        the open session's feed)
//!       detector thread ──audio::Pace (an atomic; per frame, or 500 ms batches while idle)──▶ capture thread
//!       detector thread ──SessionRequest (tokio mpsc, bounded 4, never waited on)──▶ supervisor task
//!       detector thread ──frames──▶ SessionQueue (one per session; drop-oldest) ──▶ session task's writer,
//!                                   or straight onto the socket from the detector thread (session::outlet)
//!       supervisor task (session::supervisor; the only writer of State) ──spawns──▶ session task
//!                                   (session::run: writer + reader, reports its Phase and its summary)
//!  control socket tasks ──Call = (Request, oneshot Reply) (mpsc 16)──▶ daemon task (daemon; owns the
//!  signal thread (SIGHUP) ──Call──▶                                     source handle, reloads, sd_notify)
//!       daemon task ──Command (mpsc 8)──▶ supervisor task
//!       daemon task ──acknowledged command (crossbeam + oneshot)──▶ detector thread (via its Listener handle)
//!  everyone ──Event (broadcast, 1024 per subscriber)──▶ control subscribers, the demo, tests
//!  first SIGTERM/SIGINT ──CancellationToken──▶ daemon task, supervisor, control server; a second exits.
//! ```
//!
//! Whoever spawns a thread or task joins it: the daemon task joins the capture thread and the detector thread
//! (a panic is an error, exit 1) and awaits the supervisor task; the supervisor awaits its session task.

pub mod audio;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod demo;
pub mod fault;
pub mod logging;
pub mod metrics;
pub mod playback;
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
