//! `voxgate record OUT.wav`: writes what the configured source delivers (after conversion: mono, 16-bit, at
//! `audio.sample_rate`) to a WAV file. For checking a microphone, and for recording wake-word samples.
//!
//! However it stops (the time asked for, the end of the source, or a stop request such as SIGINT/SIGTERM
//! through the stop handle `record` hands out), the source is stopped and the file is finished, its header
//! sizes written.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use crate::audio::{self, AudioError, AudioSource, Stop, SystemClock};
use crate::config::AudioConfig;

/// What a recording captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    pub frames: u64,
    /// Frames lost before they reached the writer (live sources).
    pub overruns: u64,
    /// Device samples lost in the capture ring.
    pub ring_overflow_samples: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: hound::Error },
    #[error(transparent)]
    Audio(#[from] AudioError),
    #[error("cannot watch for signals: {0}")]
    Signals(std::io::Error),
}

/// Records up to `max_ms` of audio (or until the source ends, or is stopped) to `out`. `watch` is given the
/// source's stop handle before the first frame, to stop it from elsewhere
/// (`voxgate record` stops it on SIGINT/SIGTERM).
pub fn record(audio: &AudioConfig, out: &Path, max_ms: Option<u64>, watch: impl FnOnce(Stop) -> std::io::Result<()>) -> Result<Recorded, RecordError> {
    let failed = |source| RecordError::Write { path: out.to_path_buf(), source };
    let spec = hound::WavSpec { channels: 1, sample_rate: audio.sample_rate, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let mut writer = hound::WavWriter::create(out, spec).map_err(failed)?;
    let source: AudioSource = audio::start(audio, SystemClock::shared())?;
    watch(source.stopper()).map_err(RecordError::Signals)?;
    let limit = max_ms.map(|ms| ms / audio.frame_ms as u64);
    let mut frames = 0u64;
    let mut written = Ok(());
    for frame in source.frames.iter() {
        if limit.is_some_and(|l| frames >= l) {
            break;
        }
        let mut w = writer.get_i16_writer(frame.pcm.len() as u32);
        for s in &frame.pcm {
            w.write_sample(*s);
        }
        written = w.flush();
        if written.is_err() {
            break;
        }
        frames += 1;
    }
    source.stop();
    let stats = source.stats.clone();
    let joined = source.join();
    // The header is written whatever happened, so what was recorded can be played.
    let finished = writer.finalize();
    written.map_err(failed)?;
    finished.map_err(failed)?;
    joined?;
    Ok(Recorded {
        frames,
        overruns: stats.overruns.load(Ordering::Relaxed),
        ring_overflow_samples: stats.ring_overflow_samples.load(Ordering::Relaxed),
    })
}
