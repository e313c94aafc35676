//! The supervisor task: the only owner of the state machine.
//!
//! Inputs: session requests from the detector thread (mpsc; closed when the audio source ends), [`Command`]s
//! from the daemon task (mpsc: stop, mute, unmute, new parameters after a reload), and the shutdown token.
//! It runs one session at a time; a request that arrives while a session drains waits (its queue keeps the
//! newest `queue_ms` of audio) and starts when the previous one is done. After a failed session it backs off,
//! exponentially with jitter, up to [`BACKOFF_MAX`]: a request in that time waits for the backoff to end.
//! While muted, requests are ended at once. Outputs: [`Event`]s, the state (see [`Reporter`]) and the totals
//! (a watch channel, for `status`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;
use tokio_util::sync::CancellationToken;

use super::connect::Params;
use super::run::{Phase, Phases};
use super::{EndReason, Event, Reporter, SessionRequest, SessionSummary, State};

pub const BACKOFF_START: Duration = Duration::from_millis(500);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Counters kept across sessions.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Totals {
    pub sessions: u64,
    pub failed: u64,
    pub frames_sent: u64,
    pub frames_dropped: u64,
    pub last: Option<SessionSummary>,
}

/// What the control side can ask of the supervisor.
#[derive(Clone)]
pub enum Command {
    /// End the current session (and a waiting one) with reason `stopped`.
    Stop,
    /// End any session with `stopped`, refuse new ones and report `muted` until [`Command::Unmute`].
    Mute,
    Unmute,
    /// Use these for the sessions that start from now on (a reload).
    Reconfigure(Box<Params>),
}

/// A [`Command`] with what acknowledges it: the supervisor answers once the command is applied and the state
/// that follows is published, so that whoever asked sees its effect (`status`, a `say` after `unmute`).
pub type Call = (Command, oneshot::Sender<()>);

/// Sends `c` and waits until the supervisor has applied it; `Err` when the supervisor is gone.
pub async fn call(commands: &mpsc::Sender<Call>, c: Command) -> Result<(), Gone> {
    let (done, applied) = oneshot::channel();
    commands.send((c, done)).await.map_err(|_| Gone)?;
    applied.await.map_err(|_| Gone)
}

/// The supervisor has ended (the daemon is shutting down).
#[derive(Debug)]
pub struct Gone;

pub struct Supervisor {
    params: Params,
    reporter: Reporter,
    requests: mpsc::Receiver<SessionRequest>,
    commands: mpsc::Receiver<Call>,
    /// Delays after consecutive failed sessions; started afresh after a good one.
    delays: Box<dyn Iterator<Item = Duration> + Send>,
    pub totals: Totals,
    /// The totals as of the last finished session, for `status`.
    published: watch::Sender<Totals>,
    /// Debug builds: panic at the first request (see [`crate::fault`]).
    fault: bool,
}

/// What a session says of its phases (see [`Phases`]).
type Reported = mpsc::UnboundedReceiver<(Phase, oneshot::Sender<()>)>;

struct Active {
    queue: Arc<super::SessionQueue>,
    /// The phase the session last reported of itself; none until it has announced itself (`session_start`
    /// comes before its first state).
    phase: Option<Phase>,
    task: JoinHandle<SessionSummary>,
    /// Every log line of the session carries its id (`VOXGATE_SESSION` in the journal).
    span: tracing::Span,
}

impl Supervisor {
    pub fn new(params: Params, reporter: Reporter, requests: mpsc::Receiver<SessionRequest>, commands: mpsc::Receiver<Call>) -> Self {
        let params = warmed(params, &reporter);
        Supervisor { params, reporter, requests, commands, delays: Self::fresh_delays(), totals: Totals::default(), published: watch::Sender::new(Totals::default()), fault: crate::fault::armed(crate::fault::SUPERVISOR_PANIC) }
    }

    /// The totals, updated after each session.
    pub fn totals(&self) -> watch::Receiver<Totals> {
        self.published.subscribe()
    }

    /// Publishes the state that follows from what is going on (see [`state_of`]).
    fn publish(&self, active: &Option<Active>, backing_off: bool) {
        let phase = active.as_ref().and_then(|a| a.phase);
        let speaking = *self.reporter.speaking.borrow();
        self.reporter.set_state(state_of(self.muted(), backing_off, phase, speaking));
    }

    /// Muted: kept on the reporter, where the speaker reads it too.
    fn muted(&self) -> bool {
        *self.reporter.muted.borrow()
    }

    fn set_muted(&self, muted: bool) {
        if self.reporter.muted.send_if_modified(|m| std::mem::replace(m, muted) != muted) {
            if muted {
                tracing::info!("muted: the microphone is ignored until unmuted");
            } else {
                tracing::info!("unmuted: listening again");
            }
        }
    }

    fn fresh_delays() -> Box<dyn Iterator<Item = Duration> + Send> {
        Box::new(crate::backoff::delays(BACKOFF_START, BACKOFF_MAX, true))
    }

    /// Starts a session; the receiver gets each phase it enters, in order.
    fn start(&self, req: SessionRequest) -> (Active, Reported) {
        let queue = req.queue.clone();
        let (params, reporter) = (self.params.clone(), self.reporter.clone());
        let span = tracing::info_span!("session", session = %req.session);
        let (phase_tx, phases): (Phases, Reported) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move { super::run::run_reporting(&params, req, &reporter, &phase_tx).await }.instrument(span.clone()));
        (Active { queue, phase: None, task, span }, phases)
    }

    /// A phase the session has entered, as the daemon's state. Each is published, however fast the next one
    /// follows: a subscriber sees every session pass through `connecting`, `streaming` and `draining`.
    fn show(&self, phase: Phase) {
        self.reporter.set_state(state_of(self.muted(), false, Some(phase), false));
    }

    /// The phases an ended session entered that are not shown yet, in order (nobody waits for them now).
    fn show_the_rest(&self, phases: &mut Option<Reported>) {
        while let Some((p, _)) = phases.as_mut().and_then(|r| r.try_recv().ok()) {
            self.show(p);
        }
    }

    /// Runs until the requests channel closes (and the last session is done) or `shutdown` fires.
    pub async fn run(mut self, shutdown: CancellationToken) -> Totals {
        let mut active: Option<Active> = None;
        // The running session's phases, received apart from `active` so that both can be awaited at once.
        let mut phases: Option<Reported> = None;
        // The phase just received, answered once its state is published (the session waits for that).
        let mut shown: Option<oneshot::Sender<()>> = None;
        let mut pending: Option<SessionRequest> = None;
        let backoff = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(backoff);
        let mut backing_off = false;
        let mut inputs_open = true;
        let mut commands_open = true;
        let mut speaking = self.reporter.speaking.subscribe();
        // The command just applied, answered once the state that follows from it is published.
        let mut acknowledge: Option<oneshot::Sender<()>> = None;
        self.publish(&active, backing_off);
        loop {
            if active.is_none() && !backing_off {
                if let Some(req) = pending.take() {
                    let (started, reported) = self.start(req);
                    phases = Some(reported);
                    active = Some(started);
                } else if !inputs_open {
                    break;
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                req = self.requests.recv(), if inputs_open => match req {
                    Some(req) if self.muted() => {
                        req.queue.finish(EndReason::Stopped);
                    }
                    Some(req) => {
                        if self.fault {
                            panic!("fault injected: {}", crate::fault::SUPERVISOR_PANIC);
                        }
                        if let Some(old) = pending.replace(req) {
                            // Two waiting: the newer one wins.
                            old.queue.finish(EndReason::Stopped);
                        }
                    }
                    None => inputs_open = false,
                },
                cmd = self.commands.recv(), if commands_open => match cmd {
                    Some((cmd, done)) => {
                        match cmd {
                            Command::Stop | Command::Mute => {
                                if let Some(p) = pending.take() {
                                    p.queue.finish(EndReason::Stopped);
                                }
                                if let Some(a) = &active {
                                    a.queue.finish(EndReason::Stopped);
                                }
                                if matches!(cmd, Command::Mute) {
                                    self.set_muted(true);
                                }
                            }
                            Command::Unmute => self.set_muted(false),
                            Command::Reconfigure(params) => self.params = warmed(*params, &self.reporter),
                        }
                        acknowledge = Some(done);
                    }
                    None => commands_open = false,
                },
                done = async { active.as_mut().map(|a| &mut a.task).expect("guarded").await }, if active.is_some() => {
                    // A session that drained and ended at once: the phases not yet shown are still news (the end
                    // chime plays on its draining) before the state moves on.
                    self.show_the_rest(&mut phases);
                    let span = active.take().map(|a| a.span).unwrap_or_else(tracing::Span::none);
                    phases = None;
                    let summary = done.unwrap_or_else(|e| SessionSummary {
                        session: String::new(), reason: EndReason::Error, detail: Some(format!("session task failed: {e}")),
                        duration_ms: 0, frames_sent: 0, frames_dropped: 0, frames_abandoned: 0,
                    });
                    let failed = summary.reason == EndReason::Error;
                    span.in_scope(|| self.record(summary));
                    if failed {
                        let delay = self.delays.next().unwrap_or(BACKOFF_MAX);
                        tracing::info!("backing off for {} ms before the next session", delay.as_millis());
                        backoff.as_mut().reset(tokio::time::Instant::now() + delay);
                        backing_off = true;
                    } else {
                        self.delays = Self::fresh_delays();
                    }
                }
                p = async { phases.as_mut().expect("guarded").recv().await }, if phases.is_some() => match (p, active.as_mut()) {
                    (Some((p, done)), Some(a)) => {
                        a.phase = Some(p);
                        shown = Some(done);
                    }
                    // The session is over (its end is the next branch to fire) or already recorded.
                    _ => phases = None,
                },
                _ = &mut backoff, if backing_off => backing_off = false,
                Ok(()) = speaking.changed() => {}
            }
            self.publish(&active, backing_off);
            if let Some(done) = shown.take() {
                let _ = done.send(());
            }
            if let Some(done) = acknowledge.take() {
                let _ = done.send(());
            }
        }
        // Shutdown: commands are refused from now on, and those already queued are answered (as refused) at once
        // rather than when the session has drained.
        self.commands.close();
        while self.commands.try_recv().is_ok() {}
        // End the session with `shutdown` and let it drain within its deadlines.
        if let Some(p) = pending.take() {
            p.queue.finish(EndReason::Shutdown);
        }
        if let Some(mut a) = active.take() {
            a.queue.finish(EndReason::Shutdown);
            // The session drains: its phases are still the daemon's state until it is done.
            let done = loop {
                tokio::select! {
                    done = &mut a.task => break done,
                    p = async { phases.as_mut().expect("guarded").recv().await }, if phases.is_some() => match p {
                        Some((p, done)) => {
                            self.show(p);
                            let _ = done.send(());
                        }
                        None => phases = None,
                    },
                }
            };
            self.show_the_rest(&mut phases);
            if let Ok(summary) = done {
                a.span.in_scope(|| self.record(summary));
            }
        }
        self.totals
    }

    fn record(&mut self, s: SessionSummary) {
        self.totals.sessions += 1;
        self.totals.frames_sent += s.frames_sent;
        self.totals.frames_dropped += s.frames_dropped;
        // Called inside the session's span: its id is on the line already.
        if s.reason == EndReason::Error {
            self.totals.failed += 1;
            tracing::warn!(event = "session_end", reason = s.reason.as_str(), duration_ms = s.duration_ms,
                "session {} failed: {}", s.session, s.detail.as_deref().unwrap_or("unknown error"));
        } else {
            tracing::info!(event = "session_end", reason = s.reason.as_str(),
                duration_ms = s.duration_ms, frames_sent = s.frames_sent, frames_dropped = s.frames_dropped,
                "session {} ended ({}): {} frames sent, {} dropped", s.session, s.reason.as_str(), s.frames_sent, s.frames_dropped);
        }
        // Counted before it is announced: whoever asks for status on seeing the event finds it there.
        self.totals.last = Some(s.clone());
        self.published.send_replace(self.totals.clone());
        self.reporter.emit(Event::SessionEnd(s));
    }
}

/// Home Assistant: the parameters with a connection kept open ahead of the next session (the one these
/// replace, if any, closes once no session uses it).
fn warmed(mut params: Params, reporter: &Reporter) -> Params {
    params.warm = None;
    if params.ha.is_some() {
        params.warm = Some(super::warm::Warm::spawn(params.clone(), reporter.homeassistant.clone()));
    }
    params
}

/// The daemon's state, from what the supervisor knows: a running session's phase first (a session being
/// stopped by a mute still shows how it ends), then a backoff, then muted, then an answer being spoken, then
/// listening.
fn state_of(muted: bool, backing_off: bool, phase: Option<Phase>, speaking: bool) -> State {
    match (phase, backing_off, muted, speaking) {
        (Some(Phase::Connecting), ..) => State::Connecting,
        (Some(Phase::Streaming), ..) => State::Streaming,
        (Some(Phase::Draining), ..) => State::Draining,
        (None, true, ..) => State::Backoff,
        (None, false, true, _) => State::Muted,
        (None, false, false, true) => State::Speaking,
        (None, false, false, false) => State::Listening,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::session::SessionQueue;

    /// A session request as a trigger makes it, without pre-roll.
    fn manual(queue: Arc<SessionQueue>) -> SessionRequest {
        SessionRequest {
            trigger: crate::session::Trigger::Manual,
            wakeword: None,
            score: None,
            t_ms: 0,
            first_seq: 0,
            preroll_ms: 0,
            session: uuid::Uuid::new_v4().to_string(),
            queue,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failed_sessions_back_off_exponentially_with_jitter() {
        // A port nobody listens on: every session fails.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut config = Config::default();
        config.session.url = format!("ws://127.0.0.1:{port}/");
        let (events, mut rx) = tokio::sync::broadcast::channel(256);
        let reporter = Reporter::new(events);
        let (tx, requests) = mpsc::channel(8);
        let (_commands_tx, commands) = mpsc::channel(1);
        let supervisor = Supervisor::new(Params::new(&config).unwrap(), reporter, requests, commands);
        let task = tokio::spawn(supervisor.run(CancellationToken::new()));
        let request = || manual(Arc::new(SessionQueue::new(4, false, 0)));
        let mut last_end = None;
        for i in 0..6u32 {
            tx.send(request()).await.unwrap();
            loop {
                match rx.recv().await.unwrap() {
                    Event::SessionStart { .. } => {
                        if let Some(end) = last_end {
                            let waited: Duration = tokio::time::Instant::now() - end;
                            let nominal = (BACKOFF_START * 2u32.pow(i - 1)).min(BACKOFF_MAX);
                            assert!(waited >= nominal && waited < nominal * 2, "attempt {i}: waited {waited:?}, nominal {nominal:?}");
                        }
                    }
                    Event::SessionEnd(s) => {
                        assert_eq!(s.reason, EndReason::Error);
                        last_end = Some(tokio::time::Instant::now());
                        break;
                    }
                    _ => {}
                }
            }
        }
        drop(tx);
        let totals = task.await.unwrap();
        assert_eq!(totals.failed, 6);
    }

    /// A session on loopback may be connected, streaming and draining before the supervisor looks: subscribers
    /// still see it pass through each phase, in order, between its start and its end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_phase_of_a_fast_session_is_published_in_order() {
        use crate::session::protocol::ClientMessage;
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        // A server that says when a session has started, and lets go at its end.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (started_tx, mut started) = mpsc::unbounded_channel::<()>();
        let server = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let started_tx = started_tx.clone();
                tokio::spawn(async move {
                    let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
                    while let Some(Ok(Message::Binary(b))) = ws.next().await {
                        match rmp_serde::from_slice(&b).unwrap() {
                            ClientMessage::Start { .. } => started_tx.send(()).unwrap(),
                            ClientMessage::End { .. } => break,
                            ClientMessage::Audio { .. } => {}
                        }
                    }
                });
            }
        });
        let mut config = Config::default();
        config.session.url = format!("ws://127.0.0.1:{port}/");
        let (events, mut rx) = tokio::sync::broadcast::channel(256);
        let (tx, requests) = mpsc::channel(8);
        let (_commands_tx, commands) = mpsc::channel(1);
        let task = tokio::spawn(Supervisor::new(Params::new(&config).unwrap(), Reporter::new(events), requests, commands).run(CancellationToken::new()));
        for i in 0..40 {
            let queue = Arc::new(SessionQueue::new(4, false, 0));
            tx.send(manual(queue.clone())).await.unwrap();
            started.recv().await.unwrap();
            queue.finish(EndReason::Stopped);
            let mut states = Vec::new();
            let mut begun = false;
            loop {
                match rx.recv().await.unwrap() {
                    Event::SessionStart { .. } => begun = true,
                    Event::State { state } if begun => states.push(state),
                    Event::SessionEnd(s) => {
                        assert_eq!(s.reason, EndReason::Stopped, "session {i}: {s:?}");
                        break;
                    }
                    _ => {}
                }
            }
            assert_eq!(states, [State::Connecting, State::Streaming, State::Draining], "session {i}");
        }
        drop(tx);
        assert_eq!(task.await.unwrap().sessions, 40);
        server.abort();
    }

    #[test]
    fn the_state_as_a_table() {
        use Phase::*;
        let rows: &[(bool, bool, Option<Phase>, bool, State)] = &[
            (false, false, None, false, State::Listening),
            (true, false, None, false, State::Muted),
            (false, true, None, false, State::Backoff),
            (true, true, None, false, State::Backoff),
            (false, false, Some(Connecting), false, State::Connecting),
            (false, false, Some(Streaming), true, State::Streaming),
            (true, false, Some(Draining), false, State::Draining),
            (false, true, Some(Streaming), false, State::Streaming),
            (false, false, None, true, State::Speaking),
            (true, false, None, true, State::Muted),
            (false, true, None, true, State::Backoff),
        ];
        for &(muted, backing_off, phase, speaking, want) in rows {
            assert_eq!(state_of(muted, backing_off, phase, speaking), want, "muted {muted}, backing off {backing_off}, {phase:?}, speaking {speaking}");
        }
    }

    /// A command that comes while a session drains at shutdown is refused at once, not when the drain is over.
    #[tokio::test]
    async fn a_command_during_the_shutdown_drain_is_refused_at_once() {
        // A server that accepts the session and then says nothing: the drain lasts until it lets go.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (release, released) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            let _ = released.await;
            drop(ws);
        });
        let mut config = Config::default();
        config.session.url = format!("ws://127.0.0.1:{port}/");
        config.session.drain_timeout_ms = 60_000;
        let reporter = Reporter::new(tokio::sync::broadcast::channel(256).0);
        let mut state = reporter.state.subscribe();
        let (requests_tx, requests) = mpsc::channel(8);
        let (commands_tx, commands) = mpsc::channel(8);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(Supervisor::new(Params::new(&config).unwrap(), reporter, requests, commands).run(shutdown.clone()));
        let queue = Arc::new(SessionQueue::new(4, false, 0));
        requests_tx.send(manual(queue.clone())).await.unwrap();
        state.wait_for(|s| *s == State::Streaming).await.unwrap();
        shutdown.cancel();
        // Ended with `shutdown` once the supervisor has stopped taking commands; the session still drains.
        queue.wait_ended().await;
        assert_eq!(queue.ended(), Some(EndReason::Shutdown));
        // Bounded so that a regression fails rather than hangs: the drain would hold the answer for 60 s.
        let answer = tokio::time::timeout(Duration::from_secs(30), call(&commands_tx, Command::Mute)).await;
        assert!(matches!(answer, Ok(Err(Gone))), "{answer:?}");
        assert!(!task.is_finished(), "the session should still be draining");
        release.send(()).unwrap();
        let totals = task.await.unwrap();
        assert_eq!(totals.sessions, 1);
        server.await.unwrap();
    }

    /// Inputs in, states out: each step and the states it must pass through, on the paused clock.
    #[tokio::test(start_paused = true)]
    async fn transitions_follow_the_inputs() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut config = Config::default();
        config.session.url = format!("ws://127.0.0.1:{port}/");
        let reporter = Reporter::new(tokio::sync::broadcast::channel(256).0);
        let mut state = reporter.state.subscribe();
        let muted = reporter.muted.subscribe();
        let (requests_tx, requests) = mpsc::channel(8);
        let (commands_tx, commands) = mpsc::channel(8);
        let task = tokio::spawn(Supervisor::new(Params::new(&config).unwrap(), reporter, requests, commands).run(CancellationToken::new()));
        let request = || {
            let queue = Arc::new(SessionQueue::new(4, false, 0));
            (manual(queue.clone()), queue)
        };
        enum Step {
            Command(Command),
            Request,
        }
        let steps: Vec<(Step, &[State])> = vec![
            (Step::Command(Command::Mute), &[State::Muted]),
            (Step::Command(Command::Unmute), &[State::Listening]),
            // The server is down: connecting, then a backoff, then listening again.
            (Step::Request, &[State::Connecting, State::Backoff, State::Listening]),
            (Step::Request, &[State::Connecting, State::Backoff]),
            // A mute during the backoff shows once the backoff is over.
            (Step::Command(Command::Mute), &[State::Muted]),
            (Step::Command(Command::Unmute), &[State::Listening]),
        ];
        for (step, want) in steps {
            match step {
                Step::Command(c) => {
                    let mute = matches!(c, Command::Mute);
                    call(&commands_tx, c).await.unwrap();
                    // Applied when acknowledged, even where the state shows a backoff first.
                    assert_eq!(*muted.borrow(), mute);
                }
                Step::Request => requests_tx.send(request().0).await.unwrap(),
            }
            for &w in want {
                state.changed().await.unwrap();
                assert_eq!(*state.borrow_and_update(), w);
            }
        }
        // Muted, a request is ended at once and opens nothing.
        call(&commands_tx, Command::Mute).await.unwrap();
        // Acknowledged once applied: the state shows it already.
        assert_eq!(*state.borrow_and_update(), State::Muted);
        let (req, queue) = request();
        requests_tx.send(req).await.unwrap();
        queue.wait_ended().await;
        assert_eq!(queue.ended(), Some(EndReason::Stopped));
        assert_eq!(*state.borrow(), State::Muted);
        drop(requests_tx);
        let totals = task.await.unwrap();
        assert_eq!((totals.sessions, totals.failed), (2, 2));
    }
}
