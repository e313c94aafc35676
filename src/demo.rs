//! `voxgate demo`: the whole pipeline on the bundled recording (or a given WAV), played as fast as it can be
//! processed, against a reference server (`voxgate serve`) on loopback in the same process; prints the
//! timeline of what happened and where the recordings went.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, FilePacing, SourceSpec};
use crate::serve::{self, Record};
use crate::session::Event;

/// The bundled recording: wake word + command, silence, a decoy phrase, and again (16 kHz mono).
pub const DEMO_WAV: &[u8] = include_bytes!("../assets/demo.wav");

/// What the demo did, for tests.
#[derive(Debug)]
pub struct Outcome {
    pub events: Vec<Event>,
    pub records: Vec<Record>,
    pub record_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Audio(#[from] crate::audio::AudioError),
    #[error(transparent)]
    Daemon(#[from] crate::daemon::DaemonError),
}

/// Runs the demo, printing the timeline to `out`.
pub fn run(file: Option<&Path>, out: &mut dyn Write) -> Result<Outcome, DemoError> {
    let dir = tempfile::Builder::new().prefix("voxgate-demo-").tempdir()?.keep();
    let wav = match file {
        Some(p) => p.to_path_buf(),
        None => {
            let p = dir.join("demo-input.wav");
            std::fs::write(&p, DEMO_WAV)?;
            p
        }
    };
    let info = crate::audio::probe_wav(&wav)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("ws://{}/", listener.local_addr()?);
        let stop_server = CancellationToken::new();
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
        let server = tokio::spawn(serve::serve(listener, Some(dir.clone()), stop_server.clone(), Some(done_tx), None));
        let mut config = Config::default();
        config.audio.source = SourceSpec::File(wav.clone());
        config.audio.file_pacing = FilePacing::Fast;
        config.session.url = url.clone();
        config.control.socket = Default::default();
        // As fast as it goes: chimes would be a burst of noise, and most demo machines have no speaker.
        config.playback.device = "none".into();
        let shown = file.map(|p| p.display().to_string()).unwrap_or_else(|| "the bundled recording".into());
        writeln!(
            out,
            "voxgate demo: {shown} ({:.1} s) through the whole pipeline, as fast as it goes, to a reference server at {url}\n",
            info.duration_ms() as f64 / 1000.0
        )?;
        let (events_tx, mut events_rx) = broadcast::channel(crate::daemon::EVENTS_QUEUE);
        let started = Instant::now();
        let summary = crate::daemon::run_with_events(config, CancellationToken::new(), events_tx).await?;
        let mut events = Vec::new();
        loop {
            match events_rx.try_recv() {
                Ok(e) => {
                    print_event(out, &e)?;
                    events.push(e);
                }
                Err(broadcast::error::TryRecvError::Lagged(n)) => writeln!(out, "           ({n} events not shown)")?,
                Err(_) => break,
            }
        }
        stop_server.cancel();
        let _ = server.await;
        let mut records = Vec::new();
        while let Ok(r) = done_rx.try_recv() {
            records.push(r);
        }
        writeln!(
            out,
            "\n{:.1} s of audio in {:.0} ms: {} wake words, {} sessions, {} frames sent, {} dropped",
            summary.audio_ms as f64 / 1000.0,
            started.elapsed().as_secs_f64() * 1000.0,
            summary.detector.map(|d| d.detections).unwrap_or(0),
            summary.sessions.sessions,
            summary.sessions.frames_sent,
            summary.sessions.frames_dropped
        )?;
        writeln!(out, "the server recorded each session to {} (<session>.wav and <session>.json)", dir.display())?;
        Ok(Outcome { events, records, record_dir: dir.clone() })
    })
}

fn print_event(out: &mut dyn Write, e: &Event) -> std::io::Result<()> {
    let short = |s: &str| s.chars().take(8).collect::<String>();
    match e {
        Event::Wake { wakeword, score, t_ms, acted_on } => writeln!(
            out,
            "{:>7.2} s  wake word {wakeword} (score {score:.2}){}",
            *t_ms as f64 / 1000.0,
            if *acted_on { "" } else { ", caused by what was playing: not acted on" }
        ),
        Event::SessionStart { session, trigger, preroll_ms, .. } => {
            let trigger = serde_json::to_value(trigger).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
            writeln!(out, "           session {} starts ({trigger}, with {preroll_ms} ms of audio from before the wake word)", short(session))
        }
        Event::ServerMessage { message, .. } => writeln!(
            out,
            "           server: {} {}",
            message.get("type").and_then(|t| t.as_str()).unwrap_or("message"),
            message.get("text").and_then(|t| t.as_str()).unwrap_or("")
        ),
        Event::SessionEnd(s) => writeln!(
            out,
            "           session {} ends: {}{}, after {} ms; {} frames sent, {} dropped",
            short(&s.session),
            s.reason.as_str(),
            s.detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default(),
            s.duration_ms,
            s.frames_sent,
            s.frames_dropped
        ),
        Event::PlaybackStart { what, duration_ms, .. } => writeln!(out, "           playing {what} ({duration_ms} ms)"),
        Event::PlaybackEnd { .. } | Event::State { .. } | Event::Lagged { .. } => Ok(()),
        Event::Error { message } => writeln!(out, "           error: {message}"),
    }
}
