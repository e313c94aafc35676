//! `voxgate wake-test`: the configured detector over a WAV file, as fast as it can read it.

use std::io::Write;
use std::path::Path;

use super::{Detection, Detector, DetectorStats};
use crate::audio::{self, FrameSpec, SystemClock};
use crate::config::{Config, FilePacing};

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error(transparent)]
    Wake(#[from] super::WakeError),
    #[error(transparent)]
    Audio(#[from] audio::AudioError),
}

/// Runs the detector of `config` over `file`, calling `on_detection` for each detection.
pub fn scan(config: &Config, file: &Path, on_detection: &mut dyn FnMut(&Detection)) -> Result<DetectorStats, ScanError> {
    let audio = crate::config::AudioConfig {
        source: crate::config::SourceSpec::File(file.into()),
        file_pacing: FilePacing::Fast,
        file_follow: false,
        ..config.audio.clone()
    };
    let mut detector = Detector::new(&config.wake, FrameSpec::from_config(&audio), config.session.preroll_ms)?;
    let source = audio::start(&audio, SystemClock::shared())?;
    for frame in source.frames.iter() {
        if let Some(d) = detector.push(frame) {
            on_detection(&d);
        }
    }
    source.join()?;
    Ok(detector.stats)
}

/// Prints one detection: a readable line, or the JSON object of DESIGN.md.
pub fn print(out: &mut dyn Write, d: &Detection, json: bool) {
    let _ = if json {
        let score = (d.score as f64 * 1000.0).round() / 1000.0;
        writeln!(out, "{}", serde_json::json!({"t_ms": d.t_ms, "wakeword": d.wakeword, "score": score}))
    } else {
        writeln!(out, "{:>8.2} s  {}  score {:.3}", d.t_ms as f64 / 1000.0, d.wakeword, d.score)
    };
}
