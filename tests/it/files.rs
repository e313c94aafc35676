//! The WAV file and stdin sources, in process, with the source clock under the test's control.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::Duration;

use voxgate::audio::{self, AudioError, ManualClock, Pace, SystemClock};
use voxgate::config::{AudioConfig, FilePacing};

use crate::support::{noise, voxgate, write_wav};

fn file_config(path: &std::path::Path, pacing: FilePacing) -> AudioConfig {
    AudioConfig { source: voxgate::config::SourceSpec::File(path.into()), file_pacing: pacing, ..AudioConfig::default() }
}

#[test]
fn realtime_pacing_follows_the_clock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.wav");
    let pcm = noise(320 * 10, 1);
    write_wav(&path, 16000, &pcm);
    let (clock, waits) = ManualClock::new();
    let source = audio::start(&file_config(&path, FilePacing::Realtime), clock.clone()).unwrap();
    for k in 0..10u64 {
        // The source waits for frame k's due time before handing it over.
        assert_eq!(waits.recv().unwrap(), Duration::from_millis(20 * (k + 1)));
        assert!(source.frames.try_recv().is_err(), "frame {k} came before its time");
        clock.advance(Duration::from_millis(20));
        let f = source.frames.recv().unwrap();
        assert_eq!(f.seq, k);
        assert_eq!(f.pcm, pcm[k as usize * 320..(k as usize + 1) * 320]);
    }
    assert!(source.frames.recv().is_err(), "the source ends after the file");
    source.join().unwrap();
}

#[test]
fn a_relaxed_pace_hands_frames_over_in_batches_never_early() {
    let b = Pace::batch_frames(20);
    let ms = |frames: u64| Duration::from_millis(20 * frames);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.wav");
    let pcm = noise(320 * (3 * b as usize), 3);
    write_wav(&path, 16000, &pcm);
    let (clock, waits) = ManualClock::new();
    let source = audio::start(&file_config(&path, FilePacing::Realtime), clock.clone()).unwrap();
    // The source is waiting for frame 0, attentive (the default). The consumer relaxes the pace.
    assert_eq!(waits.recv().unwrap(), ms(1));
    source.pace.relax(true);
    clock.advance(ms(1));
    assert_eq!(source.frames.recv().unwrap().seq, 0);
    // Frames 1 to b-1 are due by the end of their batch: one wait, then all of them at once.
    assert_eq!(waits.recv().unwrap(), ms(b));
    clock.advance(ms(b - 1) - Duration::from_millis(1));
    assert!(source.frames.try_recv().is_err(), "a batch came before its last frame was due");
    clock.advance(Duration::from_millis(1));
    let batch: Vec<u64> = (1..b).map(|_| source.frames.recv().unwrap().seq).collect();
    assert_eq!(batch, (1..b).collect::<Vec<_>>());
    // Attentive again: from the next hand-over, each frame at its own time. (Frames already due still ask the
    // clock, which answers at once.)
    assert_eq!(waits.iter().find(|w| *w > ms(b)), Some(ms(2 * b)));
    source.pace.relax(false);
    clock.advance(ms(b));
    for seq in b..2 * b {
        let f = source.frames.recv().unwrap();
        assert_eq!(f.seq, seq);
        assert_eq!(f.pcm, pcm[seq as usize * 320..(seq as usize + 1) * 320]);
    }
    assert_eq!(waits.iter().find(|w| *w > ms(2 * b)), Some(ms(2 * b + 1)));
    assert!(source.frames.try_recv().is_err(), "a frame came before its time");
    drop(source);
}

#[test]
fn fast_pacing_waits_for_the_consumer_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.wav");
    let pcm = noise(320 * 300, 2);
    write_wav(&path, 16000, &pcm);
    let source = audio::start(&file_config(&path, FilePacing::Fast), SystemClock::shared()).unwrap();
    // Take nothing until the channel is full: the source must block, not drop.
    let first = source.frames.recv().unwrap();
    let cap = source.frames.capacity().unwrap();
    while source.frames.len() < cap {
        std::thread::yield_now();
    }
    assert_eq!(source.stats.overruns.load(Ordering::Relaxed), 0);
    let mut got = first.pcm;
    let mut seqs = vec![first.seq];
    for f in source.frames.iter() {
        seqs.push(f.seq);
        got.extend(f.pcm);
    }
    assert_eq!(seqs, (0..300).collect::<Vec<u64>>());
    assert!(got == pcm, "fast pacing changed the audio");
    assert_eq!(source.stats.overruns.load(Ordering::Relaxed), 0);
    source.join().unwrap();
}

/// A WAV header as a recorder writes it before it knows the length: RIFF and data sizes 0.
fn streaming_header(rate: u32) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend(b"RIFF");
    h.extend(0u32.to_le_bytes());
    h.extend(b"WAVEfmt ");
    h.extend(16u32.to_le_bytes());
    h.extend(1u16.to_le_bytes());
    h.extend(1u16.to_le_bytes());
    h.extend(rate.to_le_bytes());
    h.extend((rate * 2).to_le_bytes());
    h.extend(2u16.to_le_bytes());
    h.extend(16u16.to_le_bytes());
    h.extend(b"data");
    h.extend(0u32.to_le_bytes());
    h
}

fn bytes(pcm: &[i16]) -> Vec<u8> {
    pcm.iter().flat_map(|s| s.to_le_bytes()).collect()
}

#[test]
fn follow_reads_a_file_while_it_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("call.wav");
    let pcm = noise(320 * 30, 3);
    let mut file = std::fs::File::create(&path).unwrap();
    file.write_all(&streaming_header(16000)).unwrap();
    // The first part, then one sample short of a frame boundary, then an odd byte: the source must wait for
    // the rest rather than decode half a sample.
    file.write_all(&bytes(&pcm[..320 * 10])).unwrap();
    let cfg = AudioConfig { file_follow: true, file_follow_idle_ms: 300, ..file_config(&path, FilePacing::Fast) };
    let source = audio::start(&cfg, SystemClock::shared()).unwrap();
    let mut got = Vec::new();
    for _ in 0..10 {
        got.extend(source.frames.recv().unwrap().pcm);
    }
    let tail = bytes(&pcm[320 * 10..]);
    file.write_all(&tail[..tail.len() - 3]).unwrap();
    file.flush().unwrap();
    for _ in 10..29 {
        got.extend(source.frames.recv().unwrap().pcm);
    }
    file.write_all(&tail[tail.len() - 3..]).unwrap();
    for f in source.frames.iter() {
        got.extend(f.pcm);
    }
    assert!(got == pcm, "followed audio differs ({} of {} samples)", got.len(), pcm.len());
    source.join().unwrap();
}

#[test]
fn truncated_wav_delivers_what_it_has_then_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.wav");
    let pcm = noise(320 * 20, 4);
    write_wav(&path, 16000, &pcm);
    let full = std::fs::read(&path).unwrap();
    std::fs::write(&path, &full[..full.len() - 320 * 2 * 5]).unwrap();
    let source = audio::start(&file_config(&path, FilePacing::Fast), SystemClock::shared()).unwrap();
    let got: Vec<i16> = source.frames.iter().flat_map(|f| f.pcm).collect();
    assert!(got == pcm[..320 * 15], "the 15 frames present were delivered");
    let err = source.join().unwrap_err();
    assert!(matches!(err, AudioError::WavTruncated { .. }), "{err}");
    assert!(err.to_string().contains(path.to_str().unwrap()), "{err}");
}

#[test]
fn corrupt_or_unsupported_wav_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.wav");
    std::fs::write(&garbage, b"this is not a RIFF file at all").unwrap();
    let missing = dir.path().join("missing.wav");
    let mut odd = streaming_header(16000);
    odd[34] = 12; // 12 bits per sample
    let odd_path = dir.path().join("odd.wav");
    std::fs::write(&odd_path, &odd).unwrap();
    for path in [&garbage, &missing, &odd_path] {
        let err = audio::start(&file_config(path, FilePacing::Fast), SystemClock::shared()).err().expect("refused");
        assert!(err.to_string().contains(path.to_str().unwrap()), "{err}");
    }
}

#[test]
fn stereo_float_44k_file_is_converted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("st.wav");
    let spec = hound::WavSpec { channels: 2, sample_rate: 44100, bits_per_sample: 32, sample_format: hound::SampleFormat::Float };
    let mut w = hound::WavWriter::create(&path, spec).unwrap();
    for i in 0..44100 {
        let v = 0.25 * (2.0 * std::f32::consts::PI * 300.0 * i as f32 / 44100.0).sin();
        w.write_sample(v).unwrap();
        w.write_sample(v).unwrap();
    }
    w.finalize().unwrap();
    let source = audio::start(&file_config(&path, FilePacing::Fast), SystemClock::shared()).unwrap();
    let got: Vec<i16> = source.frames.iter().flat_map(|f| f.pcm).collect();
    source.join().unwrap();
    assert_eq!(got.len(), 16000, "1 s at 16 kHz");
    let peak = got[1000..15000].iter().map(|s| s.abs()).max().unwrap();
    assert!((peak as f32 / 32768.0 - 0.25).abs() < 0.01, "peak {peak}");
}

#[test]
fn stdin_source_reads_raw_frames_until_eof() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.wav");
    let pcm = noise(320 * 12 + 100, 5);
    let mut child = voxgate()
        .args(["record"])
        .arg(&out)
        .env("VOXGATE_AUDIO__SOURCE", "stdin")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&bytes(&pcm)).unwrap();
    drop(stdin);
    assert!(child.wait().unwrap().success());
    let (_, got) = crate::support::read_wav(&out);
    assert_eq!(got.len(), 320 * 13, "12 frames and a padded 13th");
    assert!(got[..pcm.len()] == pcm[..]);
    assert!(got[pcm.len()..].iter().all(|&s| s == 0));
}
