//! The detector thread: the one place audio frames are looked at after capture. It meters them, runs the
//! wake-word detector (or, in `always` mode, the speech onset detector), keeps the pre-roll, opens sessions
//! and feeds the open one, ending it when the audio says so (silence, no speech, length, source ended).
//!
//! Ownership and channels:
//! - [`Listener`] is the async side's handle. It owns the thread and the sending side of its command channel
//!   (crossbeam, bounded). Every command carries a oneshot the thread answers once the command has taken
//!   effect, so a caller knows the thread did what it asked (or that it is gone, busy or stuck). Dropping the
//!   handle closes the channel, which ends the thread, and joins it; a panic is reported, never swallowed.
//! - The thread owns the receiving side of the source's frames (crossbeam; closed when the source ends) and
//!   the sending side of [`SessionRequest`]s to the supervisor (tokio mpsc, bounded; never waited on). When it
//!   ends it drops that sender, which tells the supervisor no more sessions will come.
//! - It publishes `wake` events through the [`Reporter`]; the supervisor publishes the rest.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{Detector, DetectorStats, Preroll};
use crate::audio::{self, Feed, Frame, FrameSpec};
use crate::config::{Config, FilePacing, SourceSpec, WakeMode};
use crate::session::segment::{Onset, Segmenter};
use crate::session::{EndReason, Event, Reporter, SessionQueue, SessionRequest, Trigger};

/// How long a command may wait for the detector thread to act on it. It looks at its commands between frames,
/// so only a stuck thread takes this long.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Commands waiting for the detector thread.
const COMMANDS_QUEUE: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("cannot start the detector thread: {0}")]
    Spawn(std::io::Error),
    #[error("the detector thread is not taking commands (busy)")]
    Busy,
    #[error("the detector thread has ended")]
    Gone,
    #[error("the detector thread did not answer within {} s", COMMAND_TIMEOUT.as_secs())]
    Stuck,
    #[error("the detector thread panicked: {0}")]
    Panicked(String),
    /// Refused, with the reason (a trigger while muted, say).
    #[error("{0}")]
    Refused(String),
}

/// What the detector thread starts with.
pub struct Start {
    pub config: Config,
    pub detector: Option<Detector>,
    pub feed: Feed,
    pub requests: mpsc::Sender<SessionRequest>,
    pub reporter: Reporter,
    /// Wake words detected, for `status`.
    pub detections: Arc<AtomicU64>,
    /// When a detection is the answer being played saying the wake word (see `playback::echo`).
    pub echo: crate::playback::echo::Echo,
    /// Detections ignored for that, for `status`.
    pub suppressed: Arc<AtomicU64>,
    /// Sent the first frame's arrival (audio flows: the daemon may say it is ready).
    pub first_frame: oneshot::Sender<()>,
}

/// The handle on the detector thread.
pub struct Listener {
    commands: Option<Commands>,
    thread: Option<JoinHandle<Option<DetectorStats>>>,
}

/// Where commands for the detector thread go; a clone can wait for an answer elsewhere (a trigger).
#[derive(Clone)]
pub struct Commands(crossbeam_channel::Sender<Command>);

impl Listener {
    pub fn spawn(start: Start) -> Result<Listener, ListenerError> {
        let (tx, rx) = crossbeam_channel::bounded(COMMANDS_QUEUE);
        let Start { config, detector, feed, requests, reporter, detections, echo, suppressed, first_frame } = start;
        let mut side = Side::new(&config, detector, requests, reporter, detections);
        side.echo = echo;
        side.suppressed = suppressed;
        let thread = std::thread::Builder::new()
            .name("voxgate-detector".into())
            .spawn(move || side.run(feed, rx, first_frame))
            .map_err(ListenerError::Spawn)?;
        Ok(Listener { commands: Some(Commands(tx)), thread: Some(thread) })
    }

    pub fn commands(&self) -> Result<Commands, ListenerError> {
        self.commands.clone().ok_or(ListenerError::Gone)
    }

    /// See [`Commands::mute`].
    pub async fn mute(&self, on: bool) -> Result<(), ListenerError> {
        self.commands()?.mute(on).await
    }

    /// See [`Commands::reconfigure`].
    pub async fn reconfigure(&self, setup: Setup) -> Result<(), ListenerError> {
        self.commands()?.reconfigure(setup).await
    }

    /// Ends the thread (if the source has not already) and waits for it: its detector's counters, or the panic
    /// that ended it.
    pub fn join(mut self) -> Result<Option<DetectorStats>, ListenerError> {
        self.commands = None;
        let thread = self.thread.take().ok_or(ListenerError::Gone)?;
        thread.join().map_err(|panic| ListenerError::Panicked(panic_message(&panic)))
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.commands = None;
        if let Some(t) = self.thread.take() {
            if let Err(panic) = t.join() {
                tracing::error!("the detector thread panicked: {}", panic_message(&panic));
            }
        }
    }
}

impl Commands {
    /// Sends a command and waits (on the runtime, without blocking it) until the thread has acted on it.
    async fn ask<T>(&self, command: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, ListenerError> {
        let (tx, rx) = oneshot::channel();
        self.0.try_send(command(tx)).map_err(|e| match e {
            crossbeam_channel::TrySendError::Full(_) => ListenerError::Busy,
            crossbeam_channel::TrySendError::Disconnected(_) => ListenerError::Gone,
        })?;
        match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(ListenerError::Gone),
            Err(_) => Err(ListenerError::Stuck),
        }
    }

    /// Opens a session now; its id.
    pub async fn trigger(&self) -> Result<String, ListenerError> {
        self.ask(Command::Trigger).await?.map_err(ListenerError::Refused)
    }

    /// Ignores the microphone (no detection, no session) until unmuted; on unmute forgets what was heard
    /// before. Done when this returns `Ok`.
    pub async fn mute(&self, on: bool) -> Result<(), ListenerError> {
        self.ask(|tx| Command::Mute(on, tx)).await
    }

    /// Applies a reload's new setup. Done when this returns `Ok`; not done at all otherwise.
    pub async fn reconfigure(&self, setup: Setup) -> Result<(), ListenerError> {
        self.ask(|tx| Command::Reconfigure(Box::new(setup), tx)).await
    }
}

/// The text a panic was raised with.
pub fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned()).unwrap_or_else(|| "a panic without a message".into())
}

/// A new setup for the detector thread after a reload.
pub struct Setup {
    pub config: Config,
    /// `Some`: replace the detector (`Some(None)`: no detector in this wake mode); `None`: keep it.
    pub detector: Option<Option<Detector>>,
    /// A new source, replacing the current one.
    pub feed: Option<Feed>,
}

/// What the async side asks of the detector thread; each is answered once it has taken effect.
enum Command {
    /// Open a session now; answers with its id, or why not.
    Trigger(oneshot::Sender<Result<String, String>>),
    Mute(bool, oneshot::Sender<()>),
    Reconfigure(Box<Setup>, oneshot::Sender<()>),
}

/// The session a frame goes to.
struct Tap {
    queue: Arc<SessionQueue>,
    segmenter: Segmenter,
}

/// The detector thread's work: meter, detect, and feed the current session.
struct Side {
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
    echo: crate::playback::echo::Echo,
    suppressed: Arc<AtomicU64>,
}

impl Side {
    fn new(config: &Config, detector: Option<Detector>, requests: mpsc::Sender<SessionRequest>, reporter: Reporter, detections: Arc<AtomicU64>) -> Self {
        let spec = FrameSpec::from_config(&config.audio);
        let mut side = Side {
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
            echo: Default::default(),
            suppressed: Default::default(),
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
        self.lossless = matches!(config.audio.source, SourceSpec::File(_)) && config.audio.file_pacing == FilePacing::Fast;
        self.onset = Onset::new(self.spec.sample_rate);
    }

    fn run(
        &mut self,
        mut feed: Feed,
        commands: crossbeam_channel::Receiver<Command>,
        first_frame: oneshot::Sender<()>,
    ) -> Option<DetectorStats> {
        let mut meter = Meter::new(self.spec.frame_ms as u64, Duration::from_secs(10));
        let mut first_frame = Some(first_frame);
        let fault = crate::fault::armed(crate::fault::DETECTOR_PANIC);
        loop {
            crossbeam_channel::select! {
                recv(feed.frames) -> frame => match frame {
                    Ok(frame) => {
                        if let Some(tx) = first_frame.take() {
                            let _ = tx.send(());
                        }
                        meter.add(&frame);
                        if fault {
                            panic!("fault injected: {}", crate::fault::DETECTOR_PANIC);
                        }
                        self.frame(frame);
                    }
                    Err(_) => break,
                },
                recv(commands) -> cmd => match cmd {
                    // A command whose asker has given up waiting (and reported a failure) is not carried out
                    // late: what the asker said stays true.
                    Ok(Command::Trigger(reply)) => {
                        if !reply.is_closed() {
                            let _ = reply.send(self.trigger());
                        }
                    }
                    Ok(Command::Mute(on, done)) => {
                        if !done.is_closed() {
                            self.mute(on);
                            let _ = done.send(());
                        }
                    }
                    Ok(Command::Reconfigure(setup, done)) => {
                        if !done.is_closed() {
                            if let Some(f) = self.reconfigure(*setup) {
                                feed = f;
                            }
                            let _ = done.send(());
                        }
                    }
                    // The handle is gone: the daemon is done with us.
                    Err(_) => break,
                },
            }
            feed.pace.relax(!self.attentive());
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
            // A wake word in a session would not be acted on: the detector rests, keeping only the recent audio.
            Some(det) if self.tap.is_some() => det.rest(frame),
            Some(det) => {
                let Some(d) = det.push(frame) else { return };
                self.detections.fetch_add(1, Ordering::Relaxed);
                if self.echo.covers(std::time::Instant::now()) {
                    // The answer being played says the wake word now: not the user.
                    self.suppressed.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(event = "wake", wakeword = %d.wakeword, score = d.score, t_ms = d.t_ms, acted_on = false,
                        "wake word {} at {:.2} s (score {:.2}) ignored: the answer being played says it", d.wakeword, d.t_ms as f64 / 1000.0, d.score);
                    self.reporter.emit(Event::Wake { wakeword: d.wakeword.clone(), score: d.score, t_ms: d.t_ms, acted_on: false });
                    return;
                }
                let session = uuid::Uuid::new_v4().to_string();
                // Every detection opens a session (there is none while the detector rests), and is its first line.
                tracing::info_span!("session", session = %session).in_scope(|| {
                    tracing::info!(event = "wake", wakeword = %d.wakeword, score = d.score, t_ms = d.t_ms, acted_on = true,
                        "wake word {} at {:.2} s (score {:.2})", d.wakeword, d.t_ms as f64 / 1000.0, d.score);
                });
                self.reporter.emit(Event::Wake { wakeword: d.wakeword.clone(), score: d.score, t_ms: d.t_ms, acted_on: true });
                let wake = Some((d.wakeword.as_str(), d.score));
                self.open(Opening { session, trigger: Trigger::Wakeword, wake, t_ms: d.t_ms, next_seq: seq + 1, at_phrase_end: d.at_phrase_end }, &d.preroll);
            }
            None => {
                let t_ms = (seq + 1) * self.spec.frame_ms as u64;
                let speech = self.tap.is_none() && self.mode == WakeMode::Always && self.onset.push(&frame.pcm);
                self.ring.push(frame);
                if speech {
                    self.onset = Onset::new(self.spec.sample_rate);
                    let preroll: Vec<Frame> = self.ring.last(self.preroll_frames).cloned().collect();
                    let session = uuid::Uuid::new_v4().to_string();
                    self.open(Opening { session, trigger: Trigger::Always, wake: None, t_ms, next_seq: seq + 1, at_phrase_end: false }, &preroll);
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
        self.open(Opening { session: session.clone(), trigger: Trigger::Manual, wake: None, t_ms, next_seq, at_phrase_end: false }, &preroll);
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

    /// Whether the next frames are needed as soon as they are captured: by an open session, by the wake-word
    /// detector while its gate is open, or by the speech onset detector (`always`). Otherwise the source may
    /// batch them (see [`crate::audio::pace`]).
    fn attentive(&self) -> bool {
        if self.muted {
            return false;
        }
        if self.tap.is_some() {
            return true;
        }
        match &self.detector {
            Some(d) => d.listening(),
            None => self.mode == WakeMode::Always,
        }
    }

    /// Applies a reload; returns the new source's feed if the source changed.
    fn reconfigure(&mut self, setup: Setup) -> Option<Feed> {
        self.configure(&setup.config);
        if let Some(detector) = setup.detector {
            self.detector = detector;
        }
        if setup.feed.is_some() {
            // A new source numbers its frames afresh: the session cannot go on, nor can the old pre-roll be used.
            if let Some(t) = self.tap.take() {
                t.queue.finish(EndReason::Stopped);
            }
            self.ring.clear();
            self.last_seq = None;
        }
        setup.feed
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

    /// Starts the session `opening` describes, whose audio begins with `preroll`.
    fn open(&mut self, opening: Opening, preroll: &[Frame]) {
        let Opening { session, trigger, wake, t_ms, next_seq, at_phrase_end } = opening;
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
        segmenter.prime(preroll.iter().map(|f| f.pcm.as_slice()), at_phrase_end);
        for f in preroll {
            queue.push(f.clone());
        }
        self.tap = Some(Tap { queue, segmenter });
    }
}

/// What [`Side::open`] starts a session with.
struct Opening<'a> {
    session: String,
    trigger: Trigger,
    /// The wake word and its score, for a detection.
    wake: Option<(&'a str, f32)>,
    /// When, on the audio clock.
    t_ms: u64,
    /// The frame after the last one heard: the session's first when there is no pre-roll.
    next_seq: u64,
    /// The detection came at the end of the wake word (see [`Segmenter::prime`]).
    at_phrase_end: bool,
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

    use tokio::sync::broadcast;


    fn side(preroll_ms: u64) -> (Side, mpsc::Receiver<SessionRequest>) {
        let mut config = Config::default();
        config.wake.mode = WakeMode::Manual;
        config.session.preroll_ms = preroll_ms;
        let (tx, rx) = mpsc::channel(4);
        let reporter = Reporter::new(broadcast::channel(16).0);
        (Side::new(&config, None, tx, reporter, Arc::new(AtomicU64::new(0))), rx)
    }

    fn frame(seq: u64, level: i16) -> Frame {
        Frame { seq, captured: std::time::Instant::now(), pcm: vec![level; 320] }
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

    #[test]
    fn frames_are_wanted_at_once_only_while_something_needs_them() {
        // Manual mode: only a session needs the audio at once.
        let (mut side, mut requests) = side(200);
        side.frame(frame(0, 1));
        assert!(!side.attentive());
        side.trigger().unwrap();
        assert!(side.attentive());
        requests.try_recv().unwrap().queue.finish(EndReason::Stopped);
        side.frame(frame(1, 1));
        assert!(!side.attentive(), "the session has ended");

        // Wake-word mode: the detector while its gate is open, and not while muted.
        let mut config = Config::default();
        config.session.preroll_ms = 200;
        let spec = FrameSpec::from_config(&config.audio);
        let detector = Detector::new(&config.wake, spec, 200).unwrap();
        let (tx, _rx) = mpsc::channel(4);
        let reporter = Reporter::new(broadcast::channel(16).0);
        let mut side = Side::new(&config, Some(detector), tx, reporter, Arc::new(AtomicU64::new(0)));
        let silence = (0..400).map(|seq| frame(seq, 0));
        silence.for_each(|f| side.frame(f));
        assert!(!side.attentive(), "the gate has learnt digital silence and closed");
        side.frame(frame(400, 3000));
        assert!(side.attentive(), "a loud frame opens the gate");
        side.mute(true);
        assert!(!side.attentive());
    }
}

#[cfg(test)]
mod handle_tests {
    use std::sync::Arc;

    use tokio::sync::{broadcast, mpsc, oneshot};

    use super::*;

    fn listener() -> (Listener, crossbeam_channel::Sender<Frame>, mpsc::Receiver<SessionRequest>) {
        let mut config = Config::default();
        config.wake.mode = WakeMode::Manual;
        let (frames_tx, frames) = crossbeam_channel::bounded(4);
        let (requests, requests_rx) = mpsc::channel(4);
        let reporter = Reporter::new(broadcast::channel(16).0);
        let start = Start {
            config,
            detector: None,
            feed: Feed { frames, pace: Default::default() },
            requests,
            reporter,
            detections: Arc::new(AtomicU64::new(0)),
            echo: Default::default(),
            suppressed: Default::default(),
            first_frame: oneshot::channel().0,
        };
        (Listener::spawn(start).unwrap(), frames_tx, requests_rx)
    }

    #[tokio::test]
    async fn commands_are_done_when_acknowledged_and_fail_when_the_thread_is_gone() {
        let (listener, frames, _requests) = listener();
        // Acknowledged means applied: a trigger right after a mute is refused for it.
        listener.mute(true).await.unwrap();
        let refused = listener.commands().unwrap().trigger().await.unwrap_err();
        assert!(matches!(&refused, ListenerError::Refused(why) if why.contains("muted")), "{refused}");
        listener.mute(false).await.unwrap();
        listener.commands().unwrap().trigger().await.unwrap();
        // The source ends: the thread ends, and a command says so instead of pretending.
        drop(frames);
        let commands = listener.commands().unwrap();
        let stats = tokio::task::spawn_blocking(move || listener.join()).await.unwrap().unwrap();
        assert_eq!(stats, None);
        assert!(matches!(commands.mute(true).await, Err(ListenerError::Gone)));
    }

    #[test]
    fn a_panic_on_the_thread_is_reported_by_join() {
        let (tx, _rx) = crossbeam_channel::bounded(1);
        let thread = std::thread::spawn(|| -> Option<DetectorStats> { panic!("boom") });
        let listener = Listener { commands: Some(Commands(tx)), thread: Some(thread) };
        let e = listener.join().unwrap_err();
        assert_eq!(e.to_string(), "the detector thread panicked: boom");
    }
}
