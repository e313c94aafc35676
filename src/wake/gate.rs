//! A cheap energy gate in front of the wake-word detector: silence and steady noise do not reach rustpotter.
//!
//! The noise floor is tracked by minimum statistics: the mean level of each 200 ms block, and the floor is the
//! lowest block of the last 5 s, so it follows steady noise within seconds but not speech, which always has
//! pauses. The gate opens on a frame louder than the floor by `margin_db` (and above an absolute minimum), and
//! closes after `hangover` frames without one; the detector keeps it open while a detection is in progress.

use std::collections::VecDeque;

/// Frames per block of the floor tracker.
const BLOCK_FRAMES: usize = 10;
/// Blocks the floor looks back over.
const FLOOR_BLOCKS: usize = 25;
/// Below this, a frame never opens the gate (dBFS).
const ABSOLUTE_MIN_DB: f32 = -70.0;

pub struct Gate {
    margin_db: f32,
    hangover: usize,
    /// Frames left before the gate closes.
    open_for: usize,
    block_sum: f32,
    block_len: usize,
    blocks: VecDeque<f32>,
    floor: f32,
}

/// What the gate says about one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Closed: skip the detector.
    Closed,
    /// Just opened: the detector must catch up on the audio before this frame.
    Opened,
    Open,
}

impl Gate {
    pub fn new(margin_db: f32, hangover_frames: usize) -> Self {
        Gate {
            margin_db,
            hangover: hangover_frames,
            // Open at start, until a floor is known.
            open_for: hangover_frames,
            block_sum: 0.0,
            block_len: 0,
            blocks: VecDeque::with_capacity(FLOOR_BLOCKS),
            floor: f32::NEG_INFINITY,
        }
    }

    /// Open: the frames are scored.
    pub fn is_open(&self) -> bool {
        self.open_for > 0
    }

    pub fn floor_db(&self) -> f32 {
        self.floor
    }

    /// Takes one frame's level (dBFS). `busy` keeps the gate open (the detector is in a partial detection).
    pub fn check(&mut self, level_db: f32, busy: bool) -> Verdict {
        self.track(level_db);
        let loud = level_db > ABSOLUTE_MIN_DB && level_db > self.floor + self.margin_db;
        let was_open = self.open_for > 0;
        if loud || busy {
            self.open_for = self.hangover;
        } else {
            self.open_for = self.open_for.saturating_sub(1);
        }
        match (was_open, self.open_for > 0) {
            (false, true) => Verdict::Opened,
            (_, true) => Verdict::Open,
            (_, false) => Verdict::Closed,
        }
    }

    fn track(&mut self, level_db: f32) {
        self.block_sum += level_db;
        self.block_len += 1;
        if self.block_len == BLOCK_FRAMES {
            if self.blocks.len() == FLOOR_BLOCKS {
                self.blocks.pop_front();
            }
            self.blocks.push_back(self.block_sum / BLOCK_FRAMES as f32);
            self.block_sum = 0.0;
            self.block_len = 0;
            self.floor = self.blocks.iter().copied().fold(f32::INFINITY, f32::min);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(gate: &mut Gate, level: f32, frames: usize) -> Vec<Verdict> {
        (0..frames).map(|_| gate.check(level, false)).collect()
    }

    #[test]
    fn steady_noise_closes_and_speech_reopens() {
        let mut g = Gate::new(9.0, 50);
        // Steady noise at -45 dBFS: open at first, closed once the floor is learnt and the hangover is over.
        let v = run(&mut g, -45.0, 400);
        assert_eq!(v[0], Verdict::Open);
        assert_eq!(*v.last().unwrap(), Verdict::Closed);
        assert!((g.floor_db() + 45.0).abs() < 0.01);
        // Speech 15 dB above the noise opens it at once, and it stays open for the hangover after.
        assert_eq!(g.check(-30.0, false), Verdict::Opened);
        assert!(run(&mut g, -45.0, 49).iter().all(|v| *v == Verdict::Open));
        assert_eq!(g.check(-45.0, false), Verdict::Closed);
        // A pending detection keeps it open.
        assert_eq!(g.check(-45.0, true), Verdict::Opened);
    }

    #[test]
    fn digital_silence_never_opens() {
        let mut g = Gate::new(9.0, 10);
        let v = run(&mut g, -96.0, 300);
        assert!(v[100..].iter().all(|v| *v == Verdict::Closed));
        assert_eq!(g.check(-80.0, false), Verdict::Closed, "below the absolute minimum");
    }
}
