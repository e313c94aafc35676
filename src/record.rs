//! `voxgate record OUT.wav`: writes what the configured source delivers (after conversion: mono, 16-bit, at
//! `audio.sample_rate`) to a WAV file. For checking a microphone, and for recording wake-word samples.

use std::path::Path;
use std::sync::atomic::Ordering;

use crate::audio::{self, AudioSource, SystemClock};
use crate::config::AudioConfig;

/// What a recording captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    pub frames: u64,
    /// Frames lost because the writer fell behind (live sources).
    pub overruns: u64,
    /// Device samples lost in the capture ring.
    pub ring_overflow_samples: u64,
}

/// Records up to `max_ms` of audio (or until the source ends) to `out`.
pub fn record(audio: &AudioConfig, out: &Path, max_ms: Option<u64>) -> anyhow::Result<Recorded> {
    use anyhow::Context;
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: audio.sample_rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(out, spec).with_context(|| format!("cannot create {}", out.display()))?;
    let source: AudioSource = audio::start(audio, SystemClock::shared())?;
    let limit = max_ms.map(|ms| ms / audio.frame_ms as u64);
    let mut frames = 0u64;
    for frame in source.frames.iter() {
        if limit.is_some_and(|l| frames >= l) {
            break;
        }
        let mut w = writer.get_i16_writer(frame.pcm.len() as u32);
        for s in &frame.pcm {
            w.write_sample(*s);
        }
        w.flush().with_context(|| format!("cannot write {}", out.display()))?;
        frames += 1;
    }
    source.stop();
    let stats = source.stats.clone();
    source.join()?;
    writer.finalize().with_context(|| format!("cannot write {}", out.display()))?;
    Ok(Recorded {
        frames,
        overruns: stats.overruns.load(Ordering::Relaxed),
        ring_overflow_samples: stats.ring_overflow_samples.load(Ordering::Relaxed),
    })
}
