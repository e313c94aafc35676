//! `voxgate demo`: runs the audio front end on the bundled recording (or a given WAV) as fast as it can be
//! read, and prints a level timeline: what the detector will see.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::audio::{self, SystemClock};
use crate::config::{AudioConfig, FilePacing};

/// The bundled recording: wake word, command, silence, a decoy phrase, and again (16 kHz mono).
pub const DEMO_WAV: &[u8] = include_bytes!("../assets/demo.wav");

/// Timeline resolution.
const STEP_MS: u64 = 250;

/// Runs the demo, printing to `out`. Returns the number of frames.
pub fn run(file: Option<&Path>, out: &mut dyn Write) -> anyhow::Result<u64> {
    let (path, _keep) = match file {
        Some(p) => (p.to_path_buf(), None),
        None => {
            let dir = tempfile::tempdir()?;
            let p = dir.path().join("demo.wav");
            std::fs::write(&p, DEMO_WAV)?;
            (p, Some(dir))
        }
    };
    let shown: PathBuf = file.map(Path::to_path_buf).unwrap_or_else(|| "bundled demo.wav".into());
    let audio = AudioConfig { source: format!("file:{}", path.display()), file_pacing: FilePacing::Fast, ..AudioConfig::default() };
    let info = audio::probe_wav(&path)?;
    writeln!(
        out,
        "voxgate demo: audio front end on {} ({} Hz, {} ch, {}-bit, {:.1} s) -> {} Hz mono, {} ms frames",
        shown.display(),
        info.spec.sample_rate,
        info.spec.channels,
        info.spec.bits_per_sample,
        info.duration_ms() as f64 / 1000.0,
        audio.sample_rate,
        audio.frame_ms
    )?;
    let started = Instant::now();
    let source = audio::start(&audio, SystemClock::new())?;
    let per_step = (STEP_MS / audio.frame_ms as u64) as usize;
    let mut step = Vec::with_capacity(per_step * source.spec.samples());
    let mut t_ms = 0u64;
    for frame in source.frames.iter() {
        step.extend_from_slice(&frame.pcm);
        if step.len() == per_step * source.spec.samples() {
            print_step(out, t_ms, &step)?;
            t_ms += STEP_MS;
            step.clear();
        }
    }
    if !step.is_empty() {
        print_step(out, t_ms, &step)?;
    }
    let stats = source.stats.clone();
    source.join()?;
    let frames = stats.frames.load(Ordering::Relaxed);
    writeln!(
        out,
        "{frames} frames ({:.2} s of audio) in {:.0} ms, {} dropped",
        (frames * audio.frame_ms as u64) as f64 / 1000.0,
        started.elapsed().as_secs_f64() * 1000.0,
        stats.overruns.load(Ordering::Relaxed)
    )?;
    Ok(frames)
}

fn print_step(out: &mut dyn Write, t_ms: u64, pcm: &[i16]) -> std::io::Result<()> {
    let db = audio::level_dbfs(pcm);
    // -70 dBFS and below is an empty bar; 0 dBFS is 35 blocks.
    let width = (((db + 70.0) / 2.0).max(0.0)) as usize;
    writeln!(out, "{:>6.2} s {:>4.0} dBFS {}", t_ms as f64 / 1000.0, db, "#".repeat(width))
}
