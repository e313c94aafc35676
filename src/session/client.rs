//! One session on the wire: connect (TCP with a small send buffer and no Nagle, TLS through rustls with the
//! system roots plus `session.ca_file`, bearer token), then a writer task and a reader task that never wait
//! on each other, then the drain.
//!
//! A frame leaves from the thread that queues it (the detector thread) when the connection can take it
//! without waiting: the queue offers it to the connection's sending half, shared under a lock, so no task has
//! to be woken for it. The lock is held only for sends that do not wait. The writer task sends what could not
//! leave at once, as soon as the connection is ready again, and after the end it sends `end`. Whichever side
//! sends, it sends the oldest queued frame first. The reader handles each server message the moment it
//! arrives. Once the end is decided, the writer has `drain_timeout_ms` to send what is queued and `end`; the
//! reader then waits at most as long for the final reply or the close; then a normal Close is sent.

use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_util::stream::SplitSink;
use futures_util::{Sink, SinkExt, StreamExt};
use tracing::Instrument;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use super::protocol::{ClientMessage, Codec, Reply};
use super::queue::Outlet;
use super::{EndReason, Event, SessionRequest, SessionSummary, State};
use crate::config::Config;

/// Largest server message accepted: anything bigger ends the session.
pub const MAX_MESSAGE: usize = 1 << 20;
/// Kernel send buffer: about a quarter second of audio, so a stalled server cannot let seconds of stale audio
/// pile up out of reach of the drop-oldest queue.
pub const SEND_BUFFER: u32 = 8 * 1024;

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{0} is not a usable URL")]
    Url(String),
    #[error("cannot resolve {host}: {source}")]
    Resolve { host: String, source: std::io::Error },
    #[error("cannot connect to {addr}: {source}")]
    Tcp { addr: String, source: std::io::Error },
    #[error("WebSocket handshake with {url} failed: {source}")]
    Handshake { url: String, source: Box<tokio_tungstenite::tungstenite::Error> },
    #[error("no answer from {url} within {ms} ms")]
    Timeout { url: String, ms: u64 },
    #[error("cannot read {path}: {source}")]
    File { path: String, source: std::io::Error },
    #[error("{path} holds no PEM certificate")]
    NoCert { path: String },
    #[error("TLS setup: {0}")]
    Tls(String),
}

/// Everything needed to open sessions, prepared once from the configuration.
#[derive(Clone)]
pub struct Params {
    pub url: url::Url,
    pub codec: Codec,
    token: Option<String>,
    tls: Option<Arc<rustls::ClientConfig>>,
    pub connect_timeout: Duration,
    pub drain_timeout: Duration,
    pub sample_rate: u32,
    pub frame_ms: u32,
    pub host: String,
}

impl Params {
    pub fn new(config: &Config) -> Result<Self, ConnectError> {
        let s = &config.session;
        let url = url::Url::parse(&s.url).map_err(|_| ConnectError::Url(s.url.clone()))?;
        let token = if s.token_file.as_os_str().is_empty() {
            None
        } else {
            let text = std::fs::read_to_string(&s.token_file)
                .map_err(|source| ConnectError::File { path: s.token_file.display().to_string(), source })?;
            Some(text.trim().to_string())
        };
        let tls = if url.scheme() == "wss" { Some(Arc::new(tls_config(&s.ca_file)?)) } else { None };
        Ok(Params {
            url,
            codec: Codec { protocol: s.protocol },
            token,
            tls,
            connect_timeout: Duration::from_millis(s.connect_timeout_ms),
            drain_timeout: Duration::from_millis(s.drain_timeout_ms),
            sample_rate: config.audio.sample_rate,
            frame_ms: config.audio.frame_ms,
            host: hostname(),
        })
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "unknown".into())
}

/// The system's roots, plus the certificates in `ca_file`.
fn tls_config(ca_file: &Path) -> Result<rustls::ClientConfig, ConnectError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if !ca_file.as_os_str().is_empty() {
        let path = ca_file.display().to_string();
        let certs: Vec<CertificateDer> = CertificateDer::pem_file_iter(ca_file)
            .map_err(|e| ConnectError::File { path: path.clone(), source: std::io::Error::other(e.to_string()) })?
            .collect::<Result<_, _>>()
            .map_err(|e| ConnectError::File { path: path.clone(), source: std::io::Error::other(e.to_string()) })?;
        if certs.is_empty() {
            return Err(ConnectError::NoCert { path });
        }
        for c in certs {
            roots.add(c).map_err(|e| ConnectError::Tls(format!("{path}: {e}")))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
        .write_buffer_size(0)
        .max_write_buffer_size(64 * 1024)
}

/// Opens the WebSocket, all of it within `connect_timeout`.
pub async fn connect(p: &Params) -> Result<Socket, ConnectError> {
    let url = p.url.as_str().to_string();
    tokio::time::timeout(p.connect_timeout, open(p))
        .await
        .unwrap_or(Err(ConnectError::Timeout { url, ms: p.connect_timeout.as_millis() as u64 }))
}

async fn open(p: &Params) -> Result<Socket, ConnectError> {
    let host = p.url.host_str().ok_or_else(|| ConnectError::Url(p.url.to_string()))?.trim_matches(['[', ']']).to_string();
    let port = p.url.port_or_known_default().ok_or_else(|| ConnectError::Url(p.url.to_string()))?;
    let addrs: Vec<_> =
        tokio::net::lookup_host((host.as_str(), port)).await.map_err(|source| ConnectError::Resolve { host: host.clone(), source })?.collect();
    let mut last = None;
    let mut tcp = None;
    for addr in addrs {
        let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() };
        let result = async {
            let socket = socket?;
            socket.set_send_buffer_size(SEND_BUFFER)?;
            let stream = socket.connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok::<_, std::io::Error>(stream)
        }
        .await;
        match result {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(source) => last = Some(ConnectError::Tcp { addr: addr.to_string(), source }),
        }
    }
    let tcp = tcp.ok_or_else(|| last.unwrap_or(ConnectError::Resolve { host: host.clone(), source: std::io::Error::other("no address") }))?;
    let mut request = p.url.as_str().into_client_request().map_err(|e| ConnectError::Handshake { url: p.url.to_string(), source: Box::new(e) })?;
    if let Some(token) = &p.token {
        let value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| ConnectError::Tls("the token has characters a header cannot carry".into()))?;
        request.headers_mut().insert("Authorization", value);
    }
    let connector = match &p.tls {
        Some(cfg) => Connector::Rustls(cfg.clone()),
        None => Connector::Plain,
    };
    let (ws, _) = tokio_tungstenite::client_async_tls_with_config(request, tcp, Some(ws_config()), Some(connector))
        .await
        .map_err(|e| ConnectError::Handshake { url: p.url.to_string(), source: Box::new(e) })?;
    Ok(ws)
}

/// Publishes events and state changes.
#[derive(Clone)]
pub struct Reporter {
    pub events: tokio::sync::broadcast::Sender<Event>,
    pub state: Arc<tokio::sync::watch::Sender<State>>,
}

impl Reporter {
    pub fn emit(&self, e: Event) {
        let _ = self.events.send(e);
    }

    pub fn set_state(&self, s: State) {
        if self.state.send_replace(s) != s {
            tracing::debug!(state = s.as_str(), "state");
            self.emit(Event::State { state: s });
        }
    }
}

/// The sending half of a session's connection, shared by the detector thread (through the queue's
/// [`Outlet`]) and the writer task. Whoever holds the lock sends the queued frames in order, so `seq` order
/// holds whichever side sends.
struct Direct {
    wire: Mutex<Option<Wire>>,
    /// Wakes the writer task; registered with the connection whenever it cannot take more.
    waker: Waker,
}

struct Wire {
    sink: SplitSink<Socket, Message>,
    codec: Codec,
    /// The first frame's source `seq`: the wire numbers frames from 0.
    base: u64,
    sent: Arc<AtomicU64>,
    /// A send failed on the detector thread: the writer task ends the session with it.
    failed: Option<WsError>,
}

impl Direct {
    fn lock(&self) -> MutexGuard<'_, Option<Wire>> {
        self.wire.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Outlet for Direct {
    fn offer(&self, queue: &super::SessionQueue) -> bool {
        let mut guard = match self.wire.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => return false,
        };
        if let Some(wire) = guard.as_mut().filter(|w| w.failed.is_none()) {
            wire.pump(queue, &mut Context::from_waker(&self.waker));
            if wire.failed.is_some() {
                self.waker.wake_by_ref();
            }
        }
        true
    }
}

impl Wire {
    /// Sends queued frames while the connection takes them without waiting, then flushes. When it cannot go
    /// on, the context's waker (the writer task's) is registered to be woken when it can. A failure is kept in
    /// `failed`.
    fn pump(&mut self, queue: &super::SessionQueue, cx: &mut Context<'_>) {
        if self.failed.is_some() {
            return;
        }
        if let Err(e) = self.try_pump(queue, cx) {
            self.failed = Some(e);
        }
    }

    fn try_pump(&mut self, queue: &super::SessionQueue, cx: &mut Context<'_>) -> Result<(), WsError> {
        let mut sink = Pin::new(&mut self.sink);
        loop {
            match sink.as_mut().poll_ready(cx) {
                Poll::Pending => return Ok(()),
                Poll::Ready(r) => r?,
            }
            let Some(f) = queue.pop() else { break };
            sink.as_mut().start_send(self.codec.audio(f.seq.saturating_sub(self.base), &f.pcm))?;
            self.sent.fetch_add(1, Ordering::Relaxed);
        }
        match sink.poll_flush(cx) {
            Poll::Ready(Err(e)) => Err(e),
            _ => Ok(()),
        }
    }
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
    reporter.set_state(State::Connecting);
    let summary = |reason, detail: Option<String>, sent, abandoned| SessionSummary {
        session: session.clone(),
        reason,
        detail,
        duration_ms: started.elapsed().as_millis() as u64,
        frames_sent: sent,
        frames_dropped: queue.dropped(),
        frames_abandoned: abandoned,
    };
    let ws = match connect(p).await {
        Ok(ws) => ws,
        Err(e) => {
            queue.finish(EndReason::Error);
            return summary(EndReason::Error, Some(e.to_string()), 0, queue.len() as u64);
        }
    };
    reporter.set_state(State::Streaming);
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
    reporter.set_state(State::Draining);
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
