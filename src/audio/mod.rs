//! The audio front end: every source (a cpal capture device, a WAV file, raw PCM on stdin) runs on its own
//! thread and produces the same thing, [`Frame`]s of `frame_ms` mono s16le at `sample_rate`, numbered in
//! capture order.
//!
//! Channels: each source thread owns the sending side of a bounded frame channel; the consumer (the wake-word
//! detector thread) owns the [`AudioSource`] handle with the receiving side. The channel closes when the source
//! ends (end of file, end of stdin, stop). Live sources never wait on the consumer: a frame that does not fit is
//! dropped and counted as an overrun. A file played `fast` waits instead, so nothing is lost.

pub mod clock;
pub mod convert;
pub mod device;
mod file;
pub mod pace;
mod stdin;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

pub use clock::{Clock, ManualClock, Stop, SystemClock};
pub use convert::Converter;
pub use file::{WavInfo, probe as probe_wav};
pub use pace::Pace;

use crate::config::{AudioConfig, FilePacing, SourceSpec};

/// One frame of audio as it leaves the front end.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// Position in capture order, from 0 when the source started. A gap means frames were dropped.
    pub seq: u64,
    /// When the frame was complete (its last sample captured or read).
    pub captured: Instant,
    /// `FrameSpec::samples` mono samples.
    pub pcm: Vec<i16>,
}

/// The shape every source produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameSpec {
    pub sample_rate: u32,
    pub frame_ms: u32,
}

impl FrameSpec {
    pub fn from_config(audio: &AudioConfig) -> Self {
        FrameSpec { sample_rate: audio.sample_rate, frame_ms: audio.frame_ms }
    }

    /// Samples per frame.
    pub fn samples(&self) -> usize {
        (self.sample_rate as usize * self.frame_ms as usize) / 1000
    }
}

/// Counters and state of the running source, shared with whoever reports status.
#[derive(Debug, Default)]
pub struct AudioStats {
    /// Frames handed to the consumer.
    pub frames: AtomicU64,
    /// Frames lost before the consumer got them (live sources only): dropped because the consumer was behind,
    /// or cut by a capture ring overflow. Each one is a skipped `seq`.
    pub overruns: AtomicU64,
    /// Device samples the capture callback could not store because its ring was full (their frames are in
    /// `overruns`).
    pub ring_overflow_samples: AtomicU64,
    /// How many times the device was (re)opened.
    pub opens: AtomicU64,
    /// The device is missing or failed and the source is retrying on its own: no frames, but not stuck.
    waiting: AtomicBool,
    state: Mutex<String>,
}

impl AudioStats {
    /// What the source is doing, for status and logs ("capturing from …", "waiting for …").
    pub fn state(&self) -> String {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub(crate) fn set_state(&self, s: impl Into<String>) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = s.into();
    }

    pub fn waiting(&self) -> bool {
        self.waiting.load(Ordering::Relaxed)
    }

    pub(crate) fn set_waiting(&self, waiting: bool) {
        self.waiting.store(waiting, Ordering::Relaxed);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("cannot open WAV file {path}: {source}")]
    WavOpen { path: PathBuf, source: hound::Error },
    #[error("unsupported WAV file {path}: {what}")]
    WavFormat { path: PathBuf, what: String },
    #[error("WAV file {path} is truncated: its header announces {expected} bytes of audio, the file has {found}")]
    WavTruncated { path: PathBuf, expected: u64, found: u64 },
    #[error("cannot read {what}: {source}")]
    Read { what: String, source: std::io::Error },
    #[error("cannot resample {from} Hz to {to} Hz: {reason}")]
    Resampler { from: u32, to: u32, reason: String },
    #[error("cannot start the {what} thread: {source}")]
    Thread { what: &'static str, source: std::io::Error },
}

/// Where a source thread puts its frames: numbers them, applies the live (drop) or lossless (wait) policy and
/// counts.
pub(crate) struct FrameSink {
    tx: Sender<Frame>,
    live: bool,
    stats: Arc<AudioStats>,
    stop: Stop,
    pace: Arc<Pace>,
    next_seq: u64,
}

impl FrameSink {
    pub(crate) fn pace(&self) -> Arc<Pace> {
        self.pace.clone()
    }

    /// Whether the consumer lets the source batch its frames (see [`pace`]).
    pub fn relaxed(&self) -> bool {
        self.live && self.pace.relaxed()
    }

    /// Hands one frame over. Returns `false` once nobody listens any more (or the source was stopped).
    pub fn push(&mut self, pcm: Vec<i16>) -> bool {
        let frame = Frame { seq: self.next_seq, captured: Instant::now(), pcm };
        self.next_seq += 1;
        // Counted before it is handed over, taken back if it is not: whoever reads the counters never sees more
        // frames used downstream (sent by a session) than the source delivered.
        self.stats.frames.fetch_add(1, Ordering::Relaxed);
        // Not handed over: whether the consumer was only behind (a full channel; the source goes on).
        let handed: Result<(), bool> = if self.live {
            self.tx.try_send(frame).map_err(|e| e.is_full())
        } else {
            crossbeam_channel::select! {
                send(self.tx, frame) -> r => r.map_err(|_| false),
                recv(self.stop.channel()) -> _ => Err(false),
            }
        };
        match handed {
            Ok(()) => true,
            Err(behind) => {
                self.stats.frames.fetch_sub(1, Ordering::Relaxed);
                if behind {
                    self.stats.overruns.fetch_add(1, Ordering::Relaxed);
                }
                behind
            }
        }
    }

    /// `frames` were lost before they became frames (a capture ring overflow): their numbers are skipped, so
    /// whoever receives the frames after them sees the gap, and they are counted as overruns.
    pub fn skip(&mut self, frames: u64) {
        self.next_seq += frames;
        self.stats.overruns.fetch_add(frames, Ordering::Relaxed);
    }
}

/// What the consumer of a source holds: its frames, and the pace it wants them at.
#[derive(Clone)]
pub struct Feed {
    pub frames: Receiver<Frame>,
    pub pace: Arc<Pace>,
}

/// Handle on a running source. Dropping it stops the source thread and joins it.
pub struct AudioSource {
    /// Frames in capture order; closed when the source ends.
    pub frames: Receiver<Frame>,
    pub stats: Arc<AudioStats>,
    /// The pace the consumer wants the frames at; attentive unless it relaxes it.
    pub pace: Arc<Pace>,
    pub spec: FrameSpec,
    /// A human-readable name of the source, for logs ("alsa:fakemic", "file /x.wav", "stdin").
    pub name: String,
    stop: Stop,
    thread: Option<JoinHandle<Result<(), AudioError>>>,
}

impl AudioSource {
    /// The consumer's side: the frames and the pace.
    pub fn feed(&self) -> Feed {
        Feed { frames: self.frames.clone(), pace: self.pace.clone() }
    }

    /// Asks the source to stop; frames already queued can still be received.
    pub fn stop(&self) {
        self.stop.stop();
    }

    /// A handle that stops the source from elsewhere (a signal handler's thread).
    pub fn stopper(&self) -> Stop {
        self.stop.clone()
    }

    /// Waits for the source thread to end and returns how it ended.
    pub fn join(mut self) -> Result<(), AudioError> {
        match self.thread.take() {
            Some(t) => t.join().unwrap_or_else(|_| {
                Err(AudioError::Read { what: self.name.clone(), source: std::io::Error::other("source thread panicked") })
            }),
            None => Ok(()),
        }
    }
}

impl Drop for AudioSource {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What every backend's start function receives.
pub(crate) struct SourceContext {
    pub config: AudioConfig,
    pub spec: FrameSpec,
    pub clock: Arc<dyn Clock>,
    pub stats: Arc<AudioStats>,
    pub stop: Stop,
}

/// Frames buffered between a source and its consumer: one second.
const CHANNEL_MS: u32 = 1000;

type Backend = fn(SourceContext, FrameSink) -> Result<(), AudioError>;

/// The source backends, by the `audio.source` form that selects them.
fn backend(spec: &SourceSpec) -> (&'static str, Backend) {
    match spec {
        SourceSpec::Device(_) => ("capture", device::run),
        SourceSpec::File(_) => ("file", file::run),
        SourceSpec::Stdin => ("stdin", stdin::run),
    }
}

/// Starts the source `audio.source` names, on its own thread, waiting on `clock`.
pub fn start(audio: &AudioConfig, clock: Arc<dyn Clock>) -> Result<AudioSource, AudioError> {
    let spec = FrameSpec::from_config(audio);
    let source = &audio.source;
    let live = !matches!(source, SourceSpec::File(_)) || audio.file_pacing == FilePacing::Realtime;
    let capacity = (CHANNEL_MS / audio.frame_ms).max(2) as usize;
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    let stats = Arc::new(AudioStats::default());
    let stop = Stop::new().map_err(|source| AudioError::Thread { what: "audio", source })?;
    let name = match &source {
        SourceSpec::Device(d) => format!("capture device {d}"),
        SourceSpec::File(p) => format!("file {}", p.display()),
        SourceSpec::Stdin => "stdin".to_string(),
    };
    if let SourceSpec::File(path) = &source {
        // Open errors (missing, not a WAV, unsupported format) are reported here, not from the thread.
        file::probe(path)?;
    }
    let (thread_name, run) = backend(source);
    let ctx = SourceContext { config: audio.clone(), spec, clock, stats: stats.clone(), stop: stop.clone() };
    let pace = Arc::new(Pace::default());
    let sink = FrameSink { tx, live, stats: stats.clone(), stop: stop.clone(), pace: pace.clone(), next_seq: 0 };
    let thread = std::thread::Builder::new()
        .name(format!("voxgate-{thread_name}"))
        .spawn(move || run(ctx, sink))
        .map_err(|source| AudioError::Thread { what: thread_name, source })?;
    Ok(AudioSource {
        frames: rx,
        stats,
        pace,
        spec,
        name,
        stop,
        thread: Some(thread),
    })
}

/// Level of a frame in dBFS (RMS), for meters and logs; -96 for digital silence.
pub fn level_dbfs(pcm: &[i16]) -> f32 {
    if pcm.is_empty() {
        return -96.0;
    }
    let sum: f64 = pcm.iter().map(|&s| (s as f64) * (s as f64)).sum();
    let rms = (sum / pcm.len() as f64).sqrt() / 32768.0;
    if rms <= 0.0 { -96.0 } else { (20.0 * rms.log10()).max(-96.0) as f32 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_of_full_scale_square_is_zero_dbfs() {
        let pcm: Vec<i16> = (0..320).map(|i| if i % 2 == 0 { 32767 } else { -32768 }).collect();
        assert!(level_dbfs(&pcm).abs() < 0.01);
        assert_eq!(level_dbfs(&[0; 320]), -96.0);
    }

    #[test]
    fn frame_samples_follow_rate_and_duration() {
        assert_eq!(FrameSpec { sample_rate: 16000, frame_ms: 20 }.samples(), 320);
        assert_eq!(FrameSpec { sample_rate: 8000, frame_ms: 30 }.samples(), 240);
    }
}
