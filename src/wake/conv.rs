//! The convolutional wake-word engine: the built-in wake words' model, a small network over rustpotter's
//! MFCCs trained on real people's recordings (`scripts/wake/conv.py`; figures in docs/BENCHMARKS.md).
//!
//! The network looks at 1 s (100 frames) of features, each less a moving mean (about 1 s): three
//! convolutions along time (kernels 5, 5, 3, each followed by max pooling by 2, 2, 5), a dense layer and a
//! two-way output, whose difference is the *margin* a detection is decided on. Its convolutions are "valid"
//! and its pooling aligned on the window's last frame, so every layer's outputs can be computed once, when
//! their last input arrives, and kept in a ring: one output per layer per 10 ms frame, the same margins as
//! the whole window recomputed each time (checked against the Python model in the tests).
//!
//! A model holds one network or several (up to 8) over the same features, whose margins are averaged: the
//! built-in "jarvis" is two, of different widths, whose errors partly cancel.
//!
//! A model file (`.vxc`) is MessagePack: `{format: "voxgate-conv/1", name, frames: 100, coefficients: 16,
//! ema, members: [{scale: [16], layers: {k1, b1, k2, b2, k3, b3, d1, e1, d2, e2}}, …]}`, each layer
//! `{shape, data}` in f32, convolution kernels as (width, in, out) and dense weights as (in, out).

use serde::Deserialize;

use super::mfcc::{COEFFICIENTS, Mfcc, RATE, SHIFT};
use crate::audio::convert::Converter;

const FORMAT: &str = "voxgate-conv/1";
/// The window the network was trained on, in frames; the layers' shapes below follow from it.
const FRAMES: usize = 100;
const KERNELS: [usize; 3] = [5, 5, 3];
/// The last pooling's outputs within a window, which the dense layer takes.
const POOLED: usize = 4;
/// Margins are shown as scores between 0 and 1 as logistic(margin / MARGIN_SCALE).
const MARGIN_SCALE: f32 = 8.0;
/// After a detection this many frames go by unscored (a fresh window).
const REST_FRAMES: usize = FRAMES;
/// Windows over the margin count towards one detection while each comes within this many frames of the last.
const RUN_FRAMES: usize = FRAMES / 2;

#[derive(Deserialize)]
struct FileModel {
    format: String,
    name: String,
    frames: usize,
    coefficients: usize,
    ema: f64,
    members: Vec<FileMember>,
}

#[derive(Deserialize)]
struct FileMember {
    scale: Vec<f32>,
    layers: FileLayers,
}

#[derive(Deserialize)]
struct FileLayers {
    k1: Tensor,
    b1: Tensor,
    k2: Tensor,
    b2: Tensor,
    k3: Tensor,
    b3: Tensor,
    d1: Tensor,
    e1: Tensor,
    d2: Tensor,
    e2: Tensor,
}

#[derive(Deserialize)]
struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl Tensor {
    /// The data, if the shape is `want` and the values are finite; or what is wrong, naming the layer.
    fn take(self, layer: &str, want: &[usize]) -> Result<Vec<f32>, String> {
        if self.shape != want {
            return Err(format!("layer {layer} has shape {:?}, not {want:?}", self.shape));
        }
        if self.data.len() != want.iter().product::<usize>() {
            return Err(format!("layer {layer} has {} values for shape {want:?}", self.data.len()));
        }
        if self.data.iter().any(|v| !v.is_finite()) {
            return Err(format!("layer {layer} holds a value that is not a finite number"));
        }
        Ok(self.data)
    }
}

/// A loaded, checked model: one network or several, whose margins are averaged.
#[derive(Debug)]
pub struct Model {
    pub name: String,
    ema: f64,
    members: Vec<Member>,
}

/// One network.
#[derive(Debug)]
struct Member {
    inv_scale: [f32; COEFFICIENTS],
    /// Channels of the three convolutions and units of the dense layer.
    widths: [usize; 3],
    hidden: usize,
    k: [Vec<f32>; 3],
    b: [Vec<f32>; 3],
    d1: Vec<f32>,
    e1: Vec<f32>,
    /// The output layer as one difference: margin = e2 + hidden · d2.
    d2: Vec<f32>,
    e2: f32,
}

/// More networks than this in one model is not a wake word but a mistake (each costs CPU on every frame).
const MAX_MEMBERS: usize = 8;

impl Model {
    /// Reads a model file's bytes; what is wrong with them otherwise.
    pub fn from_bytes(bytes: &[u8]) -> Result<Model, String> {
        let f: FileModel = rmp_serde::from_slice(bytes).map_err(|e| format!("not a voxgate convolutional model ({e})"))?;
        if f.format != FORMAT {
            return Err(format!("format {:?} is not {FORMAT:?}", f.format));
        }
        if f.frames != FRAMES || f.coefficients != COEFFICIENTS {
            return Err(format!("{} frames of {} coefficients; this detector runs {FRAMES} of {COEFFICIENTS}", f.frames, f.coefficients));
        }
        if !(f.ema > 0.0 && f.ema < 1.0) {
            return Err(format!("moving-mean factor {} is not between 0 and 1", f.ema));
        }
        if !(1..=MAX_MEMBERS).contains(&f.members.len()) {
            return Err(format!("{} networks; a model has 1 to {MAX_MEMBERS}", f.members.len()));
        }
        let members = f.members.into_iter().enumerate().map(|(i, m)| Member::new(m).map_err(|e| format!("network {}: {e}", i + 1)));
        Ok(Model { name: f.name, ema: f.ema, members: members.collect::<Result<_, _>>()? })
    }
}

impl Member {
    fn new(f: FileMember) -> Result<Member, String> {
        let scale: [f32; COEFFICIENTS] = f.scale.try_into().map_err(|s: Vec<f32>| format!("{} scales, not {COEFFICIENTS}", s.len()))?;
        if scale.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err("a scale is not a positive number".into());
        }
        let l = f.layers;
        let width = |t: &Tensor| t.shape.last().copied().unwrap_or(0);
        let (c1, c2, c3, hidden) = (width(&l.k1), width(&l.k2), width(&l.k3), width(&l.d1));
        if [c1, c2, c3, hidden].contains(&0) {
            return Err("a layer has no outputs".into());
        }
        let k = [
            l.k1.take("k1", &[KERNELS[0], COEFFICIENTS, c1])?,
            l.k2.take("k2", &[KERNELS[1], c1, c2])?,
            l.k3.take("k3", &[KERNELS[2], c2, c3])?,
        ];
        let b = [l.b1.take("b1", &[c1])?, l.b2.take("b2", &[c2])?, l.b3.take("b3", &[c3])?];
        let d1 = l.d1.take("d1", &[POOLED * c3, hidden])?;
        let e1 = l.e1.take("e1", &[hidden])?;
        let d2 = l.d2.take("d2", &[hidden, 2])?;
        let e2 = l.e2.take("e2", &[2])?;
        Ok(Member {
            inv_scale: scale.map(|s| 1.0 / s),
            widths: [c1, c2, c3],
            hidden,
            k,
            b,
            d1,
            e1,
            d2: d2.chunks(2).map(|w| w[1] - w[0]).collect(),
            e2: e2[1] - e2[0],
        })
    }
}

/// The last `rows` rows of a layer's outputs.
struct Ring {
    data: Vec<f32>,
    width: usize,
    rows: usize,
    /// Where the next row goes.
    next: usize,
    /// Rows pushed since the last reset, up to `rows`.
    have: usize,
}

impl Ring {
    fn new(rows: usize, width: usize) -> Self {
        Ring { data: vec![0.0; rows * width], width, rows, next: 0, have: 0 }
    }

    /// The row `back` steps before the newest (0: the newest).
    fn back(&self, back: usize) -> &[f32] {
        let i = (self.next + self.rows - 1 - back) % self.rows;
        &self.data[i * self.width..(i + 1) * self.width]
    }

    /// Adds a row; whether the ring now holds all its rows (the next layer has what it reaches back over).
    fn push(&mut self, row: &[f32]) -> bool {
        let i = self.next;
        self.data[i * self.width..(i + 1) * self.width].copy_from_slice(row);
        self.next = (i + 1) % self.rows;
        self.have = (self.have + 1).min(self.rows);
        self.have == self.rows
    }

    /// The element-wise maximum of the rows `backs` steps back, into `out`.
    fn max_of(&self, backs: impl IntoIterator<Item = usize>, out: &mut [f32]) {
        out.fill(f32::NEG_INFINITY);
        for b in backs {
            for (o, v) in out.iter_mut().zip(self.back(b)) {
                *o = o.max(*v);
            }
        }
    }

    fn clear(&mut self) {
        self.next = 0;
        self.have = 0;
    }
}

/// `out` = relu(bias + Σ_k rows[k] · kernel[k]), kernel as (k, in, out).
fn conv(rows: &[&[f32]], kernel: &[f32], bias: &[f32], out: &mut [f32]) {
    out.copy_from_slice(bias);
    let width = out.len();
    for (k, row) in rows.iter().enumerate() {
        for (i, &v) in row.iter().enumerate() {
            if v == 0.0 {
                continue;
            }
            let w = &kernel[(k * row.len() + i) * width..][..width];
            for (o, w) in out.iter_mut().zip(w) {
                *o += v * w;
            }
        }
    }
    out.iter_mut().for_each(|o| *o = o.max(0.0));
}

/// The model over a stream of feature frames: one margin per frame once it has seen a whole window.
pub struct Net {
    model: std::sync::Arc<Model>,
    mean: [f64; COEFFICIENTS],
    started: bool,
    streams: Vec<Stream>,
}

impl Net {
    pub fn new(model: std::sync::Arc<Model>) -> Self {
        let streams = model.members.iter().map(Stream::new).collect();
        Net { mean: [0.0; COEFFICIENTS], started: false, streams, model }
    }

    pub fn reset(&mut self) {
        self.started = false;
        self.streams.iter_mut().for_each(Stream::reset);
    }

    /// Takes one feature frame; the margin of the window it ends (the networks' mean), once there is a whole
    /// window.
    pub fn push(&mut self, frame: &[f32; COEFFICIENTS]) -> Option<f32> {
        let m = &self.model;
        if !self.started {
            self.started = true;
            for (mean, v) in self.mean.iter_mut().zip(frame) {
                *mean = *v as f64;
            }
        }
        let mut x = [0.0f32; COEFFICIENTS];
        for i in 0..COEFFICIENTS {
            self.mean[i] += m.ema * (frame[i] as f64 - self.mean[i]);
            x[i] = (frame[i] as f64 - self.mean[i]) as f32;
        }
        let mut sum = 0.0;
        let mut all = true;
        for (s, member) in self.streams.iter_mut().zip(&m.members) {
            match s.push(member, &x) {
                Some(margin) => sum += margin,
                None => all = false,
            }
        }
        all.then(|| sum / self.streams.len() as f32)
    }
}

/// One network's layers over the stream, each kept as a ring of its last outputs.
struct Stream {
    x: Ring,
    c1: Ring,
    p1: Ring,
    c2: Ring,
    p2: Ring,
    c3: Ring,
    p3: Ring,
    /// Scratch rows, one per layer width.
    rows: [Vec<f32>; 3],
    hidden: Vec<f32>,
}

impl Stream {
    fn new(m: &Member) -> Self {
        let [a, b, c] = m.widths;
        // Each ring holds what the next layer reaches back over (see the module's note on alignment).
        Stream {
            x: Ring::new(KERNELS[0], COEFFICIENTS),
            c1: Ring::new(2, a),
            p1: Ring::new(2 * (KERNELS[1] - 1) + 1, a),
            c2: Ring::new(3, b),
            p2: Ring::new(4 * (KERNELS[2] - 1) + 1, b),
            c3: Ring::new(17, c),
            p3: Ring::new(20 * (POOLED - 1) + 1, c),
            rows: [vec![0.0; a], vec![0.0; b], vec![0.0; c]],
            hidden: vec![0.0; m.hidden],
        }
    }

    fn reset(&mut self) {
        for r in [&mut self.x, &mut self.c1, &mut self.p1, &mut self.c2, &mut self.p2, &mut self.c3, &mut self.p3] {
            r.clear();
        }
    }

    /// Takes one frame less its moving mean; this network's margin, once it has a whole window.
    fn push(&mut self, m: &Member, frame: &[f32; COEFFICIENTS]) -> Option<f32> {
        let mut x = [0.0f32; COEFFICIENTS];
        for ((x, f), s) in x.iter_mut().zip(frame).zip(&m.inv_scale) {
            *x = f * s;
        }
        if !self.x.push(&x) {
            return None;
        }
        let [r1, r2, r3] = &mut self.rows;
        conv(&[self.x.back(4), self.x.back(3), self.x.back(2), self.x.back(1), self.x.back(0)], &m.k[0], &m.b[0], r1);
        if !self.c1.push(r1) {
            return None;
        }
        self.c1.max_of([0, 1], r1);
        if !self.p1.push(r1) {
            return None;
        }
        conv(&[self.p1.back(8), self.p1.back(6), self.p1.back(4), self.p1.back(2), self.p1.back(0)], &m.k[1], &m.b[1], r2);
        if !self.c2.push(r2) {
            return None;
        }
        self.c2.max_of([0, 2], r2);
        if !self.p2.push(r2) {
            return None;
        }
        conv(&[self.p2.back(8), self.p2.back(4), self.p2.back(0)], &m.k[2], &m.b[2], r3);
        if !self.c3.push(r3) {
            return None;
        }
        self.c3.max_of([0, 4, 8, 12, 16], r3);
        if !self.p3.push(r3) {
            return None;
        }
        // The dense layer is a convolution over the window's four pooled rows: d1 is (4 × c3, hidden).
        conv(&[self.p3.back(60), self.p3.back(40), self.p3.back(20), self.p3.back(0)], &m.d1, &m.e1, &mut self.hidden);
        Some(m.e2 + self.hidden.iter().zip(&m.d2).map(|(h, w)| h * w).sum::<f32>())
    }
}

/// A detection's figures, from the windows that made it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub score: f32,
    pub avg_score: f32,
}

/// A margin as a score between 0 and 1.
pub fn score(margin: f32) -> f32 {
    1.0 / (1.0 + (-margin / MARGIN_SCALE).exp())
}

/// Decides detections on the margins: `need` windows at or over `margin`, each within half a window of the
/// last, make one; then a fresh window goes by before scoring resumes.
#[derive(Debug, Clone)]
pub struct Trigger {
    margin: f32,
    need: usize,
    count: usize,
    countdown: usize,
    rest: usize,
    best: f32,
    sum: f32,
}

impl Trigger {
    pub fn new(margin: f32, need: usize) -> Self {
        Trigger { margin, need: need.max(1), count: 0, countdown: 0, rest: 0, best: f32::MIN, sum: 0.0 }
    }

    /// Whether a detection is under way (windows have counted).
    pub fn in_progress(&self) -> bool {
        self.count > 0
    }

    pub fn reset(&mut self) {
        *self = Trigger::new(self.margin, self.need);
    }

    pub fn push(&mut self, margin: f32) -> Option<Hit> {
        if self.rest > 0 {
            self.rest -= 1;
            return None;
        }
        if self.count > 0 && self.countdown == 0 {
            self.count = 0;
        }
        self.countdown = self.countdown.saturating_sub(1);
        if margin < self.margin {
            return None;
        }
        if self.count == 0 {
            (self.best, self.sum) = (f32::MIN, 0.0);
        }
        self.count += 1;
        self.countdown = RUN_FRAMES;
        self.best = self.best.max(margin);
        self.sum += margin;
        if self.count < self.need {
            return None;
        }
        let hit = Hit { score: score(self.best), avg_score: score(self.sum / self.count as f32) };
        self.reset();
        self.rest = REST_FRAMES;
        Some(hit)
    }
}

/// One model's detector: features, network and trigger, fed samples of any length at the audio's rate (higher
/// rates than 16 kHz are resampled first; lower ones lack the sound above their Nyquist frequency the model
/// listens to, and are refused by [`Engine::new`]).
pub struct Engine {
    mfcc: Mfcc,
    net: Net,
    trigger: Trigger,
    /// The resampler, when the audio is not at 16 kHz, and its input buffer.
    resample: Option<(Box<Converter>, Vec<f32>)>,
}

impl Engine {
    pub fn new(model: std::sync::Arc<Model>, margin: f32, need: usize, rate: u32) -> Result<Self, String> {
        if rate < RATE {
            return Err(rate_problem(rate));
        }
        let resample = (rate != RATE).then(|| resampler(rate).map(|c| (c, Vec::new()))).transpose()?;
        Ok(Engine { mfcc: Mfcc::new(), net: Net::new(model), trigger: Trigger::new(margin, need), resample })
    }

    pub fn name(&self) -> &str {
        &self.net.model.name
    }

    pub fn reset(&mut self) {
        self.mfcc.reset();
        self.net.reset();
        self.trigger.reset();
        if let Some((c, _)) = &mut self.resample {
            // Nothing of the audio before may reach the features.
            c.reset();
        }
    }

    pub fn in_progress(&self) -> bool {
        self.trigger.in_progress()
    }

    /// Takes samples; the last detection they complete.
    pub fn feed(&mut self, pcm: &[i16]) -> Option<Hit> {
        let (net, trigger, mfcc) = (&mut self.net, &mut self.trigger, &mut self.mfcc);
        let mut found = None;
        let mut run = |pcm: &[i16]| {
            mfcc.push(pcm, |frame| {
                if let Some(m) = net.push(frame) {
                    found = trigger.push(m).or(found);
                }
            })
        };
        match &mut self.resample {
            None => run(pcm),
            Some((c, input)) => {
                input.clear();
                input.extend(pcm.iter().map(|s| *s as f32 / 32768.0));
                c.push(input, &mut |part| {
                    run(&part);
                    true
                });
            }
        }
        found
    }

    /// Every margin 16 kHz samples give, for checking the network against its training twin.
    pub fn margins(&mut self, pcm: &[i16]) -> Vec<Option<f32>> {
        let net = &mut self.net;
        let mut out = Vec::new();
        self.mfcc.push(pcm, |frame| out.push(net.push(frame)));
        out
    }
}

/// Why audio at `rate` (below 16 kHz) cannot be listened to by a built-in wake word.
pub fn rate_problem(rate: u32) -> String {
    format!(
        "{rate} Hz is below the {RATE} Hz the built-in wake words listen at (they need the sound up to 8 kHz); \
         use a wake word enrolled at this rate (wake.models), or wake.mode \"always\" or \"manual\""
    )
}

/// A resampler from `rate` to 16 kHz, in 10 ms parts.
fn resampler(rate: u32) -> Result<Box<Converter>, String> {
    Converter::new(1, rate, RATE, SHIFT).map(Box::new).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixtures() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wake")
    }

    /// (frame, margin, raw MFCCs) as the Python model computed them (`conv.py --export`).
    fn reference() -> Vec<(usize, f32, Vec<f32>)> {
        let text = std::fs::read_to_string(fixtures().join("jarvis-margins.tsv")).unwrap();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let v: Vec<&str> = l.split('\t').collect();
                (v[0].parse().unwrap(), v[1].parse().unwrap(), v[2..].iter().map(|c| c.parse().unwrap()).collect())
            })
            .collect()
    }

    fn fixture_pcm() -> Vec<i16> {
        let mut wav = hound::WavReader::open(fixtures().join("stream-en-us_m1.wav")).unwrap();
        assert_eq!(wav.spec().sample_rate, RATE);
        wav.samples::<i16>().map(Result::unwrap).collect()
    }

    #[test]
    fn features_and_margins_are_the_training_models() {
        let pcm = fixture_pcm();
        let mut raw = Vec::new();
        Mfcc::new().push(&pcm, |f| raw.push(*f));
        let model = super::super::builtin::default().load().unwrap();
        let mut engine = Engine::new(model, 0.0, 1, RATE).unwrap();
        // In odd pieces, as frames of any size would come.
        let margins: Vec<Option<f32>> = pcm.chunks(317).flat_map(|c| engine.margins(c)).collect();
        assert_eq!(margins.len(), raw.len());
        assert!(margins[..FRAMES - 1].iter().all(Option::is_none), "no margin before a whole window");
        let want = reference();
        assert!(want.len() > 100);
        for (frame, margin, mfcc) in want {
            for (k, (got, want)) in raw[frame].iter().zip(&mfcc).enumerate() {
                assert!((got - want).abs() <= 1e-3 * want.abs().max(10.0), "frame {frame} coefficient {k}: {got} vs {want}");
            }
            let got = margins[frame].unwrap();
            assert!((got - margin).abs() <= 0.01 * margin.abs().max(1.0), "frame {frame}: margin {got} vs {margin}");
        }
    }

    #[test]
    fn a_detection_needs_its_windows_close_together_then_rests_a_window() {
        let mut t = Trigger::new(5.0, 2);
        assert_eq!(t.push(6.0), None);
        assert!(t.in_progress());
        for _ in 0..RUN_FRAMES - 1 {
            assert_eq!(t.push(0.0), None);
        }
        let hit = t.push(8.0).expect("the second window within half a window of the first");
        assert_eq!(hit.score, score(8.0));
        assert_eq!(hit.avg_score, score(7.0));
        assert!(!t.in_progress());
        // A fresh window goes by unscored.
        for _ in 0..REST_FRAMES {
            assert_eq!(t.push(50.0), None);
        }
        // A second window too late starts a new run.
        assert_eq!(t.push(6.0), None);
        for _ in 0..RUN_FRAMES {
            assert_eq!(t.push(0.0), None);
        }
        assert_eq!(t.push(6.0), None);
        assert!(t.push(6.0).is_some());
    }

    #[test]
    fn a_bad_model_file_says_what_is_wrong() {
        let good = super::super::builtin::BUILTINS[0].model_bytes();
        assert!(Model::from_bytes(good).is_ok());
        assert!(Model::from_bytes(b"not a model").unwrap_err().starts_with("not a voxgate convolutional model"));
        assert!(Model::from_bytes(&good[..good.len() / 2]).unwrap_err().starts_with("not a voxgate convolutional model"));
        let mut v = rmpv::decode::read_value(&mut &good[..]).unwrap();
        let set = |v: &mut rmpv::Value, path: &[&str], to: rmpv::Value| {
            let mut at = v;
            for key in path {
                let rmpv::Value::Map(map) = at else { panic!("{key}: not in a map") };
                at = &mut map.iter_mut().find(|(k, _)| k.as_str() == Some(key)).unwrap().1;
            }
            *at = to;
        };
        let check = |v: &rmpv::Value, want: &str| {
            let mut bytes = Vec::new();
            rmpv::encode::write_value(&mut bytes, v).unwrap();
            assert_eq!(Model::from_bytes(&bytes).unwrap_err(), want);
        };
        let mut bad = v.clone();
        set(&mut bad, &["format"], "voxgate-conv/9".into());
        check(&bad, "format \"voxgate-conv/9\" is not \"voxgate-conv/1\"");
        let rmpv::Value::Map(top) = &mut v else { panic!("not a map") };
        let members = &mut top.iter_mut().find(|(k, _)| k.as_str() == Some("members")).unwrap().1;
        let rmpv::Value::Array(list) = members else { panic!("members: not a list") };
        let first = list[0].clone();
        let mut bad = first.clone();
        set(&mut bad, &["layers", "k2", "shape"], rmpv::Value::Array(vec![5.into(), 3.into(), 7.into()]));
        list.push(bad);
        let n = list.len();
        let c1 = Model::from_bytes(good).unwrap().members[0].widths[0];
        check(&v, &format!("network {n}: layer k2 has shape [5, 3, 7], not [5, {c1}, 7]"));
        let mut bad = first.clone();
        set(&mut bad, &["scale"], rmpv::Value::Array(vec![1.0f32.into(); 3]));
        set_members(&mut v, vec![bad]);
        check(&v, "network 1: 3 scales, not 16");
        set_members(&mut v, vec![first; MAX_MEMBERS + 1]);
        check(&v, "9 networks; a model has 1 to 8");
        set_members(&mut v, vec![]);
        check(&v, "0 networks; a model has 1 to 8");
    }

    fn set_members(v: &mut rmpv::Value, to: Vec<rmpv::Value>) {
        let rmpv::Value::Map(top) = v else { panic!("not a map") };
        top.iter_mut().find(|(k, _)| k.as_str() == Some("members")).unwrap().1 = rmpv::Value::Array(to);
    }
}
