//! The daemon task's side of the control protocol: answers each [`Call`] (from the control socket, the signal
//! thread's SIGHUP, or a test) and runs reloads. It reads the supervisor's state and totals (watch channels),
//! asks the detector thread through its [`Listener`] handle (acknowledged commands) and the supervisor through
//! its command channel (acknowledged once applied); it never touches either's state itself.
//!
//! A reload prepares everything that can fail first (the file, the session parameters with the token and CA,
//! the wake-word models, the new source), then switches: the detector thread first (acknowledged, or nothing
//! has changed), then the supervisor, then the log level and the source handle. A failure leaves the running
//! setup as it was.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::{broadcast, mpsc, watch};

use super::Loader;
use super::health::Health;
use crate::audio::{self, AudioError, AudioSource, SystemClock};
use crate::config::{Config, Protocol};
use crate::control::proto::{Counters, Reply, Request, Status};
use crate::control::server::Call;
use crate::logging::LogHandle;
use crate::session::connect::{Params, ParamsError};
use crate::session::homeassistant::SharedStatus;
use crate::session::supervisor::{self, Command, Totals};
use crate::session::{Event, State};
use crate::wake::listener::{Listener, ListenerError, Setup};
use crate::wake::WakeError;

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("this daemon was started without a configuration to reload")]
    NoLoader,
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Session(#[from] ParamsError),
    #[error(transparent)]
    Wake(#[from] WakeError),
    #[error(transparent)]
    Audio(#[from] AudioError),
    #[error("log.level: {0}")]
    LogLevel(String),
    #[error(transparent)]
    Listener(#[from] ListenerError),
    #[error("the daemon is shutting down")]
    ShuttingDown,
    #[error("the reload's preparation failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// The daemon task's state: what it needs to answer calls and to reload.
pub(super) struct Controller {
    pub config: Config,
    pub config_file: Option<PathBuf>,
    pub loader: Option<Loader>,
    pub log: Option<LogHandle>,
    pub source: AudioSource,
    /// Frames and overruns of the sources a reload replaced.
    pub retired: (u64, u64),
    pub listener: Listener,
    pub commands: mpsc::Sender<supervisor::Call>,
    pub events: broadcast::Sender<Event>,
    pub state: watch::Receiver<State>,
    pub totals: watch::Receiver<Totals>,
    pub detections: Arc<AtomicU64>,
    /// Detections ignored because the answer being played said the wake word.
    pub suppressed: Arc<AtomicU64>,
    /// What the sessions report of Home Assistant.
    pub homeassistant: SharedStatus,
    /// What plays the chimes and answers.
    pub speaker: crate::playback::speaker::Speaker,
    pub started: Instant,
    pub reload_error: Option<String>,
}

impl Controller {
    pub async fn handle(&mut self, (request, reply): Call, health: &Health) {
        let answer = match request {
            Request::Status => Reply { status: Some(self.status()), ..Reply::ok() },
            Request::Stop => {
                self.speaker.stop().await;
                self.command(Command::Stop).await
            }
            Request::Say { what } => {
                // Loading may take a while (a URL): answer from elsewhere, as for a trigger.
                let speaker = self.speaker.clone();
                tokio::spawn(async move {
                    let answer = match speaker.say(what).await {
                        Ok(ms) => Reply { duration_ms: Some(ms), ..Reply::ok() },
                        Err(e) => Reply::error(e),
                    };
                    let _ = reply.send(answer);
                });
                return;
            }
            Request::Mute => {
                // The detector thread first, so no new session opens while the supervisor ends the current one.
                match self.listener.mute(true).await {
                    Ok(()) => self.command(Command::Mute).await,
                    Err(e) => Reply::error(format!("not muted: {e}")),
                }
            }
            Request::Unmute => match self.listener.mute(false).await {
                Ok(()) => self.command(Command::Unmute).await,
                Err(e) => Reply::error(format!("not unmuted: {e}")),
            },
            Request::Trigger => {
                // The detector thread answers when it next looks at its commands; wait elsewhere, so that a
                // thread held up by a lossless queue does not hold up other calls.
                let commands = self.listener.commands();
                tokio::spawn(async move {
                    let answer = match async { commands?.trigger().await }.await {
                        Ok(session) => Reply { session: Some(session), ..Reply::ok() },
                        Err(e) => Reply::error(e.to_string()),
                    };
                    let _ = reply.send(answer);
                });
                return;
            }
            Request::Reload => match self.reload(health).await {
                Ok(changed) => Reply { changed: Some(changed), ..Reply::ok() },
                Err(e) => Reply::error(e.to_string()),
            },
            Request::Subscribe => Reply::error("subscribe is handled by the control socket"),
        };
        let _ = reply.send(answer);
    }

    /// Answers once the supervisor has applied `c`.
    async fn command(&self, c: Command) -> Reply {
        match supervisor::call(&self.commands, c).await {
            Ok(()) => Reply::ok(),
            Err(_) => Reply::error("the daemon is shutting down"),
        }
    }

    pub fn counters(&self) -> Counters {
        let totals = self.totals.borrow();
        Counters {
            audio_frames: self.retired.0 + self.source.stats.frames.load(Ordering::Relaxed),
            overruns: self.retired.1 + self.source.stats.overruns.load(Ordering::Relaxed),
            wake_detections: self.detections.load(Ordering::Relaxed),
            wake_suppressed: self.suppressed.load(Ordering::Relaxed),
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
            homeassistant: (self.config.session.protocol == Protocol::Homeassistant).then(|| {
                let mut s = self.homeassistant.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
                s.pipeline = self.config.homeassistant.pipeline.clone();
                s
            }),
        }
    }

    /// One line for systemd's STATUS=.
    pub fn status_line(&self) -> String {
        let c = self.counters();
        let mut line = format!("{}; {} sessions ({} failed), {} wake words", self.state.borrow().as_str(), c.sessions, c.sessions_failed, c.wake_detections);
        if let Some(e) = &self.reload_error {
            line.push_str(&format!("; last reload failed: {e}"));
        }
        line
    }

    /// Reads the configuration again and applies what changed; on any error nothing changes.
    async fn reload(&mut self, health: &Health) -> Result<Vec<String>, ReloadError> {
        health.reloading();
        let result = self.try_reload().await;
        match &result {
            Ok(changed) if changed.is_empty() => tracing::info!(event = "reload", "configuration reloaded: nothing changed"),
            Ok(changed) => tracing::info!(event = "reload", "configuration reloaded: {} changed", changed.join(", ")),
            Err(e) => {
                tracing::error!(event = "reload", "reload failed, keeping the running configuration: {e}");
                let _ = self.events.send(Event::Error { message: format!("reload failed: {e}") });
            }
        }
        self.reload_error = result.as_ref().err().map(ToString::to_string);
        health.reloaded(&self.status_line());
        result
    }

    async fn try_reload(&mut self) -> Result<Vec<String>, ReloadError> {
        let loader = self.loader.clone().ok_or(ReloadError::NoLoader)?;
        let new = tokio::task::spawn_blocking(move || loader()).await?.map_err(ReloadError::Config)?;
        let changed = crate::config::changed_keys(&self.config, &new);
        if changed.is_empty() {
            return Ok(changed);
        }
        // 1. Prepare everything that can fail, off the runtime: files are read, models loaded, a source opened.
        let audio_changed = new.audio != self.config.audio;
        let detector_changed = audio_changed || new.wake != self.config.wake || new.session.preroll_ms != self.config.session.preroll_ms;
        // The speaker listens to answers with the wake-word detector too, and fetches with the session's CA.
        let playback_changed = detector_changed || new.playback != self.config.playback || new.session.ca_file != self.config.session.ca_file;
        let prepared = {
            let new = new.clone();
            tokio::task::spawn_blocking(move || -> Result<_, ReloadError> {
                let params = Params::new(&new)?;
                let detector = if detector_changed { Some(super::build_detector(&new)?) } else { None };
                let playback = if playback_changed {
                    let sounds = crate::playback::Sounds::load(&new.playback).map_err(ReloadError::Config)?;
                    let fetcher = match super::output_config(&new) {
                        Some(_) => Some(std::sync::Arc::new(
                            crate::playback::fetch::Fetcher::new(&new.session.ca_file).map_err(|e| ReloadError::Config(e.to_string()))?,
                        )),
                        None => None,
                    };
                    Some((sounds, fetcher))
                } else {
                    None
                };
                let source = if audio_changed { Some(audio::start(&new.audio, SystemClock::shared())?) } else { None };
                Ok((params, detector, playback, source))
            })
            .await??
        };
        let (params, detector, playback, source) = prepared;
        let level = match (&self.log, new.log.level != self.config.log.level) {
            (Some(log), true) => Some(log.parse_level(&new.log.level).map_err(ReloadError::LogLevel)?),
            _ => None,
        };
        // 2. Switch. The detector thread acknowledges, or nothing has changed yet (a new source is dropped).
        let setup = Setup { config: new.clone(), detector, feed: source.as_ref().map(|s| s.feed()) };
        self.listener.reconfigure(setup).await?;
        supervisor::call(&self.commands, Command::Reconfigure(Box::new(params))).await.map_err(|_| ReloadError::ShuttingDown)?;
        if let Some((sounds, fetcher)) = playback {
            let output = super::output_config(&new);
            let setup = crate::playback::speaker::Setup { output, sounds, fetcher, echo: Default::default(), config: new.clone() };
            self.speaker.reconfigure(setup).await;
        }
        if let (Some(log), Some(level)) = (&self.log, level) {
            log.set_filter(level);
        }
        for key in changed.iter().filter(|k| k.starts_with("control.") || *k == "log.format") {
            tracing::warn!("{key} changed: it takes effect when the daemon restarts");
        }
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
