//! `voxgate run`: the audio source, the detector thread, the session supervisor and the control socket,
//! until the source ends (a file or stdin) or `shutdown` is cancelled (a signal).
//!
//! Channels:
//! - source frames (crossbeam, bounded) → the detector thread, which owns their receiving end;
//! - the daemon task → the detector thread: `AudioCommand`s (crossbeam; trigger, mute, a new setup after a
//!   reload), answered on oneshots where an answer is due;
//! - the detector thread → the supervisor: [`SessionRequest`]s (tokio mpsc, bounded; the thread never
//!   blocks on it), dropped when the thread ends, which tells the supervisor the source has ended;
//! - the control socket, the signal thread (SIGHUP) and tests → the daemon task: [`Call`]s (mpsc);
//! - the daemon task → the supervisor: [`Command`]s (mpsc);
//! - everyone → subscribers: [`Event`]s on a broadcast channel.
//!
//! The daemon task answers calls, runs reloads, and talks to the service manager (READY once audio flows and
//! the socket is bound, STATUS on each state change, WATCHDOG while frames arrive, RELOADING, STOPPING).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::audio::{self, AudioError, AudioSource, Frame, FrameSpec, SystemClock};
use crate::config::{Config, FilePacing, SourceSpec, WakeMode};
use crate::control::proto::{Counters, Reply, Request, Status};
use crate::control::server::{Call, ControlError};
use crate::logging::LogHandle;
use crate::session::client::{ConnectError, Params, Reporter};
use crate::session::segment::{Onset, Segmenter};
use crate::session::supervisor::{Command, Supervisor, Totals};
use crate::session::{EndReason, Event, SessionQueue, SessionRequest, State, Trigger};
use crate::systemd::Notifier;
use crate::wake::{Detector, DetectorStats, Preroll, WakeError};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Audio(#[from] AudioError),
    #[error(transparent)]
    Wake(#[from] WakeError),
    #[error("session.url: {0}")]
    Session(#[from] ConnectError),
    #[error(transparent)]
    Control(#[from] ControlError),
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
/// Events kept for a subscriber that is behind: each subscriber's bounded queue.
pub const EVENTS_QUEUE: usize = 1024;
/// Calls waiting for the daemon task.
const CALLS_QUEUE: usize = 16;
/// How long a `trigger` waits for the detector thread to open the session.
const TRIGGER_TIMEOUT: Duration = Duration::from_secs(2);

/// Re-reads the configuration for a reload (the file given at start, with the environment on top).
pub type Loader = Arc<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// Runs the daemon until the source ends or `shutdown` fires.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<Summary, DaemonError> {
    Daemon::new(config, shutdown).run().await
}

/// [`run`], publishing on `events` (subscribe before calling to see everything).
pub async fn run_with_events(config: Config, shutdown: CancellationToken, events: broadcast::Sender<Event>) -> Result<Summary, DaemonError> {
    Daemon::new(config, shutdown).events(events).run().await
}

/// A daemon about to run, with what it is wired to.
pub struct Daemon {
    config: Config,
    shutdown: CancellationToken,
    events: broadcast::Sender<Event>,
    calls: (mpsc::Sender<Call>, mpsc::Receiver<Call>),
    loader: Option<Loader>,
    log: Option<LogHandle>,
    config_file: Option<PathBuf>,
}

impl Daemon {
    pub fn new(config: Config, shutdown: CancellationToken) -> Daemon {
        Daemon {
            config,
            shutdown,
            events: broadcast::channel(EVENTS_QUEUE).0,
            calls: mpsc::channel(CALLS_QUEUE),
            loader: None,
            log: None,
            config_file: None,
        }
    }

    /// Publishes events on `events` instead of a channel of its own.
    pub fn events(mut self, events: broadcast::Sender<Event>) -> Daemon {
        self.events = events;
        self
    }

    /// How reloads read the configuration; without one, a reload is refused.
    pub fn loader(mut self, file: Option<PathBuf>, loader: Loader) -> Daemon {
        self.config_file = file;
        self.loader = Some(loader);
        self
    }

    /// The logger whose level a reload may change.
    pub fn log(mut self, log: LogHandle) -> Daemon {
        self.log = Some(log);
        self
    }

    /// Where to send requests, as the control socket does (the signal thread sends `reload` here on SIGHUP).
    pub fn calls(&self) -> mpsc::Sender<Call> {
        self.calls.0.clone()
    }

    /// Runs until the source ends or `shutdown` fires.
    pub async fn run(self) -> Result<Summary, DaemonError> {
        let Daemon { config, shutdown, events, calls: (calls_tx, mut calls), loader, log, config_file } = self;
        let params = Params::new(&config)?;
        let detector = build_detector(&config)?;
        // The socket first: if another daemon owns it, leave the microphone alone.
        let listener = match config.control.socket.as_os_str().is_empty() {
            true => None,
            false => Some(crate::control::server::bind(&config.control.socket, config.control.mode())?),
        };
        let source = audio::start(&config.audio, SystemClock::shared())?;
        tracing::info!(source = %source.name, "voxgate {} started, listening to {}", env!("CARGO_PKG_VERSION"), source.name);
        let reporter = Reporter { events: events.clone(), state: Arc::new(watch::Sender::new(State::Listening)) };
        let (requests_tx, requests) = mpsc::channel(REQUESTS_QUEUE);
        let (audio_tx, audio_rx) = crossbeam_channel::bounded(64);
        let (first_frame_tx, mut first_frame) = oneshot::channel();
        let detections = Arc::new(AtomicU64::new(0));
        let mut side = AudioSide::new(&config, detector, requests_tx, reporter.clone(), detections.clone());
        let frames = source.frames.clone();
        let detector_thread = std::thread::Builder::new()
            .name("voxgate-detector".into())
            .spawn(move || side.run(frames, audio_rx, first_frame_tx))
            .map_err(|source| DaemonError::Thread { what: "detector", source })?;
        let (commands_tx, commands) = mpsc::channel(8);
        let supervisor = Supervisor::new(params, reporter.clone(), requests, commands);
        let totals = supervisor.totals();
        let mut state = reporter.state.subscribe();
        // The supervisor returns when the detector thread is done (source ended) and its session drained, or on
        // shutdown after ending the session.
        let mut supervisor = tokio::spawn(supervisor.run(shutdown.clone()));
        let server_stop = CancellationToken::new();
        let server = listener.map(|l| {
            tracing::info!("control socket at {}", l.path.display());
            tokio::spawn(crate::control::server::serve(l, calls_tx.clone(), events.clone(), state.clone(), server_stop.clone()))
        });
        drop(calls_tx);
        let notifier = Notifier::from_env();
        let mut ctl = Controller {
            config,
            config_file,
            loader,
            log,
            source,
            retired: (0, 0),
            audio: audio_tx,
            commands: commands_tx,
            events,
            state: state.clone(),
            totals,
            detections,
            started: Instant::now(),
            reload_error: None,
            notifier,
        };
        let watchdog_every = notifier.watchdog_interval();
        let watchdog_on = watchdog_every.is_some();
        let period = watchdog_every.unwrap_or(Duration::from_secs(3600));
        let mut watchdog = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut watched_frames = 0;
        let mut stalled_since: Option<Instant> = None;
        let (mut ready, mut stopping) = (false, false);
        let stop = |stopping: &mut bool| {
            if !*stopping {
                *stopping = true;
                tracing::info!("shutting down");
                notifier.stopping();
            }
        };
        let totals = loop {
            tokio::select! {
                // The signal first: the supervisor sees it too, and may be done by the time this loop runs.
                biased;
                _ = shutdown.cancelled(), if !stopping => stop(&mut stopping),
                t = &mut supervisor => break t.unwrap_or_default(),
                _ = &mut first_frame, if !ready => {
                    ready = true;
                    tracing::debug!("audio flows: ready");
                    notifier.ready(&ctl.status_line());
                }
                Some(call) = calls.recv() => ctl.handle(call).await,
                Ok(()) = state.changed(), if ready && !stopping => notifier.status(&ctl.status_line()),
                _ = watchdog.tick(), if watchdog_on => {
                    // Frames keep coming, or the source knows it is waiting for its device (and retries on its own):
                    // alive. A capture that silently stopped gets no ping and systemd restarts the service.
                    let frames = ctl.counters().audio_frames;
                    if frames != watched_frames || ctl.source.stats.waiting() {
                        if stalled_since.take().is_some() {
                            tracing::info!("audio frames arrive again from {}", ctl.source.name);
                            notifier.status(&ctl.status_line());
                        }
                        notifier.watchdog();
                    } else {
                        let since = *stalled_since.get_or_insert_with(|| {
                            tracing::warn!("no audio frame from {} since the last check: the watchdog is no longer told all is well", ctl.source.name);
                            Instant::now()
                        });
                        notifier.status(&format!("{}; no audio from {} for {} s", ctl.status_line(), ctl.source.name, since.elapsed().as_secs()));
                    }
                    watched_frames = frames;
                }
            }
        };
        if shutdown.is_cancelled() {
            stop(&mut stopping);
        }
        server_stop.cancel();
        if let Some(server) = server {
            // Its listener guard removes the socket file.
            let _ = server.await;
        }
        if !shutdown.is_cancelled() {
            tracing::info!(source = %ctl.source.name, "end of source");
        }
        let counters = ctl.counters();
        let Controller { source, audio, config, .. } = ctl;
        drop(audio);
        source.stop();
        let (joined, detector) = tokio::task::spawn_blocking(move || {
            let joined = source.join();
            (joined, detector_thread.join().ok().flatten())
        })
        .await
        .unwrap_or((Ok(()), None));
        let frame_ms = config.audio.frame_ms as u64;
        let summary =
            Summary { frames: counters.audio_frames, audio_ms: counters.audio_frames * frame_ms, overruns: counters.overruns, detector, sessions: totals };
        tracing::info!(frames = summary.frames, overruns = summary.overruns, sessions = summary.sessions.sessions, "captured {} ms of audio", summary.audio_ms);
        joined?;
        Ok(summary)
    }
}

fn build_detector(config: &Config) -> Result<Option<Detector>, WakeError> {
    let spec = FrameSpec::from_config(&config.audio);
    match config.wake.mode {
        WakeMode::Wakeword => Ok(Some(Detector::new(&config.wake, spec, config.session.preroll_ms)?)),
        WakeMode::Always | WakeMode::Manual => Ok(None),
    }
}

/// The daemon task's state: what it needs to answer calls and to reload.
struct Controller {
    config: Config,
    config_file: Option<PathBuf>,
    loader: Option<Loader>,
    log: Option<LogHandle>,
    source: AudioSource,
    /// Frames and overruns of the sources a reload replaced.
    retired: (u64, u64),
    audio: crossbeam_channel::Sender<AudioCommand>,
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<Event>,
    state: watch::Receiver<State>,
    totals: watch::Receiver<Totals>,
    detections: Arc<AtomicU64>,
    started: Instant,
    reload_error: Option<String>,
    notifier: Notifier,
}

impl Controller {
    async fn handle(&mut self, (request, reply): Call) {
        let answer = match request {
            Request::Status => Reply { status: Some(self.status()), ..Reply::ok() },
            Request::Stop => self.command(Command::Stop).await,
            Request::Mute => {
                // The detector thread first, so no new session opens while the supervisor ends the current one.
                self.tell_audio(AudioCommand::Mute(true));
                self.command(Command::Mute).await
            }
            Request::Unmute => {
                let r = self.command(Command::Unmute).await;
                self.tell_audio(AudioCommand::Mute(false));
                r
            }
            Request::Trigger => {
                let (tx, rx) = oneshot::channel();
                if !self.tell_audio(AudioCommand::Trigger(tx)) {
                    Reply::error("the detector thread is not taking commands (busy, or the source ended)")
                } else {
                    // The detector thread answers when it next looks at its commands: promptly, unless it is stuck;
                    // wait elsewhere so other calls are not held up.
                    tokio::spawn(async move {
                        let answer = match tokio::time::timeout(TRIGGER_TIMEOUT, rx).await {
                            Ok(Ok(Ok(session))) => Reply { session: Some(session), ..Reply::ok() },
                            Ok(Ok(Err(e))) => Reply::error(e),
                            Ok(Err(_)) => Reply::error("the audio source has ended"),
                            Err(_) => Reply::error(format!("the detector thread did not answer within {} s", TRIGGER_TIMEOUT.as_secs())),
                        };
                        let _ = reply.send(answer);
                    });
                    return;
                }
            }
            Request::Reload => match self.reload().await {
                Ok(changed) => Reply { changed: Some(changed), ..Reply::ok() },
                Err(e) => Reply::error(e),
            },
            Request::Subscribe => Reply::error("subscribe is handled by the control socket"),
        };
        let _ = reply.send(answer);
    }

    /// Hands the detector thread a command without ever waiting on it.
    fn tell_audio(&self, c: AudioCommand) -> bool {
        self.audio.try_send(c).is_ok()
    }

    async fn command(&self, c: Command) -> Reply {
        match self.commands.send(c).await {
            Ok(()) => Reply::ok(),
            Err(_) => Reply::error("the daemon is shutting down"),
        }
    }

    fn counters(&self) -> Counters {
        let totals = self.totals.borrow();
        Counters {
            audio_frames: self.retired.0 + self.source.stats.frames.load(Ordering::Relaxed),
            overruns: self.retired.1 + self.source.stats.overruns.load(Ordering::Relaxed),
            wake_detections: self.detections.load(Ordering::Relaxed),
            sessions: totals.sessions,
            sessions_failed: totals.failed,
            frames_sent: totals.frames_sent,
            frames_dropped: totals.frames_dropped,
        }
    }

    fn status(&self) -> Status {
        Status {
            state: self.state.borrow().as_str().into(),
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            pid: std::process::id(),
            source: self.source.name.clone(),
            source_state: self.source.stats.state(),
            wake_mode: format!("{:?}", self.config.wake.mode).to_lowercase(),
            config_file: self.config_file.as_ref().map(|p| p.display().to_string()),
            reload_error: self.reload_error.clone(),
            counters: self.counters(),
            last_session: self.totals.borrow().last.clone(),
        }
    }

    /// One line for systemd's STATUS=.
    fn status_line(&self) -> String {
        let c = self.counters();
        let mut line = format!("{}; {} sessions ({} failed), {} wake words", self.state.borrow().as_str(), c.sessions, c.sessions_failed, c.wake_detections);
        if let Some(e) = &self.reload_error {
            line.push_str(&format!("; last reload failed: {e}"));
        }
        line
    }

    /// Reads the configuration again and applies what changed; on any error nothing changes.
    async fn reload(&mut self) -> Result<Vec<String>, String> {
        self.notifier.reloading();
        let result = self.try_reload().await;
        match &result {
            Ok(changed) if changed.is_empty() => tracing::info!(event = "reload", "configuration reloaded: nothing changed"),
            Ok(changed) => tracing::info!(event = "reload", "configuration reloaded: {} changed", changed.join(", ")),
            Err(e) => {
                tracing::error!(event = "reload", "reload failed, keeping the running configuration: {e}");
                let _ = self.events.send(Event::Error { message: format!("reload failed: {e}") });
            }
        }
        self.reload_error = result.as_ref().err().cloned();
        self.notifier.ready(&self.status_line());
        result
    }

    async fn try_reload(&mut self) -> Result<Vec<String>, String> {
        let loader = self.loader.clone().ok_or("this daemon was started without a configuration to reload")?;
        let new = tokio::task::spawn_blocking(move || loader()).await.map_err(|e| e.to_string())??;
        let changed = crate::config::changed_keys(&self.config, &new);
        if changed.is_empty() {
            return Ok(changed);
        }
        // Prepare everything first: any failure leaves the running setup untouched.
        let params = Params::new(&new).map_err(|e| format!("session.url: {e}"))?;
        let audio_changed = new.audio != self.config.audio;
        let detector_changed = audio_changed || new.wake != self.config.wake || new.session.preroll_ms != self.config.session.preroll_ms;
        let detector = match detector_changed {
            true => {
                let cfg = new.clone();
                Some(tokio::task::spawn_blocking(move || build_detector(&cfg)).await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?)
            }
            false => None,
        };
        let source = match audio_changed {
            true => Some(audio::start(&new.audio, SystemClock::shared()).map_err(|e| e.to_string())?),
            false => None,
        };
        if new.log.level != self.config.log.level {
            if let Some(log) = &self.log {
                log.set_level(&new.log.level)?;
            }
        }
        for key in changed.iter().filter(|k| k.starts_with("control.") || *k == "log.format") {
            tracing::warn!("{key} changed: it takes effect when the daemon restarts");
        }
        let setup = Setup { config: new.clone(), detector, frames: source.as_ref().map(|s| s.frames.clone()) };
        if !self.tell_audio(AudioCommand::Reconfigure(Box::new(setup))) {
            return Err("the detector thread is not taking commands (busy, or the source ended)".into());
        }
        self.commands.send(Command::Reconfigure(Box::new(params))).await.map_err(|_| "the daemon is shutting down".to_string())?;
        if let Some(source) = source {
            tracing::info!("audio source changed: now {}", source.name);
            let old = std::mem::replace(&mut self.source, source);
            self.retired.0 += old.stats.frames.load(Ordering::Relaxed);
            self.retired.1 += old.stats.overruns.load(Ordering::Relaxed);
            old.stop();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = old.join() {
                    tracing::warn!("the replaced audio source ended with an error: {e}");
                }
            });
        }
        self.config = new;
        Ok(changed)
    }
}

/// A new setup for the detector thread after a reload.
struct Setup {
    config: Config,
    /// `Some`: replace the detector (`Some(None)`: no detector in this wake mode); `None`: keep it.
    detector: Option<Option<Detector>>,
    /// Frames of a new source, replacing the current one.
    frames: Option<crossbeam_channel::Receiver<Frame>>,
}

/// What the daemon task asks of the detector thread.
enum AudioCommand {
    /// Open a session now; answers with its id, or why not.
    Trigger(oneshot::Sender<Result<String, String>>),
    /// Ignore the microphone (no detection, no session) until unmuted; on unmute forget what was heard before.
    Mute(bool),
    Reconfigure(Box<Setup>),
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
    muted: bool,
    /// Sequence number of the last frame seen.
    last_seq: Option<u64>,
    /// Wake words detected, for `status`.
    detections: Arc<AtomicU64>,
}

impl AudioSide {
    fn new(config: &Config, detector: Option<Detector>, requests: mpsc::Sender<SessionRequest>, reporter: Reporter, detections: Arc<AtomicU64>) -> Self {
        let spec = FrameSpec::from_config(&config.audio);
        let mut side = AudioSide {
            detector,
            ring: Preroll::new(0),
            preroll_frames: 0,
            mode: config.wake.mode,
            session_cfg: config.session.clone(),
            spec,
            queue_frames: 0,
            lossless: false,
            requests,
            reporter,
            tap: None,
            onset: Onset::new(spec.sample_rate),
            muted: false,
            last_seq: None,
            detections,
        };
        side.configure(config);
        side
    }

    /// Takes the settings of `config` that apply from the next session on.
    fn configure(&mut self, config: &Config) {
        self.spec = FrameSpec::from_config(&config.audio);
        let frame_ms = self.spec.frame_ms as u64;
        let preroll_frames = (config.session.preroll_ms / frame_ms) as usize;
        if preroll_frames != self.preroll_frames {
            self.ring = Preroll::new(preroll_frames);
        }
        self.preroll_frames = preroll_frames;
        self.mode = config.wake.mode;
        self.session_cfg = config.session.clone();
        self.queue_frames = (config.session.queue_ms / frame_ms).max(1) as usize;
        self.lossless = matches!(config.audio.source_spec(), SourceSpec::File(_)) && config.audio.file_pacing == FilePacing::Fast;
        self.onset = Onset::new(self.spec.sample_rate);
    }

    fn run(
        &mut self,
        mut frames: crossbeam_channel::Receiver<Frame>,
        commands: crossbeam_channel::Receiver<AudioCommand>,
        first_frame: oneshot::Sender<()>,
    ) -> Option<DetectorStats> {
        let mut meter = Meter::new(self.spec.frame_ms as u64, Duration::from_secs(10));
        let mut first_frame = Some(first_frame);
        let mut commands = Some(commands);
        loop {
            let never = crossbeam_channel::never();
            crossbeam_channel::select! {
                recv(frames) -> frame => match frame {
                    Ok(frame) => {
                        if let Some(tx) = first_frame.take() {
                            let _ = tx.send(());
                        }
                        meter.add(&frame);
                        self.frame(frame);
                    }
                    Err(_) => break,
                },
                recv(commands.as_ref().unwrap_or(&never)) -> cmd => match cmd {
                    Ok(AudioCommand::Trigger(reply)) => {
                        let _ = reply.send(self.trigger());
                    }
                    Ok(AudioCommand::Mute(on)) => self.mute(on),
                    Ok(AudioCommand::Reconfigure(setup)) => {
                        if let Some(f) = self.reconfigure(*setup) {
                            frames = f;
                        }
                    }
                    Err(_) => commands = None,
                },
            }
        }
        if let Some(t) = self.tap.take() {
            t.queue.finish(EndReason::SourceEnded);
        }
        self.detector.as_ref().map(|d| d.stats)
    }

    fn frame(&mut self, frame: Frame) {
        self.last_seq = Some(frame.seq);
        if self.muted {
            return;
        }
        self.feed_session(&frame);
        let seq = frame.seq;
        match self.detector.as_mut() {
            Some(det) => {
                let Some(d) = det.push(frame) else { return };
                self.detections.fetch_add(1, Ordering::Relaxed);
                let acted_on = self.tap.is_none();
                let session = uuid::Uuid::new_v4().to_string();
                // An acted-on wake word is the session's first line.
                let span = if acted_on { tracing::info_span!("session", session = %session) } else { tracing::Span::none() };
                span.in_scope(|| {
                    tracing::info!(event = "wake", wakeword = %d.wakeword, score = d.score, t_ms = d.t_ms, acted_on,
                        "wake word {} at {:.2} s (score {:.2}){}", d.wakeword, d.t_ms as f64 / 1000.0, d.score,
                        if acted_on { "" } else { ", during a session: not acted on" });
                });
                self.reporter.emit(Event::Wake { wakeword: d.wakeword.clone(), score: d.score, t_ms: d.t_ms, acted_on });
                if acted_on {
                    self.open(session, Trigger::Wakeword, Some((&d.wakeword, d.score)), d.t_ms, &d.preroll, seq + 1);
                }
            }
            None => {
                let t_ms = (seq + 1) * self.spec.frame_ms as u64;
                let speech = self.tap.is_none() && self.mode == WakeMode::Always && self.onset.push(&frame.pcm);
                self.ring.push(frame);
                if speech {
                    self.onset = Onset::new(self.spec.sample_rate);
                    let preroll: Vec<Frame> = self.ring.last(self.preroll_frames).cloned().collect();
                    self.open(uuid::Uuid::new_v4().to_string(), Trigger::Always, None, t_ms, &preroll, seq + 1);
                }
            }
        }
    }

    /// A session opened by `trigger`: the pre-roll is the audio heard up to now.
    fn trigger(&mut self) -> Result<String, String> {
        if self.muted {
            return Err("muted: unmute first".into());
        }
        // A session stopped from the network side is let go of at the next frame; it may not have come yet.
        if self.tap.as_ref().is_some_and(|t| t.queue.ended().is_some()) {
            self.tap = None;
        }
        if self.tap.is_some() {
            return Err("a session is already running".into());
        }
        let preroll = match &self.detector {
            Some(d) => d.recent(),
            None => self.ring.last(self.preroll_frames).cloned().collect(),
        };
        let next_seq = self.last_seq.map_or(0, |s| s + 1);
        let t_ms = next_seq * self.spec.frame_ms as u64;
        let session = uuid::Uuid::new_v4().to_string();
        tracing::info_span!("session", session = %session).in_scope(|| tracing::info!(event = "trigger", "session {session} triggered over the control socket"));
        self.open(session.clone(), Trigger::Manual, None, t_ms, &preroll, next_seq);
        if self.tap.is_none() {
            return Err("the supervisor is not keeping up; try again".into());
        }
        Ok(session)
    }

    fn mute(&mut self, on: bool) {
        if on == self.muted {
            return;
        }
        self.muted = on;
        // The supervisor ends the session; stop feeding it now.
        self.tap = None;
        if !on {
            // Nothing heard before or while muted may reach a session: start the pre-roll afresh.
            self.ring.clear();
            if let Some(d) = self.detector.as_mut() {
                d.forget();
            }
            self.onset = Onset::new(self.spec.sample_rate);
        }
    }

    /// Applies a reload; returns the new source's frames if the source changed.
    fn reconfigure(&mut self, setup: Setup) -> Option<crossbeam_channel::Receiver<Frame>> {
        self.configure(&setup.config);
        if let Some(detector) = setup.detector {
            self.detector = detector;
        }
        if setup.frames.is_some() {
            // A new source numbers its frames afresh: the session cannot go on, nor can the old pre-roll be used.
            if let Some(t) = self.tap.take() {
                t.queue.finish(EndReason::Stopped);
            }
            self.ring.clear();
            self.last_seq = None;
        }
        setup.frames
    }

    /// Gives a frame to the current session, and ends it when the audio says so.
    fn feed_session(&mut self, frame: &Frame) {
        let Some(t) = self.tap.as_mut() else { return };
        // Queued (and sent, when the connection takes it at once) before the end-of-speech check reads it.
        if !t.queue.push(frame.clone()) {
            self.tap = None;
            return;
        }
        if let Some(reason) = t.segmenter.push(&frame.pcm) {
            t.queue.finish(reason);
            self.tap = None;
        }
    }

    /// Starts a session whose audio begins with `preroll`.
    fn open(&mut self, session: String, trigger: Trigger, wake: Option<(&str, f32)>, t_ms: u64, preroll: &[Frame], next_seq: u64) {
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
            session,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn side(preroll_ms: u64) -> (AudioSide, mpsc::Receiver<SessionRequest>) {
        let mut config = Config::default();
        config.wake.mode = WakeMode::Manual;
        config.session.preroll_ms = preroll_ms;
        let (tx, rx) = mpsc::channel(4);
        let reporter = Reporter { events: broadcast::channel(16).0, state: Arc::new(watch::Sender::new(State::Listening)) };
        (AudioSide::new(&config, None, tx, reporter, Arc::new(AtomicU64::new(0))), rx)
    }

    fn frame(seq: u64, level: i16) -> Frame {
        Frame { seq, captured: Instant::now(), pcm: vec![level; 320] }
    }

    #[test]
    fn a_trigger_carries_the_preroll_but_nothing_heard_before_or_while_muted() {
        let (mut side, mut requests) = side(200);
        for seq in 0..20 {
            side.frame(frame(seq, 1));
        }
        let id = side.trigger().unwrap();
        let req = requests.try_recv().unwrap();
        assert_eq!((req.session.as_str(), req.trigger, req.first_seq, req.preroll_ms), (id.as_str(), Trigger::Manual, 10, 200));
        assert_eq!(req.queue.len(), 10);
        assert_eq!(side.trigger().unwrap_err(), "a session is already running");
        // Stopped from the network side, before the next frame: a new trigger is not refused.
        req.queue.finish(EndReason::Stopped);
        let again = side.trigger().unwrap();
        assert_ne!(again, id);
        let req = requests.try_recv().unwrap();
        req.queue.finish(EndReason::Stopped);

        // Muted: the session is dropped, nothing is taken in, a trigger is refused.
        side.mute(true);
        for seq in 20..40 {
            side.frame(frame(seq, 9999));
        }
        assert!(side.trigger().unwrap_err().contains("muted"));
        side.mute(false);
        for seq in 40..43 {
            side.frame(frame(seq, 2));
        }
        side.trigger().unwrap();
        let req = requests.try_recv().unwrap();
        // Only what came after the unmute, not the 10 frames the pre-roll could hold.
        assert_eq!((req.first_seq, req.preroll_ms, req.queue.len()), (40, 60, 3));
    }
}
