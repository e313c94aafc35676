//! One session on the wire, from connect to close: a writer task and a reader task that never wait on each
//! other, then the drain.
//!
//! The writer task sends what the detector thread could not send at once (`session::outlet`), as soon as the
//! connection is ready again, and after the end it sends `end`. The reader handles each server message the
//! moment it arrives. Once the end is decided, the writer has `drain_timeout_ms` to send what is queued and
//! `end`; the reader then waits at most as long for the final reply or the close; then a normal Close is sent.
//! The session reports what happened (events, the summary); the supervisor decides what follows.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Context;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tracing::Instrument;

use super::connect::{Connected, Params, connect};
use super::homeassistant::{self as ha, Kind};
use super::outlet::{Direct, Wire, WireMetrics, send_when_room};
use super::protocol::{ClientMessage, Reply, ReplyError};
use tokio::sync::{mpsc, oneshot};

use super::{EndReason, Event, Reporter, SessionRequest, SessionSummary};

/// Where a running session is, as it reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Connecting,
    Streaming,
    /// The end is decided: sending what is queued and `end`, then waiting for the final reply.
    Draining,
}

/// Where a session says each phase it enters, with what the supervisor answers once the state is published.
pub type Phases = mpsc::UnboundedSender<(Phase, oneshot::Sender<()>)>;

/// Says that the session has entered `p`, and waits until the supervisor has published it: the state comes
/// before anything the phase leads to (the server's replies once streaming, an answer after `end`). A session
/// with no supervisor (run on its own) goes straight on.
async fn enter(phases: &Phases, p: Phase) {
    let (done, published) = oneshot::channel();
    if phases.send((p, done)).is_ok() {
        let _ = published.await;
    }
}

/// The longest a Home Assistant run may go on after its audio (through intent and speech synthesis).
pub const HA_ANSWER_MAX: Duration = Duration::from_secs(30);

/// How the reader stopped.
enum ReaderEnd {
    Final,
    Closed,
    Failed(String),
}

/// Runs one session to its end; never fails, the summary says how it went. Run it inside a span that carries
/// the session id: every line it logs, from all its tasks, then names the session.
pub async fn run(p: &Params, req: SessionRequest, reporter: &Reporter) -> SessionSummary {
    // Nobody listens for its phases: it does not wait for them to be published.
    let (phases, unheard) = mpsc::unbounded_channel();
    drop(unheard);
    run_reporting(p, req, reporter, &phases).await
}

/// [`run`], saying on `phase` each phase it enters, in order (see [`enter`]): the supervisor turns each into
/// the daemon's state. A channel rather than a watch, so that none is lost to a supervisor that looks late (a
/// session on loopback can be connected before the supervisor has seen it connecting).
pub async fn run_reporting(p: &Params, req: SessionRequest, reporter: &Reporter, phase: &Phases) -> SessionSummary {
    let session = req.session.clone();
    let started = Instant::now();
    let queue = req.queue.clone();
    let url = p.url.to_string();
    reporter.emit(Event::SessionStart {
        session: session.clone(),
        trigger: req.trigger,
        wakeword: req.wakeword.clone(),
        url: url.clone(),
        preroll_ms: req.preroll_ms,
        t_ms: req.t_ms,
    });
    tracing::info!(event = "session_start", url = %url, trigger = ?req.trigger, wakeword = req.wakeword.as_deref(), preroll_ms = req.preroll_ms,
        "session {session} to {url}");
    enter(phase, Phase::Connecting).await;
    let summary = |reason, detail: Option<String>, sent, abandoned| SessionSummary {
        session: session.clone(),
        reason,
        detail,
        duration_ms: started.elapsed().as_millis() as u64,
        frames_sent: sent,
        frames_dropped: queue.dropped(),
        frames_abandoned: abandoned,
    };
    // A session called off while it connects ends at once; one whose audio has ended (silence) still connects
    // and delivers.
    let connected = tokio::select! {
        r = async {
            // Home Assistant: the connection kept open ahead of this session, when one is ready.
            match p.warm.as_ref() {
                Some(warm) => match warm.take().await {
                    Some(c) => {
                        tracing::debug!("on the connection opened ahead");
                        Ok(c)
                    }
                    None => connect(p).await,
                },
                None => connect(p).await,
            }
        } => r,
        () = queue.wait_called_off() => {
            let reason = queue.ended().unwrap_or(EndReason::Stopped);
            tracing::debug!("called off while connecting");
            return summary(reason, None, 0, queue.len() as u64);
        }
    };
    let (ws, run_id, pipeline) = match connected {
        Ok(Connected { ws, ha_version, next_id, pipeline }) => {
            if p.ha.is_some() {
                ha::update(&reporter.homeassistant, |s| {
                    s.running = true;
                    s.version = ha_version.or(s.version.take());
                    s.link_error = None;
                    s.error = None;
                });
            }
            (ws, next_id, pipeline)
        }
        Err(e) => {
            if p.ha.is_some() {
                ha::update(&reporter.homeassistant, |s| s.link_error = Some(ha::clip(&e.to_string())));
            }
            queue.finish(EndReason::Error);
            return summary(EndReason::Error, Some(e.to_string()), 0, queue.len() as u64);
        }
    };
    let (mut sink, mut stream) = ws.split();
    let mut codec = p.codec;
    codec.run = run_id;
    if let Some(hp) = &p.ha {
        // The run: its answer and its `run-start` come before any audio, within the connect timeout.
        let begun = async {
            send_when_room(&mut sink, ha::run_command(hp, run_id, pipeline.as_deref(), p.sample_rate, req.wakeword.as_deref()))
                .await
                .map_err(|e| (EndReason::Error, format!("cannot send the run to {url}: {e}")))?;
            begin(&mut stream, codec, p, reporter, &session).await
        };
        let begun = tokio::select! {
            r = tokio::time::timeout(p.connect_timeout, begun) => r.unwrap_or_else(|_| {
                Err((EndReason::Error, format!("Home Assistant did not start the run within {} ms", p.connect_timeout.as_millis())))
            }),
            () = queue.wait_called_off() => Err((EndReason::Stopped, String::new())),
        };
        match begun {
            Ok(handler) => codec.handler = handler,
            Err((reason, detail)) => {
                ha::update(&reporter.homeassistant, |s| s.running = false);
                // Called off (stop, shutdown) keeps its own reason.
                let reason = if queue.finish(reason) { reason } else { queue.ended().unwrap_or(reason) };
                let detail = Some(detail).filter(|d| !d.is_empty());
                let unsent = queue.clear() as u64;
                return summary(reason, detail, 0, unsent);
            }
        }
    }
    enter(phase, Phase::Streaming).await;
    let start = ClientMessage::Start {
        proto: 1,
        session: session.clone(),
        trigger: req.trigger,
        wakeword: req.wakeword.clone(),
        score: req.score,
        sample_rate: p.sample_rate,
        channels: 1,
        format: "s16le".into(),
        frame_ms: p.frame_ms,
        preroll_ms: req.preroll_ms,
        host: p.host.clone(),
    };
    if let Some(first) = codec.start(&start, p.sample_rate) {
        if let Err(e) = send_when_room(&mut sink, first).await {
            queue.finish(EndReason::Error);
            return summary(EndReason::Error, Some(format!("cannot send start to {url}: {e}")), 0, queue.len() as u64);
        }
    }
    let sent = Arc::new(AtomicU64::new(0));
    let end_sent = Arc::new(AtomicBool::new(false));
    // Frames thrown away because Home Assistant stopped listening, and why it ended the run, if it said.
    let discarded = Arc::new(AtomicU64::new(0));
    let server_detail: Arc<Mutex<Option<String>>> = Arc::default();
    // Every message read: during the drain, Home Assistant's run is alive as long as events keep coming.
    let progress = Arc::new(tokio::sync::Notify::new());
    let direct = Arc::new(Direct {
        wire: Mutex::new(Some(Wire { sink, codec, base: req.first_seq, sent: sent.clone(), failed: None, pending: None, metrics: reporter.metrics.clone().map(|metrics| WireMetrics { metrics, asked: started }) })),
        waker: queue.waker(),
    });
    queue.attach(direct.clone());
    // Our `end` waits until the session's `draining` is published: what the server answers to it (a `say`) comes
    // after the state that plays the end chime. A session that stops short drops this, and the end goes at once.
    let (drain_shown, shown) = oneshot::channel::<()>();
    let mut writer = tokio::spawn({
        let (queue, direct, sent, end_sent) = (queue.clone(), direct.clone(), sent.clone(), end_sent.clone());
        async move {
            // What the detector thread could not send at once, then the end.
            let reason = loop {
                {
                    let mut guard = direct.lock();
                    let Some(wire) = guard.as_mut() else {
                        return Err(WsError::AlreadyClosed);
                    };
                    wire.pump(&queue, &mut Context::from_waker(&direct.waker));
                    if let Some(e) = wire.failed.take() {
                        return Err(e);
                    }
                    if let Some(reason) = queue.drained().filter(|_| wire.pending.is_none()) {
                        break reason;
                    }
                }
                queue.wait().await;
            };
            let Some(Wire { mut sink, .. }) = direct.lock().take() else {
                return Err(WsError::AlreadyClosed);
            };
            let _ = shown.await;
            if reason != EndReason::Error {
                if let Some(end) = codec.end(reason, sent.load(Ordering::Relaxed), queue.dropped()) {
                    send_when_room(&mut sink, end).await?;
                }
                end_sent.store(true, Ordering::Release);
            }
            Ok::<_, WsError>(sink)
        }
        .in_current_span()
    });
    let mut reader = tokio::spawn({
        let (queue, reporter, session, end_sent, sent) = (queue.clone(), reporter.clone(), session.clone(), end_sent.clone(), sent.clone());
        let (discarded, server_detail, progress, p) = (discarded.clone(), server_detail.clone(), progress.clone(), p.clone());
        async move {
            let mut replies = 0u64;
            let mut log = ServerLog::new();
            while let Some(msg) = stream.next().await {
                let msg = match msg {
                    Ok(m) => m,
                    Err(e) => return ReaderEnd::Failed(format!("connection failed: {e}")),
                };
                progress.notify_one();
                if let Message::Close(frame) = &msg {
                    tracing::debug!("server closed: {frame:?}");
                    return ReaderEnd::Closed;
                }
                if matches!(msg, Message::Text(_) | Message::Binary(_)) {
                    replies += 1;
                }
                // Vosk answers every message: the reply to the eof is the one after one per frame sent.
                let last = end_sent.load(Ordering::Acquire) && replies > sent.load(Ordering::Relaxed);
                let replies = match codec.reply(&msg, last) {
                    Ok(r) => r,
                    Err(ReplyError::Refused(code, message)) => {
                        tracing::warn!("Home Assistant refused the run: {code}: {message}");
                        return ReaderEnd::Failed(ha::clip(&code));
                    }
                    Err(e) => return ReaderEnd::Failed(e.to_string()),
                };
                for reply in replies {
                    let (value, done) = match reply {
                        Reply::Message(v) => (v, false),
                        Reply::End(v) => {
                            queue.finish(EndReason::Server);
                            (v, false)
                        }
                        Reply::Final(v) => (v, true),
                        Reply::Say(v, say) => {
                            reporter.answer(match say {
                                super::protocol::Say::Url(url) => crate::playback::Answer::Url { url, bearer: None },
                                super::protocol::Say::Pcm { rate, samples } => {
                                    crate::playback::Answer::Pcm(crate::playback::Clip::new("the server's answer", rate, samples))
                                }
                            });
                            (v, false)
                        }
                        Reply::Pipeline(kind, v) => {
                            if kind == Kind::Error {
                                *server_detail.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = ha::error_code(&v).map(ha::clip);
                            }
                            if kind.stops_audio() {
                                // Home Assistant has stopped listening: nothing more is sent, not even what is queued.
                                queue.finish(EndReason::Server);
                                discarded.fetch_add(queue.clear() as u64, Ordering::Relaxed);
                            }
                            pipeline_event(&kind, v, &reporter, &session, &p, &mut log);
                            if kind == Kind::RunEnd {
                                return ReaderEnd::Final;
                            }
                            continue;
                        }
                    };
                    let value = super::protocol::shown(value);
                    if log.admit() {
                        tracing::info!(event = "server_message", "server: {value}");
                    }
                    reporter.emit(Event::ServerMessage { session: session.clone(), message: value });
                    if done {
                        return ReaderEnd::Final;
                    }
                }
            }
            ReaderEnd::Closed
        }
        .in_current_span()
    });

    // Streaming: until the end is decided, or either side fails.
    let mut detail = None;
    let mut reader_done = None;
    tokio::select! {
        // The end first: a final reply that comes right after our end is the drain's, not a failure.
        biased;
        _ = queue.wait_ended() => {}
        r = &mut reader => {
            let r = r.unwrap_or(ReaderEnd::Failed("reader task failed".into()));
            match &r {
                ReaderEnd::Failed(e) => detail = Some(e.clone()),
                ReaderEnd::Closed => detail = Some("the server closed the connection mid-session".into()),
                ReaderEnd::Final => detail = Some("the server sent its final reply before the session ended".into()),
            }
            queue.finish(EndReason::Error);
            reader_done = Some(r);
        }
        w = &mut writer => {
            // The writer sends our end only once `draining` is shown, after this: ending here, it failed.
            let failure = match w {
                Ok(Ok(_)) => "the writer ended before the session did".to_string(),
                // The server went away: what the reader would have said had it seen the close first.
                Ok(Err(e @ (WsError::ConnectionClosed | WsError::AlreadyClosed))) => format!("the server closed the connection mid-session ({e})"),
                Ok(Err(WsError::Io(e))) if matches!(e.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe) => {
                    format!("the server closed the connection mid-session ({e})")
                }
                Ok(Err(e)) => format!("cannot send to {url}: {e}"),
                Err(e) => format!("writer task failed: {e}"),
            };
            detail = Some(failure);
            queue.finish(EndReason::Error);
            writer = tokio::spawn(async move { Err(WsError::AlreadyClosed) });
        }
    }
    let reason = queue.ended().unwrap_or(EndReason::Error);
    enter(phase, Phase::Draining).await;
    let _ = drain_shown.send(());
    // Drain 1: what is queued, then our end.
    let mut abandoned = 0;
    let sink = match tokio::time::timeout(p.drain_timeout, &mut writer).await {
        Ok(Ok(Ok(sink))) => Some(sink),
        Ok(_) => None,
        Err(_) => {
            writer.abort();
            abandoned = queue.len() as u64;
            tracing::warn!("drain deadline: {abandoned} frames still queued were not sent");
            detail.get_or_insert_with(|| format!("the server did not take the audio within {} ms", p.drain_timeout.as_millis()));
            None
        }
    };
    // The queue outlives the session on the detector thread: the connection must not live on in it.
    drop(direct.lock().take());
    // Drain 2: the server's final reply or its close. Home Assistant's run goes on through the answer's stages
    // after the audio: it may take `drain_timeout_ms` between two events, up to `HA_ANSWER_MAX` in all.
    if sink.is_some() && reader_done.is_none() && reason != EndReason::Error {
        let whole = tokio::time::sleep(if p.ha.is_some() { HA_ANSWER_MAX.max(p.drain_timeout) } else { p.drain_timeout });
        tokio::pin!(whole);
        loop {
            tokio::select! {
                r = &mut reader => {
                    if let Ok(ReaderEnd::Failed(e)) = r {
                        detail.get_or_insert(e);
                    }
                    break;
                }
                () = progress.notified(), if p.ha.is_some() => {}
                () = tokio::time::sleep(p.drain_timeout) => {
                    tracing::info!("no final reply within {} ms", p.drain_timeout.as_millis());
                    break;
                }
                () = &mut whole => {
                    tracing::info!("no final reply within {} ms", HA_ANSWER_MAX.as_millis());
                    break;
                }
            }
        }
    }
    reader.abort();
    if p.ha.is_some() {
        ha::update(&reporter.homeassistant, |s| s.running = false);
    }
    if let Some(code) = server_detail.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
        detail.get_or_insert(code);
    }
    abandoned += discarded.load(Ordering::Relaxed);
    if let Some(mut sink) = sink {
        let close = Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() }));
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            let _ = sink.send(close).await;
            let _ = sink.close().await;
        })
        .await;
    }
    summary(reason, detail, sent.load(Ordering::Relaxed), abandoned)
}

/// Reads Home Assistant's answer to the run command up to its `stt-start`, the moment it reads audio; returns
/// the handler byte from `run-start`. Audio sent earlier would wait in Home Assistant's queue, but a run can
/// also end before it reads any (a wake-up another satellite already reported): then nothing must be sent. A
/// run refused or ended early gives the reason and the code.
async fn begin(
    stream: &mut futures_util::stream::SplitStream<super::connect::Socket>,
    codec: super::protocol::Codec,
    p: &Params,
    reporter: &Reporter,
    session: &str,
) -> Result<u8, (EndReason, String)> {
    let failed = |detail: String| (EndReason::Error, detail);
    let mut handler = None;
    let mut log = ServerLog::new();
    while let Some(msg) = stream.next().await {
        let msg = msg.map_err(|e| failed(format!("connection failed before the run started: {e}")))?;
        if let Message::Close(frame) = &msg {
            return Err(failed(format!("Home Assistant closed the connection before the run started: {frame:?}")));
        }
        let replies = match codec.reply(&msg, false) {
            Ok(r) => r,
            Err(ReplyError::Refused(code, message)) => {
                tracing::warn!("Home Assistant refused the run: {code}: {message}");
                ha::update(&reporter.homeassistant, |s| s.error = Some(ha::clip(&format!("{code}: {message}"))));
                return Err(failed(ha::clip(&code)));
            }
            Err(e) => return Err(failed(e.to_string())),
        };
        for reply in replies {
            let Reply::Pipeline(kind, value) = reply else {
                continue;
            };
            if kind == Kind::RunStart {
                handler = Some(ha::handler_of(&value).ok_or_else(|| failed("Home Assistant's run-start names no stt_binary_handler_id".into()))?);
            }
            let code = ha::error_code(&value).map(ha::clip);
            pipeline_event(&kind, value, reporter, session, p, &mut log);
            match kind {
                Kind::SttStart => {
                    return handler.ok_or_else(|| failed("Home Assistant sent stt-start before run-start".into()));
                }
                _ if kind.stops_audio() => {
                    return Err((EndReason::Server, code.unwrap_or_else(|| "the run ended before it read any audio".into())));
                }
                _ => {}
            }
        }
    }
    Err(failed("Home Assistant closed the connection before the run started".into()))
}

/// Logs and publishes one pipeline event, keeps `status` up to date, and asks for the spoken answer to be played.
fn pipeline_event(kind: &Kind, value: serde_json::Value, reporter: &Reporter, session: &str, p: &Params, log: &mut ServerLog) {
    if log.admit() {
        ha::log_event(kind, &value);
    }
    match kind {
        Kind::TtsEnd => match ha::speech_url(&value).map(|u| (u, ha::absolute_url(&p.url, u))) {
            Some((_, Some(url))) => {
                let bearer = if ha::same_origin(&p.url, &url) { p.ha.as_ref().map(|h| h.token.clone()) } else { None };
                reporter.answer(crate::playback::Answer::Url { url: url.to_string(), bearer });
            }
            Some((given, None)) => tracing::warn!("Home Assistant's answer is at {given:?}, which is not an http(s) URL"),
            None => {}
        },
        Kind::SttEnd => {
            let text = ha::transcript(&value).map(ha::clip);
            ha::update(&reporter.homeassistant, |s| s.transcript = text);
        }
        Kind::IntentEnd => {
            let text = ha::answer(&value).map(ha::clip);
            ha::update(&reporter.homeassistant, |s| s.answer = text);
        }
        Kind::Error => {
            let text = ha::clip(&format!("{}: {}", ha::error_code(&value).unwrap_or("?"), ha::error_message(&value).unwrap_or("")));
            ha::update(&reporter.homeassistant, |s| s.error = Some(text));
        }
        Kind::RunStart => ha::update(&reporter.homeassistant, |s| {
            s.transcript = None;
            s.answer = None;
        }),
        _ => {}
    }
    reporter.emit(Event::ServerMessage { session: session.to_string(), message: super::protocol::shown(value) });
}

/// Server messages logged at once, at most; then [`SERVER_LOG_EVERY`] apart.
const SERVER_LOG_BURST: u32 = 20;
const SERVER_LOG_EVERY: Duration = Duration::from_millis(100);

/// A session's server messages in the log: every one at the rate a speech server replies, but whatever a server
/// sends, at most [`SERVER_LOG_BURST`] at once and then ten a second. What is left out is counted in a line
/// before the next one logged, and at the end of the session. (Events carry every message.)
struct ServerLog(crate::logging::Budget);

impl ServerLog {
    fn new() -> ServerLog {
        ServerLog(crate::logging::Budget::new(SERVER_LOG_BURST, SERVER_LOG_EVERY))
    }

    /// Whether to log this message.
    fn admit(&mut self) -> bool {
        match self.0.take() {
            None => false,
            Some(0) => true,
            Some(n) => {
                tracing::info!(skipped = n, "{n} server messages not logged: more than {SERVER_LOG_BURST} at once or 10 a second");
                true
            }
        }
    }
}

impl Drop for ServerLog {
    fn drop(&mut self) {
        let n = self.0.skipped();
        if n > 0 {
            tracing::info!(skipped = n, "{n} server messages not logged: more than {SERVER_LOG_BURST} at once or 10 a second");
        }
    }
}
