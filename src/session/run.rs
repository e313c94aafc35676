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

use super::connect::{Params, connect};
use super::outlet::{Direct, Wire};
use super::protocol::{ClientMessage, Reply};
use tokio::sync::watch;

use super::{EndReason, Event, Reporter, SessionRequest, SessionSummary};

/// Where a running session is, as it reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Connecting,
    Streaming,
    /// The end is decided: sending what is queued and `end`, then waiting for the final reply.
    Draining,
}

/// How the reader stopped.
enum ReaderEnd {
    Final,
    Closed,
    Failed(String),
}

/// Runs one session to its end; never fails, the summary says how it went. Run it inside a span that carries
/// the session id: every line it logs, from all its tasks, then names the session.
pub async fn run(p: &Params, req: SessionRequest, reporter: &Reporter) -> SessionSummary {
    run_reporting(p, req, reporter, &watch::Sender::new(Phase::Connecting)).await
}

/// [`run`], saying on `phase` where it is: the supervisor turns that into the daemon's state.
pub async fn run_reporting(p: &Params, req: SessionRequest, reporter: &Reporter, phase: &watch::Sender<Phase>) -> SessionSummary {
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
    phase.send_replace(Phase::Connecting);
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
        r = connect(p) => r,
        () = queue.wait_called_off() => {
            let reason = queue.ended().unwrap_or(EndReason::Stopped);
            tracing::debug!("called off while connecting");
            return summary(reason, None, 0, queue.len() as u64);
        }
    };
    let ws = match connected {
        Ok(ws) => ws,
        Err(e) => {
            queue.finish(EndReason::Error);
            return summary(EndReason::Error, Some(e.to_string()), 0, queue.len() as u64);
        }
    };
    phase.send_replace(Phase::Streaming);
    let (mut sink, mut stream) = ws.split();
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
    if let Err(e) = sink.send(p.codec.start(&start, p.sample_rate)).await {
        queue.finish(EndReason::Error);
        return summary(EndReason::Error, Some(format!("cannot send start to {url}: {e}")), 0, queue.len() as u64);
    }
    let sent = Arc::new(AtomicU64::new(0));
    let end_sent = Arc::new(AtomicBool::new(false));
    let direct = Arc::new(Direct {
        wire: Mutex::new(Some(Wire { sink, codec: p.codec, base: req.first_seq, sent: sent.clone(), failed: None })),
        waker: queue.waker(),
    });
    queue.attach(direct.clone());
    let mut writer = tokio::spawn({
        let (queue, direct, sent, end_sent, codec) = (queue.clone(), direct.clone(), sent.clone(), end_sent.clone(), p.codec);
        async move {
            // What the detector thread could not send at once, then the end.
            let reason = loop {
                {
                    let mut guard = direct.lock();
                    let Some(wire) = guard.as_mut() else { return Err(WsError::AlreadyClosed) };
                    wire.pump(&queue, &mut Context::from_waker(&direct.waker));
                    if let Some(e) = wire.failed.take() {
                        return Err(e);
                    }
                    if let Some(reason) = queue.drained() {
                        break reason;
                    }
                }
                queue.wait().await;
            };
            let Some(Wire { mut sink, .. }) = direct.lock().take() else { return Err(WsError::AlreadyClosed) };
            if reason != EndReason::Error {
                sink.send(codec.end(reason, sent.load(Ordering::Relaxed), queue.dropped())).await?;
                end_sent.store(true, Ordering::Release);
            }
            Ok::<_, WsError>(sink)
        }
        .in_current_span()
    });
    let mut reader = tokio::spawn({
        let (queue, codec, reporter, session, end_sent, sent) = (queue.clone(), p.codec, reporter.clone(), session.clone(), end_sent.clone(), sent.clone());
        async move {
            let mut replies = 0u64;
            while let Some(msg) = stream.next().await {
                let msg = match msg {
                    Ok(m) => m,
                    Err(e) => return ReaderEnd::Failed(format!("connection failed: {e}")),
                };
                if let Message::Close(frame) = &msg {
                    tracing::debug!("server closed: {frame:?}");
                    return ReaderEnd::Closed;
                }
                if matches!(msg, Message::Text(_) | Message::Binary(_)) {
                    replies += 1;
                }
                // Vosk answers every message: the reply to the eof is the one after one per frame sent.
                let last = end_sent.load(Ordering::Acquire) && replies > sent.load(Ordering::Relaxed);
                match codec.reply(&msg, last) {
                    Ok(None) => {}
                    Ok(Some(reply)) => {
                        let (value, done) = match reply {
                            Reply::Message(v) => (v, false),
                            Reply::End(v) => {
                                queue.finish(EndReason::Server);
                                (v, false)
                            }
                            Reply::Final(v) => (v, true),
                        };
                        let value = super::protocol::shown(value);
                        tracing::info!(event = "server_message", "server: {value}");
                        reporter.emit(Event::ServerMessage { session: session.clone(), message: value });
                        if done {
                            return ReaderEnd::Final;
                        }
                    }
                    Err(e) => return ReaderEnd::Failed(e.to_string()),
                }
            }
            ReaderEnd::Closed
        }
        .in_current_span()
    });

    // Streaming: until the end is decided, or either side fails.
    let mut detail = None;
    let mut reader_done = None;
    let mut early_sink = None;
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
            let failure = match w {
                // Done already: the end was decided and sent.
                Ok(Ok(sink)) => {
                    early_sink = Some(sink);
                    None
                }
                // The server went away: what the reader would have said had it seen the close first.
                Ok(Err(e @ (WsError::ConnectionClosed | WsError::AlreadyClosed))) => Some(format!("the server closed the connection mid-session ({e})")),
                Ok(Err(WsError::Io(e))) if matches!(e.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe) => {
                    Some(format!("the server closed the connection mid-session ({e})"))
                }
                Ok(Err(e)) => Some(format!("cannot send to {url}: {e}")),
                Err(e) => Some(format!("writer task failed: {e}")),
            };
            if let Some(f) = failure {
                detail = Some(f);
                queue.finish(EndReason::Error);
            }
            writer = tokio::spawn(async move { Err(WsError::AlreadyClosed) });
        }
    }
    let reason = queue.ended().unwrap_or(EndReason::Error);
    phase.send_replace(Phase::Draining);
    // Drain 1: what is queued, then our end.
    let mut abandoned = 0;
    let sink = match tokio::time::timeout(p.drain_timeout, &mut writer).await {
        _ if early_sink.is_some() => early_sink.take(),
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
    // Drain 2: the server's final reply or its close.
    if sink.is_some() && reader_done.is_none() && reason != EndReason::Error {
        match tokio::time::timeout(p.drain_timeout, &mut reader).await {
            Ok(Ok(ReaderEnd::Failed(e))) => {
                detail.get_or_insert(e);
            }
            Ok(_) => {}
            Err(_) => tracing::info!("no final reply within {} ms", p.drain_timeout.as_millis()),
        }
    }
    reader.abort();
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
