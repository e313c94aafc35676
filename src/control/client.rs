//! The control client behind `voxgate status|trigger|stop|mute|unmute|reload|events`: blocking, one request
//! at a time, with the same wire types as the server.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use super::proto::{MAX_LINE, Reply, Request, Status};
use crate::session::Event;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no voxgate daemon answers at {path}: {source}")]
    Unreachable { path: PathBuf, source: std::io::Error },
    #[error("control socket {path}: {message}")]
    Protocol { path: PathBuf, message: String },
}

pub struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let unreachable = |source| ClientError::Unreachable { path: path.to_path_buf(), source };
        let stream = UnixStream::connect(path).map_err(unreachable)?;
        let writer = stream.try_clone().map_err(unreachable)?;
        Ok(Client { path: path.to_path_buf(), reader: BufReader::new(stream), writer })
    }

    fn protocol(&self, message: impl Into<String>) -> ClientError {
        ClientError::Protocol { path: self.path.clone(), message: message.into() }
    }

    /// Sends `req` and returns the daemon's reply, `ok` or not.
    pub fn call(&mut self, req: Request) -> Result<Reply, ClientError> {
        let mut line = serde_json::to_vec(&req).map_err(|e| self.protocol(e.to_string()))?;
        line.push(b'\n');
        if let Err(source) = self.writer.write_all(&line) {
            // A refused peer is told why before the daemon hangs up: show that rather than the broken pipe.
            return match self.line() {
                Ok(Some(v)) => serde_json::from_value(v).map_err(|e| self.protocol(e.to_string())),
                _ => Err(ClientError::Unreachable { path: self.path.clone(), source }),
            };
        }
        let value = self.line()?.ok_or_else(|| self.protocol("the daemon closed the connection without a reply"))?;
        serde_json::from_value(value).map_err(|e| self.protocol(format!("unexpected reply: {e}")))
    }

    /// The next event after `subscribe`; `None` when the daemon closed the connection.
    pub fn event(&mut self) -> Result<Option<Event>, ClientError> {
        let Some(line) = self.line()? else { return Ok(None) };
        serde_json::from_value(line).map(Some).map_err(|e| self.protocol(format!("not an event: {e}")))
    }

    /// The next line from the daemon as JSON; `None` when it closed the connection.
    pub fn line(&mut self) -> Result<Option<serde_json::Value>, ClientError> {
        let mut buf = Vec::new();
        let n = (&mut self.reader).take(MAX_LINE as u64 + 1).read_until(b'\n', &mut buf).map_err(|e| self.protocol(e.to_string()))?;
        if n == 0 {
            return Ok(None);
        }
        if buf.last() != Some(&b'\n') && n > MAX_LINE {
            return Err(self.protocol(format!("a line longer than {MAX_LINE} bytes")));
        }
        serde_json::from_slice(&buf).map(Some).map_err(|e| self.protocol(format!("not JSON: {e}")))
    }
}

/// A reply, readable by people.
pub fn describe(request: &Request, reply: &Reply) -> String {
    match request {
        Request::Status => match &reply.status {
            Some(s) => describe_status(s),
            None => "ok\n".into(),
        },
        Request::Trigger => format!("session {} started\n", reply.session.as_deref().unwrap_or("?")),
        Request::Stop => "the current session, if any, is ending\n".into(),
        Request::Mute => "muted\n".into(),
        Request::Unmute => "listening\n".into(),
        Request::Reload => match reply.changed.as_deref() {
            Some([]) | None => "reloaded: nothing changed\n".into(),
            Some(keys) => format!("reloaded: {} changed\n", keys.join(", ")),
        },
        Request::Subscribe => String::new(),
        Request::Say { what } => format!("playing {what} ({} ms)\n", reply.duration_ms.unwrap_or(0)),
    }
}

fn describe_status(s: &Status) -> String {
    let c = &s.counters;
    let secs = s.uptime_ms / 1000;
    let mut out = String::new();
    let mut row = |k: &str, v: String| out.push_str(&format!("{k:<12}{v}\n"));
    row("state", s.state.clone());
    row("version", format!("{} (pid {})", s.version, s.pid));
    row("uptime", format!("{}h {:02}m {:02}s", secs / 3600, secs / 60 % 60, secs % 60));
    row("source", format!("{}: {}", s.source, s.source_state));
    row("audio", format!("{} frames, {} overruns", c.audio_frames, c.overruns));
    row("wake", format!("{} mode, {} detections ({} from the answer being played, ignored)", s.wake_mode, c.wake_detections, c.wake_suppressed));
    row("sessions", format!("{} ({} failed), {} frames sent, {} dropped", c.sessions, c.sessions_failed, c.frames_sent, c.frames_dropped));
    if let Some(l) = &s.last_session {
        let detail = l.detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default();
        row("last", format!("{} {} after {:.1} s, {} frames{detail}", l.session, l.reason.as_str(), l.duration_ms as f64 / 1000.0, l.frames_sent));
    }
    if let Some(h) = &s.homeassistant {
        let version = h.version.as_deref().map(|v| format!(" {v}")).unwrap_or_default();
        let link = match (h.running, h.connected) {
            (true, _) => "running a pipeline",
            (false, true) => "connected",
            (false, false) => "not connected",
        };
        let pipeline = if h.pipeline.is_empty() { "the preferred pipeline".to_string() } else { format!("pipeline {:?}", h.pipeline) };
        row("assistant", format!("Home Assistant{version}, {link}, {pipeline}"));
        if let Some(t) = &h.transcript {
            row("heard", format!("{t:?}"));
        }
        if let Some(a) = &h.answer {
            row("answered", format!("{a:?}"));
        }
        if let Some(e) = &h.link_error {
            row("link error", e.clone());
        }
        if let Some(e) = &h.error {
            row("run error", e.clone());
        }
    }
    row("config", s.config_file.clone().unwrap_or_else(|| "built-in defaults".into()));
    if let Some(e) = &s.reload_error {
        row("reload", format!("FAILED, the previous configuration is in use: {e}"));
    }
    out
}

/// An event (`{"event":"wake",…}`), readable by people: the kind, then its fields.
pub fn describe_event(event: &Event) -> String {
    let event = serde_json::to_value(event).unwrap_or_default();
    let kind = event.get("event").and_then(|k| k.as_str()).unwrap_or("?");
    let mut line = kind.to_string();
    if let Some(fields) = event.as_object() {
        for (k, v) in fields.iter().filter(|(k, _)| *k != "event") {
            match v {
                serde_json::Value::Null => {}
                serde_json::Value::String(s) => line.push_str(&format!(" {k}={s}")),
                other => line.push_str(&format!(" {k}={other}")),
            }
        }
    }
    line
}
