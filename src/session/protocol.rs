//! The session wire protocols: voxgate/1 (MessagePack maps with a `type`), vosk (JSON text + raw PCM) and
//! Home Assistant's (JSON text + PCM behind a handler byte; the exchange itself is in `session::homeassistant`).

use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::{Bytes, Message};

use super::homeassistant::{self, Incoming, Kind};
use super::{EndReason, Trigger};
use crate::config::Protocol;

/// Client → server messages of voxgate/1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// `{"type":"start","proto":1,"session":"5f0c…","trigger":"wakeword","wakeword":"jarvis","score":0.71,
    ///   "sample_rate":16000,"channels":1,"format":"s16le","frame_ms":20,"preroll_ms":2000,"host":"kitchen"}`
    Start {
        proto: u32,
        session: String,
        trigger: Trigger,
        wakeword: Option<String>,
        score: Option<f32>,
        sample_rate: u32,
        channels: u16,
        format: String,
        frame_ms: u32,
        preroll_ms: u64,
        host: String,
    },
    /// `{"type":"audio","seq":0,"pcm":<640 bytes>}`: `seq` counts the session's frames from 0 in capture order.
    Audio {
        seq: u64,
        /// MessagePack binary (bin 8/16/32), not an array of integers.
        #[serde(with = "serde_bytes")]
        pcm: Vec<u8>,
    },
    /// `{"type":"end","reason":"silence","frames_sent":120,"frames_dropped":0}`
    End { reason: EndReason, frames_sent: u64, frames_dropped: u64 },
}

impl ClientMessage {
    /// Encodes as a MessagePack map with field names.
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).expect("client messages always encode")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, rmp_serde::decode::Error> {
        rmp_serde::from_slice(bytes)
    }
}

/// s16le bytes of a frame.
pub fn pcm_bytes(pcm: &[i16]) -> Vec<u8> {
    let mut out = Vec::with_capacity(pcm.len() * 2);
    for s in pcm {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

/// Binary values up to this long are shown as arrays of byte values; longer ones by their length alone.
const BINARY_SHOWN: usize = 64;

/// Decodes one MessagePack value as JSON, for logs and events: a short binary value becomes an array of byte
/// values, a longer one `{"bytes":N}` (as an array, each byte would take 32 bytes of memory), map keys become
/// strings.
pub fn msgpack_to_json(bytes: &[u8]) -> Result<serde_json::Value, String> {
    let mut rd = bytes;
    let value = rmpv::decode::read_value(&mut rd).map_err(|e| e.to_string())?;
    if !rd.is_empty() {
        return Err(format!("{} bytes after the first value", rd.len()));
    }
    Ok(to_json(value))
}

fn to_json(v: rmpv::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        rmpv::Value::Nil => J::Null,
        rmpv::Value::Boolean(b) => J::Bool(b),
        rmpv::Value::Integer(i) => i.as_i64().map(J::from).or_else(|| i.as_u64().map(J::from)).unwrap_or(J::Null),
        rmpv::Value::F32(f) => serde_json::Number::from_f64(f as f64).map(J::Number).unwrap_or(J::Null),
        rmpv::Value::F64(f) => serde_json::Number::from_f64(f).map(J::Number).unwrap_or(J::Null),
        rmpv::Value::String(s) => J::String(s.into_str().unwrap_or_default()),
        rmpv::Value::Binary(b) if b.len() <= BINARY_SHOWN => J::Array(b.into_iter().map(J::from).collect()),
        rmpv::Value::Binary(b) => serde_json::json!({"bytes": b.len()}),
        rmpv::Value::Array(a) => J::Array(a.into_iter().map(to_json).collect()),
        rmpv::Value::Map(m) => J::Object(
            m.into_iter()
                .map(|(k, v)| {
                    let key = match k {
                        rmpv::Value::String(s) => s.into_str().unwrap_or_default(),
                        other => other.to_string(),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        rmpv::Value::Ext(t, d) => serde_json::json!({"ext": t, "data": d}),
    }
}

/// A server message larger than this as JSON is logged and published shortened (see [`shown`]).
pub const SHOWN_MAX: usize = 8 * 1024;
/// How much of a shortened message is kept.
const SHOWN_HEAD: usize = 1024;

/// A server message as logs and events show it: whole up to [`SHOWN_MAX`] bytes of JSON; above, a marker with
/// the message's `type`, its full size and its first [`SHOWN_HEAD`] bytes, so that however large a server's
/// replies (up to `MAX_MESSAGE`, 1 MiB, each) a log line and an event line stay a few KiB:
/// `{"type":"partial","truncated":true,"bytes":3276817,"head":"{\"audio\":[0,0,…"}`.
pub fn shown(message: serde_json::Value) -> serde_json::Value {
    let text = message.to_string();
    if text.len() <= SHOWN_MAX {
        return message;
    }
    let mut cut = SHOWN_HEAD;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let kind = message.get("type").and_then(|t| t.as_str()).filter(|t| t.len() <= 64);
    serde_json::json!({"type": kind, "truncated": true, "bytes": text.len(), "head": &text[..cut]})
}

/// What a server message means to the client.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Anything to log and publish.
    Message(serde_json::Value),
    /// The server ends the session early (`{"type":"end"}`).
    End(serde_json::Value),
    /// The final result: drain is over (`{"type":"final"}`; with vosk, the reply after eof).
    Final(serde_json::Value),
    /// A Home Assistant pipeline event.
    Pipeline(Kind, serde_json::Value),
    /// voxgate/1 `say`: audio to play (the message as shown, and what to say).
    Say(serde_json::Value, Say),
}

/// What a voxgate/1 `say` asks to be played.
#[derive(Debug, Clone, PartialEq)]
pub enum Say {
    /// `{"type":"say","url":"https://…/answer.mp3"}`
    Url(String),
    /// `{"type":"say","format":"s16le","sample_rate":22050,"pcm":<bin>}`
    Pcm { rate: u32, samples: Vec<i16> },
}

/// The `say` in a MessagePack map, if it is one that can be played; a `say` that cannot is named.
fn say_in(v: &rmpv::Value) -> Option<Result<Say, String>> {
    let map = v.as_map()?;
    let get = |k: &str| map.iter().find(|(key, _)| key.as_str() == Some(k)).map(|(_, v)| v);
    if get("type").and_then(|t| t.as_str()) != Some("say") {
        return None;
    }
    if let Some(url) = get("url").and_then(|u| u.as_str()) {
        return Some(Ok(Say::Url(url.to_string())));
    }
    let format = get("format").and_then(|f| f.as_str());
    let rate = get("sample_rate").and_then(|r| r.as_u64()).filter(|r| (8000..=48000).contains(r));
    let pcm = get("pcm").and_then(|p| p.as_slice());
    Some(match (format, rate, pcm) {
        (Some("s16le"), Some(rate), Some(pcm)) if pcm.len() % 2 == 0 => {
            Ok(Say::Pcm { rate: rate as u32, samples: pcm.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect() })
        }
        _ => Err("a say needs a url, or format \"s16le\", a sample_rate of 8000-48000 and pcm of whole samples".into()),
    })
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ReplyError {
    #[error("the server sent a binary message that is not a MessagePack map: {0}")]
    MsgPack(String),
    #[error("the server sent a text message that is not a JSON object: {0}")]
    Json(String),
    #[error("Home Assistant sent a binary message ({0} bytes): its WebSocket API sends only text")]
    Binary(usize),
    /// Home Assistant refused the run: its error code, then its message.
    #[error("{0}")]
    Refused(String, String),
}

/// Speaks one protocol: the messages to send and how to read replies.
#[derive(Debug, Clone, Copy)]
pub struct Codec {
    pub protocol: Protocol,
    /// Home Assistant: the run's handler byte, which prefixes every audio message.
    pub handler: u8,
    /// Home Assistant: the run command's id; messages for other ids are not the session's.
    pub run: u64,
}

impl Codec {
    pub fn new(protocol: Protocol) -> Self {
        Codec { protocol, handler: 0, run: 1 }
    }

    /// The first message of voxgate/1 and vosk; none for Home Assistant, whose run command
    /// (`homeassistant::run_command`) went before.
    pub fn start(&self, msg: &ClientMessage, sample_rate: u32) -> Option<Message> {
        match self.protocol {
            Protocol::Voxgate => Some(Message::Binary(Bytes::from(msg.encode()))),
            Protocol::Vosk => Some(Message::text(format!("{{\"config\": {{\"sample_rate\": {sample_rate}}}}}"))),
            Protocol::Homeassistant => None,
        }
    }

    pub fn audio(&self, seq: u64, pcm: &[i16]) -> Message {
        match self.protocol {
            Protocol::Voxgate => Message::Binary(Bytes::from(ClientMessage::Audio { seq, pcm: pcm_bytes(pcm) }.encode())),
            Protocol::Vosk => Message::Binary(Bytes::from(pcm_bytes(pcm))),
            Protocol::Homeassistant => homeassistant::audio(self.handler, pcm),
        }
    }

    /// Our end of audio; none for Home Assistant when it ended the audio itself (`server`): after its end of
    /// speech nothing more is sent.
    pub fn end(&self, reason: EndReason, frames_sent: u64, frames_dropped: u64) -> Option<Message> {
        Some(match self.protocol {
            Protocol::Voxgate => Message::Binary(Bytes::from(ClientMessage::End { reason, frames_sent, frames_dropped }.encode())),
            // The Vosk server compares this exact string.
            Protocol::Vosk => Message::text("{\"eof\" : 1}"),
            Protocol::Homeassistant if reason == EndReason::Server => return None,
            Protocol::Homeassistant => homeassistant::end(self.handler),
        })
    }

    /// Reads a data message. `last`: with vosk, this is the reply to our eof (Vosk answers every message it
    /// gets, so that is reply number frames sent + 1, counted once the eof is out).
    pub fn reply(&self, msg: &Message, last: bool) -> Result<Vec<Reply>, ReplyError> {
        if self.protocol == Protocol::Homeassistant {
            return match msg {
                Message::Text(t) => homeassistant::read(t.as_str(), self.run)
                    .map_err(ReplyError::Json)?
                    .into_iter()
                    .filter_map(|m| match m {
                        Incoming::Event(kind, v) => Some(Ok(Reply::Pipeline(kind, v))),
                        Incoming::Result(Ok(())) => None,
                        Incoming::Result(Err((code, message))) => Some(Err(ReplyError::Refused(code, message))),
                    })
                    .collect(),
                Message::Binary(b) => Err(ReplyError::Binary(b.len())),
                _ => Ok(Vec::new()),
            };
        }
        if let (Protocol::Voxgate, Message::Binary(b)) = (self.protocol, msg) {
            let mut rd = &b[..];
            if let Ok(v) = rmpv::decode::read_value(&mut rd) {
                match say_in(&v) {
                    Some(Ok(say)) => {
                        // Shown without its audio: the length stands for it.
                        let mut shown = to_json(v);
                        if let (Some(map), Say::Pcm { samples, .. }) = (shown.as_object_mut(), &say) {
                            map.insert("pcm".into(), serde_json::json!({"bytes": samples.len() * 2}));
                        }
                        return Ok(vec![Reply::Say(shown, say)]);
                    }
                    Some(Err(e)) => tracing::warn!("the server's say cannot be played: {e}"),
                    None => {}
                }
            }
        }
        let value: serde_json::Value = match msg {
            Message::Binary(b) => msgpack_to_json(b).map_err(ReplyError::MsgPack)?,
            Message::Text(t) => serde_json::from_str(t.as_str()).map_err(|e| ReplyError::Json(e.to_string()))?,
            _ => return Ok(Vec::new()),
        };
        if !value.is_object() {
            return Err(match msg {
                Message::Binary(_) => ReplyError::MsgPack(format!("got {value}")),
                _ => ReplyError::Json(format!("got {value}")),
            });
        }
        Ok(vec![match (self.protocol, value.get("type").and_then(|t| t.as_str())) {
            (Protocol::Voxgate, Some("end")) => Reply::End(value),
            (Protocol::Voxgate, Some("final")) => Reply::Final(value),
            (Protocol::Voxgate, Some("say")) if value.get("url").is_some_and(|u| u.is_string()) => {
                let url = value["url"].as_str().unwrap_or_default().to_string();
                Reply::Say(value, Say::Url(url))
            }
            (Protocol::Vosk, _) if last => Reply::Final(value),
            _ => Reply::Message(value),
        }])
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn large_messages_are_shown_shortened_with_their_size() {
        let small = serde_json::json!({"type": "partial", "text": "héllo"});
        assert_eq!(super::shown(small.clone()), small);
        let encoded = |v: &rmpv::Value| {
            let mut bytes = Vec::new();
            rmpv::encode::write_value(&mut bytes, v).unwrap();
            bytes
        };
        let numbers = rmpv::Value::Array((0..100_000).map(|i| rmpv::Value::from(i % 100)).collect());
        let many = msgpack_to_json(&encoded(&rmpv::Value::Map(vec![("type".into(), "partial".into()), ("n".into(), numbers)]))).unwrap();
        let full = many.to_string().len();
        let s = super::shown(many);
        assert_eq!((s["type"].as_str(), s["truncated"].as_bool(), s["bytes"].as_u64()), (Some("partial"), Some(true), Some(full as u64)));
        // Binary values: short ones byte by byte, long ones by their length.
        let say = rmpv::Value::Map(vec![
            ("type".into(), "say".into()),
            ("pcm".into(), rmpv::Value::Binary(vec![7u8; 900_000])),
            ("id".into(), rmpv::Value::Binary(vec![1, 2])),
        ]);
        assert_eq!(msgpack_to_json(&encoded(&say)).unwrap(), serde_json::json!({"type": "say", "pcm": {"bytes": 900_000}, "id": [1, 2]}));
        assert!(s.to_string().len() < 2 * super::SHOWN_HEAD, "{s}");
        // Cut at a character boundary, and no type when there is none.
        let text = super::shown(serde_json::json!({"text": "é".repeat(10_000)}));
        assert!(text["head"].as_str().unwrap().ends_with('é') && text["type"].is_null(), "{text}");
    }

    use super::*;

    #[test]
    fn voxgate_messages_are_named_msgpack_maps() {
        let audio = ClientMessage::Audio { seq: 7, pcm: vec![1, 2, 3, 4] };
        let bytes = audio.encode();
        // fixmap of 3 entries, then "type"
        assert_eq!(bytes[0], 0x83);
        let v = msgpack_to_json(&bytes).unwrap();
        assert_eq!(v, serde_json::json!({"type":"audio","seq":7,"pcm":[1,2,3,4]}));
        assert!(bytes.windows(2).any(|w| w == [0xc4, 4]), "pcm is MessagePack bin 8");
        assert_eq!(ClientMessage::decode(&bytes).unwrap(), audio);
        let end = ClientMessage::End { reason: EndReason::NoSpeech, frames_sent: 3, frames_dropped: 1 };
        let v = msgpack_to_json(&end.encode()).unwrap();
        assert_eq!(v, serde_json::json!({"type":"end","reason":"no_speech","frames_sent":3,"frames_dropped":1}));
    }

    #[test]
    fn vosk_eof_is_the_literal_string() {
        let c = Codec::new(Protocol::Vosk);
        assert_eq!(c.end(EndReason::Silence, 1, 0).unwrap(), Message::text("{\"eof\" : 1}"));
        assert_eq!(c.start(&ClientMessage::End { reason: EndReason::Silence, frames_sent: 0, frames_dropped: 0 }, 16000).unwrap(), Message::text("{\"config\": {\"sample_rate\": 16000}}"));
        assert_eq!(c.audio(0, &[1, -1]), Message::Binary(Bytes::from(vec![1, 0, 255, 255])));
    }

    #[test]
    fn replies_are_classified_and_garbage_refused() {
        let c = Codec::new(Protocol::Voxgate);
        let bin = |v: serde_json::Value| Message::Binary(Bytes::from(rmp_serde::to_vec_named(&v).unwrap()));
        assert!(matches!(c.reply(&bin(serde_json::json!({"type":"partial","text":"a"})), false).as_deref(), Ok([Reply::Message(_)])));
        assert!(matches!(c.reply(&bin(serde_json::json!({"type":"end"})), false).as_deref(), Ok([Reply::End(_)])));
        assert!(matches!(c.reply(&Message::text("{\"type\":\"final\"}"), true).as_deref(), Ok([Reply::Final(_)])));
        assert!(matches!(c.reply(&Message::Binary(Bytes::from_static(&[0xc1, 0xff])), false), Err(ReplyError::MsgPack(_))));
        assert!(matches!(c.reply(&Message::text("not json"), false), Err(ReplyError::Json(_))));
        assert!(matches!(c.reply(&Message::text("[1,2]"), false), Err(ReplyError::Json(_))));
        let v = Codec::new(Protocol::Vosk);
        assert!(matches!(v.reply(&Message::text("{\"partial\":\"x\"}"), false).as_deref(), Ok([Reply::Message(_)])));
        assert!(matches!(v.reply(&Message::text("{\"text\":\"x\"}"), true).as_deref(), Ok([Reply::Final(_)])));
    }

    /// Fuzzing the server-message parsers: 30,000 mutations (bytes flipped, cut, inserted, repeated; deep
    /// nesting; random bytes) of real replies of each protocol, as binary and as text. None panics, and what is
    /// shown of any message stays small whatever it held.
    #[test]
    fn mutated_server_messages_never_panic_and_are_shown_small() {
        let bin = |v: serde_json::Value| rmp_serde::to_vec_named(&v).unwrap();
        let mut say = Vec::new();
        rmpv::encode::write_value(
            &mut say,
            &rmpv::Value::Map(vec![
                ("type".into(), "say".into()),
                ("format".into(), "s16le".into()),
                ("sample_rate".into(), 16000.into()),
                ("pcm".into(), rmpv::Value::Binary(vec![3u8; 640])),
            ]),
        )
        .unwrap();
        let seeds: Vec<Vec<u8>> = vec![
            bin(serde_json::json!({"type":"partial","text":"turn on the lights"})),
            bin(serde_json::json!({"type":"final","text":"ok","n":[1,2,3],"m":{"a":null}})),
            bin(serde_json::json!({"type":"say","url":"http://127.0.0.1/a.mp3"})),
            say,
            br#"{"type":"event","id":1,"event":{"type":"stt-end","data":{"stt_output":{"text":"hi"}}}}"#.to_vec(),
            br#"[{"type":"result","id":1,"success":false,"error":{"code":"x","message":"y"}}]"#.to_vec(),
            br#"{"partial":"hello"}"#.to_vec(),
        ];
        let codecs = [Codec::new(Protocol::Voxgate), Codec::new(Protocol::Vosk), Codec::new(Protocol::Homeassistant)];
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut refused = 0;
        for i in 0..30_000 {
            let mut m = seeds[i % seeds.len()].clone();
            for _ in 0..1 + next() % 3 {
                let len = m.len().max(1);
                match next() % 7 {
                    0 if !m.is_empty() => {
                        let at = next() as usize % len;
                        m[at] ^= 1 << (next() % 8);
                    }
                    1 => m.truncate(next() as usize % len),
                    2 => {
                        let at = next() as usize % (m.len() + 1);
                        m.insert(at, (next() % 256) as u8);
                    }
                    3 => m = m.repeat(1 + next() as usize % 20),
                    4 => m = [vec![0x91u8; next() as usize % 5000], m].concat(),
                    5 => m = [b"[".repeat(next() as usize % 5000), m].concat(),
                    _ => m = (0..next() % 200).map(|_| (next() % 256) as u8).collect(),
                }
            }
            let message = if next() % 2 == 0 {
                Message::Binary(Bytes::from(m))
            } else {
                Message::text(String::from_utf8_lossy(&m).into_owned())
            };
            for codec in &codecs {
                match codec.reply(&message, next() % 2 == 0) {
                    Ok(replies) => {
                        for r in replies {
                            let shown = match r {
                                Reply::Message(v) | Reply::End(v) | Reply::Final(v) | Reply::Pipeline(_, v) | Reply::Say(v, _) => shown(v),
                            };
                            assert!(shown.to_string().len() <= SHOWN_MAX, "{shown}");
                        }
                    }
                    Err(e) => {
                        refused += 1;
                        assert!(e.to_string().len() < 2048, "{e}");
                    }
                }
            }
        }
        assert!(refused > 10_000, "only {refused} refused: the mutations are too mild");
    }
}
