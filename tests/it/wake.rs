//! The wake-word detector on synthetic speech: fixture streams in voices the built-in wake word was not
//! trained on, with confusable phrases and background noise. (Its figures on real voices come from
//! `make wake-bench`.)

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use voxgate::audio::{self, FrameSpec, SystemClock};
use voxgate::config::{AudioConfig, Config, FilePacing, ModelRef};
use voxgate::wake::{Detector, test::scan};

use crate::support::{ChildGuard, FakeMic, Label, fixtures, labels, voxgate};

/// A detection may come this long after the wake word ends.
const MAX_DELAY_MS: u64 = 1500;

fn detections(config: &Config, file: &str) -> Vec<(u64, String, f32)> {
    let mut out = Vec::new();
    scan(config, &fixtures().join(file), &mut |d| out.push((d.t_ms, d.wakeword.clone(), d.score))).unwrap();
    out
}

/// Every wake label has one detection within MAX_DELAY_MS after its end, naming its word (the built-in
/// "jarvis" for "hey jarvis"); a phrase that holds the wake word among others may have one; nothing else.
fn check(file: &str, labels: &[&Label], found: &[(u64, String, f32)]) {
    let wakes: Vec<&&Label> = labels.iter().filter(|l| l.kind == "wake").collect();
    assert!(!wakes.is_empty());
    let mut used = vec![false; found.len()];
    for w in &wakes {
        // The detection comes at the end of the wake word, or, for the built-in model, possibly a little before the end of the label (its trailing silence).
        let hit = found.iter().enumerate().find(|(i, d)| !used[*i] && d.0 + 150 >= w.end_ms && d.0 <= w.end_ms + MAX_DELAY_MS);
        let Some((i, d)) = hit else { panic!("{file}: {:?} ending at {} ms not detected; detections: {found:?}", w.text, w.end_ms) };
        assert!(w.text.replace(' ', "_").ends_with(&d.1), "{file}: {:?} detected as {:?} at {} ms", w.text, d.1, d.0);
        used[i] = true;
    }
    for c in labels.iter().filter(|l| l.kind == "contains") {
        if let Some(i) = (0..found.len()).find(|&i| !used[i] && found[i].0 >= c.start_ms && found[i].0 <= c.end_ms + MAX_DELAY_MS) {
            used[i] = true;
        }
    }
    let extra: Vec<_> = found.iter().zip(&used).filter(|(_, u)| !**u).map(|(d, _)| d).collect();
    assert!(extra.is_empty(), "{file}: false detections {extra:?} (labels: {labels:?})");
}

fn builtin_streams() -> BTreeMap<String, Vec<Label>> {
    let mut by_file: BTreeMap<String, Vec<Label>> = BTreeMap::new();
    for l in labels().into_iter().filter(|l| l.file.starts_with("stream-")) {
        by_file.entry(l.file.clone()).or_default().push(l);
    }
    assert!(by_file.len() >= 6, "only {} streams", by_file.len());
    by_file
}

#[test]
fn builtin_wake_word_hits_every_time_and_never_on_decoys() {
    let config = Config::default();
    let mut ungated = Config::default();
    ungated.wake.gate = false;
    let (mut wakes, mut decoys) = (0, 0);
    for (file, labels) in builtin_streams() {
        let refs: Vec<&Label> = labels.iter().collect();
        let gated = detections(&config, &file);
        check(&file, &refs, &gated);
        // The gate must not change what is detected.
        let plain = detections(&ungated, &file);
        assert_eq!(gated.len(), plain.len(), "{file}: gated {gated:?} vs ungated {plain:?}");
        for (g, p) in gated.iter().zip(&plain) {
            assert!(g.0.abs_diff(p.0) <= 100 && g.1 == p.1, "{file}: gated {g:?} vs ungated {p:?}");
        }
        wakes += labels.iter().filter(|l| l.kind == "wake").count();
        decoys += labels.iter().filter(|l| l.kind == "decoy").count();
    }
    assert!(wakes >= 12 && decoys >= 24, "{wakes} wake words, {decoys} decoys");
}

#[test]
fn two_models_each_name_their_word() {
    let mut config = Config::default();
    // A built-in and a file: two engines with their own settings, side by side.
    config.wake.models = vec![ModelRef::Builtin("jarvis".into()), ModelRef::File(fixtures().join("ok_computer.rpw"))];
    let labels: Vec<Label> = labels().into_iter().filter(|l| l.file == "two-words.wav").collect();
    assert_eq!(labels.len(), 4);
    let refs: Vec<&Label> = labels.iter().collect();
    check("two-words.wav", &refs, &detections(&config, "two-words.wav"));
}

#[test]
fn preroll_starts_before_the_detection_and_holds_the_wake_word_start() {
    let config = Config::default();
    let (file, labels) = builtin_streams().into_iter().next().unwrap();
    let audio = AudioConfig { source: voxgate::config::SourceSpec::File(fixtures().join(&file)), file_pacing: FilePacing::Fast, ..AudioConfig::default() };
    let mut det = Detector::new(&config.wake, FrameSpec::from_config(&audio), config.session.preroll_ms).unwrap();
    let source = audio::start(&audio, SystemClock::shared()).unwrap();
    let mut found = Vec::new();
    for frame in source.frames.iter() {
        found.extend(det.push(frame));
    }
    source.join().unwrap();
    let wakes: Vec<&Label> = labels.iter().filter(|l| l.kind == "wake").collect();
    assert_eq!(found.len(), wakes.len());
    for (d, w) in found.iter().zip(wakes) {
        let frame_ms = audio.frame_ms as u64;
        // All of `preroll_ms`, or all the audio there is before a detection that soon.
        assert_eq!(d.preroll.len() as u64, (config.session.preroll_ms / frame_ms).min(d.seq + 1));
        let seqs: Vec<u64> = d.preroll.iter().map(|f| f.seq).collect();
        assert_eq!(seqs, ((d.seq + 1 - seqs.len() as u64)..=d.seq).collect::<Vec<_>>(), "contiguous, ending at the detection");
        let start_ms = d.preroll[0].seq * frame_ms;
        assert_eq!(start_ms, d.t_ms.saturating_sub(config.session.preroll_ms));
        assert!(start_ms <= w.start_ms, "pre-roll starts at {start_ms} ms, after the wake word's start at {} ms", w.start_ms);
        assert!(d.preroll.windows(2).all(|p| p[0].captured <= p[1].captured), "timestamps kept in order");
    }
}

#[test]
fn live_capture_detects_what_the_file_does() {
    let (file, labels) = builtin_streams().into_iter().next().unwrap();
    let expected = detections(&Config::default(), &file);
    let (_, pcm) = crate::support::read_wav(&fixtures().join(&file));
    let chunk = 4096;
    // A second of silence first: whole frames and whole detector chunks (30 ms), so that the live audio is
    // cut where the file's is and a detection near the threshold is scored the same way.
    let mut data = vec![0u8; 16000 * 2];
    data.extend(pcm.iter().flat_map(|s| s.to_le_bytes()));
    // Enough silence after it for the last detection and the pipe to drain.
    data.extend(vec![0u8; 16000 * 2 * 5]);
    let mic = FakeMic::new(data, chunk, Duration::from_millis(32));
    let done = mic.finished();
    let mut child = ChildGuard(
        voxgate()
            .arg("run")
            .env("ALSA_CONFIG_PATH", mic.alsa_config())
            .env("VOXGATE_AUDIO__SOURCE", "alsa:fakemic")
            .env("VOXGATE_LOG__FORMAT", "json")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.0.stderr.take().unwrap();
    let pid = child.0.id() as i32;
    let stopper = std::thread::spawn(move || {
        let _ = done.recv();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    });
    let mut live = Vec::new();
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if v["fields"]["event"] == "wake" {
            live.push((v["fields"]["t_ms"].as_u64().unwrap(), v["fields"]["wakeword"].as_str().unwrap().to_string()));
        }
    }
    stopper.join().unwrap();
    assert!(child.0.wait().unwrap().success());
    assert_eq!(live.len(), expected.len(), "live {live:?} vs file {expected:?} ({labels:?})");
    // The live stream starts with a second of silence: every detection is shifted by about that much (the
    // detector's moving mean starts on other audio), and all by the same amount.
    let shift = live[0].0 as i64 - expected[0].0 as i64;
    assert!((900..=1100).contains(&shift), "shift {shift}");
    for (l, e) in live.iter().zip(&expected) {
        assert_eq!(l.1, e.1);
        assert!((l.0 as i64 - e.0 as i64 - shift).abs() <= 40, "live {l:?} vs file {e:?}, shift {shift}");
    }
}

#[test]
fn enroll_round_trip_and_bad_samples() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("mine.rpw");
    let train = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wake/train");
    let mut clips: Vec<_> = std::fs::read_dir(&train).unwrap().map(|e| e.unwrap().path()).collect();
    clips.sort();
    assert!(clips.len() >= 6);
    let out = voxgate().args(["enroll", "--name", "my_word", "--out"]).arg(&model).args(&clips).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(text.matches("scores").count(), clips.len(), "{text}");
    let cfg = dir.path().join("v.toml");
    std::fs::write(&cfg, format!("[wake]\nmodels = [{:?}]\n", model.display().to_string())).unwrap();
    let (file, labels) = builtin_streams().into_iter().next().unwrap();
    let out = voxgate().args(["wake-test", "--json", "--config"]).arg(&cfg).arg(fixtures().join(&file)).output().unwrap();
    assert!(out.status.success());
    let found: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for w in labels.iter().filter(|l| l.kind == "wake") {
        assert!(
            found.iter().any(|d| d["wakeword"] == "my_word" && (w.end_ms..=w.end_ms + MAX_DELAY_MS).contains(&d["t_ms"].as_u64().unwrap())),
            "{w:?} not found in {found:?}"
        );
    }
    // It rejects the confusable phrases ("hey siri", "hey there", "harvey, pass me the jar", …; "hey travis",
    // one consonant away, is as close to a template as the wake word itself), and detects each sample it was
    // built from, with the default settings.
    for c in labels.iter().filter(|l| l.kind == "decoy" && l.text != "hey travis") {
        assert!(!found.iter().any(|d| (c.start_ms..=c.end_ms + MAX_DELAY_MS).contains(&d["t_ms"].as_u64().unwrap())), "{c:?} woke it: {found:?}");
    }
    // Leave-one-out: each clip is detected, with the default settings, by a wake word built from the others.
    assert!(text.contains("expected detection rate: 100 %"), "{text}");
    for clip in &clips {
        let (_, pcm) = crate::support::read_wav(clip);
        let padded = dir.path().join("padded.wav");
        let quiet = |n| crate::support::noise(n, 90).into_iter().map(|s| s / 2000).collect::<Vec<i16>>();
        let mut audio = quiet(16000);
        audio.extend(pcm);
        audio.extend(quiet(32000));
        crate::support::write_wav(&padded, 16000, &audio);
        let out = voxgate().args(["wake-test", "--json", "--config"]).arg(&cfg).arg(&padded).output().unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("my_word"), "{} is not detected by the wake word made from it", clip.display());
    }
    // Fewer than three samples are refused.
    let out = voxgate().args(["enroll", "--name", "x", "--out"]).arg(dir.path().join("x.rpw")).args(&clips[..2]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("record at least 3"), "{}", String::from_utf8_lossy(&out.stderr));
    // A silent sample is refused, naming the file.
    let silent = dir.path().join("silent.wav");
    crate::support::write_wav(&silent, 16000, &vec![0; 16000]);
    let out = voxgate().args(["enroll", "--name", "x", "--out"]).arg(dir.path().join("x.rpw")).arg(&clips[0]).arg(&silent).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("silent.wav") && err.contains("no speech"), "{err}");
    // So is one far too long to be a wake word.
    let long = dir.path().join("long.wav");
    crate::support::write_wav(&long, 16000, &crate::support::noise(16000 * 5, 3));
    let out = voxgate().args(["enroll", "--name", "x", "--out"]).arg(dir.path().join("x.rpw")).arg(&long).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("long.wav") && err.contains("ms after trimming"), "{err}");
}

#[test]
fn the_builtin_wakes_at_other_audio_rates() {
    // A sound card's 22.05 and 48 kHz: the detector resamples to its own 16 kHz (below 16 kHz is refused: see config).
    let (file, labels) = builtin_streams().into_iter().next().unwrap();
    let refs: Vec<&Label> = labels.iter().collect();
    for rate in [22050, 48000] {
        let mut config = Config::default();
        config.audio.sample_rate = rate;
        let found = detections(&config, &file);
        check(&format!("{file} at {rate} Hz"), &refs, &found);
    }
}
