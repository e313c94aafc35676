//! `voxgate enroll`: builds a wake word (`.rpw`) from the user's own recordings.
//!
//! Each sample is read through the same front end as live audio (any WAV format, converted to mono at the
//! detector's rate), trimmed of leading and trailing silence, and checked for length and level. With three or
//! more samples, each one is then scored against a wake word built from the others: a sample that scores low
//! is unlike the rest (a different phrase, a cough, clipped) and is better re-recorded.

use std::collections::HashMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use rustpotter::{RustpotterConfig, SampleFormat, WakewordRef, WakewordRefBuildFromBuffers, WakewordSave};

use crate::audio::{self, SystemClock};
use crate::config::{AudioConfig, FilePacing};

/// Detector rate.
const RATE: u32 = 16000;
/// MFCC coefficients per frame, as rustpotter's own tools use.
const MFCC_SIZE: u16 = 16;
/// Shortest and longest sample after trimming (ms).
pub const MIN_MS: u64 = 250;
pub const MAX_MS: u64 = 3000;
/// Silence kept around the trimmed phrase (ms).
const PAD_MS: usize = 50;

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: audio::AudioError },
    #[error("{path}: {what}")]
    Sample { path: PathBuf, what: String },
    #[error("need at least one sample")]
    NoSamples,
    #[error("cannot build the wake word: {0}")]
    Build(String),
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
}

/// What became of one sample.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleReport {
    pub path: PathBuf,
    /// Length before and after trimming.
    pub duration_ms: u64,
    pub trimmed_ms: u64,
    pub peak_dbfs: f32,
    /// Score against a wake word built from the other samples (three or more samples only).
    pub score: Option<f32>,
}

/// Reads a WAV through the front end: mono 16-bit at 16 kHz.
pub fn read_mono(path: &Path) -> Result<Vec<i16>, EnrollError> {
    let cfg = AudioConfig { source: crate::config::SourceSpec::File(path.into()), file_pacing: FilePacing::Fast, sample_rate: RATE, ..AudioConfig::default() };
    let err = |e| EnrollError::Read { path: path.into(), source: e };
    let source = audio::start(&cfg, SystemClock::shared()).map_err(err)?;
    let pcm: Vec<i16> = source.frames.iter().flat_map(|f| f.pcm).collect();
    source.join().map_err(err)?;
    Ok(pcm)
}

/// Cuts leading and trailing silence: 10 ms blocks quieter than 40 dB under the peak (or -60 dBFS).
pub fn trim(pcm: &[i16]) -> &[i16] {
    let block = RATE as usize / 100;
    let levels: Vec<f32> = pcm.chunks(block).map(audio::level_dbfs).collect();
    let peak = levels.iter().copied().fold(-96.0f32, f32::max);
    let floor = (peak - 40.0).max(-60.0);
    let Some(first) = levels.iter().position(|&l| l > floor) else { return &pcm[..0] };
    let last = levels.iter().rposition(|&l| l > floor).unwrap_or(first);
    let pad = PAD_MS * RATE as usize / 1000;
    let start = (first * block).saturating_sub(pad);
    let end = ((last + 1) * block + pad).min(pcm.len());
    &pcm[start..end]
}

pub fn to_wav(pcm: &[i16]) -> Vec<u8> {
    let spec = hound::WavSpec { channels: 1, sample_rate: RATE, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let mut out = Cursor::new(Vec::new());
    {
        let mut w = hound::WavWriter::new(&mut out, spec).expect("writing a WAV header to memory");
        for s in pcm {
            w.write_sample(*s).expect("writing to memory");
        }
        w.finalize().expect("writing to memory");
    }
    out.into_inner()
}

fn build(name: &str, samples: &[(String, Vec<u8>)]) -> Result<WakewordRef, EnrollError> {
    let map: HashMap<String, Vec<u8>> = samples.iter().cloned().collect();
    WakewordRef::new_from_sample_buffers(name.to_string(), None, None, map, MFCC_SIZE).map_err(EnrollError::Build)
}

/// The best score `model` gives `pcm` (with silence around it), or 0 if it never scores.
pub fn best_score(model: &[u8], pcm: &[i16]) -> Result<f32, EnrollError> {
    let mut rc = RustpotterConfig::default();
    rc.fmt.sample_format = SampleFormat::I16;
    // Every frame compared with every sample: a score, not a detection.
    rc.detector.avg_threshold = 0.0;
    let mut rp = super::scorer(rc, model).map_err(EnrollError::Build)?;
    // Quiet dither rather than digital silence around the phrase.
    let mut x = 12345u32;
    let mut dither = |n: usize| -> Vec<i16> {
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                ((x >> 16) % 9) as i16 - 4
            })
            .collect()
    };
    let mut audio = dither(RATE as usize);
    audio.extend_from_slice(pcm);
    audio.extend(dither(RATE as usize * 2));
    Ok(super::best_score(&mut rp, [audio.as_slice()]))
}

/// Builds wake word `name` from `samples` and writes it to `out`.
pub fn enroll(name: &str, samples: &[PathBuf], out: &Path) -> Result<Vec<SampleReport>, EnrollError> {
    if samples.is_empty() {
        return Err(EnrollError::NoSamples);
    }
    let mut reports = Vec::new();
    let mut wavs = Vec::new();
    let mut trimmed_pcm = Vec::new();
    for path in samples {
        let pcm = read_mono(path)?;
        let cut = trim(&pcm);
        let ms = |n: usize| n as u64 * 1000 / RATE as u64;
        let peak = cut.iter().map(|s| s.saturating_abs()).max().unwrap_or(0);
        let peak_dbfs = 20.0 * (peak.max(1) as f32 / 32768.0).log10();
        let sample_err = |what: String| EnrollError::Sample { path: path.clone(), what };
        if cut.is_empty() || peak_dbfs < -50.0 {
            return Err(sample_err(format!("no speech found (peak {peak_dbfs:.0} dBFS): is the microphone muted?")));
        }
        if ms(cut.len()) < MIN_MS || ms(cut.len()) > MAX_MS {
            return Err(sample_err(format!(
                "the phrase lasts {} ms after trimming silence; a wake word sample should be {MIN_MS}-{MAX_MS} ms",
                ms(cut.len())
            )));
        }
        if peak == i16::MAX {
            tracing::warn!(sample = %path.display(), "sample is clipped: record it a little quieter");
        }
        let key = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| format!("sample{}", wavs.len()));
        if wavs.iter().any(|(k, _): &(String, Vec<u8>)| *k == key) {
            return Err(sample_err("two samples have this file name; rename one".into()));
        }
        wavs.push((key, to_wav(cut)));
        trimmed_pcm.push(cut.to_vec());
        reports.push(SampleReport { path: path.clone(), duration_ms: ms(pcm.len()), trimmed_ms: ms(cut.len()), peak_dbfs, score: None });
    }
    let model = build(name, &wavs)?;
    model.save_to_file(&out.to_string_lossy()).map_err(|reason| EnrollError::Write { path: out.into(), reason })?;
    if wavs.len() >= 3 {
        for i in 0..wavs.len() {
            let others: Vec<(String, Vec<u8>)> = wavs.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, w)| w.clone()).collect();
            let buffer = build(name, &others)?.save_to_buffer().map_err(EnrollError::Build)?;
            reports[i].score = Some(best_score(&buffer, &trimmed_pcm[i])?);
        }
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trim_keeps_the_phrase_with_padding() {
        let mut pcm = vec![0i16; 16000];
        pcm.extend((0..8000).map(|i| if i % 2 == 0 { 8000 } else { -8000 }));
        pcm.extend(vec![3i16; 16000]);
        let cut = trim(&pcm);
        assert_eq!(cut.len(), 8000 + 2 * 800);
        assert!(trim(&[0i16; 1600]).is_empty());
    }
}
