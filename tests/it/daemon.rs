//! How the daemon ends: a dead thread or task is an error systemd restarts from, never a quiet exit 0; a second
//! signal exits at once; `voxgate record` finishes its file when interrupted.

use std::io::Write;
use std::net::TcpListener;
use std::process::Stdio;
use std::time::Duration;

use crate::support::{PATIENCE, TestDaemon, config_text, noise, serve_child, voxgate, write_wav};

/// A fault that is asked for with `VOXGATE_FAULT` (debug builds; see `voxgate::fault`).
fn with_fault(fault: &str, url: &str, feed: bool) -> TestDaemon {
    TestDaemon::launch(&config_text(url, "info"), feed, &[("VOXGATE_FAULT", fault)], false)
}

#[test]
fn a_dead_detector_thread_fails_the_run() {
    let server = serve_child();
    let mut d = with_fault(voxgate::fault::DETECTOR_PANIC, &server.url, true);
    let status = d.wait(PATIENCE);
    assert_eq!(status.code(), Some(1), "{}", d.log());
    let log = d.log();
    assert!(log.contains("the detector thread panicked: fault injected"), "{log}");
    assert!(!log.contains("end of source"), "{log}");
}

#[test]
fn a_dead_detector_thread_cuts_no_file_short_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("a.wav");
    write_wav(&wav, 16000, &noise(16000, 3));
    let out = voxgate()
        .arg("run")
        .env("VOXGATE_AUDIO__SOURCE", format!("file:{}", wav.display()))
        .env("VOXGATE_AUDIO__FILE_PACING", "fast")
        .env("VOXGATE_FAULT", voxgate::fault::DETECTOR_PANIC)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("the detector thread panicked"), "{err}");
}

#[test]
fn a_dead_supervisor_fails_the_run() {
    let server = serve_child();
    let mut d = TestDaemon::spawn(&config_text(&server.url, "info"), true, &[("VOXGATE_FAULT", voxgate::fault::SUPERVISOR_PANIC)]);
    // Its first session request is what it dies on.
    let (code, _) = d.cli(&["trigger"]);
    assert_eq!(code, 0);
    let status = d.wait(PATIENCE);
    assert_eq!(status.code(), Some(1), "{}", d.log());
    assert!(d.log().contains("the supervisor task panicked: fault injected"), "{}", d.log());
}

/// A server on 127.0.0.1 whose thread does `serve` with its listener; its `ws://` URL.
fn loopback_server(serve: fn(TcpListener)) -> (String, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    (url, std::thread::spawn(move || serve(listener)))
}

/// A WebSocket server that takes the session and then never answers: the drain after our `end` lasts as long
/// as `session.drain_timeout_ms` allows.
fn silent_server() -> (String, std::thread::JoinHandle<()>) {
    loopback_server(|listener| {
        let Ok((tcp, _)) = listener.accept() else { return };
        let Ok(mut ws) = tokio_tungstenite::tungstenite::accept(tcp) else { return };
        while ws.read().is_ok() {}
    })
}

#[test]
fn a_second_signal_exits_at_once() {
    let (url, _server) = silent_server();
    let mut d = TestDaemon::spawn(&config_text(&url, "info"), true, &[("VOXGATE_SESSION__DRAIN_TIMEOUT_MS", "60000")]);
    let mut sub = d.connect();
    assert_eq!(sub.call(serde_json::json!({"cmd": "subscribe"}))["ok"], true);
    assert_eq!(d.cli(&["trigger"]).0, 0);
    assert_eq!(sub.event(|e| e["event"] == "state" && e["state"] == "streaming")["state"], "streaming");
    // The first signal ends the session, which now waits up to a minute for the server's final reply.
    d.signal(libc::SIGTERM);
    assert_eq!(sub.event(|e| e["event"] == "state" && e["state"] == "draining")["state"], "draining");
    d.notified(|m| m.contains("STOPPING=1"));
    // The second does not wait for it.
    d.signal(libc::SIGINT);
    let status = d.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(128 + libc::SIGINT), "{}", d.log());
    assert!(d.log().contains("second signal"), "{}", d.log());
}

#[test]
fn record_interrupted_finishes_its_file() {
    use inotify::{Inotify, WatchMask};
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rec.wav");
    let mut child = crate::support::ChildGuard(
        voxgate()
            .args(["record"])
            .arg(&out)
            .env("VOXGATE_AUDIO__SOURCE", "stdin")
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Two seconds of audio at once; stdin stays open, as a microphone's pipe would.
    let audio: Vec<u8> = noise(32000, 5).iter().flat_map(|s| s.to_le_bytes()).collect();
    let mut stdin = child.0.stdin.take().unwrap();
    let mut inotify = Inotify::init().unwrap();
    inotify.watches().add(dir.path(), WatchMask::MODIFY | WatchMask::CREATE).unwrap();
    stdin.write_all(&audio).unwrap();
    // Wait until audio has reached the file (beyond its 44-byte header), told by the kernel, not by a timer.
    let mut buf = [0u8; 4096];
    while std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0) <= 44 {
        inotify.read_events_blocking(&mut buf).unwrap();
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGINT) };
    let status = child.0.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{status:?}: {err}");
    drop(stdin);
    let reader = hound::WavReader::open(&out).unwrap();
    let samples = reader.len() as u64;
    let file_len = std::fs::metadata(&out).unwrap().len();
    assert!(samples > 0, "{err}");
    assert_eq!(44 + samples * 2, file_len, "the header counts every sample in the file");
    assert!(err.contains(&format!("recorded {} frames", samples / 320)), "{err}");
}

/// The bearer token reaches no log line at any level: at trace, the WebSocket library logs each handshake
/// request whole, headers included, and the reference server the request it received.
#[test]
fn the_token_is_never_logged_even_at_trace() {
    let server = serve_child();
    let token = "s3cr3t-token-never-logged";
    let d0 = tempfile::tempdir().unwrap();
    let token_file = d0.path().join("token");
    std::fs::write(&token_file, token).unwrap();
    let d = TestDaemon::spawn(&config_text(&server.url, "trace"), true, &[("VOXGATE_SESSION__TOKEN_FILE", token_file.to_str().unwrap())]);
    assert_eq!(d.cli(&["trigger"]).0, 0);
    d.logged(0, |l| l.contains("session_start"));
    assert_eq!(d.cli(&["stop"]).0, 0);
    d.logged(0, |l| l.contains("session_end"));
    let log = d.log();
    // The handshake was logged at trace (so a header in it would show), and the token is not in it.
    assert!(log.lines().any(|l| l.contains("TRACE") && l.contains("tungstenite")), "no trace line from the WebSocket library");
    assert!(!log.contains(token), "the token is in the log");
}

/// A server that takes the TCP connection and never answers the WebSocket handshake.
fn mute_server() -> (String, std::thread::JoinHandle<()>) {
    loopback_server(|listener| {
        let held: Vec<_> = listener.incoming().collect();
        drop(held);
    })
}

/// `stop` while the session is still connecting ends it at once, as stopped; SIGTERM then, the daemon.
#[test]
fn stop_and_sigterm_while_connecting_do_not_wait_for_the_connect_timeout() {
    let (url, _server) = mute_server();
    let mut d = TestDaemon::spawn(&config_text(&url, "info"), true, &[("VOXGATE_SESSION__CONNECT_TIMEOUT_MS", "60000")]);
    let mut sub = d.connect();
    assert_eq!(sub.call(serde_json::json!({"cmd": "subscribe"}))["ok"], true);
    assert_eq!(d.cli(&["trigger"]).0, 0);
    sub.event(|e| e["event"] == "state" && e["state"] == "connecting");
    assert_eq!(d.cli(&["stop"]).0, 0);
    let end = sub.event(|e| e["event"] == "session_end");
    assert_eq!(end["reason"], "stopped", "{end}");
    sub.event(|e| e["event"] == "state" && e["state"] == "listening");

    assert_eq!(d.cli(&["trigger"]).0, 0);
    sub.event(|e| e["event"] == "state" && e["state"] == "connecting");
    // The control socket closes on the signal, so the end is read from the log.
    d.signal(libc::SIGTERM);
    assert!(d.wait(PATIENCE).success(), "{}", d.log());
    let log = d.log();
    let ends: Vec<&str> = log.lines().filter(|l| l.contains("event=\"session_end\"")).collect();
    assert!(ends.len() == 2 && ends[1].contains("reason=\"shutdown\""), "{log}");
}

/// SIGTERM while stdin is open but nothing comes on it: shutdown does not wait for the writer.
#[test]
fn sigterm_with_stdin_open_and_silent_exits() {
    let server = serve_child();
    let mut d = TestDaemon::start(&server.url, &[]);
    d.feeder.as_ref().unwrap().paused.store(true, std::sync::atomic::Ordering::Relaxed);
    d.signal(libc::SIGTERM);
    assert!(d.wait(PATIENCE).success(), "{}", d.log());
}
