//! `voxgate serve`: a reference voxgate/1 server, to try a device end to end and for the demo.
//!
//! Each session is recorded to `<session>.wav` and `<session>.json` (the start message, frames received, gaps
//! in `seq`, the end message) when a record directory is given. It replies like a speech server: a `partial`
//! every half second of audio, and a `final` after the client's `end` with how much audio and speech it got.
//! One task per connection; the listener and the shutdown token come from the caller, so tests and the demo
//! run it in process.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::session::connect::ws_config;
use crate::session::protocol::{ClientMessage, msgpack_to_json};
use crate::session::segment::{VAD_CHUNK_MS, Vad};

/// Frames between two `partial` replies: half a second at 20 ms.
const PARTIAL_EVERY: u64 = 25;

/// What the server saw of one session (the `.json` next to the `.wav`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Record {
    pub session: String,
    pub start: serde_json::Value,
    pub frames: u64,
    pub audio_ms: u64,
    pub speech_ms: u64,
    /// Missing `seq` ranges, inclusive: `[[first, last], …]`.
    pub gaps: Vec<[u64; 2]>,
    pub end: Option<serde_json::Value>,
    pub wav: Option<PathBuf>,
}

/// A `say` message carrying `clip`: `{"type":"say","format":"s16le","sample_rate":…,"pcm":<bin>}`.
pub fn say(clip: &crate::playback::Clip) -> Vec<u8> {
    let pcm: Vec<u8> = clip.samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    let map = rmpv::Value::Map(vec![
        ("type".into(), "say".into()),
        ("format".into(), "s16le".into()),
        ("sample_rate".into(), rmpv::Value::from(clip.rate)),
        ("pcm".into(), rmpv::Value::Binary(pcm)),
    ]);
    let mut out = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = rmpv::encode::write_value(&mut out, &map);
    out
}

/// Accepts connections until `shutdown`; reports each finished session on `done` if given. With `answer`, each
/// session's `final` is preceded by a `say` carrying that audio.
pub async fn serve(
    listener: TcpListener,
    record_dir: Option<PathBuf>,
    shutdown: CancellationToken,
    done: Option<tokio::sync::mpsc::UnboundedSender<Record>>,
    answer: Option<Arc<crate::playback::Clip>>,
) {
    let tracker = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    continue;
                }
            },
        };
        let (dir, done, stop, answer) = (record_dir.clone(), done.clone(), shutdown.clone(), answer.clone());
        tracker.spawn(async move {
            tokio::select! {
                r = session(tcp, dir.as_deref(), answer.as_deref()) => match r {
                    Ok(record) => {
                        tracing::info!(session = %record.session, "session from {peer}: {} frames, {} gaps", record.frames, record.gaps.len());
                        if let Some(d) = done { let _ = d.send(record); }
                    }
                    Err(e) => tracing::warn!("session from {peer}: {e}"),
                },
                _ = stop.cancelled() => {}
            }
        });
    }
    tracker.close();
    tracker.wait().await;
}

fn reply(v: serde_json::Value) -> Message {
    Message::Binary(Bytes::from(rmp_serde::to_vec_named(&v).expect("JSON values encode")))
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("unreadable message: {0}")]
    Message(String),
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
}

/// A session's WAV file, written on a blocking thread of its own so the runtime never waits on the disk.
struct Recorder {
    samples: std::sync::mpsc::Sender<Vec<i16>>,
    done: tokio::task::JoinHandle<Result<(), ServeError>>,
}

impl Recorder {
    fn start(path: PathBuf, sample_rate: u32) -> Recorder {
        let (samples, rx) = std::sync::mpsc::channel::<Vec<i16>>();
        let done = tokio::task::spawn_blocking(move || {
            let failed = |e: hound::Error| ServeError::Write { path: path.clone(), reason: e.to_string() };
            let spec = hound::WavSpec { channels: 1, sample_rate, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
            let mut w = hound::WavWriter::create(&path, spec).map_err(failed)?;
            for chunk in rx {
                for s in chunk {
                    w.write_sample(s).map_err(failed)?;
                }
            }
            w.finalize().map_err(failed)
        });
        Recorder { samples, done }
    }

    fn push(&self, pcm: Vec<i16>) {
        // A writer that failed reports it from `finish`.
        let _ = self.samples.send(pcm);
    }

    async fn finish(self) -> Result<(), ServeError> {
        drop(self.samples);
        self.done.await.map_err(|e| ServeError::Write { path: PathBuf::new(), reason: e.to_string() })?
    }
}

async fn session(tcp: TcpStream, dir: Option<&Path>, answer: Option<&crate::playback::Clip>) -> Result<Record, ServeError> {
    let _ = tcp.set_nodelay(true);
    let mut ws = tokio_tungstenite::accept_async_with_config(tcp, Some(ws_config())).await?;
    let mut record = Record::default();
    let mut wav: Option<Recorder> = None;
    let mut vad = Vad::default();
    let mut speech_chunks = 0u64;
    let mut frame_ms = 20u64;
    let mut next_seq = 0u64;
    while let Some(msg) = ws.next().await {
        let bytes = match msg? {
            Message::Binary(b) => b,
            Message::Close(_) => break,
            _ => continue,
        };
        match ClientMessage::decode(&bytes) {
            Ok(ClientMessage::Start { session, sample_rate, frame_ms: f, .. }) => {
                record.session = session.clone();
                record.start = msgpack_to_json(&bytes).unwrap_or_default();
                frame_ms = f as u64;
                if let Some(d) = dir {
                    let path = d.join(format!("{session}.wav"));
                    wav = Some(Recorder::start(path.clone(), sample_rate));
                    record.wav = Some(path);
                }
            }
            Ok(ClientMessage::Audio { seq, pcm }) => {
                if seq > next_seq {
                    record.gaps.push([next_seq, seq - 1]);
                }
                next_seq = seq + 1;
                record.frames += 1;
                let samples: Vec<i16> = pcm.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
                speech_chunks += vad.push(&samples).1 as u64;
                if let Some(w) = &wav {
                    w.push(samples);
                }
                record.audio_ms = record.frames * frame_ms;
                record.speech_ms = speech_chunks * VAD_CHUNK_MS;
                if record.frames % PARTIAL_EVERY == 0 {
                    ws.send(reply(serde_json::json!({"type": "partial", "text": format!("({} ms of audio)", record.audio_ms), "audio_ms": record.audio_ms}))).await?;
                }
            }
            Ok(ClientMessage::End { .. }) => {
                record.end = msgpack_to_json(&bytes).ok();
                if let Some(clip) = answer {
                    ws.send(Message::Binary(Bytes::from(say(clip)))).await?;
                }
                ws.send(reply(serde_json::json!({
                    "type": "final",
                    "text": format!("(heard {:.1} s of speech in {:.1} s of audio)", record.speech_ms as f64 / 1000.0, record.audio_ms as f64 / 1000.0),
                    "audio_ms": record.audio_ms,
                    "speech_ms": record.speech_ms,
                    "frames": record.frames,
                    "gaps": record.gaps.len(),
                })))
                .await?;
                let _ = ws.close(None).await;
                break;
            }
            Err(e) => return Err(ServeError::Message(e.to_string())),
        }
    }
    if let Some(w) = wav {
        w.finish().await?;
    }
    if let (Some(d), false) = (dir, record.session.is_empty()) {
        let path = d.join(format!("{}.json", record.session));
        let text = serde_json::to_vec_pretty(&record).map_err(|e| ServeError::Write { path: path.clone(), reason: e.to_string() })?;
        let written = tokio::task::spawn_blocking({
            let path = path.clone();
            move || std::fs::write(path, text)
        })
        .await;
        written.map_err(std::io::Error::other).and_then(|r| r).map_err(|e| ServeError::Write { path, reason: e.to_string() })?;
    }
    Ok(record)
}
