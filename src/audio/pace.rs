//! How soon a live source hands its frames over: the consumer says, the source obeys.
//!
//! Attentive (the default), every frame goes to the consumer as soon as it is complete. While nothing the
//! consumer does needs audio at once (no session is open and the wake-word gate is closed, or the daemon is
//! muted, or only a trigger can open a session) it *relaxes* the pace, and the source gathers up to
//! [`RELAXED_BATCH`] of audio before it wakes anyone: an idle daemon wakes each of its two audio threads twice
//! a second instead of fifty times, and those wake-ups are most of what a quiet room costs (measured in
//! docs/BENCHMARKS.md). Frames keep their numbers, their order and their content; the only change is when
//! they arrive. The consumer turning attentive again (a loud frame opens the gate) takes effect from the next
//! hand-over, at most one batch later: the gate's look-back and the pre-roll cover the onset, and a wake
//! word's detection comes after the whole phrase.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The longest a relaxed source holds audio back.
pub const RELAXED_BATCH: Duration = Duration::from_millis(500);

/// Shared by a source and its consumer.
#[derive(Debug, Default)]
pub struct Pace {
    relaxed: AtomicBool,
}

impl Pace {
    /// The consumer: may the source batch its frames (`true`), or must each come at once?
    pub fn relax(&self, relaxed: bool) {
        // Compared first: the consumer calls this for every frame, and a store would dirty the cache line the
        // source reads.
        if self.relaxed.load(Ordering::Relaxed) != relaxed {
            self.relaxed.store(relaxed, Ordering::Relaxed);
        }
    }

    /// The source: whether it may batch.
    pub fn relaxed(&self) -> bool {
        self.relaxed.load(Ordering::Relaxed)
    }

    /// The source: frames of `frame_ms` in one relaxed batch.
    pub fn batch_frames(frame_ms: u32) -> u64 {
        (RELAXED_BATCH.as_millis() as u64 / frame_ms.max(1) as u64).max(1)
    }
}
