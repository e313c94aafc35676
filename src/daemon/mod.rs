//! `voxgate run`: wires the audio source, the detector thread, the session supervisor and the control socket
//! together, and runs until the source ends (a file, or stdin at EOF) or `shutdown` is cancelled (a signal).
//!
//! Owners (see the picture in `lib.rs`):
//! - the source thread owns capture; its frames (crossbeam, bounded) go to the detector thread;
//! - the detector thread ([`Listener`]) owns detection, the pre-roll and the open session's feed; it sends
//!   [`SessionRequest`](crate::session::SessionRequest)s to the supervisor (tokio mpsc, bounded, never waited on) and drops that sender when it
//!   ends, which tells the supervisor the source has ended;
//! - the supervisor task alone owns the session state machine and the daemon's [`State`]; it takes
//!   [`Command`](crate::session::supervisor::Command)s (mpsc) from the daemon task;
//! - the daemon task (here, and `control`) answers [`Call`]s from the control socket and the signal thread,
//!   runs reloads, and tells the service manager how things are ([`health`]);
//! - everyone publishes [`Event`]s on one broadcast channel; subscribers that fall behind miss events.
//!
//! A thread or task that dies is an error: a panic of the detector thread or the supervisor, or a capture
//! device that stops without being told to, makes `run` return an error naming it (exit 1, so systemd's
//! `Restart=on-failure` restarts the service), never a quiet end of source.

mod control;
pub mod health;
pub mod notify;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::audio::{self, AudioError, FrameSpec, SystemClock};
use crate::config::{Config, SourceSpec, WakeMode};
use crate::control::server::{Call, Listener as ControlListener};
use crate::logging::LogHandle;
use crate::session::connect::Params;
use crate::session::supervisor::{Supervisor, Totals};
use crate::session::{Event, Reporter};
use crate::wake::listener::{self, Listener, ListenerError};
use crate::wake::{Detector, DetectorStats, WakeError};
pub use control::ReloadError;
use health::{Health, Pulse};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Audio(#[from] AudioError),
    #[error(transparent)]
    Unusable(#[from] Unusable),
    #[error(transparent)]
    Listener(#[from] ListenerError),
    #[error("the {what} panicked: {message}")]
    Panicked { what: &'static str, message: String },
    #[error("{source_name} stopped delivering audio without being asked to")]
    SourceStopped { source_name: String },
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
/// Commands waiting for the supervisor.
const COMMANDS_QUEUE: usize = 8;
/// How long the end of a file or stdin source waits for what is still to be played.
const PLAYBACK_FINISH: Duration = Duration::from_secs(30);

/// Re-reads the configuration for a reload (the file given at start, with the environment on top).
pub type Loader = Arc<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// Runs the daemon, without a control socket, until the source ends or `shutdown` fires.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<Summary, DaemonError> {
    Daemon::new(config, shutdown).run(None).await
}

/// [`run`], publishing on `events` (subscribe before calling to see everything).
pub async fn run_with_events(config: Config, shutdown: CancellationToken, events: broadcast::Sender<Event>) -> Result<Summary, DaemonError> {
    Daemon::new(config, shutdown).events(events).run(None).await
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

    /// Runs until the source ends or `shutdown` fires, serving `control` (already bound) if given.
    pub async fn run(self, control: Option<ControlListener>) -> Result<Summary, DaemonError> {
        let Daemon { config, shutdown, events, calls: (calls_tx, mut calls), loader, log, config_file } = self;
        // Files are read, models loaded and the source opened off the runtime.
        let prepared = {
            let config = config.clone();
            tokio::task::spawn_blocking(move || -> Result<_, DaemonError> {
                let prepared = prepare(&config)?;
                let source = audio::start(&config.audio, SystemClock::shared())?;
                Ok((prepared, source))
            })
            .await
            .map_err(|e| DaemonError::Panicked { what: "start-up", message: e.to_string() })??
        };
        let (Prepared { params, detector, sounds, fetcher }, source) = prepared;
        tracing::info!(source = %source.name, "voxgate {} started, listening to {}", env!("CARGO_PKG_VERSION"), source.name);
        let mut reporter = Reporter::new(events.clone());
        let metrics = metrics_wanted(&config).then(|| {
            // 16-bit samples.
            Arc::new(crate::metrics::Metrics::new(FrameSpec::from_config(&config.audio).samples() as u64 * 2))
        });
        reporter.metrics = metrics.clone();
        let (answers_tx, answers) = mpsc::channel(crate::playback::speaker::ANSWERS_QUEUE);
        reporter.answers = Some(answers_tx);
        let echo = crate::playback::echo::Echo::default();
        let suppressed = Arc::new(AtomicU64::new(0));
        let speaker = crate::playback::speaker::spawn(
            crate::playback::speaker::Setup { output: output_config(&config), sounds, fetcher, echo: echo.clone(), config: config.clone() },
            reporter.clone(),
            answers,
        );
        let (requests_tx, requests) = mpsc::channel(REQUESTS_QUEUE);
        let (first_frame_tx, mut first_frame) = oneshot::channel();
        let detections = Arc::new(AtomicU64::new(0));
        let listener = Listener::spawn(listener::Start {
            config: config.clone(),
            detector,
            feed: source.feed(),
            requests: requests_tx,
            reporter: reporter.clone(),
            detections: detections.clone(),
            echo,
            suppressed: suppressed.clone(),
            first_frame: first_frame_tx,
        })?;
        let (commands_tx, commands) = mpsc::channel(COMMANDS_QUEUE);
        let supervisor = Supervisor::new(params, reporter.clone(), requests, commands);
        let totals = supervisor.totals();
        let mut state = reporter.state.subscribe();
        // The supervisor returns when the detector thread is done (the source ended, or the thread died) and its
        // session drained, or on shutdown after ending the session.
        let mut supervisor = tokio::spawn(supervisor.run(shutdown.clone()));
        let server_stop = CancellationToken::new();
        let server = control.map(|l| {
            tracing::info!("control socket at {}", l.path.display());
            tokio::spawn(crate::control::server::serve(l, calls_tx.clone(), events.clone(), state.clone(), server_stop.clone()))
        });
        if let Some(m) = &metrics {
            start_metrics(&config.metrics, m, &calls_tx, &server_stop).await;
        }
        drop(calls_tx);
        let mut health = Health::new(notify::Notifier::from_env());
        let mut ctl = control::Controller {
            config,
            config_file,
            loader,
            log,
            source,
            retired: (0, 0),
            listener,
            commands: commands_tx,
            events,
            state: state.clone(),
            totals,
            detections,
            suppressed,
            homeassistant: reporter.homeassistant.clone(),
            speaker,
            started: Instant::now(),
            reload_error: None,
        };
        let watchdog_every = health.watchdog_interval();
        let period = watchdog_every.unwrap_or(Duration::from_secs(3600));
        let mut watchdog = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let supervised = loop {
            tokio::select! {
                // The signal first: the supervisor sees it too, and may be done by the time this loop runs.
                biased;
                _ = shutdown.cancelled(), if !health.is_stopping() => health.stopping(),
                t = &mut supervisor => break t,
                _ = &mut first_frame, if !health.is_ready() => health.ready(&ctl.status_line()),
                Some(call) = calls.recv() => ctl.handle(call, &health).await,
                Ok(()) = state.changed() => health.status(&ctl.status_line()),
                _ = watchdog.tick(), if watchdog_every.is_some() => {
                    let pulse = Pulse { frames: ctl.counters().audio_frames, waiting: ctl.source.stats.waiting(), source: &ctl.source.name, status: ctl.status_line() };
                    health.tick(pulse);
                }
            }
        };
        if shutdown.is_cancelled() {
            health.stopping();
        } else if !matches!(ctl.config.audio.source, SourceSpec::Device(_)) {
            // A file or stdin ended: what is still to be said is heard first (a device source ending is a failure).
            tokio::select! {
                r = tokio::time::timeout(PLAYBACK_FINISH, ctl.speaker.finish()) => if r.is_err() {
                    tracing::warn!("playback still busy {} s after the end of the source: cut short", PLAYBACK_FINISH.as_secs());
                },
                _ = shutdown.cancelled() => health.stopping(),
            }
        }
        server_stop.cancel();
        if let Some(server) = server {
            // Its listener guard removes the socket file.
            let _ = server.await;
        }
        let counters = ctl.counters();
        let control::Controller { source, listener, config, .. } = ctl;
        let stopped = shutdown.is_cancelled();
        let live_device = matches!(config.audio.source, SourceSpec::Device(_));
        let source_name = source.name.clone();
        source.stop();
        let (joined, detector) = tokio::task::spawn_blocking(move || {
            let joined = source.join();
            let detector = listener.join();
            (joined, detector)
        })
        .await
        .map_err(|e| DaemonError::Panicked { what: "shutdown", message: e.to_string() })?;
        let totals = supervised.map_err(|e| DaemonError::Panicked { what: "supervisor task", message: join_message(e) })?;
        let detector = detector?;
        joined?;
        if !stopped && live_device {
            // A device source only ends when told to: anything else is a failure to restart from.
            return Err(DaemonError::SourceStopped { source_name });
        }
        if !stopped {
            tracing::info!(source = %source_name, "end of source");
        }
        let frame_ms = config.audio.frame_ms as u64;
        let summary = Summary {
            frames: counters.audio_frames,
            audio_ms: counters.audio_frames * frame_ms,
            overruns: counters.overruns,
            detector,
            sessions: totals,
        };
        let scored = summary.detector.map_or(0, |d| d.frames_scored);
        tracing::info!(
            frames = summary.frames,
            overruns = summary.overruns,
            frames_scored = scored,
            sessions = summary.sessions.sessions,
            "captured {} ms of audio; the wake-word detector scored {} frames of it",
            summary.audio_ms,
            scored
        );
        Ok(summary)
    }
}

/// The panic message of a task that panicked, or why it ended otherwise.
fn join_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(panic) => listener::panic_message(&panic),
        Err(e) => e.to_string(),
    }
}

/// A valid configuration that cannot be used: a token or CA file, a wake-word model or a WAV source that does
/// not work. The message starts with the key. A restart would fail the same way: a configuration error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unusable(String);

/// What `run` needs from the configuration before it starts anything, each file read and checked: the session
/// parameters, the wake-word detector, the playback sounds and its HTTP client; a `file:` source is opened as a
/// WAV file. Blocking work. Also what `check-config` runs, so that both refuse the same configurations.
pub fn prepare(config: &Config) -> Result<Prepared, Unusable> {
    let params = Params::new(config).map_err(|e| Unusable(e.to_string()))?;
    let detector = build_detector(config).map_err(|e| Unusable(format!("wake.models: {e}")))?;
    if let SourceSpec::File(path) = &config.audio.source {
        audio::probe_wav(path).map_err(|e| Unusable(format!("audio.source: {e}")))?;
    }
    let sounds = crate::playback::Sounds::load(&config.playback).map_err(Unusable)?;
    // The system's roots are read only when something may be fetched to play.
    let fetcher = match output_config(config) {
        Some(_) => Some(Arc::new(crate::playback::fetch::Fetcher::new(&config.session.ca_file).map_err(|e| Unusable(e.to_string()))?)),
        None => None,
    };
    Ok(Prepared { params, detector, sounds, fetcher })
}

/// What [`prepare`] made.
pub struct Prepared {
    pub params: Params,
    pub detector: Option<Detector>,
    pub sounds: crate::playback::Sounds,
    /// None with `playback.device = "none"`.
    pub fetcher: Option<Arc<crate::playback::fetch::Fetcher>>,
}

fn metrics_wanted(config: &Config) -> bool {
    !config.metrics.listen.is_empty() || !config.metrics.textfile.as_os_str().is_empty()
}

/// Serves the metrics and writes their file, as `[metrics]` asks, until `stop`. An address that cannot be
/// listened on is logged: the daemon goes on without it.
async fn start_metrics(c: &crate::config::MetricsConfig, metrics: &Arc<crate::metrics::Metrics>, calls: &mpsc::Sender<Call>, stop: &CancellationToken) {
    if !c.listen.is_empty() {
        match tokio::net::TcpListener::bind(&c.listen).await {
            Ok(listener) => {
                let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| c.listen.clone());
                let only_here = listener.local_addr().is_ok_and(|a| a.ip().is_loopback());
                tracing::info!("metrics at http://{addr}/metrics{}", if only_here { "" } else { " (not only loopback: reachable from the network)" });
                tokio::spawn(crate::metrics::serve(listener, metrics.clone(), calls.clone(), stop.clone()));
            }
            Err(e) => tracing::error!("metrics.listen: cannot listen on {}: {e}; metrics are not served", c.listen),
        }
    }
    if !c.textfile.as_os_str().is_empty() {
        let every = Duration::from_millis(c.textfile_interval_ms);
        tokio::spawn(crate::metrics::write_textfile(c.textfile.clone(), every, metrics.clone(), calls.clone(), stop.clone()));
    }
}

/// Where and how to play, from `[playback]`; none for `device = "none"`.
pub fn output_config(config: &Config) -> Option<crate::playback::output::OutputConfig> {
    let p = &config.playback;
    (p.device != "none").then(|| crate::playback::output::OutputConfig { device: p.device.clone(), volume: p.volume as f32, rate: p.rate })
}

/// The wake-word detector `config` asks for; none in `always` and `manual` modes.
pub(crate) fn build_detector(config: &Config) -> Result<Option<Detector>, WakeError> {
    let spec = FrameSpec::from_config(&config.audio);
    match config.wake.mode {
        WakeMode::Wakeword => Ok(Some(Detector::new(&config.wake, spec, config.session.preroll_ms)?)),
        WakeMode::Always | WakeMode::Manual => Ok(None),
    }
}
