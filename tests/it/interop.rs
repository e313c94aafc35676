//! The `vosk` protocol against a real Vosk recognizer (Kaldi, the small Korean model from PyPI), through a
//! small server of ours built on the vosk library (tests/interop/vosk_server.py).
//!
//! Needs `make interop`, which installs vosk into a virtual environment, sets VOXGATE_INTEROP_PYTHON and runs
//! this ignored test. Vosk's text on synthetic English speech is meaningless (the model is Korean):
//! the test checks protocol behaviour: a reply to every chunk, a final result after eof, a clean end.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use tokio_util::sync::CancellationToken;
use voxgate::config::{Config, FilePacing, Protocol};
use voxgate::session::{EndReason, Event};

use crate::support::{ChildGuard, fixtures};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real Vosk recognizer from PyPI: `make interop` installs it and runs this"]
async fn vosk_protocol_against_a_real_recognizer() {
    let python = std::env::var_os("VOXGATE_INTEROP_PYTHON").expect("VOXGATE_INTEROP_PYTHON: run `make interop`");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/vosk_server.py");
    let mut server = ChildGuard(std::process::Command::new(python).arg(script).arg("0").stdout(Stdio::piped()).spawn().unwrap());
    let mut lines = BufReader::new(server.0.stdout.take().unwrap()).lines();
    let ready = lines.next().expect("the server's ready line").unwrap();
    let url = ready.strip_prefix("listening on ").expect(&ready).to_string();

    let mut config = Config::default();
    config.audio.source = voxgate::config::SourceSpec::File(fixtures().join("stream-en-us_m1.wav"));
    config.audio.file_pacing = FilePacing::Fast;
    config.session.url = url;
    config.session.protocol = Protocol::Vosk;
    config.control.socket = Default::default();
    // The drain ends with the recognizer's final result; the deadline only has to outlast a slow (busy) machine,
    // or the replies still owed are cut off with the connection.
    config.session.drain_timeout_ms = 60_000;
    let (tx, mut rx) = tokio::sync::broadcast::channel(1 << 16);
    let summary = voxgate::daemon::run_with_events(config, CancellationToken::new(), tx).await.unwrap();
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    assert_eq!(summary.sessions.sessions, 2);
    for end in events.iter().filter_map(|e| if let Event::SessionEnd(s) = e { Some(s) } else { None }) {
        assert_eq!(end.reason, EndReason::Silence, "{end:?}");
        let replies: Vec<&serde_json::Value> = events
            .iter()
            .filter_map(|e| match e {
                Event::ServerMessage { session, message } if *session == end.session => Some(message),
                _ => None,
            })
            .collect();
        // One reply per audio chunk, then the final result after eof.
        assert_eq!(replies.len() as u64, end.frames_sent + 1, "{} replies for {} frames", replies.len(), end.frames_sent);
        let last = replies.last().unwrap();
        assert!(last.get("text").is_some(), "the final reply is a result: {last}");
        assert!(replies[..replies.len() - 1].iter().all(|r| r.get("partial").is_some() || r.get("text").is_some()));
    }
}
