//! `voxgate run`: the audio source, the detector thread, the session supervisor, until the source ends (a
//! file or stdin) or `shutdown` is cancelled (a signal).
//!
//! Channels:
//! - source frames (crossbeam, bounded) → the detector thread, which owns their receiving end;
//! - the detector thread → the supervisor: [`SessionRequest`]s (tokio mpsc, bounded; the thread never
//!   blocks on it), dropped when the thread ends, which tells the supervisor the source has ended;
//! - everyone → subscribers: [`Event`]s on a broadcast channel.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::audio::{self, AudioError, Frame, FrameSpec, SystemClock};
use crate::config::{Config, FilePacing, SourceSpec, WakeMode};
use crate::session::client::{ConnectError, Params, Reporter};
use crate::session::segment::{Onset, Segmenter};
use crate::session::supervisor::{Command, Supervisor, Totals};
use crate::session::{EndReason, Event, SessionQueue, SessionRequest, State, Trigger};
use crate::wake::{Detector, DetectorStats, Preroll, WakeError};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Audio(#[from] AudioError),
    #[error(transparent)]
    Wake(#[from] WakeError),
    #[error("session.url: {0}")]
    Session(#[from] ConnectError),
    #[error("cannot start the {what} thread: {source}")]
    Thread { what: &'static str, source: std::io::Error },
}

/// What one run did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Summary {
    pub frames: u64,
    pub audio_ms: u64,
    pub overruns: u64,
    pub detector: Option<DetectorStats>,
    pub sessions: Totals,
}

/// Session requests waiting for the supervisor.
const REQUESTS_QUEUE: usize = 4;
/// Events kept for a subscriber that is behind.
pub const EVENTS_QUEUE: usize = 1024;

/// Runs the daemon until the source ends or `shutdown` fires.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<Summary, DaemonError> {
    let (events, _) = broadcast::channel(EVENTS_QUEUE);
    run_with_events(config, shutdown, events).await
}

/// [`run`], publishing on `events` (subscribe before calling to see everything).
pub async fn run_with_events(config: Config, shutdown: CancellationToken, events: broadcast::Sender<Event>) -> Result<Summary, DaemonError> {
    let (_, commands) = mpsc::channel(1);
    run_with(config, shutdown, events, commands).await
}

/// [`run_with_events`], taking supervisor commands (stop) from `commands`.
pub async fn run_with(
    config: Config,
    shutdown: CancellationToken,
    events: broadcast::Sender<Event>,
    commands: mpsc::Receiver<Command>,
) -> Result<Summary, DaemonError> {
    let params = Params::new(&config)?;
    let spec = FrameSpec::from_config(&config.audio);
    let detector = match config.wake.mode {
        WakeMode::Wakeword => Some(Detector::new(&config.wake, spec, config.session.preroll_ms)?),
        WakeMode::Always | WakeMode::Manual => None,
    };
    let source = audio::start(&config.audio, SystemClock::shared())?;
    tracing::info!(source = %source.name, "voxgate {} started, listening to {}", env!("CARGO_PKG_VERSION"), source.name);
    let reporter = Reporter { events: events.clone(), state: Arc::new(watch::Sender::new(State::Listening)) };
    let (requests_tx, requests) = mpsc::channel(REQUESTS_QUEUE);
    let mut side = AudioSide::new(&config, detector, requests_tx, reporter.clone());
    let frames = source.frames.clone();
    let detector_thread = std::thread::Builder::new()
        .name("voxgate-detector".into())
        .spawn(move || side.run(frames))
        .map_err(|source| DaemonError::Thread { what: "detector", source })?;
    let supervisor = Supervisor::new(params, reporter, requests, commands);
    // The supervisor returns when the detector thread is done (source ended) and its session drained, or on
    // shutdown after ending the session.
    let totals = supervisor.run(shutdown.clone()).await;
    if shutdown.is_cancelled() {
        tracing::info!("shutting down");
    } else {
        tracing::info!(source = %source.name, "end of source");
    }
    source.stop();
    let stats = source.stats.clone();
    let (joined, detector) = tokio::task::spawn_blocking(move || {
        let joined = source.join();
        (joined, detector_thread.join().ok().flatten())
    })
    .await
    .unwrap_or((Ok(()), None));
    let frames = stats.frames.load(Ordering::Relaxed);
    let frame_ms = config.audio.frame_ms as u64;
    let summary = Summary { frames, audio_ms: frames * frame_ms, overruns: stats.overruns.load(Ordering::Relaxed), detector, sessions: totals };
    tracing::info!(frames, overruns = summary.overruns, sessions = summary.sessions.sessions, "captured {} ms of audio", summary.audio_ms);
    joined?;
    Ok(summary)
}

/// The session a frame goes to.
struct Tap {
    queue: Arc<SessionQueue>,
    segmenter: Segmenter,
}

/// The detector thread's work: meter, detect, and feed the current session.
struct AudioSide {
    detector: Option<Detector>,
    /// Pre-roll for sessions that no detector opens (`always`, `manual`).
    ring: Preroll,
    preroll_frames: usize,
    mode: WakeMode,
    session_cfg: crate::config::SessionConfig,
    spec: FrameSpec,
    queue_frames: usize,
    lossless: bool,
    requests: mpsc::Sender<SessionRequest>,
    reporter: Reporter,
    tap: Option<Tap>,
    /// `always` mode: watches for speech while no session is open.
    onset: Onset,
}

impl AudioSide {
    fn new(config: &Config, detector: Option<Detector>, requests: mpsc::Sender<SessionRequest>, reporter: Reporter) -> Self {
        let spec = FrameSpec::from_config(&config.audio);
        let frame_ms = spec.frame_ms as u64;
        let preroll_frames = (config.session.preroll_ms / frame_ms) as usize;
        let lossless = matches!(config.audio.source_spec(), SourceSpec::File(_)) && config.audio.file_pacing == FilePacing::Fast;
        AudioSide {
            detector,
            ring: Preroll::new(preroll_frames),
            preroll_frames,
            mode: config.wake.mode,
            session_cfg: config.session.clone(),
            spec,
            queue_frames: (config.session.queue_ms / frame_ms).max(1) as usize,
            lossless,
            requests,
            reporter,
            tap: None,
            onset: Onset::new(spec.sample_rate),
        }
    }

    fn run(&mut self, frames: crossbeam_channel::Receiver<Frame>) -> Option<DetectorStats> {
        let mut meter = Meter::new(self.spec.frame_ms as u64, Duration::from_secs(10));
        for frame in frames.iter() {
            meter.add(&frame);
            self.feed_session(&frame);
            let seq = frame.seq;
            match self.detector.as_mut() {
                Some(det) => {
                    if let Some(d) = det.push(frame) {
                        let acted_on = self.tap.is_none();
                        tracing::info!(event = "wake", wakeword = %d.wakeword, score = d.score, t_ms = d.t_ms, acted_on,
                            "wake word {} at {:.2} s (score {:.2}){}", d.wakeword, d.t_ms as f64 / 1000.0, d.score,
                            if acted_on { "" } else { ", during a session: not acted on" });
                        self.reporter.emit(Event::Wake { wakeword: d.wakeword.clone(), score: d.score, t_ms: d.t_ms, acted_on });
                        if acted_on {
                            self.open(Trigger::Wakeword, Some((&d.wakeword, d.score)), d.t_ms, &d.preroll, seq + 1);
                        }
                    }
                }
                None => {
                    let t_ms = (seq + 1) * self.spec.frame_ms as u64;
                    let speech = self.tap.is_none() && self.mode == WakeMode::Always && self.onset.push(&frame.pcm);
                    self.ring.push(frame);
                    if speech {
                        self.onset = Onset::new(self.spec.sample_rate);
                        let preroll: Vec<Frame> = self.ring.last(self.preroll_frames).cloned().collect();
                        self.open(Trigger::Always, None, t_ms, &preroll, seq + 1);
                    }
                }
            }
        }
        if let Some(t) = self.tap.take() {
            t.queue.finish(EndReason::SourceEnded);
        }
        self.detector.as_ref().map(|d| d.stats)
    }

    /// Gives a frame to the current session, and ends it when the audio says so.
    fn feed_session(&mut self, frame: &Frame) {
        let Some(t) = self.tap.as_mut() else { return };
        let end = t.segmenter.push(&frame.pcm);
        if !t.queue.push(frame.clone()) {
            self.tap = None;
            return;
        }
        if let Some(reason) = end {
            t.queue.finish(reason);
            self.tap = None;
        }
    }

    /// Starts a session whose audio begins with `preroll`.
    fn open(&mut self, trigger: Trigger, wake: Option<(&str, f32)>, t_ms: u64, preroll: &[Frame], next_seq: u64) {
        let first_seq = preroll.first().map(|f| f.seq).unwrap_or(next_seq);
        // Room for the pre-roll and `queue_ms` more: the pre-roll is queued at once, before the connection is up,
        // and must not be pushed out by the frames that arrive while it connects.
        let queue = Arc::new(SessionQueue::new(self.queue_frames + preroll.len(), self.lossless, first_seq));
        let req = SessionRequest {
            trigger,
            wakeword: wake.map(|(w, _)| w.to_string()),
            score: wake.map(|(_, s)| s),
            t_ms,
            first_seq,
            preroll_ms: preroll.len() as u64 * self.spec.frame_ms as u64,
            queue: queue.clone(),
        };
        if self.requests.try_send(req).is_err() {
            tracing::warn!("session not started: the supervisor is not keeping up");
            return;
        }
        let mut segmenter = Segmenter::new(&self.session_cfg, self.spec.sample_rate, self.spec.frame_ms);
        segmenter.prime(preroll.iter().map(|f| f.pcm.as_slice()));
        for f in preroll {
            queue.push(f.clone());
        }
        self.tap = Some(Tap { queue, segmenter });
    }
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
