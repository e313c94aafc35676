//! Not waking on its own voice.
//!
//! The policy: a wake word detected while an answer plays is ignored when the answer itself says the wake word
//! at that moment; any other detection is the user talking over the answer (barge-in): the answer stops and a
//! session opens. Before an answer plays, the wake-word detector runs over it (off the runtime, with the same
//! models and settings as the microphone's); each detection in it becomes a window of time, from
//! [`BEFORE`] before to [`AFTER`] after the moment it is due to be heard, in which a detection from the
//! microphone is ignored and counted (`wake_suppressed`, and a `wake` event with `acted_on: false`). Chimes
//! are never analysed: they hold no words.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::Clip;
use crate::audio::{Frame, FrameSpec};
use crate::config::Config;

/// How long before its moment in the answer a detection is still the answer's own (the microphone's detector
/// may report a little sooner, the device may play a little later than announced).
pub const BEFORE: Duration = Duration::from_millis(1000);
/// And after it: the time sound takes from the speaker to the microphone's detector, with its smoothing.
pub const AFTER: Duration = Duration::from_millis(1500);

/// The windows in which a detection is the answer's own. Written by the speaker, read by the detector thread
/// on each detection (never per frame).
#[derive(Clone, Default)]
pub struct Echo {
    windows: Arc<Mutex<Vec<(Instant, Instant)>>>,
}

impl Echo {
    /// The answer that starts playing at `start` says a wake word at each of `offsets` into it.
    pub fn add(&self, start: Instant, offsets: &[Duration]) {
        let mut w = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        w.retain(|(_, to)| *to > now);
        for o in offsets {
            w.push((start + *o - BEFORE.min(*o), start + *o + AFTER));
        }
    }

    /// Forgets every window (the answer was stopped).
    pub fn clear(&self) {
        self.windows.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }

    /// Whether a detection at `at` is the answer's own.
    pub fn covers(&self, at: Instant) -> bool {
        self.windows.lock().unwrap_or_else(PoisonError::into_inner).iter().any(|(from, to)| *from <= at && at <= *to)
    }
}

/// Where in `clip` the configured wake-word detector detects a wake word: blocking work (a few hundredths of the
/// clip's length in CPU with the built-in wake word).
pub fn wake_words_in(clip: &Clip, config: &Config) -> Result<Vec<Duration>, String> {
    let Some(mut det) = crate::daemon::build_detector(config).map_err(|e| e.to_string())? else { return Ok(Vec::new()) };
    let spec = FrameSpec::from_config(&config.audio);
    let frame_len = (spec.sample_rate * spec.frame_ms / 1000) as usize;
    let mut frames = crate::audio::convert::resample_all(&clip.samples, clip.rate, spec.sample_rate, frame_len).map_err(|e| e.to_string())?;
    // A second of silence after it, so that a wake word at the very end is reported too.
    frames.extend(std::iter::repeat_n(vec![0; frame_len], (1000 / spec.frame_ms) as usize));
    let now = Instant::now();
    let mut found = Vec::new();
    for (seq, pcm) in frames.into_iter().enumerate() {
        if let Some(d) = det.push(Frame { seq: seq as u64, captured: now, pcm }) {
            found.push(Duration::from_millis(d.t_ms));
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_their_moment_and_expire() {
        let echo = Echo::default();
        let start = Instant::now();
        echo.add(start, &[Duration::from_secs(3)]);
        assert!(!echo.covers(start + Duration::from_millis(1900)));
        assert!(echo.covers(start + Duration::from_millis(2100)));
        assert!(echo.covers(start + Duration::from_millis(4400)));
        assert!(!echo.covers(start + Duration::from_millis(4600)));
        echo.clear();
        assert!(!echo.covers(start + Duration::from_secs(3)));
    }

    #[test]
    fn the_wake_word_in_a_recording_is_found_where_it_is_said() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wake/stream-en-us_m1.wav");
        let mut r = hound::WavReader::open(&path).unwrap();
        let rate = r.spec().sample_rate;
        // The first 8 s: "hey jarvis" at 0.7-1.7 s, a command, the decoy "hey travis" at 5.6 s.
        let samples: Vec<i16> = r.samples::<i16>().take(8 * rate as usize).map(Result::unwrap).collect();
        let found = wake_words_in(&Clip::new("t", rate, samples), &Config::default()).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        // At the end of the phrase, which comes a little before the end of its label (trailing silence).
        assert!(found[0] > Duration::from_millis(1500) && found[0] < Duration::from_millis(3000), "{found:?}");
    }
}
