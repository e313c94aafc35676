//! `[metrics]`: a running daemon scraped over HTTP and its textfile read, both parsed by a real OpenMetrics
//! parser (Python's prometheus_client, from PyPI: `make test` installs it in a venv and names its Python in
//! `VOXGATE_TEST_PYTHON`).

use std::io::{Read, Write};
use std::collections::HashMap;

use serde_json::json;

use crate::support::{TestDaemon, config_text, fixtures, is, labels, read_wav, serve_child};

/// Each sample of an OpenMetrics text, as `name{label="value",…}` → value, read by prometheus_client's parser
/// (which refuses what is not valid OpenMetrics).
fn parsed(text: &str) -> HashMap<String, f64> {
    let python = std::env::var("VOXGATE_TEST_PYTHON").expect("VOXGATE_TEST_PYTHON: a Python with prometheus_client (make test)");
    let script = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        out[s.name + ("{" + labels + "}" if labels else "")] = s.value
print(json.dumps(out))
"#;
    let mut child = std::process::Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the parser refused it: {}\n{text}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// One HTTP GET: the status code and the body.
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    write!(tcp, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.split(' ').nth(1).unwrap().parse().unwrap(), body.to_string())
}

/// A daemon hears a wake word and streams a session; its metrics, scraped over HTTP and written to the
/// textfile, count it: frames, the wake word by word and its score, the session by reason and its length, the
/// frames sent, the detection → first audio and frame latency histograms, the state.
#[test]
#[ignore = "needs Python's prometheus_client: make test"]
fn metrics_scrape_and_textfile_parse_and_count_a_session() {
    let server = serve_child();
    let dir = tempfile::tempdir().unwrap();
    let textfile = dir.path().join("voxgate.prom");
    let config = format!(
        "{}\n[metrics]\nlisten = \"127.0.0.1:0\"\ntextfile = \"{}\"\ntextfile_interval_ms = 1000\n",
        config_text(&server.url, "voxgate=debug").replace("mode = \"manual\"", "mode = \"wakeword\""),
        textfile.display()
    );
    let d = TestDaemon::spawn(&config, true, &[]);
    let line = d.logged(0, |l| l.contains("metrics at http://"));
    let addr = line.split("http://").nth(1).unwrap().split('/').next().unwrap().to_string();
    let mut events = d.connect();
    assert_eq!(events.call(json!({"cmd": "subscribe"}))["ok"], true);

    // A wake word and its command from a fixture, then quiet noise: one session, ended by silence.
    let file = "stream-en-us_m1.wav";
    let (_, pcm) = read_wav(&fixtures().join(file));
    let wake = labels().into_iter().find(|l| l.file == file && l.kind == "wake").unwrap();
    d.feeder.as_ref().unwrap().play(&pcm[(wake.start_ms as usize - 300) * 16..(wake.end_ms as usize + 2500) * 16]);
    let end = events.event(is("session_end"));
    events.event(|e| e["event"] == "state" && e["state"] == "listening");

    let (code, text) = get(&addr, "/metrics");
    assert_eq!(code, 200, "{text}");
    let m = parsed(&text);
    let sent = end["frames_sent"].as_f64().unwrap();
    let reason = end["reason"].as_str().unwrap();
    for (name, want) in [
        ("voxgate_wake_detections_total{wakeword=\"jarvis\"}", 1.0),
        (&*format!("voxgate_sessions_total{{reason=\"{reason}\"}}"), 1.0),
        ("voxgate_session_duration_seconds_count", 1.0),
        ("voxgate_wake_score_count", 1.0),
        ("voxgate_first_audio_seconds_count", 1.0),
        ("voxgate_frames_sent_total", sent),
        ("voxgate_audio_bytes_sent_total", sent * 640.0),
        ("voxgate_frames_dropped_total", 0.0),
        ("voxgate_wake_suppressed_total", 0.0),
        ("voxgate_state{state=\"listening\"}", 1.0),
        ("voxgate_state{state=\"streaming\"}", 0.0),
    ] {
        assert_eq!(m.get(name), Some(&want), "{name} in\n{text}");
    }
    assert!(m["voxgate_frames_captured_total"] >= sent, "{text}");
    // Live frames only (not the pre-roll), each taken within a second.
    let live = m["voxgate_frame_queue_latency_seconds_count"];
    assert!(live > 0.0 && live < sent && m["voxgate_frame_queue_latency_seconds_bucket{le=\"1.0\"}"] == live, "{text}");
    assert!(m["voxgate_first_audio_seconds_sum"] > 0.0 && m["voxgate_first_audio_seconds_sum"] < 5.0, "{text}");
    assert_eq!(get(&addr, "/").0, 404);

    // The textfile: written again within a second, the same metrics.
    let from = d.log().len();
    d.logged(from, |l| l.contains("metrics written to"));
    let file = parsed(&std::fs::read_to_string(&textfile).unwrap());
    assert_eq!(file.get("voxgate_frames_sent_total"), Some(&sent));
    assert_eq!(file.get(&*format!("voxgate_sessions_total{{reason=\"{reason}\"}}")), Some(&1.0));
    let mode = std::fs::metadata(&textfile).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777, 0o644);
}
