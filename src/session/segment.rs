//! Where a session's audio ends, decided on the detector thread frame by frame (the audio clock), so a file
//! replayed fast gives exactly the sessions it gives in real time.
//!
//! A voice activity detector (earshot, 16 kHz) marks speech. The session ends with `silence` once speech was
//! heard and `end_silence_ms` of non-speech follow, with `no_speech` when no speech is heard within
//! `no_speech_ms`, and with `max_duration` after `max_ms`. Times count from the detection; the pre-roll is
//! audio from before it.

use super::EndReason;
use crate::audio::level_dbfs;
use crate::config::SessionConfig;

/// earshot's frame: 16 ms at 16 kHz.
const VAD_SAMPLES: usize = 256;
const VAD_THRESHOLD: f32 = 0.5;
/// Consecutive speech frames before speech counts as heard (a click is not speech).
const SPEECH_FRAMES: u32 = 3;
/// After a detection at the end of the phrase (the built-in wake words, eager ones), speech this soon is the
/// end of the wake word itself, not a command: they fire up to ~150 ms before its last sound.
const WAKE_TAIL_MS: u64 = 200;
/// After a late detection (a template wake word reports ~0.8 s after the phrase) or a trigger, speech in the
/// pre-roll this close to it means the user is already talking.
const BEFORE_START_MS: u64 = 600;
/// Without the VAD (rates other than 16 kHz), frames above this level count as speech.
const ENERGY_SPEECH_DB: f32 = -45.0;

/// earshot's voice activity detector, fed frames of any length at 16 kHz.
pub struct Vad {
    det: Box<earshot::Detector>,
    chunk: Vec<i16>,
}

impl Default for Vad {
    fn default() -> Self {
        Vad { det: earshot::Detector::default_boxed(), chunk: Vec::with_capacity(VAD_SAMPLES) }
    }
}

impl Vad {
    /// How many 16 ms chunks completed with `pcm`, and how many of them were speech.
    pub fn push(&mut self, pcm: &[i16]) -> (u32, u32) {
        let (mut chunks, mut speech) = (0, 0);
        for &s in pcm {
            self.chunk.push(s);
            if self.chunk.len() == VAD_SAMPLES {
                chunks += 1;
                speech += (self.det.predict_i16(&self.chunk) > VAD_THRESHOLD) as u32;
                self.chunk.clear();
            }
        }
        (chunks, speech)
    }
}

/// Milliseconds in one VAD chunk.
pub const VAD_CHUNK_MS: u64 = 16;

/// Says whether a frame is speech: the VAD at 16 kHz, a level threshold at other rates.
pub struct SpeechTest {
    vad: Option<Vad>,
}

impl SpeechTest {
    pub fn new(sample_rate: u32) -> Self {
        SpeechTest { vad: (sample_rate == 16000).then(Vad::default) }
    }

    pub fn is_speech(&mut self, pcm: &[i16]) -> bool {
        match self.vad.as_mut() {
            Some(vad) => vad.push(pcm).1 > 0,
            None => level_dbfs(pcm) > ENERGY_SPEECH_DB,
        }
    }
}

/// `wake.mode = "always"`: speech starting, with no timers (it waits as long as it takes).
pub struct Onset {
    test: SpeechTest,
    run: u32,
}

impl Onset {
    pub fn new(sample_rate: u32) -> Self {
        Onset { test: SpeechTest::new(sample_rate), run: 0 }
    }

    /// True on the frame that completes `SPEECH_FRAMES` consecutive speech frames.
    pub fn push(&mut self, pcm: &[i16]) -> bool {
        if self.test.is_speech(pcm) {
            self.run += 1;
        } else {
            self.run = 0;
        }
        self.run == SPEECH_FRAMES
    }
}

pub struct Segmenter {
    speech: SpeechTest,
    frame_ms: u64,
    end_silence: u64,
    no_speech: u64,
    max: u64,
    /// Frames since the detection.
    frames: u64,
    speech_run: u32,
    heard: bool,
    silent_frames: u64,
    /// Frames after the detection whose speech is the wake word's.
    tail: u64,
}

impl Segmenter {
    pub fn new(cfg: &SessionConfig, sample_rate: u32, frame_ms: u32) -> Self {
        let frame_ms = frame_ms as u64;
        Segmenter {
            speech: SpeechTest::new(sample_rate),
            frame_ms,
            end_silence: cfg.end_silence_ms.div_ceil(frame_ms),
            no_speech: cfg.no_speech_ms.div_ceil(frame_ms),
            max: cfg.max_ms.div_ceil(frame_ms),
            frames: 0,
            speech_run: 0,
            heard: false,
            silent_frames: 0,
            tail: 0,
        }
    }

    /// Runs the pre-roll through the VAD. After a detection at the end of the phrase what it hears there is
    /// the wake word, not counted, and so are the first `WAKE_TAIL_MS` after it; otherwise speech in the last
    /// `BEFORE_START_MS` of it counts as heard.
    pub fn prime<'a>(&mut self, preroll: impl ExactSizeIterator<Item = &'a [i16]>, at_phrase_end: bool) {
        let n = preroll.len() as u64;
        let recent_from = if at_phrase_end { u64::MAX } else { n.saturating_sub(BEFORE_START_MS / self.frame_ms) };
        for (i, pcm) in preroll.enumerate() {
            let speech = self.speech.is_speech(pcm);
            if i as u64 >= recent_from {
                self.track(speech);
            }
        }
        self.tail = if at_phrase_end { WAKE_TAIL_MS / self.frame_ms } else { 0 };
    }

    fn track(&mut self, speech: bool) {
        if speech {
            self.speech_run += 1;
            self.silent_frames = 0;
            if self.speech_run >= SPEECH_FRAMES {
                self.heard = true;
            }
        } else {
            self.speech_run = 0;
            self.silent_frames += 1;
        }
    }

    /// Takes the next frame after the detection; returns why the session ends with it, if it does.
    pub fn push(&mut self, pcm: &[i16]) -> Option<EndReason> {
        self.frames += 1;
        let speech = self.speech.is_speech(pcm) && self.frames > self.tail;
        self.track(speech);
        if self.heard && self.silent_frames >= self.end_silence {
            Some(EndReason::Silence)
        } else if !self.heard && self.frames >= self.no_speech {
            Some(EndReason::NoSpeech)
        } else if self.frames >= self.max {
            Some(EndReason::MaxDuration)
        } else {
            None
        }
    }

    pub fn speech_heard(&self) -> bool {
        self.heard
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SessionConfig {
        SessionConfig { end_silence_ms: 400, no_speech_ms: 1000, max_ms: 3000, ..SessionConfig::default() }
    }

    // Energy mode (8 kHz): loud frames are speech, so the timers can be checked exactly.
    fn loud() -> Vec<i16> {
        (0..160).map(|i| if i % 2 == 0 { 8000 } else { -8000 }).collect()
    }

    fn run(seg: &mut Segmenter, pcm: &[i16], n: usize) -> Option<(usize, EndReason)> {
        (1..=n).find_map(|i| seg.push(pcm).map(|r| (i, r)))
    }

    #[test]
    fn timers_on_the_audio_clock() {
        let quiet = vec![0i16; 160];
        // Nothing said: no_speech after exactly 1000 ms of frames.
        let mut s = Segmenter::new(&cfg(), 8000, 20);
        assert_eq!(run(&mut s, &quiet, 100), Some((50, EndReason::NoSpeech)));
        // Speech, then silence: ends 400 ms into the silence.
        let mut s = Segmenter::new(&cfg(), 8000, 20);
        assert_eq!(run(&mut s, &loud(), 10), None);
        assert_eq!(run(&mut s, &quiet, 100), Some((20, EndReason::Silence)));
        // Talking on and on: max_duration at 3000 ms.
        let mut s = Segmenter::new(&cfg(), 8000, 20);
        assert_eq!(run(&mut s, &loud(), 1000), Some((150, EndReason::MaxDuration)));
    }

    #[test]
    fn onset_waits_as_long_as_it_takes() {
        let mut o = Onset::new(8000);
        let quiet = vec![0i16; 160];
        assert!((0..10_000).all(|_| !o.push(&quiet)), "silence never starts a session");
        assert!(!o.push(&loud()) && !o.push(&loud()));
        assert!(o.push(&loud()), "the third speech frame in a row does");
        assert!(!o.push(&loud()), "once");
    }

    #[test]
    fn the_wake_word_and_its_tail_are_not_the_command() {
        let quiet = vec![0i16; 160];
        // Loud up to the detection and for 200 ms after it: the wake word, so no speech yet.
        let mut s = Segmenter::new(&cfg(), 8000, 20);
        let preroll: Vec<Vec<i16>> = (0..100).map(|i| if i >= 60 { loud() } else { quiet.clone() }).collect();
        s.prime(preroll.iter().map(|p| p.as_slice()), true);
        assert!(!s.speech_heard());
        assert_eq!(run(&mut s, &loud(), 10), None);
        assert!(!s.speech_heard());
        assert_eq!(run(&mut s, &quiet, 100), Some((40, EndReason::NoSpeech)));
        // Speech going on past the tail is the command.
        let mut s = Segmenter::new(&cfg(), 8000, 20);
        s.prime(std::iter::empty(), true);
        assert_eq!(run(&mut s, &loud(), 13), None);
        assert!(s.speech_heard());
        assert_eq!(run(&mut s, &quiet, 100), Some((20, EndReason::Silence)));
    }

    #[test]
    fn after_a_late_detection_or_a_trigger_speech_right_before_it_counts() {
        let quiet = vec![0i16; 160];
        let mut s = Segmenter::new(&cfg(), 8000, 20);
        let preroll: Vec<Vec<i16>> = (0..100).map(|i| if i >= 90 { loud() } else { quiet.clone() }).collect();
        s.prime(preroll.iter().map(|p| p.as_slice()), false);
        assert!(s.speech_heard());
        assert_eq!(run(&mut s, &quiet, 100), Some((20, EndReason::Silence)));
        // Speech long before it (the wake word itself) does not.
        let mut s = Segmenter::new(&cfg(), 8000, 20);
        let preroll: Vec<Vec<i16>> = (0..100).map(|i| if i < 50 { loud() } else { quiet.clone() }).collect();
        s.prime(preroll.iter().map(|p| p.as_slice()), false);
        assert!(!s.speech_heard());
    }
}
