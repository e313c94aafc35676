//! `voxgate run`: starts the audio source and the frame consumer thread, and runs until the source ends (a
//! file or stdin) or `shutdown` is cancelled (a signal).
//!
//! Channels: the source's frame channel goes to the consumer thread, which owns its receiving end; a oneshot
//! tells this task when the consumer has seen the end of the frames.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::audio::{self, AudioError, Frame, FrameSpec, SystemClock};
use crate::config::{Config, WakeMode};
use crate::wake::{Detection, Detector, DetectorStats, WakeError};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Audio(#[from] AudioError),
    #[error(transparent)]
    Wake(#[from] WakeError),
    #[error("cannot start the {what} thread: {source}")]
    Thread { what: &'static str, source: std::io::Error },
}

/// Audio statistics of one run, reported at its end.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Summary {
    pub frames: u64,
    pub audio_ms: u64,
    pub overruns: u64,
}

/// Runs the daemon until the source ends or `shutdown` fires.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<Summary, DaemonError> {
    let detector = match config.wake.mode {
        WakeMode::Wakeword => Some(Detector::new(&config.wake, FrameSpec::from_config(&config.audio), config.session.preroll_ms)?),
        WakeMode::Always | WakeMode::Manual => None,
    };
    let source = audio::start(&config.audio, SystemClock::new())?;
    tracing::info!(source = %source.name, "voxgate {} started, listening to {}", env!("CARGO_PKG_VERSION"), source.name);
    let (detections_tx, mut detections) = tokio::sync::mpsc::channel(DETECTIONS_QUEUE);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let frames = source.frames.clone();
    let frame_ms = config.audio.frame_ms as u64;
    let consumer = std::thread::Builder::new()
        .name("voxgate-detector".into())
        .spawn(move || {
            let stats = detect(frames, detector, frame_ms, &detections_tx);
            let _ = done_tx.send(stats);
        })
        .map_err(|source| DaemonError::Thread { what: "detector", source })?;
    let mut done_rx = std::pin::pin!(done_rx);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                tracing::info!("shutting down");
                break;
            }
            _ = &mut done_rx => {
                tracing::info!(source = %source.name, "end of source");
                break;
            }
            Some(d) = detections.recv() => {
                tracing::debug!(wakeword = %d.wakeword, preroll_frames = d.preroll.len(), "detection handed over");
            }
        }
    }
    source.stop();
    let stats = source.stats.clone();
    let (joined, _) = tokio::task::spawn_blocking(move || (source.join(), consumer.join())).await.unwrap_or((Ok(()), Ok(())));
    let frames = stats.frames.load(Ordering::Relaxed);
    let summary = Summary { frames, audio_ms: frames * frame_ms, overruns: stats.overruns.load(Ordering::Relaxed) };
    tracing::info!(frames, overruns = summary.overruns, "captured {} ms of audio", summary.audio_ms);
    joined?;
    Ok(summary)
}

/// Detections waiting for the async side; a full queue drops the detection (the supervisor is not keeping
/// up, which only happens if it is stuck) rather than stalling the detector.
const DETECTIONS_QUEUE: usize = 8;

/// The detector thread: meters every frame and runs the wake-word detector on it, until the source ends.
fn detect(
    frames: crossbeam_channel::Receiver<Frame>,
    mut detector: Option<Detector>,
    frame_ms: u64,
    out: &tokio::sync::mpsc::Sender<Detection>,
) -> Option<DetectorStats> {
    let mut meter = Meter::new(frame_ms, Duration::from_secs(10));
    for frame in frames.iter() {
        meter.add(&frame);
        let Some(det) = detector.as_mut() else { continue };
        if let Some(d) = det.push(frame) {
            tracing::info!(
                event = "wake",
                wakeword = %d.wakeword,
                score = d.score,
                t_ms = d.t_ms,
                "wake word {} at {:.2} s (score {:.2})",
                d.wakeword,
                d.t_ms as f64 / 1000.0,
                d.score
            );
            if out.try_send(d).is_err() {
                tracing::warn!("detection dropped: the session supervisor is not keeping up");
            }
        }
    }
    detector.map(|d| d.stats)
}

/// Logs the audio level periodically at debug level: enough to see a microphone is alive and not clipping.
pub struct Meter {
    frame_ms: u64,
    every: u64,
    pub frames: u64,
    sum_db: f64,
    peak: i16,
}

impl Meter {
    pub fn new(frame_ms: u64, every: Duration) -> Self {
        Meter { frame_ms, every: (every.as_millis() as u64 / frame_ms).max(1), frames: 0, sum_db: 0.0, peak: 0 }
    }

    pub fn add(&mut self, frame: &Frame) {
        self.frames += 1;
        self.sum_db += audio::level_dbfs(&frame.pcm) as f64;
        self.peak = self.peak.max(frame.pcm.iter().map(|s| s.saturating_abs()).max().unwrap_or(0));
        if self.frames % self.every == 0 {
            let peak_db = 20.0 * (self.peak.max(1) as f64 / 32768.0).log10();
            tracing::debug!(
                "audio at {} s: mean level {:.0} dBFS, peak {:.0} dBFS",
                self.frames * self.frame_ms / 1000,
                self.sum_db / self.every as f64,
                peak_db
            );
            self.sum_db = 0.0;
            self.peak = 0;
        }
    }
}
