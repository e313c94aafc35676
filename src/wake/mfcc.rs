//! The convolutional engine's features: rustpotter's MFCCs, computed the same way value for value (the
//! training scripts' `scripts/wake/features.py` is their twin in numpy), one frame at a time.
//!
//! 30 ms frames every 10 ms at 16 kHz. Each 10 ms part is pre-emphasised on its own (0.97, the part's first
//! sample kept); a frame is the last three parts, Hamming-windowed; its power spectrum (the first 240 bins)
//! goes through a bank of 17 triangular mel filters, then a log and a DCT-II (times 2), and the first
//! coefficient is dropped: 16 coefficients.

use std::sync::Arc;

use realfft::{RealFftPlanner, RealToComplex};
use realfft::num_complex::Complex;

pub const RATE: u32 = 16_000;
/// Samples per part (10 ms): a frame comes out every part.
pub const SHIFT: usize = 160;
/// Samples per frame (30 ms).
const FRAME: usize = 3 * SHIFT;
/// Spectrum bins used.
const BINS: usize = FRAME / 2;
/// Coefficients per frame.
pub const COEFFICIENTS: usize = 16;
/// Mel filters (and DCT size): one more than the coefficients kept.
const FILTERS: usize = COEFFICIENTS + 1;
const PRE_EMPHASIS: f32 = 0.97;

/// The tables, made once per detector.
struct Tables {
    hamming: [f32; FRAME],
    /// Each filter's first bin and its weights from there.
    filters: Vec<(usize, Vec<f32>)>,
    /// DCT-II rows for coefficients 1..=16 (times 2).
    dct: [[f32; FILTERS]; COEFFICIENTS],
}

impl Tables {
    fn new() -> Self {
        let mut hamming = [0.0; FRAME];
        for (n, h) in hamming.iter_mut().enumerate() {
            *h = (0.54 - 0.46 * (2.0 * std::f64::consts::PI * n as f64 / (FRAME - 1) as f64).cos()) as f32;
        }
        let mut dct = [[0.0; FILTERS]; COEFFICIENTS];
        for (k, row) in dct.iter_mut().enumerate() {
            for (m, d) in row.iter_mut().enumerate() {
                *d = (2.0 * (std::f64::consts::PI / FILTERS as f64 * (m as f64 + 0.5) * (k + 1) as f64).cos()) as f32;
            }
        }
        Tables { hamming, filters: filter_bank(), dct }
    }
}

/// rustpotter's mel filter bank, with its f32 arithmetic: the centres are whole bins.
fn filter_bank() -> Vec<(usize, Vec<f32>)> {
    let mel = |f: f64| 1127.0 * (1.0 + f / 700.0).ln();
    let max_mel = (mel(RATE as f64 / 2.0) as f32).floor();
    let min_mel = (mel(0.0) as f32).floor();
    let per_mel = (1.0f32 + 1000.0 / 700.0).ln() / 1000.0;
    let centres: Vec<usize> = (0..FILTERS + 2)
        .map(|i| {
            let f = i as f32 * (max_mel - min_mel) / (FILTERS + 1) as f32 + min_mel;
            let hz = ((f * per_mel).exp() - 1.0) / (RATE as f32 / 2.0);
            (0.5 + 700.0 * BINS as f32 * hz).floor() as usize
        })
        .collect();
    (0..FILTERS)
        .map(|i| {
            let (a, c, b) = (centres[i], centres[i + 1], centres[i + 2].min(BINS));
            let rise = (a..c).map(|k| (k - a) as f32 / (c - a) as f32);
            let fall = (c..b).map(|k| (b - k) as f32 / (b - c) as f32);
            (a, rise.chain(fall).collect())
        })
        .collect()
}

/// Turns 16 kHz samples into MFCC frames, one per 10 ms, allocating nothing after it is made.
pub struct Mfcc {
    tables: Tables,
    fft: Arc<dyn RealToComplex<f32>>,
    /// The part being filled (raw samples).
    part: [f32; SHIFT],
    fill: usize,
    /// The last three pre-emphasised parts, oldest first, and how many there are.
    parts: [f32; FRAME],
    have: usize,
    input: Vec<f32>,
    spectrum: Vec<Complex<f32>>,
    scratch: Vec<Complex<f32>>,
}

impl Default for Mfcc {
    fn default() -> Self {
        Self::new()
    }
}

impl Mfcc {
    pub fn new() -> Self {
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(FRAME);
        let (input, spectrum, scratch) = (fft.make_input_vec(), fft.make_output_vec(), fft.make_scratch_vec());
        Mfcc { tables: Tables::new(), fft, part: [0.0; SHIFT], fill: 0, parts: [0.0; FRAME], have: 0, input, spectrum, scratch }
    }

    /// Forgets the audio so far: the next frame comes 30 ms after the next sample.
    pub fn reset(&mut self) {
        self.fill = 0;
        self.have = 0;
    }

    /// Takes samples; calls `each` with every frame they complete.
    pub fn push(&mut self, pcm: &[i16], mut each: impl FnMut(&[f32; COEFFICIENTS])) {
        for &s in pcm {
            self.part[self.fill] = s as f32 / 32767.0;
            self.fill += 1;
            if self.fill < SHIFT {
                continue;
            }
            self.fill = 0;
            self.parts.copy_within(SHIFT.., 0);
            let newest = &mut self.parts[FRAME - SHIFT..];
            newest[0] = self.part[0];
            for (e, p) in newest[1..].iter_mut().zip(self.part.windows(2)) {
                *e = p[1] - PRE_EMPHASIS * p[0];
            }
            self.have = (self.have + 1).min(3);
            if self.have == 3 {
                each(&self.frame());
            }
        }
    }

    fn frame(&mut self) -> [f32; COEFFICIENTS] {
        let t = &self.tables;
        for ((x, p), h) in self.input.iter_mut().zip(&self.parts).zip(&t.hamming) {
            *x = p * h;
        }
        // The lengths are the plan's own: this cannot fail.
        let _ = self.fft.process_with_scratch(&mut self.input, &mut self.spectrum, &mut self.scratch);
        let mut logs = [0.0f32; FILTERS];
        for (l, (start, weights)) in logs.iter_mut().zip(&t.filters) {
            let power: f32 = weights.iter().zip(&self.spectrum[*start..]).map(|(w, c)| w * c.norm_sqr()).sum();
            *l = (power + f32::MIN_POSITIVE).ln();
        }
        let mut out = [0.0f32; COEFFICIENTS];
        for (o, row) in out.iter_mut().zip(&t.dct) {
            *o = row.iter().zip(&logs).map(|(d, l)| d * l).sum();
        }
        out
    }
}
