//! `session.protocol = "homeassistant"` against a real Home Assistant core (2024.3.3 from PyPI), started,
//! onboarded and driven by tests/interop/homeassistant/harness.py. Its probe integration records the exact
//! bytes each pipeline run read from our stream and answers with the transcript "probe run N".
//!
//! Needs `make interop`, which installs Home Assistant into a virtual environment, sets VOXGATE_HA_PYTHON and
//! runs these ignored tests.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Stdio};

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use voxgate::config::{Config, FilePacing, Protocol, SourceSpec};
use voxgate::session::{EndReason, Event, SessionSummary};

use crate::support::{ChildGuard, FakeMic, PATIENCE, TestDaemon, fixtures, is, labels, read_wav};

/// A running Home Assistant core, stopped when dropped.
struct Hass {
    _child: ChildGuard,
    commands: ChildStdin,
    answers: std::io::Lines<BufReader<std::process::ChildStdout>>,
    url: String,
    token: String,
    records: PathBuf,
    log: PathBuf,
    version: String,
    /// The id of the pipeline the harness made preferred ("voxgate test").
    pipeline: String,
    _dir: tempfile::TempDir,
}

impl Hass {
    fn start() -> Hass {
        let python = std::env::var_os("VOXGATE_HA_PYTHON").expect("VOXGATE_HA_PYTHON: run `make interop`");
        let harness = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/homeassistant/harness.py");
        let dir = tempfile::tempdir().unwrap();
        let mut child = ChildGuard(
            std::process::Command::new(python).arg(harness).arg(dir.path()).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap(),
        );
        let commands = child.0.stdin.take().unwrap();
        let mut answers = BufReader::new(child.0.stdout.take().unwrap()).lines();
        let ready: Value = serde_json::from_str(&answers.next().expect("the harness's ready line").unwrap()).unwrap();
        let text = |k: &str| ready[k].as_str().unwrap().to_string();
        Hass {
            url: text("url"),
            token: text("token"),
            records: text("records").into(),
            log: text("log").into(),
            version: text("version"),
            pipeline: text("pipeline"),
            _child: child,
            commands,
            answers,
            _dir: dir,
        }
    }

    /// `stop`, `kill` or `start`, answered once done.
    fn command(&mut self, cmd: &str) {
        writeln!(self.commands, "{cmd}").unwrap();
        let answer = self.answers.next().expect("an answer").unwrap();
        assert!(answer == "stopped" || answer == "ready", "{cmd}: {answer}");
    }

    /// What run `n` of the pipeline read from our stream.
    fn recorded(&self, n: &str) -> Vec<u8> {
        std::fs::read(self.records.join(format!("run-{n}.pcm"))).unwrap()
    }

    /// Home Assistant's own log.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A token file and a daemon configuration streaming stdin to this core in manual mode.
    fn daemon_config(&self, dir: &Path, extra: &str) -> String {
        let token = dir.join("token");
        std::fs::write(&token, format!("{}\n", self.token)).unwrap();
        format!(
            "[audio]\nsource = \"stdin\"\n\n[wake]\nmode = \"manual\"\n\n[session]\nurl = \"{}\"\nprotocol = \"homeassistant\"\ntoken_file = \"{}\"\nno_speech_ms = 60000\nmax_ms = 60000\ndrain_timeout_ms = 10000\nconnect_timeout_ms = 10000\n{extra}\n[log]\nformat = \"text\"\n",
            self.url,
            token.display()
        )
    }
}

/// Where `needle` (s16le bytes) lies in `source` (samples), bit for bit: its first sample's index.
fn stretch_of(source: &[i16], needle: &[u8]) -> Option<usize> {
    let needle: Vec<i16> = needle.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
    if needle.is_empty() || needle.len() > source.len() {
        return None;
    }
    source.windows(needle.len()).position(|w| w == needle.as_slice())
}

fn pipeline_events<'a>(events: &'a [Event], session: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::ServerMessage { session: s, message } if s == session => Some(message),
            _ => None,
        })
        .collect()
}

fn kinds(events: &[&Value]) -> Vec<String> {
    events.iter().map(|e| e["type"].as_str().unwrap_or("?").to_string()).collect()
}

/// The whole pipeline from a file with two wake words and five decoys, at real time (Home Assistant ignores a
/// second wake-up of the same phrase within 2 s): one run per wake word, each reading a stretch of the source
/// bit for bit that begins before the wake word, with the transcript, the answer and the end reaching the
/// events, and nothing sent after the run ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real Home Assistant core from PyPI: `make interop` installs it and runs this"]
async fn one_pipeline_run_per_wake_word_with_the_preroll_bit_for_bit() {
    let hass = tokio::task::spawn_blocking(Hass::start).await.unwrap();
    let file = "stream-en-us_m1.wav";
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{}\n", hass.token)).unwrap();
    let mut config = Config::default();
    config.audio.source = SourceSpec::File(fixtures().join(file));
    config.audio.file_pacing = FilePacing::Realtime;
    config.session.url = hass.url.clone();
    config.session.protocol = Protocol::Homeassistant;
    config.session.token_file = token;
    config.session.drain_timeout_ms = 10_000;
    config.session.connect_timeout_ms = 10_000;
    config.control.socket = Default::default();
    let (tx, mut rx) = tokio::sync::broadcast::channel(1 << 14);
    let summary = voxgate::daemon::run_with_events(config, CancellationToken::new(), tx).await.unwrap();
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    let ends: Vec<SessionSummary> = events.iter().filter_map(|e| if let Event::SessionEnd(s) = e { Some(s.clone()) } else { None }).collect();
    assert_eq!(summary.sessions.sessions, 2, "{ends:?}");
    let (_, source) = read_wav(&fixtures().join(file));
    let wakes: Vec<_> = labels().into_iter().filter(|l| l.file == file && l.kind == "wake").collect();
    assert_eq!(wakes.len(), 2);
    for (end, wake) in ends.iter().zip(&wakes) {
        assert!(matches!(end.reason, EndReason::Silence | EndReason::Server), "{end:?}");
        assert_eq!((end.frames_dropped, end.detail.as_deref()), (0, None), "{end:?}");
        let run = pipeline_events(&events, &end.session);
        let kinds = kinds(&run);
        for want in ["run-start", "stt-start", "stt-vad-start", "stt-end", "intent-end", "tts-end", "run-end"] {
            assert!(kinds.iter().any(|k| k == want), "no {want} in {kinds:?}");
        }
        assert_eq!(kinds.last().map(String::as_str), Some("run-end"), "{kinds:?}");
        let stt_end = run.iter().find(|e| e["type"] == "stt-end").unwrap();
        let heard = stt_end["data"]["stt_output"]["text"].as_str().unwrap();
        let n = heard.strip_prefix("probe run ").expect(heard);
        let intent_end = run.iter().find(|e| e["type"] == "intent-end").unwrap();
        assert!(intent_end["data"]["intent_output"]["response"]["speech"]["plain"]["speech"].as_str().is_some_and(|s| !s.is_empty()), "{intent_end}");
        let tts_end = run.iter().find(|e| e["type"] == "tts-end").unwrap();
        assert!(tts_end["data"]["tts_output"]["url"].as_str().is_some_and(|u| u.starts_with("/api/tts_proxy/")), "{tts_end}");
        // What the pipeline read: a stretch of the source, from before the wake word to after it.
        let bytes = hass.recorded(n);
        let at = stretch_of(&source, &bytes).unwrap_or_else(|| panic!("run {n}: {} bytes that are not a stretch of the source", bytes.len()));
        let (from_ms, to_ms) = (at as u64 / 16, (at + bytes.len() / 2) as u64 / 16);
        assert!(from_ms < wake.start_ms && to_ms > wake.end_ms + 300, "run {n} read {from_ms}..{to_ms} ms; the wake word is {}..{} ms", wake.start_ms, wake.end_ms);
        assert!(end.frames_sent as usize * 640 >= bytes.len(), "{end:?}: sent less than was read ({} bytes)", bytes.len());
    }
    let log = hass.log();
    assert!(!log.contains("non-existing handler"), "audio was sent after a run ended:\n{log}");
}

/// Manual sessions on stdin: the answer and the link in `status`; Home Assistant stopped between sessions and
/// killed during one (the daemon keeps listening, backs off, and the next session works once it is back).
#[test]
#[ignore = "needs a real Home Assistant core from PyPI: `make interop` installs it and runs this"]
fn status_and_home_assistant_going_away_and_coming_back() {
    let mut hass = Hass::start();
    let dir = tempfile::tempdir().unwrap();
    let config = hass.daemon_config(dir.path(), "").replace("format = \"text\"", "format = \"text\"\nlevel = \"info,voxgate::session=debug\"");
    let d = TestDaemon::spawn(&config, true, &[]);
    let mut events = d.connect();
    assert_eq!(events.call(json!({"cmd": "subscribe"}))["ok"], true);
    let mut ctl = d.connect();
    // A run read what we sent until `stop`; its end message let the transcript and the answer come.
    let session = |ctl: &mut crate::support::Raw, events: &mut crate::support::Raw| {
        let reply = ctl.call(json!({"cmd": "trigger"}));
        assert_eq!(reply["ok"], true, "{reply}");
        let id = reply["session"].as_str().unwrap().to_string();
        events.event(|e| e["event"] == "server_message" && e["session"] == id.as_str() && e["message"]["type"] == "stt-start");
        assert_eq!(ctl.call(json!({"cmd": "stop"}))["ok"], true);
        let heard = events.event(|e| e["event"] == "server_message" && e["message"]["type"] == "stt-end");
        let end = events.event(is("session_end"));
        assert_eq!((end["session"].as_str(), end["reason"].as_str()), (Some(id.as_str()), Some("stopped")), "{end}");
        heard["message"]["data"]["stt_output"]["text"].as_str().unwrap().to_string()
    };
    let heard = session(&mut ctl, &mut events);
    let status = d.status();
    let ha = &status["homeassistant"];
    assert_eq!(ha["version"].as_str(), Some(hass.version.as_str()), "{status}");
    assert_eq!((ha["transcript"].as_str(), ha["running"].as_bool()), (Some(heard.as_str()), Some(false)), "{status}");
    assert!(ha["answer"].as_str().is_some_and(|a| !a.is_empty()), "{status}");
    let out = crate::support::voxgate().arg("status").arg("--socket").arg(&d.socket).output().unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains(&format!("Home Assistant {}", hass.version)) && printed.contains(&heard), "{printed}");

    // Not running at a wake word: a clear error, the daemon keeps listening, and works once it is back.
    hass.command("stop");
    let reply = ctl.call(json!({"cmd": "trigger"}));
    assert_eq!(reply["ok"], true);
    let end = events.event(is("session_end"));
    assert_eq!(end["reason"], "error", "{end}");
    assert!(end["detail"].as_str().unwrap().contains("cannot connect"), "{end}");
    events.event(|e| e["event"] == "state" && e["state"] == "backoff");
    hass.command("start");
    session(&mut ctl, &mut events);

    // The connection kept open is pinged, and opened again once Home Assistant is back.
    d.logged(0, |l| l.contains("connected to Home Assistant again"));
    d.logged(0, |l| l.contains("Home Assistant answered ping"));

    // Killed mid-session: the session fails, and the next one works once it is back.
    let reply = ctl.call(json!({"cmd": "trigger"}));
    let id = reply["session"].as_str().unwrap().to_string();
    events.event(|e| e["event"] == "server_message" && e["session"] == id.as_str() && e["message"]["type"] == "stt-start");
    hass.command("kill");
    let end = events.event(is("session_end"));
    assert_eq!((end["session"].as_str(), end["reason"].as_str()), (Some(id.as_str()), Some("error")), "{end}");
    hass.command("start");
    session(&mut ctl, &mut events);
    assert!(!hass.log().contains("non-existing handler"));
    // Sessions start on the connection kept open for them when one is ready (the first three had one).
    d.logged(0, |l| l.contains("on the connection opened ahead"));
}

/// A pipeline named by its name; a refused token and an unknown pipeline: each session fails with an error
/// that says which, and the daemon backs off instead of retrying at once.
#[test]
#[ignore = "needs a real Home Assistant core from PyPI: `make interop` installs it and runs this"]
fn pipelines_by_name_and_a_refused_token_and_an_unknown_pipeline() {
    let hass = Hass::start();
    let dir = tempfile::tempdir().unwrap();
    let config = hass.daemon_config(dir.path(), "\n[homeassistant]\npipeline = \"VOXGATE Test\"\nend_stage = \"stt\"\n");
    let d = TestDaemon::spawn(&config, true, &[]);
    let mut events = d.connect();
    assert_eq!(events.call(json!({"cmd": "subscribe"}))["ok"], true);
    assert_eq!(d.connect().call(json!({"cmd": "trigger"}))["ok"], true);
    // `stop` drains a session that streams; one still starting is abandoned, with no transcript to wait for.
    let (mut start, mut streaming) = (None, false);
    while start.is_none() || !streaming {
        let e = events.recv();
        streaming |= e["event"] == "state" && e["state"] == "streaming";
        if e["event"] == "server_message" && e["message"]["type"] == "run-start" {
            start = Some(e);
        }
    }
    let start = start.unwrap();
    assert_eq!(start["message"]["data"]["pipeline"].as_str(), Some(hass.pipeline.as_str()), "{start}");
    assert_eq!(d.connect().call(json!({"cmd": "stop"}))["ok"], true);
    // end_stage = "stt": the run ends at the transcript.
    let mut kinds = Vec::new();
    while kinds.last().map(String::as_str) != Some("run-end") {
        let e = events.event(|e| e["event"] == "server_message");
        kinds.push(e["message"]["type"].as_str().unwrap().to_string());
    }
    assert!(kinds.contains(&"stt-end".to_string()) && !kinds.iter().any(|k| k.starts_with("intent")), "{kinds:?}");
    drop(d);

    let config = hass.daemon_config(dir.path(), "\n[homeassistant]\npipeline = \"no-such-pipeline\"\n");
    let d = TestDaemon::spawn(&config, true, &[]);
    let mut events = d.connect();
    assert_eq!(events.call(json!({"cmd": "subscribe"}))["ok"], true);
    assert_eq!(d.connect().call(json!({"cmd": "trigger"}))["ok"], true);
    let end = events.event(is("session_end"));
    assert_eq!((end["reason"].as_str(), end["detail"].as_str()), (Some("error"), Some("pipeline-not-found")), "{end}");
    assert!(d.status()["homeassistant"]["error"].as_str().unwrap().starts_with("pipeline-not-found"));
    drop(d);

    let config = hass.daemon_config(dir.path(), "");
    let token = dir.path().join("token");
    std::fs::write(&token, "not-a-token\n").unwrap();
    let d = TestDaemon::spawn(&config, true, &[]);
    let mut events = d.connect();
    assert_eq!(events.call(json!({"cmd": "subscribe"}))["ok"], true);
    assert_eq!(d.connect().call(json!({"cmd": "trigger"}))["ok"], true);
    let end = events.event(is("session_end"));
    let detail = end["detail"].as_str().unwrap();
    assert!(end["reason"] == "error" && detail.contains("refused the access token") && detail.contains(token.to_str().unwrap()), "{end}");
    events.event(|e| e["event"] == "state" && e["state"] == "backoff");
    let status = d.status();
    assert!(status["homeassistant"]["link_error"].as_str().is_some_and(|e| e.contains("refused the access token")), "{status}");
    // Logged once, not once per attempt.
    assert!(d.log().matches("cannot open a connection to Home Assistant").count() <= 1, "{}", d.log());
    assert!(!d.log().contains("not-a-token"), "the token was logged");
}

/// Live capture through the fake ALSA microphone to Home Assistant: the wake word's run reads the captured
/// audio; then SIGTERM during a run sends the end of audio (the transcript still comes) and exits 0.
#[test]
#[ignore = "needs a real Home Assistant core from PyPI: `make interop` installs it and runs this"]
fn live_capture_to_home_assistant_and_sigterm_mid_run() {
    let hass = Hass::start();
    let file = "stream-en-us_m1.wav";
    let (_, source) = read_wav(&fixtures().join(file));
    let chunk = 4096;
    let mut data = vec![0u8; chunk * 4];
    data.extend(source.iter().flat_map(|s| s.to_le_bytes()));
    let mic = FakeMic::new(data, chunk, std::time::Duration::from_millis(128));
    let dir = tempfile::tempdir().unwrap();
    let config = hass.daemon_config(dir.path(), "").replace("source = \"stdin\"", "source = \"alsa:fakemic\"").replace("mode = \"manual\"", "mode = \"wakeword\"");
    let alsa = mic.alsa_config().display().to_string();
    let mut d = TestDaemon::spawn(&config, false, &[("ALSA_CONFIG_PATH", alsa.as_str())]);
    let line = d.logged(0, |l| l.contains("session_end"));
    let ended = line.lines().last().unwrap();
    assert!(line.contains("ha_event=\"stt-end\"") && !ended.contains("reason=\"error\""), "{line}");
    let heard = line.lines().find(|l| l.contains("transcript=")).unwrap();
    let n = heard.split("transcript=\"probe run ").nth(1).unwrap().split('"').next().unwrap();
    let bytes = hass.recorded(n);
    if ended.contains("frames_dropped=0") {
        // Capture may begin mid-frame of the source: compare from the first sound on.
        let samples: Vec<i16> = bytes.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
        let first = samples.iter().position(|s| *s != 0).expect("sound");
        let sound: Vec<u8> = samples[first..].iter().flat_map(|s| s.to_le_bytes()).collect();
        assert!(stretch_of(&source, &sound).is_some(), "run {n}: the captured audio is not a stretch of the source");
    }
    // Mid-run: SIGTERM ends the audio with the end message; Home Assistant still transcribes it.
    let from = d.log().len();
    let reply = d.connect().call(json!({"cmd": "trigger"}));
    assert_eq!(reply["ok"], true, "{reply}");
    d.logged(from, |l| l.contains("ha_event=\"stt-start\""));
    let from = d.log().len();
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(PATIENCE).code(), Some(0), "{}", d.log());
    let after = d.log()[from..].to_string();
    assert!(after.contains("ha_event=\"stt-end\"") && after.contains("reason=\"shutdown\""), "{after}");
    assert!(!hass.log().contains("non-existing handler"));
}

/// The spoken answer: at `tts-end` its URL is fetched from Home Assistant, decoded (MP3) and played through the
/// device, after the end chime; a URL that answers 404 gives an `error` event naming it and the error chime.
#[test]
#[ignore = "needs a real Home Assistant core from PyPI: `make interop` installs it and runs this"]
fn the_answer_is_fetched_decoded_and_played() {
    use crate::support::{FakeSpeaker, find_samples};
    let hass = Hass::start();
    let speaker = FakeSpeaker::new(None);
    let alsa = speaker.alsa_config(None).display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let config = hass.daemon_config(dir.path(), "\n[playback]\ndevice = \"alsa:fakespk\"\n");
    let d = TestDaemon::spawn(&config, true, &[("ALSA_CONFIG_PATH", alsa.as_str())]);
    let mut events = d.connect();
    assert_eq!(events.call(json!({"cmd": "subscribe"}))["ok"], true);
    let mut ctl = d.connect();
    assert_eq!(ctl.call(json!({"cmd": "trigger"}))["ok"], true);
    events.event(|e| e["event"] == "server_message" && e["message"]["type"] == "stt-start");
    assert_eq!(ctl.call(json!({"cmd": "stop"}))["ok"], true);
    let tts = events.event(|e| e["event"] == "server_message" && e["message"]["type"] == "tts-end");
    let path = tts["message"]["data"]["tts_output"]["url"].as_str().unwrap().to_string();
    let answer = events.event(|e| e["event"] == "playback_start" && e["kind"] == "answer");
    let what = answer["what"].as_str().unwrap();
    assert_eq!(what, format!("{}{path}", hass.url.replace("ws://", "http://").replace("/api/websocket", "")), "{answer}");
    let ms = answer["duration_ms"].as_u64().unwrap();
    assert!(ms > 300, "{answer}");
    let end = events.event(|e| e["event"] == "playback_end" && e["what"] == what);
    assert_eq!((end["reason"].as_str(), end["played_ms"].as_u64()), (Some("done"), Some(ms)), "{end}");
    // That much audio, not silence, reached the device (the end chime, 180 ms, is there too).
    let loud = |b: &[u8]| b.chunks_exact(2).filter(|s| i16::from_le_bytes([s[0], s[1]]).unsigned_abs() > 300).count() as u64;
    speaker.wait_until(|b| loud(b) > ms * 16 / 4 + 2880);

    // A URL that is not there.
    let missing = format!("{}/api/tts_proxy/no-such-answer.mp3", hass.url.replace("ws://", "http://").replace("/api/websocket", ""));
    let reply = ctl.call(json!({"cmd": "say", "what": missing}));
    let error = reply["error"].as_str().unwrap_or_default();
    assert!(reply["ok"] == false && error.contains(&missing) && error.contains("404"), "{reply}");
    let e = events.event(is("error"));
    assert!(e["message"].as_str().unwrap().contains(&missing), "{e}");
    let errchime: Vec<i16> = voxgate::playback::chimes::error().samples.to_vec();
    speaker.wait_until(|b| find_samples(b, &errchime).is_some());
}
