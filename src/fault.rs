//! Faults the tests can ask a debug build for, through `VOXGATE_FAULT=<name>` in the environment: the only way
//! to prove from outside that a dead thread or task takes the daemon down with an error instead of a quiet
//! exit 0. A release build ignores the variable.

/// The detector thread panics at its first frame.
pub const DETECTOR_PANIC: &str = "detector-panic";
/// The supervisor panics when it is asked for its first session.
pub const SUPERVISOR_PANIC: &str = "supervisor-panic";

/// Whether the fault `name` was asked for (debug builds only).
pub fn armed(name: &str) -> bool {
    cfg!(debug_assertions) && std::env::var("VOXGATE_FAULT").is_ok_and(|v| v == name)
}
