//! `make bench`: the wake-word detector's CPU cost per second of audio (real-time factor), on speech, steady
//! noise and silence, with and without the gate; and the resident memory of `voxgate run` while it listens.
//!
//! CPU time is the detector thread's own (CLOCK_THREAD_CPUTIME_ID), so reading the audio is not counted.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use voxgate::audio::{Frame, FrameSpec};
use voxgate::config::Config;
use voxgate::wake::Detector;

/// The same allocator as the binary.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn frames(pcm: &[i16]) -> Vec<Frame> {
    pcm.chunks_exact(320)
        .enumerate()
        .map(|(i, c)| Frame { seq: i as u64, captured: std::time::Instant::now(), pcm: c.to_vec() })
        .collect()
}

/// Real-time factor of the detector over `pcm`, best of three runs.
fn rtf(config: &Config, pcm: &[i16]) -> f64 {
    let spec = FrameSpec::from_config(&config.audio);
    (0..3)
        .map(|_| {
            let input = frames(pcm);
            let mut det = Detector::new(&config.wake, spec, config.session.preroll_ms).unwrap();
            let start = thread_cpu();
            for f in input {
                std::hint::black_box(det.push(f));
            }
            (thread_cpu() - start).as_secs_f64() / (pcm.len() as f64 / 16000.0)
        })
        .fold(f64::INFINITY, f64::min)
}

fn read(path: &Path) -> Vec<i16> {
    hound::WavReader::open(path).unwrap().samples::<i16>().map(Result::unwrap).collect()
}

/// Pink-ish noise: white noise through a one-pole low-pass, at about `dbfs`.
fn noise(seconds: usize, dbfs: f64) -> Vec<i16> {
    let amp = 32768.0 * 10f64.powf(dbfs / 20.0) * 3.0;
    let mut x = 1u64;
    let mut y = 0.0;
    (0..seconds * 16000)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let white = ((x >> 33) as f64 / (1u64 << 31) as f64) - 1.0;
            y = 0.9 * y + 0.1 * white;
            (y * amp) as i16
        })
        .collect()
}

fn rss_while_listening() -> Option<(u64, u64)> {
    let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/voxgate");
    if !bin.exists() {
        return None;
    }
    let mut child = Command::new(&bin)
        .arg("run")
        .env("VOXGATE_AUDIO__SOURCE", "stdin")
        .env("VOXGATE_LOG__LEVEL", "warn")
        .stdin(Stdio::piped())
        .spawn()
        .ok()?;
    let speech = read(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wake/stream-en-us_m1.wav"));
    let bytes: Vec<u8> = speech.iter().flat_map(|s| s.to_le_bytes()).collect();
    let mut stdin = child.stdin.take()?;
    // Ten passes over 25 s of speech, as fast as the daemon reads (stdin is live: frames may be dropped).
    for _ in 0..10 {
        stdin.write_all(&bytes).ok()?;
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).ok()?;
    let kb = |key: &str| status.lines().find(|l| l.starts_with(key))?.split_whitespace().nth(1)?.parse::<u64>().ok();
    let found = (kb("VmRSS:")?, kb("VmHWM:")?);
    drop(stdin);
    let _ = child.wait();
    Some(found)
}

fn main() {
    voxgate::small_pages();
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wake");
    let mut speech = Vec::new();
    let mut streams: Vec<_> = std::fs::read_dir(&fixtures)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("stream-"))
        .collect();
    streams.sort();
    assert!(!streams.is_empty(), "no fixture streams in {}", fixtures.display());
    for p in &streams {
        speech.extend(read(p));
    }
    let cases: Vec<(&str, Vec<i16>)> = vec![
        ("speech (fixture streams)", speech),
        ("steady noise -40 dBFS", noise(60, -40.0)),
        ("quiet noise -65 dBFS", noise(60, -65.0)),
        ("digital silence", vec![0; 60 * 16000]),
    ];
    let gated = Config::default();
    let mut ungated = Config::default();
    ungated.wake.gate = false;
    println!("| audio | seconds | RTF, gate on | RTF, gate off |");
    println!("|---|---|---|---|");
    for (name, pcm) in &cases {
        println!("| {name} | {:.0} | {:.4} | {:.4} |", pcm.len() as f64 / 16000.0, rtf(&gated, pcm), rtf(&ungated, pcm));
    }
    match rss_while_listening() {
        Some((rss, hwm)) => println!("\nvoxgate run (release, stdin source, wake word on): RSS {} KiB, peak {} KiB", rss, hwm),
        None => println!("\n(build target/release/voxgate to measure its memory)"),
    }
}
