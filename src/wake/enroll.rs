//! `voxgate enroll`: builds a wake word (`.rpw`) from the user's own recordings.
//!
//! Each sample is read through the same front end as live audio (any WAV format, converted to mono at the
//! detector's rate), trimmed of leading and trailing silence, and checked for length and level. Each one is
//! then scored against a wake word built from the others (leave-one-out): the share that would be detected
//! at the default threshold is what to expect from a new recording of the same voice, and a sample that
//! scores low is unlike the rest (a different phrase, a cough) and is better re-recorded. A wake word that
//! would miss one of its own samples with the default settings is never written: a lower threshold is
//! stored in it first (down to 0.40), and if that is not enough enroll refuses.

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
/// Fewest samples: fewer cannot be checked against each other.
pub const MIN_SAMPLES: usize = 3;
/// A sample whose peak is below this is quiet enough to lose its detail in the noise (dBFS).
const QUIET_DBFS: f32 = -35.0;
/// A leave-one-out score below this: the sample is unlike the others.
const UNLIKE: f32 = 0.4;
/// The lowest threshold enroll stores in a wake word so that it detects its own samples; below it the
/// samples are too unlike each other to make one wake word.
const LOWEST_STORED: f32 = 0.40;

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: audio::AudioError },
    #[error("{path}: {what}")]
    Sample { path: PathBuf, what: String },
    #[error("{0} sample(s) given: record at least {MIN_SAMPLES} (6 to 10 is better), so each can be checked against the others")]
    TooFew(usize),
    #[error("the samples do not sound like one phrase: {0} score low against the others; record them again, all saying the same words")]
    Mixed(String),
    #[error("the wake word would not detect {0} with the default settings; record them again (or more samples)")]
    MissesOwn(String),
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
    /// Score against a wake word built from the other samples.
    pub score: Option<f32>,
}

/// What enrolling found.
#[derive(Debug, Clone, PartialEq)]
pub struct Enrolled {
    pub samples: Vec<SampleReport>,
    /// The share of samples a wake word built from the others detects with the default settings.
    pub expected_rate: f32,
    /// The default threshold, and a threshold that would catch every leave-one-out score, if it differs.
    pub threshold: f32,
    pub suggested_threshold: Option<f32>,
    /// A threshold stored in the wake word (it overrides `wake.threshold`), when the default would miss one
    /// of its own samples.
    pub stored_threshold: Option<f32>,
    /// Clipped, quiet or unlike the rest: said, the model is written anyway.
    pub warnings: Vec<String>,
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

/// A wake word from `samples`; `threshold`, if given, is stored in it and overrides `wake.threshold`.
fn build(name: &str, samples: &[(String, Vec<u8>)], threshold: Option<f32>) -> Result<WakewordRef, EnrollError> {
    let map: HashMap<String, Vec<u8>> = samples.iter().cloned().collect();
    WakewordRef::new_from_sample_buffers(name.to_string(), threshold, None, map, MFCC_SIZE).map_err(EnrollError::Build)
}

/// The best score `model` gives `pcm` (with silence around it), or 0 if it never scores.
pub fn best_score(model: &[u8], pcm: &[i16]) -> Result<f32, EnrollError> {
    let mut rc = RustpotterConfig::default();
    rc.fmt.sample_format = SampleFormat::I16;
    // Every frame compared with every sample: a score, not a detection.
    rc.detector.avg_threshold = 0.0;
    let mut rp = super::scorer(rc, model).map_err(EnrollError::Build)?;
    // Quiet dither rather than digital silence around the phrase.
    let audio = with_quiet(pcm);
    Ok(super::best_score(&mut rp, [audio.as_slice()]))
}

/// Whether `model` detects `pcm` (with quiet around it) with the default settings of `wake`.
fn detected(model: &[u8], pcm: &[i16]) -> Result<bool, EnrollError> {
    let spec = crate::audio::FrameSpec { sample_rate: RATE, frame_ms: 20 };
    let mut rp = rustpotter::Rustpotter::new(&super::rustpotter_config(&crate::config::WakeConfig::default(), spec)).map_err(EnrollError::Build)?;
    rp.add_wakeword_from_buffer("model", model).map_err(EnrollError::Build)?;
    let mut chunks = super::Rechunker::new(rp.get_bytes_per_frame());
    let audio = with_quiet(pcm);
    Ok(chunks.feed(&mut rp, &audio, |_| {}).is_some())
}

/// `pcm` with a second of quiet dither before and two after.
fn with_quiet(pcm: &[i16]) -> Vec<i16> {
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
    audio
}

/// Builds wake word `name` from `samples`, checks it, and writes it to `out`.
pub fn enroll(name: &str, samples: &[PathBuf], out: &Path) -> Result<Enrolled, EnrollError> {
    let mut warnings = Vec::new();
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
            warnings.push(format!("{}: clipped (it reaches full scale); record it a little quieter or further away", path.display()));
        } else if peak_dbfs < QUIET_DBFS {
            warnings.push(format!("{}: quiet (peak {peak_dbfs:.0} dBFS); record it closer or louder", path.display()));
        }
        let key = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| format!("sample{}", wavs.len()));
        if wavs.iter().any(|(k, _): &(String, Vec<u8>)| *k == key) {
            return Err(sample_err("two samples have this file name; rename one".into()));
        }
        wavs.push((key, to_wav(cut)));
        trimmed_pcm.push(cut.to_vec());
        reports.push(SampleReport { path: path.clone(), duration_ms: ms(pcm.len()), trimmed_ms: ms(cut.len()), peak_dbfs, score: None });
    }
    if wavs.len() < MIN_SAMPLES {
        return Err(EnrollError::TooFew(wavs.len()));
    }
    let mut caught = 0;
    for i in 0..wavs.len() {
        let others: Vec<(String, Vec<u8>)> = wavs.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, w)| w.clone()).collect();
        let buffer = build(name, &others, None)?.save_to_buffer().map_err(EnrollError::Build)?;
        reports[i].score = Some(best_score(&buffer, &trimmed_pcm[i])?);
        if detected(&buffer, &trimmed_pcm[i])? {
            caught += 1;
        }
    }
    let scores: Vec<f32> = reports.iter().filter_map(|r| r.score).collect();
    let unlike: Vec<String> = reports.iter().filter(|r| r.score.is_some_and(|s| s < UNLIKE)).map(|r| r.path.display().to_string()).collect();
    if unlike.len() * 2 > reports.len() {
        return Err(EnrollError::Mixed(unlike.join(", ")));
    }
    for u in &unlike {
        warnings.push(format!("{u}: unlike the others (a different phrase, a noise?); consider recording it again"));
    }
    let threshold = crate::config::WakeConfig::default().threshold as f32;
    let lowest = scores.iter().copied().fold(1.0f32, f32::min);
    let suggested_threshold = (lowest < threshold).then(|| ((lowest - 0.02) * 100.0).floor().max(40.0) / 100.0);
    // The finished wake word must detect every one of its samples with the default settings; if it does not,
    // a lower threshold is stored in it, step by step, down to LOWEST_STORED.
    let missed = |model: &[u8]| -> Result<Vec<String>, EnrollError> {
        let mut out = Vec::new();
        for (r, pcm) in reports.iter().zip(&trimmed_pcm) {
            if !detected(model, pcm)? {
                out.push(r.path.display().to_string());
            }
        }
        Ok(out)
    };
    let mut stored_threshold = None;
    let mut model = build(name, &wavs, None)?.save_to_buffer().map_err(EnrollError::Build)?;
    let mut misses = missed(&model)?;
    let mut t = threshold;
    while !misses.is_empty() && t - 0.02 >= LOWEST_STORED - 1e-4 {
        t -= 0.02;
        model = build(name, &wavs, Some(t))?.save_to_buffer().map_err(EnrollError::Build)?;
        misses = missed(&model)?;
        stored_threshold = Some(t);
    }
    if !misses.is_empty() {
        return Err(EnrollError::MissesOwn(misses.join(", ")));
    }
    std::fs::write(out, &model).map_err(|e| EnrollError::Write { path: out.into(), reason: e.to_string() })?;
    Ok(Enrolled { samples: reports, expected_rate: caught as f32 / scores.len() as f32, threshold, suggested_threshold, stored_threshold, warnings })
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
