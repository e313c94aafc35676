//! Wake-word detection: gate → engines, with the pre-roll ring.
//!
//! [`Detector`] is synchronous and owns everything: the energy [`gate::Gate`], the engines (the built-in
//! wake words' convolutional networks, [`conv`], one per built-in; rustpotter for `.rpw` files, with the
//! re-chunking of our frames into its 30 ms frames in a fixed byte buffer), and the [`Preroll`] ring of recent
//! frames. Nothing is allocated per frame on our side at 16 kHz. It runs on its own thread (see `daemon`), never on the
//! async runtime: frames come in from the audio source's channel, [`Detection`]s go out to the supervisor.

pub mod builtin;
pub mod conv;
pub mod enroll;
pub mod gate;
pub mod listener;
pub mod mfcc;
pub mod test;

use std::collections::VecDeque;

use rustpotter::{Rustpotter, RustpotterConfig, SampleFormat, ScoreMode as RpScoreMode};

use crate::audio::{Frame, FrameSpec, level_dbfs};
use crate::config::{ModelRef, ScoreMode, WakeConfig};

/// Audio the detector catches up on when the gate opens: onsets are soft, and the detector needs context.
const LOOKBACK_MS: u64 = 600;
/// The convolutional engine's look-back: its window (1 s) and the first frame's 20 ms.
const CONV_LOOKBACK_MS: u64 = 1040;
/// The gate stays open this long after the last loud frame, and longer while a detection is in progress.
/// 1 s detects what 2 s did on every fixture, and a session, which ends 0.8 s after the speech, leaves little
/// of it to score.
const GATE_HANGOVER_MS: u64 = 1000;

/// A wake word was heard.
#[derive(Debug, Clone)]
pub struct Detection {
    /// The wake word's name, from its model.
    pub wakeword: String,
    pub score: f32,
    pub avg_score: f32,
    /// Audio time of the detection: the end of the frame that completed it, from the start of the source.
    pub t_ms: u64,
    /// Sequence number of that frame.
    pub seq: u64,
    /// The frames before the detection, oldest first, at most `session.preroll_ms` of them; the frame with
    /// sequence number `seq` is the last.
    pub preroll: Vec<Frame>,
    /// The detection came at the end of the phrase (a built-in wake word), not ~0.8 s after it (a template).
    pub at_phrase_end: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum WakeError {
    #[error("cannot load wake word {what}: {reason}")]
    Load { what: String, reason: String },
    #[error("cannot start the wake-word detector: {0}")]
    Init(String),
    #[error("the wake-word detector needs 16-bit audio in whole frames; audio.frame_ms {0} gives none")]
    Frame(u32),
}

/// The last frames, for handing over with a detection (pre-roll) and for the detector to catch up on.
pub struct Preroll {
    frames: VecDeque<Frame>,
    capacity: usize,
}

impl Preroll {
    pub fn new(capacity: usize) -> Self {
        Preroll { frames: VecDeque::with_capacity(capacity + 1), capacity }
    }

    pub fn push(&mut self, frame: Frame) {
        if self.capacity == 0 {
            return;
        }
        if self.frames.len() == self.capacity {
            self.frames.pop_front();
        }
        self.frames.push_back(frame);
    }

    /// The newest `n` frames, oldest first.
    pub fn last(&self, n: usize) -> impl Iterator<Item = &Frame> {
        self.frames.iter().skip(self.frames.len().saturating_sub(n))
    }

    pub fn clear(&mut self) {
        self.frames.clear();
    }
}

/// Counters, for status and benchmarks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DetectorStats {
    pub frames: u64,
    /// Frames the engines looked at (the rest were gated out).
    pub frames_scored: u64,
    pub detections: u64,
    /// Detections dropped inside `wake.refractory_ms` of the previous one.
    pub refractory_drops: u64,
}

/// A rustpotter that reports every score `model` gives (threshold 0.01, one frame is enough), for scoring a
/// stretch of audio rather than watching a stream. The averaged-sample check is `rc`'s.
pub(crate) fn scorer(mut rc: RustpotterConfig, model: &[u8]) -> Result<Rustpotter, String> {
    rc.detector.threshold = 0.01;
    rc.detector.min_scores = 1;
    let mut rp = Rustpotter::new(&rc)?;
    rp.add_wakeword_from_buffer("model", model)?;
    Ok(rp)
}

/// The best score a [`scorer`] gives `audio`, partial detections included, starting afresh.
pub(crate) fn best_score<'a>(rp: &mut Rustpotter, audio: impl IntoIterator<Item = &'a [i16]>) -> f32 {
    rp.reset();
    let mut chunks = Rechunker::new(rp.get_bytes_per_frame());
    let mut best = 0.0f32;
    for pcm in audio {
        let note = |rp: &Rustpotter| {
            if let Some(p) = rp.get_partial_detection() {
                best = best.max(p.score);
            }
        };
        if let Some(d) = chunks.feed(rp, pcm, note) {
            best = best.max(d.score);
        }
    }
    best
}

/// rustpotter's configuration for `wake` at the rate of `spec`.
fn rustpotter_config(cfg: &WakeConfig, spec: FrameSpec) -> RustpotterConfig {
    let mut rc = RustpotterConfig::default();
    rc.fmt.sample_rate = spec.sample_rate as usize;
    rc.fmt.sample_format = SampleFormat::I16;
    rc.fmt.channels = 1;
    rc.detector.threshold = cfg.threshold as f32;
    rc.detector.avg_threshold = cfg.avg_threshold as f32;
    rc.detector.min_scores = cfg.min_scores as usize;
    rc.detector.eager = cfg.eager;
    rc.detector.score_mode = match cfg.score_mode {
        ScoreMode::Max => RpScoreMode::Max,
        ScoreMode::Average => RpScoreMode::Average,
        ScoreMode::Median => RpScoreMode::Median,
        ScoreMode::P25 => RpScoreMode::P25,
        ScoreMode::P50 => RpScoreMode::P50,
        ScoreMode::P75 => RpScoreMode::P75,
        ScoreMode::P80 => RpScoreMode::P80,
        ScoreMode::P90 => RpScoreMode::P90,
        ScoreMode::P95 => RpScoreMode::P95,
    };
    rc.filters.gain_normalizer.enabled = cfg.gain_normalizer;
    rc.filters.band_pass.enabled = cfg.band_pass;
    rc.filters.band_pass.low_cutoff = cfg.band_pass_low_hz as f32;
    rc.filters.band_pass.high_cutoff = cfg.band_pass_high_hz as f32;
    rc
}

/// Cuts our frames into rustpotter's (30 ms, s16le bytes) in a buffer allocated once.
struct Rechunker {
    chunk: Vec<u8>,
    fill: usize,
}

impl Rechunker {
    fn new(bytes: usize) -> Self {
        Rechunker { chunk: vec![0; bytes], fill: 0 }
    }

    fn clear(&mut self) {
        self.fill = 0;
    }

    /// Calls `rp.process_bytes` on each completed chunk; returns the last detection.
    fn feed(&mut self, rp: &mut Rustpotter, pcm: &[i16], mut each: impl FnMut(&Rustpotter)) -> Option<rustpotter::RustpotterDetection> {
        let mut found = None;
        for s in pcm {
            let b = s.to_le_bytes();
            self.chunk[self.fill] = b[0];
            self.chunk[self.fill + 1] = b[1];
            self.fill += 2;
            if self.fill == self.chunk.len() {
                self.fill = 0;
                if let Some(d) = rp.process_bytes(&self.chunk) {
                    found = Some(d);
                }
                each(rp);
            }
        }
        found
    }
}

/// A wake word's name and figures, from whichever engine heard it.
#[derive(Debug, Clone)]
struct Hit {
    name: String,
    score: f32,
    avg_score: f32,
}

/// A detector engine: rustpotter (the .rpw files, with the `wake` section's settings) or the convolutional
/// network (a built-in, with its own).
enum Engine {
    /// `eager`: it reports at `min_scores` windows, at the end of the phrase, not ~0.8 s after it.
    Rustpotter { rp: Box<Rustpotter>, chunks: Rechunker, eager: bool },
    Conv(Box<conv::Engine>),
}

impl Engine {
    fn rustpotter(rp: Rustpotter, eager: bool) -> Self {
        let chunks = Rechunker::new(rp.get_bytes_per_frame());
        Engine::Rustpotter { rp: Box::new(rp), chunks, eager }
    }

    fn reset(&mut self) {
        match self {
            Engine::Rustpotter { rp, chunks, .. } => {
                rp.reset();
                chunks.clear();
            }
            Engine::Conv(c) => c.reset(),
        }
    }

    /// A detection is under way: the gate stays open for it.
    fn in_progress(&self) -> bool {
        match self {
            Engine::Rustpotter { rp, .. } => rp.get_partial_detection().is_some(),
            Engine::Conv(c) => c.in_progress(),
        }
    }

    /// Audio it catches up on when the gate opens: the convolutional network needs a whole window.
    fn lookback_ms(&self) -> u64 {
        match self {
            Engine::Rustpotter { .. } => LOOKBACK_MS,
            Engine::Conv(_) => CONV_LOOKBACK_MS,
        }
    }

    /// Its detections come at the end of the phrase, not ~0.8 s after it (rustpotter's templates, unless eager).
    fn at_phrase_end(&self) -> bool {
        match self {
            Engine::Rustpotter { eager, .. } => *eager,
            Engine::Conv(_) => true,
        }
    }

    /// The last detection `pcm` completes.
    fn feed(&mut self, pcm: &[i16]) -> Option<Hit> {
        match self {
            Engine::Rustpotter { rp, chunks, .. } => {
                chunks.feed(rp, pcm, |_| {}).map(|d| Hit { name: d.name, score: d.score, avg_score: d.avg_score })
            }
            Engine::Conv(c) => c.feed(pcm).map(|h| Hit { name: c.name().to_string(), score: h.score, avg_score: h.avg_score }),
        }
    }
}

/// The engines `cfg` asks for: one per built-in (by default `builtin:jarvis`), and one rustpotter for the
/// files.
fn engines(cfg: &WakeConfig, spec: FrameSpec) -> Result<Vec<Engine>, WakeError> {
    let models = cfg.models_or_default();
    let mut out = Vec::new();
    let mut files = Vec::new();
    for m in models.iter() {
        match m {
            ModelRef::Builtin(name) => {
                let b = builtin::find(name).map_err(|reason| WakeError::Load { what: m.to_string(), reason })?;
                let model = b.load().map_err(|reason| WakeError::Load { what: m.to_string(), reason })?;
                let e = conv::Engine::new(model, b.margin(cfg.sensitivity), b.min_scores, spec.sample_rate).map_err(WakeError::Init)?;
                out.push(Engine::Conv(Box::new(e)));
            }
            ModelRef::File(path) => files.push(path),
        }
    }
    if !files.is_empty() {
        let mut rp = Rustpotter::new(&rustpotter_config(cfg, spec)).map_err(WakeError::Init)?;
        for (i, path) in files.iter().enumerate() {
            // Each model under its own key: one key holds one wake word.
            rp.add_wakeword_from_file(&format!("model{i}"), &path.to_string_lossy())
                .map_err(|reason| WakeError::Load { what: path.display().to_string(), reason })?;
        }
        out.push(Engine::rustpotter(rp, cfg.eager));
    }
    Ok(out)
}

pub struct Detector {
    engines: Vec<Engine>,
    gate: Option<gate::Gate>,
    ring: Preroll,
    preroll_frames: usize,
    /// The longest look-back an engine needs, in frames.
    lookback_frames: usize,
    frame_ms: u64,
    refractory_ms: u64,
    last_detection_ms: Option<u64>,
    /// Frames went by unscored ([`Detector::rest`]): the next scored one starts afresh on the look-back.
    rested: bool,
    pub stats: DetectorStats,
}

impl Detector {
    pub fn new(cfg: &WakeConfig, spec: FrameSpec, preroll_ms: u64) -> Result<Self, WakeError> {
        let engines = engines(cfg, spec)?;
        let frame_ms = spec.frame_ms as u64;
        let lookback_frames = engines.iter().map(|e| e.lookback_ms().div_ceil(frame_ms) as usize).max().unwrap_or(0);
        let preroll_frames = (preroll_ms / frame_ms) as usize;
        Ok(Detector {
            engines,
            gate: cfg.gate.then(|| gate::Gate::new(cfg.gate_margin_db as f32, (GATE_HANGOVER_MS / frame_ms) as usize)),
            ring: Preroll::new(preroll_frames.max(lookback_frames)),
            preroll_frames,
            lookback_frames,
            frame_ms,
            refractory_ms: cfg.refractory_ms,
            last_detection_ms: None,
            rested: false,
            stats: DetectorStats::default(),
        })
    }

    /// Takes one frame; returns a detection completed by it.
    pub fn push(&mut self, frame: Frame) -> Option<Detection> {
        self.stats.frames += 1;
        let seq = frame.seq;
        let mut verdict = match self.gate.as_mut() {
            Some(g) => g.check(level_dbfs(&frame.pcm), self.engines.iter().any(Engine::in_progress)),
            None => gate::Verdict::Open,
        };
        if std::mem::take(&mut self.rested) && verdict == gate::Verdict::Open {
            verdict = gate::Verdict::Opened;
        }
        let mut found = None;
        match verdict {
            gate::Verdict::Closed => {}
            gate::Verdict::Opened => {
                // Each engine starts afresh on the audio just before the onset, then this frame.
                self.stats.frames_scored += self.ring.last(self.lookback_frames).count() as u64 + 1;
                for e in &mut self.engines {
                    e.reset();
                    let back = e.lookback_ms().div_ceil(self.frame_ms) as usize;
                    for f in self.ring.last(back) {
                        found = better(found, e.feed(&f.pcm), e);
                    }
                    found = better(found, e.feed(&frame.pcm), e);
                }
            }
            gate::Verdict::Open => {
                self.stats.frames_scored += 1;
                for e in &mut self.engines {
                    found = better(found, e.feed(&frame.pcm), e);
                }
            }
        }
        self.ring.push(frame);
        let (hit, at_phrase_end) = found?;
        let t_ms = (seq + 1) * self.frame_ms;
        if self.last_detection_ms.is_some_and(|last| t_ms < last + self.refractory_ms) {
            self.stats.refractory_drops += 1;
            return None;
        }
        self.last_detection_ms = Some(t_ms);
        self.stats.detections += 1;
        let preroll = self.ring.last(self.preroll_frames).cloned().collect();
        Some(Detection { wakeword: hit.name, score: hit.score, avg_score: hit.avg_score, t_ms, seq, preroll, at_phrase_end })
    }

    /// Takes one frame without scoring it (a session is open: a wake word would not be acted on). The frame
    /// joins the recent audio and the gate's noise floor; scoring resumes afresh, on the look-back, with the
    /// next [`Detector::push`].
    pub fn rest(&mut self, frame: Frame) {
        self.stats.frames += 1;
        if let Some(g) = self.gate.as_mut() {
            g.check(level_dbfs(&frame.pcm), false);
        }
        self.rested = true;
        self.ring.push(frame);
    }

    /// Whether the detector scores the frames it is given (its gate is open): they are then wanted as soon as
    /// they are captured.
    pub fn listening(&self) -> bool {
        self.gate.as_ref().is_none_or(|g| g.is_open())
    }

    /// The last `preroll_ms` of audio: the pre-roll of a session opened by other means than a detection.
    pub fn recent(&self) -> Vec<Frame> {
        self.ring.last(self.preroll_frames).cloned().collect()
    }

    /// Forgets all audio heard so far (after a mute: nothing from before it may reach a session).
    pub fn forget(&mut self) {
        self.ring.clear();
        self.engines.iter_mut().for_each(Engine::reset);
    }
}

/// The better of a detection so far and an engine's new one (the higher score), with whether it came at the
/// end of the phrase.
fn better(so_far: Option<(Hit, bool)>, new: Option<Hit>, engine: &Engine) -> Option<(Hit, bool)> {
    match (so_far, new) {
        (Some(s), Some(n)) if n.score <= s.0.score => Some(s),
        (s, None) => s,
        (_, Some(n)) => Some((n, engine.at_phrase_end())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64) -> Frame {
        Frame { seq, captured: std::time::Instant::now(), pcm: vec![seq as i16; 4] }
    }

    #[test]
    fn preroll_keeps_the_newest_in_order() {
        let mut p = Preroll::new(3);
        for s in 0..5 {
            p.push(frame(s));
        }
        assert_eq!(p.last(10).map(|f| f.seq).collect::<Vec<_>>(), vec![2, 3, 4]);
        assert_eq!(p.last(2).map(|f| f.seq).collect::<Vec<_>>(), vec![3, 4]);
        let mut none = Preroll::new(0);
        none.push(frame(0));
        assert_eq!(none.last(1).count(), 0);
    }

    #[test]
    fn digital_silence_is_not_scored_once_the_gate_has_learnt_it() {
        let spec = FrameSpec { sample_rate: 16000, frame_ms: 20 };
        let mut d = Detector::new(&WakeConfig::default(), spec, 2000).unwrap();
        for seq in 0..1000 {
            assert!(d.push(Frame { seq, captured: std::time::Instant::now(), pcm: vec![0; 320] }).is_none());
        }
        // Open for the first two seconds, until the floor is known; closed for the eighteen after.
        assert!(d.stats.frames_scored <= 2 * GATE_HANGOVER_MS / 20, "{:?}", d.stats);
    }

    #[test]
    fn a_resting_detector_scores_nothing_and_resumes_on_the_look_back() {
        let spec = FrameSpec { sample_rate: 16000, frame_ms: 20 };
        let mut d = Detector::new(&WakeConfig::default(), spec, 2000).unwrap();
        let loud = |seq| Frame { seq, captured: std::time::Instant::now(), pcm: (0..320).map(|i| if i % 2 == 0 { 3000 } else { -3000 }).collect() };
        for seq in 0..300 {
            d.push(Frame { seq, captured: std::time::Instant::now(), pcm: vec![0; 320] });
        }
        assert!(!d.listening());
        let scored = d.stats.frames_scored;
        for seq in 300..400 {
            d.rest(loud(seq));
        }
        assert_eq!(d.stats.frames_scored, scored, "a resting detector scores nothing");
        assert!(d.listening(), "the gate keeps following the audio while resting");
        assert_eq!(d.recent().last().map(|f| f.seq), Some(399), "and the recent audio too");
        // The gate is open, but scoring starts afresh: the look-back first, then the frame.
        d.push(loud(400));
        assert_eq!(d.stats.frames_scored, scored + CONV_LOOKBACK_MS.div_ceil(20) + 1);
        d.push(loud(401));
        assert_eq!(d.stats.frames_scored, scored + CONV_LOOKBACK_MS.div_ceil(20) + 2);
    }
}
