//! Home Assistant's WebSocket API (`session.protocol = "homeassistant"`): each session is one Assist pipeline
//! run on a connection of its own, fed with the session's audio.
//!
//! The exchange, in order:
//! 1. On connect (within `connect_timeout_ms`): Home Assistant sends `auth_required`; we send
//!    `{"type":"auth","access_token":…}`; it answers `auth_ok` (with its version) or `auth_invalid`.
//! 2. The run ([`run_command`]): `{"id":N,"type":"assist_pipeline/run","start_stage":"stt",…}`. Home Assistant
//!    answers with a `result` (a refusal names its code, e.g. `pipeline-not-found`), then the `run-start`
//!    event, whose `stt_binary_handler_id` is the byte that prefixes every audio message.
//! 3. Audio: binary `[handler] + s16le PCM`, from the pre-roll on; our end of audio is `[handler]` alone.
//!    Sending stops for good at `stt-vad-end`, `stt-end`, `error` or `run-end` ([`Kind::stops_audio`]): after
//!    `run-end` Home Assistant no longer knows the handler and logs an error for every frame.
//! 4. Events: `{"id":1,"type":"event","event":{"type":"stt-end","data":…}}`, possibly several in one JSON array.
//!    Each is published as it comes; `run-end` ends the session.

use std::sync::{Arc, Mutex, PoisonError};

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{Bytes, Message};

use super::connect::{ConnectError, Socket};
use crate::config::EndStage;

/// What a session needs to ask for a run.
#[derive(Clone)]
pub struct HaParams {
    pub token: Token,
    pub token_file: String,
    pub pipeline: String,
    pub end_stage: EndStage,
}

/// A long-lived access token. It is only ever written into the `auth` message; `Debug` does not show it.
#[derive(Clone)]
pub struct Token(pub(super) String);

impl Token {
    /// The token itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

/// What `status` shows of Home Assistant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HaStatus {
    /// A connection is open and authenticated, ready for the next session.
    pub connected: bool,
    /// A pipeline run is going on.
    pub running: bool,
    /// The version the last successful authentication reported.
    pub version: Option<String>,
    /// The pipeline asked for ("" = Home Assistant's preferred one).
    pub pipeline: String,
    /// What the last run heard (`stt-end`) and answered (`intent-end`).
    pub transcript: Option<String>,
    pub answer: Option<String>,
    /// Why no connection can be opened now (a refused token, Home Assistant away); cleared once one opens.
    pub link_error: Option<String>,
    /// How the last run failed (a refused run, an `error` event); cleared when a run starts.
    pub error: Option<String>,
}

/// The shared copy of [`HaStatus`]: sessions write it, `status` reads it.
pub type SharedStatus = Arc<Mutex<HaStatus>>;

pub fn update(status: &SharedStatus, f: impl FnOnce(&mut HaStatus)) {
    f(&mut status.lock().unwrap_or_else(PoisonError::into_inner));
}

/// An event type of a run, as far as the session cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    RunStart,
    /// Home Assistant starts reading the audio.
    SttStart,
    SttVadEnd,
    SttEnd,
    IntentEnd,
    /// The answer is spoken: `tts_output.url`.
    TtsEnd,
    Error,
    RunEnd,
    /// Any other (or a future) event type: published, nothing else.
    Other,
}

impl Kind {
    fn of(name: &str) -> Kind {
        match name {
            "run-start" => Kind::RunStart,
            "stt-start" => Kind::SttStart,
            "stt-vad-end" => Kind::SttVadEnd,
            "stt-end" => Kind::SttEnd,
            "intent-end" => Kind::IntentEnd,
            "tts-end" => Kind::TtsEnd,
            "error" => Kind::Error,
            "run-end" => Kind::RunEnd,
            _ => Kind::Other,
        }
    }

    /// After this event no more audio is sent: Home Assistant has stopped listening, or the run is over.
    pub fn stops_audio(&self) -> bool {
        matches!(self, Kind::SttVadEnd | Kind::SttEnd | Kind::Error | Kind::RunEnd)
    }
}

/// One message of ours from Home Assistant.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// The answer to the run command: `Err((code, message))` when it was refused.
    Result(Result<(), (String, String)>),
    /// A pipeline event: `{"type":"stt-end","data":{…},"timestamp":…}`.
    Event(Kind, Value),
}

/// Reads a text message: one JSON object or an array of them (Home Assistant coalesces). Messages for other
/// ids than the run's and of other types (`pong`, …) are left out; unknown fields are ignored.
pub fn read(text: &str, run: u64) -> Result<Vec<Incoming>, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let items = match value {
        Value::Array(items) => items,
        single => vec![single],
    };
    let mut out = Vec::new();
    for item in items {
        let Value::Object(mut map) = item else { return Err(format!("not a JSON object: {}", super::protocol::shown(item))) };
        if map.get("id").and_then(Value::as_u64) != Some(run) {
            continue;
        }
        match map.get("type").and_then(Value::as_str) {
            Some("result") => {
                let ok = map.get("success").and_then(Value::as_bool).unwrap_or(false);
                let error = map.get("error");
                let field = |k: &str| error.and_then(|e| e.get(k)).and_then(Value::as_str).unwrap_or("").to_string();
                out.push(Incoming::Result(if ok { Ok(()) } else { Err((field("code"), field("message"))) }));
            }
            Some("event") => {
                let event = map.remove("event").unwrap_or(Value::Null);
                let kind = Kind::of(event.get("type").and_then(Value::as_str).unwrap_or(""));
                out.push(Incoming::Event(kind, event));
            }
            _ => {}
        }
    }
    Ok(out)
}

/// How much of a transcript, an answer or an error `status` and a session's end keep.
pub const CLIP: usize = 1024;

/// The first [`CLIP`] bytes of `s` (cut at a character boundary), with "…" when it was longer.
pub fn clip(s: &str) -> String {
    if s.len() <= CLIP {
        return s.to_string();
    }
    let mut cut = CLIP;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &s[..cut])
}

/// The handler byte of a `run-start` event.
pub fn handler_of(run_start: &Value) -> Option<u8> {
    run_start.pointer("/data/runner_data/stt_binary_handler_id").and_then(Value::as_u64).and_then(|h| u8::try_from(h).ok())
}

/// The transcript of an `stt-end`, the spoken answer of an `intent-end`, the code of an `error`.
pub fn transcript(event: &Value) -> Option<&str> {
    event.pointer("/data/stt_output/text").and_then(Value::as_str)
}

pub fn answer(event: &Value) -> Option<&str> {
    event.pointer("/data/intent_output/response/speech/plain/speech").and_then(Value::as_str)
}

pub fn speech_url(event: &Value) -> Option<&str> {
    event.pointer("/data/tts_output/url").and_then(Value::as_str)
}

/// An answer's URL made absolute: Home Assistant gives a path (`/api/tts_proxy/….mp3`) on the server the
/// WebSocket API is on, over HTTP for `ws://` and HTTPS for `wss://`; an absolute http(s) URL stays as it is.
pub fn absolute_url(ws: &url::Url, given: &str) -> Option<url::Url> {
    if let Ok(u) = url::Url::parse(given) {
        return matches!(u.scheme(), "http" | "https").then_some(u);
    }
    let mut base = ws.clone();
    base.set_scheme(if ws.scheme() == "wss" { "https" } else { "http" }).ok()?;
    base.join(given).ok()
}

/// Whether `url` is on the same server as the WebSocket API (the token may go there).
pub fn same_origin(ws: &url::Url, url: &url::Url) -> bool {
    ws.host_str() == url.host_str() && ws.port_or_known_default() == url.port_or_known_default()
}

pub fn error_code(event: &Value) -> Option<&str> {
    event.pointer("/data/code").and_then(Value::as_str)
}

pub fn error_message(event: &Value) -> Option<&str> {
    event.pointer("/data/message").and_then(Value::as_str)
}

/// The run command, with the connection's next id and the pipeline's id (none: the preferred pipeline).
/// `wake_word_phrase` lets Home Assistant tell one wake-up heard by several satellites.
pub fn run_command(p: &HaParams, id: u64, pipeline: Option<&str>, sample_rate: u32, wakeword: Option<&str>) -> Message {
    let mut input = json!({ "sample_rate": sample_rate });
    if let Some(w) = wakeword {
        input["wake_word_phrase"] = Value::from(w.replace('_', " "));
    }
    let mut cmd = json!({
        "id": id,
        "type": "assist_pipeline/run",
        "start_stage": "stt",
        "end_stage": p.end_stage.as_str(),
        "input": input,
    });
    if let Some(pipeline) = pipeline.filter(|p| !p.is_empty()) {
        cmd["pipeline"] = Value::from(pipeline);
    }
        Message::text(cmd.to_string())
}

/// An audio message: the handler byte, then the samples.
pub fn audio(handler: u8, pcm: &[i16]) -> Message {
    let mut bytes = Vec::with_capacity(1 + pcm.len() * 2);
    bytes.push(handler);
    for s in pcm {
        bytes.extend_from_slice(&s.to_le_bytes());
    }
    Message::Binary(Bytes::from(bytes))
}

/// The end of audio: the handler byte alone.
pub fn end(handler: u8) -> Message {
    Message::Binary(Bytes::from(vec![handler]))
}

/// Authenticates a new connection; returns Home Assistant's version. The caller bounds the time.
pub async fn authenticate(ws: &mut Socket, p: &HaParams, url: &str) -> Result<String, ConnectError> {
    let unexpected = |what: String| ConnectError::HomeAssistant { url: url.to_string(), message: what };
    let first = next_object(ws, url).await?;
    if first.get("type").and_then(Value::as_str) != Some("auth_required") {
        return Err(unexpected(format!("expected auth_required, got {}", super::protocol::shown(first))));
    }
    let auth = json!({"type": "auth", "access_token": p.token.0});
    ws.send(Message::text(auth.to_string())).await.map_err(|e| unexpected(format!("cannot send the token: {e}")))?;
    let answer = next_object(ws, url).await?;
    match answer.get("type").and_then(Value::as_str) {
        Some("auth_ok") => Ok(answer.get("ha_version").and_then(Value::as_str).unwrap_or("unknown").to_string()),
        Some("auth_invalid") => Err(ConnectError::TokenRefused {
            url: url.to_string(),
            token_file: p.token_file.clone(),
            message: clip(answer.get("message").and_then(Value::as_str).unwrap_or("")),
        }),
        _ => Err(unexpected(format!("expected auth_ok, got {}", super::protocol::shown(answer)))),
    }
}

/// The id of the pipeline `wanted` names: by id, else by name (case aside), from Home Assistant's list of
/// pipelines (command `id`). A name nothing matches is kept as it is: Home Assistant's refusal of the run
/// (`pipeline-not-found`) then says so, and the pipelines it has are logged here.
pub async fn resolve_pipeline(ws: &mut Socket, wanted: &str, id: u64, url: &str) -> Result<String, ConnectError> {
    let fail = |message: String| ConnectError::HomeAssistant { url: url.to_string(), message };
    let ask = json!({"id": id, "type": "assist_pipeline/pipeline/list"});
    ws.send(Message::text(ask.to_string())).await.map_err(|e| fail(format!("cannot ask for the pipelines: {e}")))?;
    let answer = loop {
        let v = next_object(ws, url).await?;
        if v.get("id").and_then(Value::as_u64) == Some(id) {
            break v;
        }
    };
    let pipelines = answer.pointer("/result/pipelines").and_then(Value::as_array).cloned().unwrap_or_default();
    let field = |p: &Value, k: &str| p.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    if let Some(p) = pipelines.iter().find(|p| field(p, "id") == wanted) {
        return Ok(field(p, "id"));
    }
    if let Some(p) = pipelines.iter().find(|p| field(p, "name").to_lowercase() == wanted.to_lowercase()) {
        return Ok(field(p, "id"));
    }
    let known: Vec<String> = pipelines.iter().take(20).map(|p| format!("{:?} ({})", field(p, "name"), field(p, "id"))).collect();
    tracing::warn!("homeassistant.pipeline: Home Assistant has no pipeline {wanted:?}; it has {}", known.join(", "));
    Ok(wanted.to_string())
}

/// The next text message as a JSON object (pings are answered by the library on the way).
async fn next_object(ws: &mut Socket, url: &str) -> Result<Value, ConnectError> {
    let fail = |message: String| ConnectError::HomeAssistant { url: url.to_string(), message };
    loop {
        match ws.next().await {
            None => return Err(fail("the connection closed during authentication".into())),
            Some(Err(e)) => return Err(fail(format!("the connection failed during authentication: {e}"))),
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).map_err(|e| fail(format!("not JSON during authentication: {e}")))?;
                return if v.is_object() { Ok(v) } else { Err(fail(format!("not a JSON object: {}", super::protocol::shown(v)))) };
            }
            Some(Ok(Message::Close(frame))) => return Err(fail(format!("closed during authentication: {frame:?}"))),
            Some(Ok(Message::Binary(_))) => return Err(fail("a binary message during authentication".into())),
            Some(Ok(_)) => {}
        }
    }
}

/// Logs an event at info, with its type (`VOXGATE_HA_EVENT` in the journal), and the transcript or the
/// answer as fields of their own.
pub fn log_event(kind: &Kind, event: &Value) {
    let name = event.get("type").and_then(Value::as_str).unwrap_or("?");
    let shown = super::protocol::shown(event.clone());
    match kind {
        Kind::SttEnd => tracing::info!(event = "server_message", ha_event = name, transcript = transcript(event), "Home Assistant: {shown}"),
        Kind::IntentEnd => tracing::info!(event = "server_message", ha_event = name, answer = answer(event), "Home Assistant: {shown}"),
        Kind::Error => tracing::warn!(event = "server_message", ha_event = name, code = error_code(event), "Home Assistant: {shown}"),
        _ => tracing::info!(event = "server_message", ha_event = name, "Home Assistant: {shown}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_read_singly_or_coalesced_and_others_ignored() {
        let one = r#"{"id":1,"type":"result","success":true,"result":null}"#;
        assert_eq!(read(one, 1).unwrap(), vec![Incoming::Result(Ok(()))]);
        let refused = r#"{"id":1,"type":"result","success":false,"error":{"code":"pipeline-not-found","message":"Pipeline not found: id=x"}}"#;
        assert_eq!(read(refused, 1).unwrap(), vec![Incoming::Result(Err(("pipeline-not-found".into(), "Pipeline not found: id=x".into())))]);
        let many = r#"[{"id":1,"type":"event","event":{"type":"run-start","data":{"runner_data":{"stt_binary_handler_id":3,"timeout":300}},"timestamp":"t"}},
            {"id":7,"type":"event","event":{"type":"run-end"}},{"id":1,"type":"pong"},
            {"id":1,"type":"event","event":{"type":"brand-new","data":{},"extra":1}}]"#;
        let got = read(many, 1).unwrap();
        assert_eq!(got.len(), 2);
        let Incoming::Event(Kind::RunStart, start) = &got[0] else { panic!("{got:?}") };
        assert_eq!(handler_of(start), Some(3));
        assert!(matches!(&got[1], Incoming::Event(Kind::Other, _)));
        assert!(read("[1]", 1).is_err() && read("nope", 1).is_err());
        assert_eq!(read(one, 2).unwrap(), vec![]);
        assert_eq!(handler_of(&json!({"data":{"runner_data":{"stt_binary_handler_id":300}}})), None);
    }

    #[test]
    fn the_run_command_and_audio_are_what_home_assistant_expects() {
        let p = HaParams { token: Token("t".into()), token_file: "/t".into(), pipeline: String::new(), end_stage: EndStage::Intent };
        let Message::Text(t) = run_command(&p, 1, None, 16000, Some("hey_jarvis")) else { panic!() };
        let v: Value = serde_json::from_str(t.as_str()).unwrap();
        assert_eq!(
            v,
            json!({"id":1,"type":"assist_pipeline/run","start_stage":"stt","end_stage":"intent","input":{"sample_rate":16000,"wake_word_phrase":"hey jarvis"}})
        );
        let Message::Text(t) = run_command(&p, 4, Some("01abc"), 16000, None) else { panic!() };
        assert!(t.as_str().contains(r#""pipeline":"01abc""#) && t.as_str().contains(r#""id":4"#) && !t.as_str().contains("wake_word_phrase"));
        assert_eq!(audio(2, &[1, -1]), Message::Binary(Bytes::from(vec![2, 1, 0, 255, 255])));
        assert_eq!(end(2), Message::Binary(Bytes::from(vec![2])));
        assert_eq!(format!("{:?}", p.token), "Token(…)");
    }

    #[test]
    fn answer_urls_are_made_absolute_on_the_api_server() {
        let ws = url::Url::parse("ws://ha.local:8123/api/websocket").unwrap();
        let u = absolute_url(&ws, "/api/tts_proxy/abc.mp3").unwrap();
        assert_eq!(u.as_str(), "http://ha.local:8123/api/tts_proxy/abc.mp3");
        assert!(same_origin(&ws, &u));
        let wss = url::Url::parse("wss://ha.example/api/websocket").unwrap();
        assert_eq!(absolute_url(&wss, "/x.mp3").unwrap().as_str(), "https://ha.example/x.mp3");
        let other = absolute_url(&ws, "http://cdn.example/x.mp3").unwrap();
        assert!(!same_origin(&ws, &other));
        assert!(absolute_url(&ws, "file:///etc/passwd").is_none());
    }
}
