//! Sessions: from a wake word (or a trigger) to a finished WebSocket session.
//!
//! Channels and ownership:
//! - The detector thread creates each session's [`SessionQueue`], seeds it with the pre-roll, feeds it every
//!   following frame, and ends it when the audio says so (silence, no speech, max duration, source ended). It
//!   hands the queue to the supervisor as a [`SessionRequest`] on an mpsc channel (detector → supervisor).
//!   Once the session is connected, a push also sends the frame, on the detector thread, when the connection
//!   takes it without waiting ([`queue::Outlet`]); the session's writer task sends the rest.
//! - The [`supervisor`] task owns the state machine and is the only writer of the daemon's [`State`]; it runs
//!   one session at a time on its own task ([`run`], over a connection from [`connect`]), and ends it from the
//!   network side (server end, stop, shutdown) through the same queue. The session task reports what happens
//!   (events, its summary); it does not decide what comes next.
//! - Everything that happens is published as an [`Event`] on a broadcast channel; subscribers (the demo, the
//!   control socket) that fall behind miss events, they never slow the daemon.

pub mod connect;
pub mod homeassistant;
mod outlet;
pub mod protocol;
pub mod queue;
pub mod run;
pub mod segment;
pub mod supervisor;
pub mod warm;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use queue::SessionQueue;


/// Why a session ended; the first four to last-but-one are sent in the `end` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    Silence,
    NoSpeech,
    MaxDuration,
    Stopped,
    Shutdown,
    Server,
    SourceEnded,
    /// The connection failed or the server misbehaved; no `end` could be sent. The event says what happened.
    Error,
}

impl EndReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            EndReason::Silence => "silence",
            EndReason::NoSpeech => "no_speech",
            EndReason::MaxDuration => "max_duration",
            EndReason::Stopped => "stopped",
            EndReason::Shutdown => "shutdown",
            EndReason::Server => "server",
            EndReason::SourceEnded => "source_ended",
            EndReason::Error => "error",
        }
    }
}

/// What opened a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Wakeword,
    Manual,
    Always,
}

/// A session the audio side has started: its queue already holds the pre-roll.
pub struct SessionRequest {
    pub trigger: Trigger,
    pub wakeword: Option<String>,
    pub score: Option<f32>,
    /// Audio time of the detection or trigger.
    pub t_ms: u64,
    /// Sequence number of the first frame in the queue: session `seq` 0.
    pub first_seq: u64,
    pub preroll_ms: u64,
    /// The session's id (a UUID), chosen when it opens so the wake-word log line and a `trigger` reply can
    /// name it.
    pub session: String,
    pub queue: Arc<SessionQueue>,
}

/// Counters of a finished session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionSummary {
    pub session: String,
    pub reason: EndReason,
    /// What went wrong, for `error`; why the server ended it, etc.
    pub detail: Option<String>,
    pub duration_ms: u64,
    pub frames_sent: u64,
    pub frames_dropped: u64,
    /// Frames still queued when a deadline forced the close, or when Home Assistant stopped listening (its end
    /// of speech, an error, the run's end): those are never sent.
    pub frames_abandoned: u64,
}

/// Everything observable, one JSON object per line on the control socket. The server writes these and the
/// client (`voxgate events`) reads them with this one definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// `{"event":"wake","wakeword":"jarvis","score":0.62,"t_ms":2440,"acted_on":true}`
    Wake { wakeword: String, score: f32, t_ms: u64, acted_on: bool },
    /// `{"event":"session_start","session":"…","trigger":"wakeword","url":"ws://…","preroll_ms":2000}`
    SessionStart { session: String, trigger: Trigger, wakeword: Option<String>, url: String, preroll_ms: u64, t_ms: u64 },
    /// `{"event":"server_message","session":"…","message":{"type":"partial","text":"…"}}`
    ServerMessage { session: String, message: serde_json::Value },
    /// `{"event":"session_end","session":"…","reason":"silence","duration_ms":3120,"frames_sent":156,…}`
    SessionEnd(SessionSummary),
    /// `{"event":"state","state":"streaming"}`
    State { state: State },
    /// `{"event":"error","message":"…"}`
    Error { message: String },
    /// `{"event":"playback_start","what":"built-in wake chime","kind":"chime","duration_ms":180}`
    PlaybackStart { what: String, kind: String, duration_ms: u64 },
    /// `{"event":"playback_end","what":"http://…/answer.mp3","played_ms":2300,"reason":"done"}`; other reasons:
    /// `stopped`, `barge-in`, `muted`, `replaced`, `failed: …`.
    PlaybackEnd { what: String, played_ms: u64, reason: String },
    /// `{"event":"lagged","missed":12}`: this subscriber fell behind and missed that many events. Only the
    /// control socket sends it, to the subscriber concerned.
    Lagged { missed: u64 },
}

/// The supervisor's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Listening,
    Muted,
    Connecting,
    Streaming,
    Draining,
    Backoff,
    /// No session, an answer is being played.
    Speaking,
}

impl State {
    pub fn as_str(&self) -> &'static str {
        match self {
            State::Listening => "listening",
            State::Muted => "muted",
            State::Connecting => "connecting",
            State::Streaming => "streaming",
            State::Draining => "draining",
            State::Backoff => "backoff",
            State::Speaking => "speaking",
        }
    }
}

/// Publishes events and state changes.
#[derive(Clone)]
pub struct Reporter {
    pub events: tokio::sync::broadcast::Sender<Event>,
    pub state: Arc<tokio::sync::watch::Sender<State>>,
    /// What `status` shows of Home Assistant, kept up to date by its sessions.
    pub homeassistant: homeassistant::SharedStatus,
    /// An answer is being played (the speaker sets it; the supervisor shows it in the state).
    pub speaking: Arc<tokio::sync::watch::Sender<bool>>,
    /// Muted (the supervisor sets it on `mute`; the speaker stays silent while it is).
    pub muted: Arc<tokio::sync::watch::Sender<bool>>,
    /// Where sessions send what a server asks to be said; none: nobody plays.
    pub answers: Option<tokio::sync::mpsc::Sender<crate::playback::Answer>>,
    /// Counts each event, with `[metrics]` on.
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl Reporter {
    pub fn new(events: tokio::sync::broadcast::Sender<Event>) -> Self {
        Reporter {
            events,
            state: Arc::new(tokio::sync::watch::Sender::new(State::Listening)),
            homeassistant: Default::default(),
            speaking: Arc::new(tokio::sync::watch::Sender::new(false)),
            muted: Arc::new(tokio::sync::watch::Sender::new(false)),
            answers: None,
            metrics: None,
        }
    }

    /// Asks for an answer to be played; never waits: when answers are already waiting, this one is dropped.
    pub fn answer(&self, a: crate::playback::Answer) {
        if let Some(tx) = &self.answers {
            if tx.try_send(a).is_err() {
                tracing::warn!("an answer to play was dropped: {} are waiting already", crate::playback::speaker::ANSWERS_QUEUE);
            }
        }
    }

    pub fn emit(&self, e: Event) {
        if let Some(m) = &self.metrics {
            m.observe(&e);
        }
        let _ = self.events.send(e);
    }

    pub fn set_state(&self, s: State) {
        // Only a change is news: watchers are not woken for the same state again.
        let changed = self.state.send_if_modified(|current| std::mem::replace(current, s) != s);
        if changed {
            tracing::debug!(state = s.as_str(), "state");
            self.emit(Event::State { state: s });
        }
    }
}
