//! Playback through a real ALSA device: ALSA's `file` plugin writes what the daemon plays into a FIFO the test
//! reads ([`FakeSpeaker`]).

use serde_json::json;

use crate::support::{FakeSpeaker, TestDaemon, config_text, find_samples, is, serve_child, write_wav};

/// A tone with a ramp, so that any stretch of it is found in one place only.
fn tone(n: usize) -> Vec<i16> {
    (0..n).map(|i| ((i as f32 * 0.07).sin() * 6000.0) as i16 + (i % 97) as i16).collect()
}

fn daemon_with(speaker: &FakeSpeaker, playback: &str) -> TestDaemon {
    let alsa = speaker.alsa_config(None).display().to_string();
    let config = format!("{}\n[playback]\ndevice = \"alsa:fakespk\"\n{playback}\n", config_text("ws://127.0.0.1:9/", "info"));
    TestDaemon::spawn(&config, true, &[("ALSA_CONFIG_PATH", alsa.as_str())])
}

/// `voxgate say` plays a WAV through the device bit for bit at its own rate, and to the right length when the
/// device plays at another rate; both are announced as events.
#[test]
fn say_plays_a_wav_bit_for_bit_and_resampled_to_length() {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("answer.wav");
    let samples = tone(16000);
    write_wav(&wav, 16000, &samples);

    let speaker = FakeSpeaker::new(None);
    let d = daemon_with(&speaker, "");
    let mut events = d.connect();
    assert_eq!(events.call(json!({"cmd": "subscribe"}))["ok"], true);
    let reply = d.connect().call(json!({"cmd": "say", "what": wav.to_str().unwrap()}));
    assert_eq!((reply["ok"].as_bool(), reply["duration_ms"].as_u64()), (Some(true), Some(1000)), "{reply}");
    let start = events.event(is("playback_start"));
    assert_eq!((start["what"].as_str(), start["kind"].as_str()), (wav.to_str(), Some("answer")), "{start}");
    let end = events.event(is("playback_end"));
    assert_eq!((end["played_ms"].as_u64(), end["reason"].as_str()), (Some(1000), Some("done")), "{end}");
    let heard = speaker.wait_until(|b| b.len() >= samples.len() * 2);
    assert_eq!(find_samples(&heard, &samples), Some(0), "not played bit for bit");
    drop(d);

    // At 48 kHz: three times as many samples (the fake device takes one channel).
    let speaker = FakeSpeaker::new(None);
    let d = daemon_with(&speaker, "rate = 48000");
    let mut events = d.connect();
    assert_eq!(events.call(json!({"cmd": "subscribe"}))["ok"], true);
    assert_eq!(d.connect().call(json!({"cmd": "say", "what": wav.to_str().unwrap()}))["ok"], true);
    events.event(is("playback_end"));
    let heard = speaker.wait_until(|b| b.len() >= samples.len() * 2 * 3);
    let played: Vec<i16> = heard.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
    let frames = played.iter().rposition(|s| *s != 0).unwrap() + 1;
    assert!(frames.abs_diff(48000) <= 48, "{frames} frames for 1 s at 48 kHz");
}

/// Nothing plays while muted; `stop` stops what plays; a device that is not there is reported and the daemon
/// goes on.
#[test]
fn muted_stopped_and_a_missing_device() {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("long.wav");
    write_wav(&wav, 16000, &tone(16000 * 20));
    // Real time: the 20 s clip is still playing when `stop` comes.
    let speaker = FakeSpeaker::new(Some(32000));
    let d = daemon_with(&speaker, "");
    let mut events = d.connect();
    assert_eq!(events.call(json!({"cmd": "subscribe"}))["ok"], true);
    let mut ctl = d.connect();
    assert_eq!(ctl.call(json!({"cmd": "mute"}))["ok"], true);
    let refused = ctl.call(json!({"cmd": "say", "what": wav.to_str().unwrap()}));
    assert!(refused["ok"] == false && refused["error"].as_str().unwrap().contains("muted"), "{refused}");
    assert_eq!(ctl.call(json!({"cmd": "unmute"}))["ok"], true);
    assert_eq!(ctl.call(json!({"cmd": "say", "what": wav.to_str().unwrap()}))["ok"], true);
    events.event(is("playback_start"));
    events.event(|e| e["event"] == "state" && e["state"] == "speaking");
    assert_eq!(d.status()["state"], "speaking");
    speaker.wait_until(|b| b.len() >= 32000);
    assert_eq!(ctl.call(json!({"cmd": "stop"}))["ok"], true);
    let end = events.event(is("playback_end"));
    assert_eq!(end["reason"], "stopped", "{end}");
    assert!(end["played_ms"].as_u64().unwrap() < 20000, "{end}");
    events.event(|e| e["event"] == "state" && e["state"] == "listening");
    // Muting stops what plays.
    assert_eq!(ctl.call(json!({"cmd": "say", "what": wav.to_str().unwrap()}))["ok"], true);
    events.event(is("playback_start"));
    assert_eq!(ctl.call(json!({"cmd": "mute"}))["ok"], true);
    let end = events.event(is("playback_end"));
    assert_eq!(end["reason"], "muted", "{end}");
    assert!(end["played_ms"].as_u64().unwrap() < 20000, "{end}");
    drop(d);

    let d = TestDaemon::spawn(&format!("{}\n[playback]\ndevice = \"alsa:no-such-device\"\n", config_text("ws://127.0.0.1:9/", "info")), true, &[]);
    let mut events = d.connect();
    assert_eq!(events.call(json!({"cmd": "subscribe"}))["ok"], true);
    for _ in 0..2 {
        assert_eq!(d.connect().call(json!({"cmd": "say", "what": wav.to_str().unwrap()}))["ok"], true);
        let end = events.event(is("playback_end"));
        assert!(end["reason"].as_str().unwrap().starts_with("failed"), "{end}");
    }
    // Logged when the first sound failed, and not again for the second (the log is read as it comes: wait for it).
    d.logged(0, |l| l.contains("cannot play through alsa:no-such-device"));
    assert_eq!(d.log().matches("cannot play through alsa:no-such-device").count(), 1, "logged once:\n{}", d.log());
    assert_eq!(d.status()["state"], "listening");
}

/// A device lost while it plays (the FIFO's reader goes away, as a speaker unplugged): the sound ends with the
/// device's error, which is logged, and the daemon goes on; once the device is back, the next sound plays on it.
#[test]
fn a_device_lost_while_playing_is_reported_and_played_on_once_back() {
    let dir = tempfile::tempdir().unwrap();
    let long = dir.path().join("long.wav");
    write_wav(&long, 16000, &tone(16000 * 20));
    let short = dir.path().join("short.wav");
    let other: Vec<i16> = (0..8000).map(|i| ((i as f32 * 0.031).sin() * 5000.0) as i16 - (i % 89) as i16).collect();
    write_wav(&short, 16000, &other);
    // Real time: the 20 s clip is still playing when the device goes.
    let mut speaker = FakeSpeaker::new(Some(32000));
    let d = daemon_with(&speaker, "");
    let mut events = d.connect();
    assert_eq!(events.call(json!({"cmd": "subscribe"}))["ok"], true);
    assert_eq!(d.connect().call(json!({"cmd": "say", "what": long.to_str().unwrap()}))["ok"], true);
    events.event(is("playback_start"));
    events.event(|e| e["event"] == "state" && e["state"] == "speaking");
    speaker.wait_until(|b| b.len() >= 32000);
    speaker.unplug();
    let end = events.event(is("playback_end"));
    assert!(end["reason"].as_str().unwrap().starts_with("device failed"), "{end}");
    assert!(end["played_ms"].as_u64().unwrap() < 20000, "{end}");
    // The state follows the end of the sound (the supervisor hears of it after the event).
    events.event(|e| e["event"] == "state" && e["state"] == "listening");
    d.logged(0, |l| l.contains("playback device alsa:fakespk failed while playing"));

    speaker.plug();
    assert_eq!(d.connect().call(json!({"cmd": "say", "what": short.to_str().unwrap()}))["ok"], true);
    let end = events.event(is("playback_end"));
    assert_eq!((end["reason"].as_str(), end["played_ms"].as_u64()), (Some("done"), Some(500)), "{end}");
    speaker.wait_until(|b| find_samples(b, &other).is_some());
    d.logged(0, |l| l.contains("playback device alsa:fakespk works again"));
}

/// A file with two wake words: each plays the wake chime, then the end chime once the session stops listening;
/// the sessions' audio is what it was without playback, bit for bit.
#[test]
fn chimes_on_the_wake_word_and_at_the_end_leave_the_sessions_unchanged() {
    let server = serve_child();
    let speaker = FakeSpeaker::new(None);
    let alsa = speaker.alsa_config(None).display().to_string();
    let stream = crate::support::fixtures().join("stream-en-us_m1.wav");
    let config = |device: &str| {
        format!(
            "[audio]\nsource = \"file:{}\"\nfile_pacing = \"fast\"\n[session]\nurl = \"{}\"\n[playback]\ndevice = \"{device}\"\n[log]\nformat = \"text\"\n",
            stream.display(),
            server.url
        )
    };
    let ends = |d: &mut TestDaemon| {
        assert_eq!(d.wait(crate::support::PATIENCE).code(), Some(0), "{}", d.log());
        let log = d.log();
        log.lines()
            .filter(|l| l.contains("event=\"session_end\""))
            .map(|l| l.split("frames_sent=").nth(1).unwrap_or("").to_string())
            .collect::<Vec<_>>()
    };
    let mut plain = TestDaemon::launch(&config("none"), false, &[], false);
    let without = ends(&mut plain);
    let mut chiming = TestDaemon::launch(&config("alsa:fakespk"), false, &[("ALSA_CONFIG_PATH", alsa.as_str())], false);
    let with = ends(&mut chiming);
    assert_eq!(with.len(), 2);
    assert_eq!(with, without, "the sessions changed with playback on");
    let log = chiming.log();
    // Each plays to its end: at the end of the file, the daemon lets the last end chime finish before it exits.
    assert!(log.matches("played 180 ms of built-in wake chime: done").count() == 2, "{log}");
    assert!(log.matches("played 180 ms of built-in end chime: done").count() == 2, "{log}");
    // The first sound played reaches the device bit for bit. (One that starts as another one closes may come
    // out of ALSA's file plugin with two samples of silence inserted near its start: see docs/playback.md.)
    let wake: Vec<i16> = voxgate::playback::chimes::wake().samples.to_vec();
    speaker.wait_until(|b| find_samples(b, &wake) == Some(1) || find_samples(b, &wake) == Some(0));
}

/// Not waking on its own voice: an answer that says "hey jarvis", heard back by the microphone, opens no
/// session (the detection is counted as the answer's own); the user saying it over the answer stops the answer
/// and opens a session.
#[test]
fn the_answer_saying_the_wake_word_does_not_wake_it_but_the_user_does() {
    let fixtures = crate::support::fixtures();
    let (_, own) = crate::support::read_wav(&fixtures.join("stream-en-us_m1.wav"));
    let (_, other) = crate::support::read_wav(&fixtures.join("stream-en-gb_f3.wav"));
    // The answer: 8 s that say "hey jarvis" at 0.7 s, then a command, then the decoy "hey travis".
    let answer: Vec<i16> = own[..8 * 16000].to_vec();
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("answer.wav");
    write_wav(&wav, 16000, &answer);
    // Played at real time, so that it is still playing when the microphone hears it back.
    let speaker = FakeSpeaker::new(Some(32000));
    let alsa = speaker.alsa_config(None).display().to_string();
    let config = format!(
        "{}\n[playback]\ndevice = \"alsa:fakespk\"\n",
        config_text("ws://127.0.0.1:9/", "info").replace("mode = \"manual\"", "mode = \"wakeword\"")
    );
    let d = TestDaemon::spawn(&config, true, &[("ALSA_CONFIG_PATH", alsa.as_str())]);
    let mut events = d.connect();
    assert_eq!(events.call(json!({"cmd": "subscribe"}))["ok"], true);
    let feeder = d.feeder.as_ref().unwrap();

    // The answer alone, heard back: its wake word is ignored.
    assert_eq!(d.connect().call(json!({"cmd": "say", "what": wav.to_str().unwrap()}))["ok"], true);
    events.event(is("playback_start"));
    feeder.play(&answer);
    let wake = events.event(|e| e["event"] == "wake" || e["event"] == "session_start");
    assert_eq!((wake["event"].as_str(), wake["acted_on"].as_bool()), (Some("wake"), Some(false)), "{wake}");
    let end = events.event(|e| e["event"] == "playback_end" || e["event"] == "session_start");
    assert_eq!((end["event"].as_str(), end["reason"].as_str()), (Some("playback_end"), Some("done")), "{end}");
    assert_eq!(d.status()["counters"]["wake_suppressed"], 1);

    // The same answer heard back, and the user's own "hey jarvis" over it at 4.2 s (where the answer is quiet).
    let mut mixed = answer.clone();
    let theirs = &other[700 * 16..1700 * 16];
    for (m, t) in mixed[4200 * 16..].iter_mut().zip(theirs) {
        *m = m.saturating_add(*t);
    }
    assert_eq!(d.connect().call(json!({"cmd": "say", "what": wav.to_str().unwrap()}))["ok"], true);
    events.event(is("playback_start"));
    feeder.play(&mixed);
    let first = events.event(is("wake"));
    assert_eq!(first["acted_on"], false, "{first}");
    let second = events.event(is("wake"));
    assert_eq!(second["acted_on"], true, "{second}");
    // The session opens and the answer stops, in either order (then the wake chime plays).
    let (mut opened, mut stopped) = (false, None);
    while !opened || stopped.is_none() {
        let e = events.event(|e| e["event"] == "session_start" || (e["event"] == "playback_end" && e["what"] == wav.to_str().unwrap()));
        match e["event"].as_str() {
            Some("session_start") => opened = true,
            _ => stopped = Some(e),
        }
    }
    let end = stopped.unwrap();
    assert_eq!(end["reason"], "barge-in", "{end}");
}

/// voxgate/1: a server's `say` with audio (here `voxgate serve --reply-wav`) is played, bit for bit.
#[test]
fn a_voxgate_server_can_answer_with_audio() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("reply.wav");
    let samples = tone(8000);
    write_wav(&wav, 16000, &samples);
    let mut server = crate::support::ChildGuard(
        crate::support::voxgate()
            .args(["serve", "--listen", "127.0.0.1:0", "--reply-wav"])
            .arg(&wav)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufReader::new(server.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().strip_prefix("listening on ").unwrap().to_string();
    let speaker = FakeSpeaker::new(None);
    let alsa = speaker.alsa_config(None).display().to_string();
    // No end chime: the answer alone, so that it can be found whole.
    let config = format!("{}\n[playback]\ndevice = \"alsa:fakespk\"\nend_sound = \"none\"\n", config_text(&url, "info"));
    let d = TestDaemon::spawn(&config, true, &[("ALSA_CONFIG_PATH", alsa.as_str())]);
    let mut events = d.connect();
    assert_eq!(events.call(json!({"cmd": "subscribe"}))["ok"], true);
    let mut ctl = d.connect();
    assert_eq!(ctl.call(json!({"cmd": "trigger"}))["ok"], true);
    events.event(|e| e["event"] == "state" && e["state"] == "streaming");
    assert_eq!(ctl.call(json!({"cmd": "stop"}))["ok"], true);
    let say = events.event(|e| e["event"] == "server_message" && e["message"]["type"] == "say");
    assert_eq!((say["message"]["sample_rate"].as_u64(), say["message"]["pcm"]["bytes"].as_u64()), (Some(16000), Some(16000)), "{say}");
    let start = events.event(|e| e["event"] == "playback_start" && e["kind"] == "answer");
    assert_eq!(start["duration_ms"].as_u64(), Some(500), "{start}");
    let heard = speaker.wait_until(|b| find_samples(b, &samples).is_some());
    assert!(find_samples(&heard, &samples).is_some());
}

/// A reload applies `[playback]`: playback switched on, and a bad sound file refused with nothing changed.
#[test]
fn a_reload_switches_playback_on_and_refuses_a_bad_sound() {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("tone.wav");
    let samples = tone(4000);
    write_wav(&wav, 16000, &samples);
    let speaker = FakeSpeaker::new(None);
    let alsa = speaker.alsa_config(None).display().to_string();
    let base = config_text("ws://127.0.0.1:9/", "info");
    let d = TestDaemon::spawn(&format!("{base}\n[playback]\ndevice = \"none\"\n"), true, &[("ALSA_CONFIG_PATH", alsa.as_str())]);
    let mut ctl = d.connect();
    let off = ctl.call(json!({"cmd": "say", "what": wav.to_str().unwrap()}));
    assert!(off["error"].as_str().unwrap_or_default().contains("playback is off"), "{off}");
    std::fs::write(&d.config, format!("{base}\n[playback]\ndevice = \"alsa:fakespk\"\n")).unwrap();
    let reload = ctl.call(json!({"cmd": "reload"}));
    assert_eq!(reload["changed"], json!(["playback.device"]), "{reload}");
    assert_eq!(ctl.call(json!({"cmd": "say", "what": wav.to_str().unwrap()}))["ok"], true);
    speaker.wait_until(|b| find_samples(b, &samples).is_some());
    let notes = dir.path().join("notes.wav");
    std::fs::write(&notes, "not a sound").unwrap();
    std::fs::write(&d.config, format!("{base}\n[playback]\ndevice = \"alsa:fakespk\"\nwake_sound = \"{}\"\n", notes.display())).unwrap();
    let refused = ctl.call(json!({"cmd": "reload"}));
    assert!(refused["ok"] == false && refused["error"].as_str().unwrap().contains("playback.wake_sound"), "{refused}");
    assert_eq!(ctl.call(json!({"cmd": "say", "what": wav.to_str().unwrap()}))["ok"], true, "still playing after a refused reload");
}

/// `voxgate demo` where there is no sound card: the whole loop at real time, each wake word giving the wake
/// chime, a session, the end chime and the server's answer, all played through a real output stream (ALSA's
/// file plugin) into a WAV file that holds each of them bit for bit, in order, and nothing else.
#[test]
fn the_demo_plays_the_loop_into_a_wav_file() {
    let dir = tempfile::tempdir().unwrap();
    let played = dir.path().join("played.wav");
    let out = crate::support::voxgate().args(["demo", "--speaker"]).arg(&played).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let count = |s: &str| stdout.matches(s).count();
    assert_eq!(
        (count("playing built-in wake chime"), count("playing built-in end chime"), count("playing the server's answer")),
        (2, 2, 2),
        "{stdout}"
    );
    assert!(stdout.contains("2 sessions") && stdout.contains(", 0 dropped, 6 sounds played") && !stdout.contains("not played"), "{stdout}");
    assert!(stdout.contains(&format!("what was played is in {}", played.display())), "{stdout}");
    let pcm: Vec<i16> = hound::WavReader::open(&played).unwrap().samples::<i16>().map(Result::unwrap).collect();
    let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
    let answer: Vec<i16> =
        hound::WavReader::new(std::io::Cursor::new(voxgate::demo::ANSWER_WAV)).unwrap().samples::<i16>().map(Result::unwrap).collect();
    let wake = voxgate::playback::chimes::wake().samples.to_vec();
    let end = voxgate::playback::chimes::end().samples.to_vec();
    // In order: wake chime, end chime, answer; twice. Between and after them only silence: each sound's 150 ms
    // of closing silence, and what the device took while it was being closed.
    let mut at = 0;
    let mut outside = Vec::new();
    for round in 0..2 {
        for (what, clip) in [("wake chime", &wake), ("end chime", &end), ("answer", &answer)] {
            let found = find_samples(&bytes[at * 2..], clip).unwrap_or_else(|| {
                let why = crate::support::why_not_found(&pcm[at..], clip);
                panic!("round {round}: the {what} is not in {} after sample {at}: {why}\n{stdout}", played.display())
            });
            outside.extend_from_slice(&pcm[at..at + found]);
            assert!(at == 0 || found >= 2400, "round {round}: only {found} samples of silence before the {what}");
            at += found + clip.len();
        }
    }
    outside.extend_from_slice(&pcm[at..]);
    assert!(outside.iter().all(|s| *s == 0), "something else was played");
    assert!(pcm.len() - at >= 2400, "the answer's closing silence is missing");
}
