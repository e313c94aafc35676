//! Prometheus metrics, for the people who run many of these boxes: `[metrics] listen` serves them at
//! `http://ADDR/metrics`, `[metrics] textfile` writes them into a file for node-exporter's textfile collector.
//! Both are off by default.
//!
//! What happens is counted where it is told: [`Metrics::observe`] sees every event the daemon publishes (wake
//! words by word, sessions by how they ended, their length, the wake scores), and the session's sending side
//! times each frame from capture to the connection and each session's wait for its first frame. What the daemon
//! counts anyway (frames captured, overruns, frames sent and dropped, the state) is read from its status when
//! the metrics are asked for. The text is OpenMetrics (which Prometheus and node-exporter read).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::control::proto::{Counters, Request};
use crate::control::server::Call;
use crate::session::{Event, State};

type Labels = Vec<(String, String)>;

/// The states `voxgate_state` has a series for.
const STATES: [State; 7] = [State::Listening, State::Muted, State::Connecting, State::Streaming, State::Draining, State::Backoff, State::Speaking];

/// The daemon's metrics.
pub struct Metrics {
    registry: Registry,
    wake: Family<Labels, Counter>,
    suppressed: Counter,
    sessions: Family<Labels, Counter>,
    session_seconds: Histogram,
    wake_score: Histogram,
    /// Each live frame (not the pre-roll), from the end of its capture to the connection taking it.
    pub frame_seconds: Histogram,
    /// Each session, from its request (the detection) to its first frame taken by the connection.
    pub first_audio_seconds: Histogram,
    captured: Counter,
    overruns: Counter,
    sent: Counter,
    dropped: Counter,
    bytes: Counter,
    state: Family<Labels, Gauge>,
    /// What the counters read from the status had when last read, so that each grows by the difference.
    last: Mutex<Counters>,
    /// Bytes of audio in one frame.
    frame_bytes: u64,
}

impl Metrics {
    pub fn new(frame_bytes: u64) -> Metrics {
        let mut registry = Registry::with_prefix("voxgate");
        let wake = Family::<Labels, Counter>::default();
        registry.register("wake_detections", "Wake words detected, by wake word (those the answer being played said included)", wake.clone());
        let suppressed = Counter::default();
        registry.register("wake_suppressed", "Wake words ignored because the answer being played said them", suppressed.clone());
        let sessions = Family::<Labels, Counter>::default();
        registry.register("sessions", "Sessions ended, by reason", sessions.clone());
        let session_seconds = Histogram::new([0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0]);
        registry.register_with_unit("session_duration", "How long sessions lasted", Unit::Seconds, session_seconds.clone());
        let wake_score = Histogram::new((1..=10).map(|i| i as f64 / 10.0));
        registry.register("wake_score", "The scores of the wake words detected (0-1)", wake_score.clone());
        let ms = |v: &[f64]| v.iter().map(|x| x / 1000.0).collect::<Vec<_>>();
        let frame_seconds = Histogram::new(ms(&[0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0]));
        registry.register_with_unit(
            "frame_queue_latency",
            "Each live frame of a session (not its pre-roll), from its capture to the connection taking it",
            Unit::Seconds,
            frame_seconds.clone(),
        );
        let first_audio_seconds = Histogram::new(ms(&[1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0]));
        registry.register_with_unit(
            "first_audio",
            "Each session, from the detection to the connection taking its first frame",
            Unit::Seconds,
            first_audio_seconds.clone(),
        );
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let captured = counter(&mut registry, "frames_captured", "Audio frames the source delivered");
        let overruns = counter(&mut registry, "capture_overruns", "Frames the source dropped because the detector was behind");
        let sent = counter(&mut registry, "frames_sent", "Frames sessions handed to the speech server's connection");
        let dropped = counter(&mut registry, "frames_dropped", "Frames of sessions the server will not get (seq gaps)");
        let bytes = counter(&mut registry, "audio_bytes_sent", "Bytes of audio sessions handed to the connection");
        let state = Family::<Labels, Gauge>::default();
        registry.register("state", "1 for the daemon's current state", state.clone());
        Metrics {
            registry,
            wake,
            suppressed,
            sessions,
            session_seconds,
            wake_score,
            frame_seconds,
            first_audio_seconds,
            captured,
            overruns,
            sent,
            dropped,
            bytes,
            state,
            last: Mutex::new(Counters::default()),
            frame_bytes,
        }
    }

    /// Counts what an event tells.
    pub fn observe(&self, e: &Event) {
        match e {
            Event::Wake { wakeword, score, acted_on, .. } => {
                self.wake.get_or_create(&vec![("wakeword".into(), wakeword.clone())]).inc();
                self.wake_score.observe(*score as f64);
                if !acted_on {
                    self.suppressed.inc();
                }
            }
            Event::SessionEnd(s) => {
                self.sessions.get_or_create(&vec![("reason".into(), s.reason.as_str().into())]).inc();
                self.session_seconds.observe(s.duration_ms as f64 / 1000.0);
            }
            _ => {}
        }
    }

    /// The metrics as OpenMetrics text, with the daemon's own counters and state as `status` has them.
    pub fn render(&self, counters: &Counters, state: &str) -> String {
        {
            let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
            let grow = |c: &Counter, now: u64, before: u64| {
                c.inc_by(now.saturating_sub(before));
            };
            grow(&self.captured, counters.audio_frames, last.audio_frames);
            grow(&self.overruns, counters.overruns, last.overruns);
            grow(&self.sent, counters.frames_sent, last.frames_sent);
            grow(&self.dropped, counters.frames_dropped, last.frames_dropped);
            grow(&self.bytes, counters.frames_sent * self.frame_bytes, last.frames_sent * self.frame_bytes);
            // A counter never goes back, even if what it reads does (it cannot today).
            last.audio_frames = last.audio_frames.max(counters.audio_frames);
            last.overruns = last.overruns.max(counters.overruns);
            last.frames_sent = last.frames_sent.max(counters.frames_sent);
            last.frames_dropped = last.frames_dropped.max(counters.frames_dropped);
        }
        for s in STATES {
            self.state.get_or_create(&vec![("state".into(), s.as_str().into())]).set(i64::from(s.as_str() == state));
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

/// Reads the daemon's counters and state through its control calls, and renders the metrics.
async fn scrape(metrics: &Metrics, calls: &mpsc::Sender<Call>) -> Option<String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    calls.send((Request::Status, tx)).await.ok()?;
    let status = rx.await.ok()?.status?;
    Some(metrics.render(&status.counters, &status.state))
}

/// Serves `GET /metrics` on `listener` until `stop`: one short HTTP/1.1 exchange per connection, at most 8 at
/// a time, each allowed 5 s.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>, calls: mpsc::Sender<Call>, stop: CancellationToken) {
    let slots = Arc::new(tokio::sync::Semaphore::new(8));
    loop {
        let (tcp, _) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!("metrics: accept failed: {e}");
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
        let (metrics, calls) = (metrics.clone(), calls.clone());
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = tokio::time::timeout(Duration::from_secs(5), exchange(tcp, &metrics, &calls)).await.unwrap_or(Ok(())) {
                tracing::debug!("metrics: {e}");
            }
        });
    }
}

/// One request and its answer.
async fn exchange(mut tcp: tokio::net::TcpStream, metrics: &Metrics, calls: &mpsc::Sender<Call>) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tcp.read(&mut buf).await?;
        if n == 0 || head.len() + n > 8192 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head[..head.iter().position(|b| *b == b'\r').unwrap_or(0)]).into_owned();
    let mut parts = line.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (code, kind, body) = match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => match scrape(metrics, calls).await {
            Some(text) => ("200 OK", "application/openmetrics-text; version=1.0.0; charset=utf-8", text),
            None => ("503 Service Unavailable", "text/plain; charset=utf-8", "the daemon is shutting down\n".to_string()),
        },
        ("GET", _) => ("404 Not Found", "text/plain; charset=utf-8", "voxgate serves its metrics at /metrics\n".to_string()),
        _ => ("405 Method Not Allowed", "text/plain; charset=utf-8", "only GET\n".to_string()),
    };
    let response = format!("HTTP/1.1 {code}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    tcp.write_all(response.as_bytes()).await?;
    tcp.shutdown().await
}

/// Writes the metrics into `path` every `every` until `stop`: into a temporary file in the same directory,
/// renamed over it, so that the collector never reads half a file. A failure is logged once until a write works
/// again. (The file is left as last written: node-exporter shows its age.)
pub async fn write_textfile(path: PathBuf, every: Duration, metrics: Arc<Metrics>, calls: mpsc::Sender<Call>, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.cancelled() => return,
        }
        let Some(text) = scrape(&metrics, &calls).await else { return };
        let (p, t) = (path.clone(), text);
        let written = tokio::task::spawn_blocking(move || write_atomically(&p, t.as_bytes())).await.unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match written {
            Ok(()) if !failing => tracing::debug!("metrics written to {}", path.display()),
            Ok(()) => {
                tracing::info!("metrics: writing {} works again", path.display());
                failing = false;
            }
            Err(e) if !failing => {
                tracing::warn!("metrics: cannot write {}: {e}; trying again every {} s", path.display(), every.as_secs());
                failing = true;
            }
            Err(_) => {}
        }
    }
}

/// `bytes` into `path`, atomically: a temporary file beside it, then a rename. Blocking.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".voxgate-metrics-").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    // Readable by the collector, which runs as another user.
    std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{EndReason, SessionSummary};

    #[test]
    fn events_and_status_become_metrics() {
        let m = Metrics::new(640);
        m.observe(&Event::Wake { wakeword: "jarvis".into(), score: 0.9, t_ms: 0, acted_on: true });
        m.observe(&Event::Wake { wakeword: "jarvis".into(), score: 0.7, t_ms: 0, acted_on: false });
        let end = SessionSummary {
            session: "s".into(),
            reason: EndReason::Silence,
            detail: None,
            duration_ms: 3000,
            frames_sent: 150,
            frames_dropped: 2,
            frames_abandoned: 0,
        };
        m.observe(&Event::SessionEnd(end));
        let counters = Counters { audio_frames: 500, overruns: 1, frames_sent: 150, frames_dropped: 2, ..Counters::default() };
        let text = m.render(&counters, "streaming");
        for line in [
            "voxgate_wake_detections_total{wakeword=\"jarvis\"} 2",
            "voxgate_wake_suppressed_total 1",
            "voxgate_sessions_total{reason=\"silence\"} 1",
            "voxgate_frames_captured_total 500",
            "voxgate_audio_bytes_sent_total 96000",
            "voxgate_state{state=\"streaming\"} 1",
            "voxgate_state{state=\"listening\"} 0",
            "voxgate_session_duration_seconds_count 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
        // Read again with more: the counters grow by the difference.
        let text = m.render(&Counters { audio_frames: 800, ..counters }, "listening");
        assert!(text.contains("voxgate_frames_captured_total 800\n") && text.contains("voxgate_state{state=\"listening\"} 1"), "{text}");
    }
}
