//! cpal capture through a fake ALSA device (ALSA's `file` plugin), in a child process.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use crate::support::{ChildGuard, FakeMic, first_sound, noise, read_wav, voxgate};

/// 4 KiB per tick: 128 ms of 16 kHz mono s16, written every 32 ms (four times real time).
const CHUNK: usize = 4096;

#[test]
fn capture_at_16k_mono_is_bit_exact() {
    let signal = noise(16000 * 2, 7);
    let mut data = vec![0u8; CHUNK * 4];
    data.extend(signal.iter().flat_map(|s| s.to_le_bytes()));
    let mic = FakeMic::new(data, CHUNK, Duration::from_millis(32));
    let out = mic.dir.path().join("out.wav");
    let status = voxgate()
        .args(["record", "--seconds", "3"])
        .arg(&out)
        .env("ALSA_CONFIG_PATH", mic.alsa_config())
        .env("VOXGATE_AUDIO__SOURCE", "alsa:fakemic")
        .status()
        .unwrap();
    assert!(status.success());
    let (spec, got) = read_wav(&out);
    assert_eq!((spec.sample_rate, spec.channels), (16000, 1));
    assert_eq!(got.len(), 3 * 16000, "3 s of frames");
    let start = first_sound(&got).expect("the signal was captured");
    assert!(got.len() - start >= signal.len(), "the whole signal fits after {start} samples of silence");
    assert!(got[start..start + signal.len()] == signal[..], "captured audio differs from the source");
}

#[test]
fn capture_at_48k_stereo_float_is_converted() {
    // Left and right carry 440 Hz in phase and 1234 Hz in opposite phase: the mono mix is 440 Hz alone.
    let rate = 48000.0;
    let seconds = 2;
    let mut data = vec![0u8; CHUNK * 8];
    for i in 0..48000 * seconds {
        let t = i as f64 / rate;
        let a = 0.3 * (2.0 * std::f64::consts::PI * 440.0 * t).sin();
        let b = 0.2 * (2.0 * std::f64::consts::PI * 1234.0 * t).sin();
        data.extend(((a + b) as f32).to_le_bytes());
        data.extend(((a - b) as f32).to_le_bytes());
    }
    // 4 KiB is 512 stereo f32 frames (10.7 ms); every 4 ms is 2.7 times real time.
    let mic = FakeMic::new(data, CHUNK, Duration::from_millis(4));
    let out = mic.dir.path().join("out.wav");
    let status = voxgate()
        .args(["record", "--seconds", "3"])
        .arg(&out)
        .env("ALSA_CONFIG_PATH", mic.alsa_config())
        .env("VOXGATE_AUDIO__SOURCE", "alsa:fakemic")
        .env("VOXGATE_AUDIO__CAPTURE_RATE", "48000")
        .env("VOXGATE_AUDIO__CAPTURE_CHANNELS", "2")
        .env("VOXGATE_AUDIO__CAPTURE_FORMAT", "f32")
        .status()
        .unwrap();
    assert!(status.success());
    let (spec, got) = read_wav(&out);
    assert_eq!((spec.sample_rate, spec.channels), (16000, 1));
    assert_eq!(got.len(), 3 * 16000);
    let start = got.iter().position(|s| s.abs() > 100).expect("the tone was captured");
    // A steady stretch in the middle of the tone: 1 s.
    let body: Vec<f64> = got[start + 4000..start + 20000].iter().map(|&s| s as f64 / 32768.0).collect();
    let rms = (body.iter().map(|x| x * x).sum::<f64>() / body.len() as f64).sqrt();
    let want_rms = 0.3 / 2f64.sqrt();
    assert!((20.0 * (rms / want_rms).log10()).abs() < 0.5, "level {rms:.4} vs {want_rms:.4}");
    // Correlates with a 440 Hz sine at the best phase; the cancelled 1234 Hz component is gone.
    let corr = |f: f64| {
        let (mut s, mut c) = (0.0, 0.0);
        for (i, x) in body.iter().enumerate() {
            let w = 2.0 * std::f64::consts::PI * f * i as f64 / 16000.0;
            s += x * w.sin();
            c += x * w.cos();
        }
        (s * s + c * c).sqrt() * 2.0 / body.len() as f64
    };
    assert!((corr(440.0) - 0.3).abs() < 0.01, "440 Hz amplitude {}", corr(440.0));
    assert!(corr(1234.0) < 0.005, "1234 Hz left after downmix: {}", corr(1234.0));
}

#[test]
fn missing_device_is_retried_and_shutdown_still_works() {
    let mic = FakeMic::new(Vec::new(), CHUNK, Duration::from_millis(32));
    let mut child = ChildGuard(voxgate()
        .args(["run"])
        .env("ALSA_CONFIG_PATH", mic.alsa_config())
        .env("VOXGATE_AUDIO__SOURCE", "alsa:nosuchmic")
        .env("VOXGATE_LOG__FORMAT", "text")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap());
    let mut lines = BufReader::new(child.0.stderr.take().unwrap()).lines();
    let line = lines.by_ref().map_while(Result::ok).find(|l| l.contains("not found")).expect("a line about the device");
    assert!(line.contains("alsa:nosuchmic"), "{line}");
    assert!(line.contains("not found") && line.contains("retrying"), "{line}");
    // SIGTERM during the backoff wait: a clean exit, not a hang.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.0.wait().unwrap();
    assert!(status.success(), "exit {status:?}; stderr: {rest:?}");
    assert_eq!(rest.iter().filter(|l| l.contains("not found")).count(), 0, "the failure is logged once: {rest:?}");
}

#[test]
fn backoff_doubles_up_to_its_cap_on_the_source_clock() {
    use voxgate::audio::{self, ManualClock};
    use voxgate::audio::device::{BACKOFF_MAX, BACKOFF_START};
    let (clock, waits) = ManualClock::new();
    let cfg = voxgate::config::AudioConfig { source: voxgate::config::SourceSpec::Device("alsa:nosuchmic".into()), ..Default::default() };
    let source = audio::start(&cfg, clock.clone()).unwrap();
    let mut expected = BACKOFF_START;
    let mut now = Duration::ZERO;
    for _ in 0..7 {
        let deadline = waits.recv().unwrap();
        assert_eq!(deadline - now, expected, "waits so far end at {now:?}");
        let state = source.stats.state();
        assert!(state.contains("waiting for capture device alsa:nosuchmic") && state.contains("not found"), "{state}");
        clock.advance(expected);
        now += expected;
        expected = (expected * 2).min(BACKOFF_MAX);
    }
    assert_eq!(expected, BACKOFF_MAX, "the cap was reached");
    assert!(source.frames.try_recv().is_err());
    source.stop();
    source.join().unwrap();
}

#[test]
fn devices_lists_the_fake_mic_and_the_default() {
    let mic = FakeMic::new(Vec::new(), CHUNK, Duration::from_millis(32));
    let out = voxgate().arg("devices").env("ALSA_CONFIG_PATH", mic.alsa_config()).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let fake = text.lines().position(|l| l.starts_with("alsa:fakemic") && l.contains("fake microphone")).expect(&text);
    assert!(text.lines().nth(fake + 1).is_some_and(|l| l.trim_start().starts_with("i16") && l.contains("ch")), "{text}");
    // Output devices follow, for playback.device: the fake speaker among them.
    let speaker = crate::support::FakeSpeaker::new(None);
    let out = voxgate().arg("devices").env("ALSA_CONFIG_PATH", speaker.alsa_config(Some(&mic))).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let (capture, outputs) = text.split_once("output devices (playback.device):").expect(&text);
    assert!(capture.contains("alsa:fakemic"), "{text}");
    assert_eq!(capture.lines().filter(|l| l.contains("(default)")).count(), 1, "{text}");
    let spk = outputs.lines().position(|l| l.starts_with("alsa:fakespk") && l.contains("fake speaker")).expect(&text);
    assert!(outputs.lines().nth(spk + 1).is_some_and(|l| l.trim_start().starts_with("i16") && l.contains("Hz")), "{text}");
}
