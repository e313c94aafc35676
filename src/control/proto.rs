//! The control protocol's wire types, shared by the socket server and the CLI client: one JSON object per
//! line each way, lines at most [`MAX_LINE`] bytes.

use serde::{Deserialize, Serialize};

use crate::session::SessionSummary;
use crate::session::homeassistant::HaStatus;

/// Longest line accepted, either way, newline excluded.
pub const MAX_LINE: usize = 64 * 1024;

/// A request, tagged by `cmd`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// `{"cmd":"status"}` → state, version, uptime and counters (see [`Status`]).
    Status,
    /// `{"cmd":"trigger"}` → opens a session now, as a wake word would: `{"ok":true,"session":"…"}`.
    Trigger,
    /// `{"cmd":"stop"}` → ends the current session with reason `stopped`, and stops what is playing.
    Stop,
    /// `{"cmd":"mute"}` → ends any session and ignores the microphone until `unmute`.
    Mute,
    /// `{"cmd":"unmute"}`
    Unmute,
    /// `{"cmd":"reload"}` → re-reads the configuration file, as SIGHUP does: `{"ok":true,"changed":[…]}`.
    Reload,
    /// `{"cmd":"subscribe"}` → `{"ok":true}`, then one event per line (`{"event":"wake",…}`) until either side
    /// closes.
    Subscribe,
    /// `{"cmd":"say","what":"/usr/share/sounds/x.wav"}` (a file the daemon can read, or an http(s) URL) → plays
    /// it: `{"ok":true,"duration_ms":1200}` once it starts.
    Say { what: String },
}

impl Request {
    pub const NAMES: &'static str = "status, trigger, stop, mute, unmute, reload, subscribe, say";

    /// Parses one request line, with an error that says what is wrong with it.
    pub fn parse(line: &str) -> Result<Request, String> {
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not a JSON object: {e}"))?;
        let Some(cmd) = value.get("cmd") else {
            return Err(format!("no \"cmd\" key; expected one of {}", Request::NAMES));
        };
        let Some(name) = cmd.as_str() else {
            return Err(format!("\"cmd\" must be a string, one of {}", Request::NAMES));
        };
        serde_json::from_value(value.clone()).map_err(|_| format!("unknown command {name:?}; expected one of {}", Request::NAMES))
    }
}

/// Every reply: `{"ok":true,…}` or `{"ok":false,"error":"…"}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `trigger`: the session it opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// `say`: how long the sound is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// `reload`: the configuration keys whose values changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed: Option<Vec<String>>,
    /// `status`, inline: `{"ok":true,"state":"listening","version":"0.1.0",…}`.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

impl Reply {
    pub fn ok() -> Reply {
        Reply { ok: true, ..Reply::default() }
    }

    pub fn error(e: impl Into<String>) -> Reply {
        Reply { ok: false, error: Some(e.into()), ..Reply::default() }
    }

    pub fn into_result(self) -> Result<Reply, String> {
        if self.ok { Ok(self) } else { Err(self.error.unwrap_or_else(|| "the daemon refused without saying why".into())) }
    }
}

/// What `status` reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// `listening|muted|connecting|streaming|draining|backoff`
    pub state: String,
    pub version: String,
    pub uptime_ms: u64,
    pub pid: u32,
    /// The audio source and what it is doing ("capturing from default (16000 Hz, 1 ch, i16)").
    pub source: String,
    pub source_state: String,
    pub wake_mode: String,
    /// The configuration file in use, if any.
    pub config_file: Option<String>,
    /// Why the last reload failed (the old configuration stays in use); cleared by a successful one.
    pub reload_error: Option<String>,
    pub counters: Counters,
    pub last_session: Option<SessionSummary>,
    /// With `session.protocol = "homeassistant"`: the connection, Home Assistant's version, the pipeline, and the
    /// last run's transcript and answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub homeassistant: Option<HaStatus>,
}

/// Counters since the daemon started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Audio frames delivered by the source.
    pub audio_frames: u64,
    /// Frames the source had to drop because the detector thread was behind.
    pub overruns: u64,
    pub wake_detections: u64,
    /// Detections ignored because the answer being played said the wake word (counted in `wake_detections`).
    #[serde(default)]
    pub wake_suppressed: u64,
    pub sessions: u64,
    pub sessions_failed: u64,
    pub frames_sent: u64,
    pub frames_dropped: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_bad_ones_say_why() {
        assert_eq!(Request::parse(r#"{"cmd":"status"}"#), Ok(Request::Status));
        assert_eq!(Request::parse(r#" {"cmd": "subscribe"} "#), Ok(Request::Subscribe));
        let cases = [
            ("{\"cmd\":", "not a JSON object"),
            ("[1,2]", "no \"cmd\" key"),
            ("{}", "no \"cmd\" key"),
            (r#"{"cmd":3}"#, "must be a string"),
            (r#"{"cmd":"explode"}"#, "unknown command \"explode\""),
        ];
        for (line, want) in cases {
            let e = Request::parse(line).unwrap_err();
            assert!(e.contains(want), "{line}: {e}");
        }
    }

    #[test]
    fn replies_carry_status_inline_and_round_trip() {
        let status = Status {
            state: "listening".into(),
            version: "0.1.0".into(),
            uptime_ms: 5,
            pid: 1,
            source: "stdin".into(),
            source_state: "reading".into(),
            wake_mode: "wakeword".into(),
            config_file: None,
            reload_error: None,
            counters: Counters { audio_frames: 7, ..Counters::default() },
            last_session: None,
            homeassistant: None,
        };
        let reply = Reply { status: Some(status), ..Reply::ok() };
        let line = serde_json::to_string(&reply).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ok"], true);
        assert_eq!(v["state"], "listening");
        assert_eq!(v["counters"]["audio_frames"], 7);
        assert_eq!(serde_json::from_str::<Reply>(&line).unwrap(), reply);
        let err: Reply = serde_json::from_str(r#"{"ok":false,"error":"muted"}"#).unwrap();
        assert_eq!(err.status, None);
        assert_eq!(err.into_result().unwrap_err(), "muted");
    }
}
