//! The speaker task: the one owner of what is played, and when.
//!
//! Inputs: the daemon's events (a wake word, the session's state, its end), the answers sessions ask for (mpsc),
//! requests from the control socket (`say`, `stop`), and the output thread's reports. Outputs: commands to the
//! output thread, `playback_start`/`playback_end`/`error` events, and whether an answer is being spoken
//! (`speaking`, which the supervisor turns into the daemon's state). Loading (a file, a URL) runs on the
//! blocking pool and comes back as a message, so the task never waits on the network or a disk.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, oneshot};

use super::echo::Echo;
use super::fetch::Fetcher;
use super::output::{Command, Output, OutputConfig, Report};
use super::{Answer, Clip, Sounds};
use crate::config::Config;
use crate::session::{EndReason, Event, Reporter, State};

/// Answers waiting to be loaded; more are dropped (and logged): a server cannot queue up speech.
pub const ANSWERS_QUEUE: usize = 4;

/// What the control socket asks.
pub enum Request {
    /// Play a file or an http(s) URL; answered with its length once it starts, or why it cannot.
    Say {
        what: String,
        reply: oneshot::Sender<Result<u64, String>>,
    },
    Stop,
    /// Use these from now on (a reload): what plays is stopped, the output reopened. The echo of the setup is
    /// ignored: the detector thread keeps the one it has.
    Reconfigure(Box<Setup>),
    /// Answered once nothing plays, waits or loads: the end of a file source lets the last answer be heard.
    Finish(oneshot::Sender<()>),
}

/// The handle the daemon keeps.
#[derive(Clone)]
pub struct Speaker {
    requests: mpsc::Sender<Request>,
}

impl Speaker {
    pub async fn say(&self, what: String) -> Result<u64, String> {
        let (reply, rx) = oneshot::channel();
        self.requests.send(Request::Say { what, reply }).await.map_err(|_| "playback has stopped".to_string())?;
        rx.await.map_err(|_| "playback has stopped".to_string())?
    }

    pub async fn stop(&self) {
        let _ = self.requests.send(Request::Stop).await;
    }

    pub async fn reconfigure(&self, setup: Setup) {
        let _ = self.requests.send(Request::Reconfigure(Box::new(setup))).await;
    }

    /// Returns once what plays, waits or loads is done (at once when nothing does, or playback is off).
    pub async fn finish(&self) {
        let (reply, rx) = oneshot::channel();
        if self.requests.send(Request::Finish(reply)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Chime,
    Answer,
}

impl Kind {
    fn as_str(&self) -> &'static str {
        match self {
            Kind::Chime => "chime",
            Kind::Answer => "answer",
        }
    }
}

/// A clip loaded off the runtime, for a `say` (with its reply) or an answer.
type Loaded = (Result<Clip, String>, Option<oneshot::Sender<Result<u64, String>>>);

/// What the speaker works with.
pub struct Setup {
    /// None: playback is off (`playback.device = "none"`), and `say` answers with that.
    pub output: Option<OutputConfig>,
    pub sounds: Sounds,
    pub fetcher: Option<Arc<Fetcher>>,
    /// Where the answers' own wake words are told to the detector thread.
    pub echo: Echo,
    /// For the wake-word detector that listens to the answers before they play.
    pub config: Config,
}

/// Starts the task and the output thread.
pub fn spawn(setup: Setup, reporter: Reporter, answers: mpsc::Receiver<Answer>) -> Speaker {
    let (requests, rx) = mpsc::channel(8);
    let events = reporter.events.subscribe();
    tokio::spawn(run(setup, reporter, events, answers, rx));
    Speaker { requests }
}

struct Task {
    output: Option<Output>,
    sounds: Sounds,
    reporter: Reporter,
    next_id: u64,
    /// Clips sent to the output thread and not yet ended: what, kind, length.
    live: HashMap<u64, (String, Kind, u64)>,
    echo: Echo,
    config: Arc<Config>,
    /// Answers: when their first sample is heard, and where they say a wake word, as each becomes known.
    started: HashMap<u64, std::time::Instant>,
    said: HashMap<u64, Vec<std::time::Duration>>,
    analysed: mpsc::UnboundedSender<(u64, Vec<std::time::Duration>)>,
    /// Files and URLs being read or fetched.
    loading: usize,
    /// Who waits for all of it to be done ([`Request::Finish`]).
    finishing: Vec<oneshot::Sender<()>>,
}

impl Task {
    fn muted(&self) -> bool {
        *self.reporter.muted.borrow()
    }

    fn play(&mut self, clip: Arc<Clip>, kind: Kind) -> Option<u64> {
        let output = self.output.as_ref()?;
        if self.muted() {
            return None;
        }
        self.next_id += 1;
        let id = self.next_id;
        self.live.insert(id, (clip.name.clone(), kind, clip.duration_ms()));
        if kind == Kind::Answer {
            // Where the answer says a wake word, found while it starts to play.
            let (config, tx, clip) = (self.config.clone(), self.analysed.clone(), clip.clone());
            tokio::task::spawn_blocking(move || match super::echo::wake_words_in(&clip, &config) {
                Ok(found) => {
                    let _ = tx.send((id, found));
                }
                Err(e) => tracing::warn!("cannot look for the wake word in {}: {e}", clip.name),
            });
        }
        if !output.send(Command::Play { id, clip }) {
            self.live.remove(&id);
            tracing::warn!("playback is behind: a sound was dropped");
            return None;
        }
        Some(id)
    }

    /// The windows of an answer's own wake words, once both its start and its wake words are known.
    fn echo_windows(&mut self, id: u64) {
        if let (Some(start), Some(said)) = (self.started.get(&id), self.said.get(&id)) {
            if !said.is_empty() {
                tracing::debug!(
                    "the answer says the wake word {} s in: ignored from the microphone then",
                    said.iter().map(|d| format!("{:.1}", d.as_secs_f32())).collect::<Vec<_>>().join(", ")
                );
            }
            self.echo.add(*start, said);
        }
    }

    fn chime(&mut self, which: fn(&Sounds) -> &Option<Arc<Clip>>) {
        if let Some(c) = which(&self.sounds).clone() {
            self.play(c, Kind::Chime);
        }
    }

    fn stop(&self, kind: Option<Kind>, reason: &'static str) {
        let Some(output) = &self.output else { return };
        for (id, _) in self.live.iter().filter(|(_, (_, k, _))| kind.is_none_or(|want| *k == want)) {
            output.send(Command::Stop { id: Some(*id), reason });
        }
    }

    fn speaking(&self) {
        let answering = self.live.values().any(|(_, k, _)| *k == Kind::Answer);
        self.reporter.speaking.send_if_modified(|s| std::mem::replace(s, answering) != answering);
    }

    /// A sound that could not be had: an `error` event, a log line naming it, and the error chime.
    fn failed(&mut self, message: String) {
        tracing::warn!(event = "error", "{message}");
        self.reporter.emit(Event::Error { message });
        self.chime(|s| &s.error);
    }

    fn report(&mut self, r: Report) {
        match r {
            Report::Started { id, at, device } => {
                let Some((what, kind, ms)) = self.live.get(&id).cloned() else {
                    return;
                };
                if kind == Kind::Answer {
                    self.started.insert(id, at);
                    self.echo_windows(id);
                }
                let late = at.saturating_duration_since(std::time::Instant::now());
                tracing::info!(event = "playback_start", what = %what, kind = kind.as_str(), duration_ms = ms, device = %device,
                    "playing {what} ({ms} ms) on {device}, first sample in {} ms", late.as_millis());
                self.reporter.emit(Event::PlaybackStart { what, kind: kind.as_str().into(), duration_ms: ms });
            }
            Report::Ended { id, played_ms, reason } => {
                let Some((what, kind, _)) = self.live.remove(&id) else {
                    return;
                };
                self.started.remove(&id);
                self.said.remove(&id);
                if kind == Kind::Answer && reason != "done" {
                    // Cut short: it will not say what it was going to.
                    self.echo.clear();
                }
                tracing::info!(event = "playback_end", what = %what, kind = kind.as_str(), played_ms, reason = %reason, "played {played_ms} ms of {what}: {reason}");
                self.reporter.emit(Event::PlaybackEnd { what, played_ms, reason });
            }
            Report::Failed { id, error } => {
                let Some((what, _, _)) = self.live.remove(&id) else {
                    return;
                };
                tracing::debug!("not played: {what}: {error}");
                self.reporter.emit(Event::PlaybackEnd { what, played_ms: 0, reason: format!("failed: {error}") });
            }
        }
        self.speaking();
    }
}

/// Loads a file or URL into a clip (blocking).
fn load(what: &str, bearer: Option<&str>, fetcher: Option<&Fetcher>) -> Result<Clip, String> {
    if what.starts_with("http://") || what.starts_with("https://") {
        let fetcher = fetcher.ok_or_else(|| format!("cannot fetch {what}: no HTTP client"))?;
        let (bytes, mime) = fetcher.get(what, bearer).map_err(|e| e.to_string())?;
        let ext = what.rsplit_once('.').map(|(_, e)| e.to_lowercase()).filter(|e| e.len() <= 4);
        let hint = mime.as_deref().filter(|m| m.starts_with("audio/")).or(ext.as_deref());
        return super::decode::decode(what, bytes, hint).map_err(|e| format!("{what}: {e}"));
    }
    super::load_sound("say", what, super::chimes::error)?.map(|c| (*c).clone()).ok_or_else(|| "nothing to say".to_string())
}

async fn run(
    Setup { output, sounds, fetcher, echo, config }: Setup,
    reporter: Reporter,
    mut events: broadcast::Receiver<Event>,
    mut answers: mpsc::Receiver<Answer>,
    mut requests: mpsc::Receiver<Request>,
) {
    let (reports_tx, mut reports) = mpsc::unbounded_channel();
    let mut fetcher = fetcher;
    let output = output.and_then(|c| match Output::spawn(c, reports_tx.clone()) {
        Ok(o) => Some(o),
        Err(e) => {
            tracing::error!("cannot start the playback thread: {e}; nothing will be played");
            None
        }
    });
    let (loaded_tx, mut loaded) = mpsc::channel::<Loaded>(ANSWERS_QUEUE);
    let (analysed, mut analyses) = mpsc::unbounded_channel();
    let mut muted = reporter.muted.subscribe();
    let mut task = Task {
        output,
        sounds,
        reporter,
        next_id: 0,
        live: HashMap::new(),
        echo,
        config: Arc::new(config),
        started: HashMap::new(),
        said: HashMap::new(),
        analysed,
        loading: 0,
        finishing: Vec::new(),
    };
    let load_off = |task: &mut Task,
                    fetcher: &Option<Arc<Fetcher>>,
                    what: String,
                    bearer: Option<String>,
                    reply: Option<oneshot::Sender<Result<u64, String>>>| {
        task.loading += 1;
        let (fetcher, tx) = (fetcher.clone(), loaded_tx.clone());
        tokio::task::spawn_blocking(move || {
            let clip = load(&what, bearer.as_deref(), fetcher.as_deref());
            let _ = tx.blocking_send((clip, reply));
        });
    };
    loop {
        tokio::select! {
            // Events first: a session's `draining` is published before its `end` is sent, so its end chime
            // starts before an answer that came after (an answer ready at the same moment waits its turn).
            biased;
            e = events.recv() => match e {
                Ok(Event::Wake { acted_on: true, .. }) => {
                    // The user talks over an answer: it stops, and the wake chime says we listen.
                    task.stop(Some(Kind::Answer), "barge-in");
                    task.chime(|s| &s.wake);
                }
                Ok(Event::State { state: State::Draining }) => task.chime(|s| &s.end),
                Ok(Event::SessionEnd(s)) if s.reason == EndReason::Error => task.chime(|s| &s.error),
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
            Ok(()) = muted.changed() => {
                if *muted.borrow_and_update() {
                    task.stop(None, "muted");
                }
            }
            a = answers.recv() => match a {
                Some(Answer::Url { url, bearer }) if task.output.is_some() && !task.muted() => {
                    load_off(&mut task, &fetcher, url, bearer.map(|t| t.expose().to_string()), None);
                }
                Some(Answer::Url { .. }) => {}
                Some(Answer::Pcm(clip)) => {
                    task.stop(Some(Kind::Answer), "replaced");
                    task.play(Arc::new(clip), Kind::Answer);
                }
                None => {}
            },
            r = requests.recv() => match r {
                Some(Request::Say { what, reply }) => {
                    if task.output.is_none() {
                        let _ = reply.send(Err("playback is off (playback.device = \"none\")".into()));
                    } else if task.muted() {
                        let _ = reply.send(Err("muted: unmute first".into()));
                    } else {
                        load_off(&mut task, &fetcher, what, None, Some(reply));
                    }
                }
                Some(Request::Stop) => task.stop(None, "stopped"),
                Some(Request::Reconfigure(setup)) => {
                    task.stop(None, "reconfigured");
                    // The old thread ends when its handle goes (joined off the runtime: it may be closing a device);
                    // what it reports until then is for clips that ended.
                    let new = setup.output.and_then(|c| Output::spawn(c, reports_tx.clone()).map_err(|e| tracing::error!("cannot start the playback thread: {e}")).ok());
                    if let Some(old) = std::mem::replace(&mut task.output, new) {
                        tokio::task::spawn_blocking(move || drop(old));
                    }
                    task.sounds = setup.sounds;
                    task.config = Arc::new(setup.config);
                    fetcher = setup.fetcher;
                }
                Some(Request::Finish(reply)) => task.finishing.push(reply),
                None => return,
            },
            Some((clip, reply)) = loaded.recv() => {
                task.loading -= 1;
                match clip {
                Ok(clip) => {
                    let ms = clip.duration_ms();
                    // A newer answer replaces one still playing; chimes finish first.
                    task.stop(Some(Kind::Answer), "replaced");
                    let played = task.play(Arc::new(clip), Kind::Answer);
                    if let Some(reply) = reply {
                        let _ = reply.send(played.map(|_| ms).ok_or_else(|| "not played (muted or playback behind)".to_string()));
                    }
                }
                Err(e) => {
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(e.clone()));
                    }
                    task.failed(format!("cannot play the answer: {e}"));
                }
            }},
            Some(r) = reports.recv() => task.report(r),
            Some((id, found)) = analyses.recv() => {
                if task.live.contains_key(&id) {
                    task.said.insert(id, found);
                    task.echo_windows(id);
                }
            }
        }
        if !task.finishing.is_empty() && task.live.is_empty() && task.loading == 0 && answers.is_empty() {
            for f in task.finishing.drain(..) {
                let _ = f.send(());
            }
        }
    }
}
