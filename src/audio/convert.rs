//! Turns whatever a device or file delivers (interleaved, any channel count, any rate, samples as f32 in
//! [-1, 1)) into frames of mono i16 at the configured rate. Downmixing averages the channels; resampling uses
//! rubato's FFT resampler, with its delay removed so output sample `n` lines up with input time `n / rate`.
//!
//! 16-bit input at the target rate and mono passes through bit for bit: `i16 / 32768` is exact in f32 and
//! the way back rounds to the same integer.

use rubato::{FftFixedIn, Resampler};

use super::AudioError;

/// Input chunk given to the resampler: 10 ms.
const CHUNK_MS: usize = 10;

pub struct Converter {
    channels: usize,
    in_rate: u32,
    out_rate: u32,
    resampler: Option<Resampling>,
    out: Framer,
    /// Device frames lost and not yet turned into output samples (the fraction of one at a rate change).
    lost_rem: u128,
}

/// Cuts output samples into frames, keeping frame boundaries where they would have been without losses.
struct Framer {
    frame: Vec<i16>,
    frame_len: usize,
    /// Output samples to throw away before the next frame starts: the rest of a frame slot a loss cut into.
    discard: usize,
}

struct Resampling {
    rs: FftFixedIn<f32>,
    input: Vec<Vec<f32>>,
    output: Vec<Vec<f32>>,
    /// Output samples still to discard: the resampler's delay.
    skip: usize,
    frames_in: u64,
    frames_out: u64,
}

impl Converter {
    pub fn new(channels: u16, in_rate: u32, out_rate: u32, frame_len: usize) -> Result<Self, AudioError> {
        let resampler = if in_rate == out_rate {
            None
        } else {
            let chunk = (in_rate as usize * CHUNK_MS / 1000).max(1);
            let rs = FftFixedIn::<f32>::new(in_rate as usize, out_rate as usize, chunk, 1, 1).map_err(|e| {
                AudioError::Resampler { from: in_rate, to: out_rate, reason: e.to_string() }
            })?;
            let input = vec![Vec::with_capacity(rs.input_frames_max()); 1];
            let output = rs.output_buffer_allocate(true);
            let skip = rs.output_delay();
            Some(Resampling { rs, input, output, skip, frames_in: 0, frames_out: 0 })
        };
        Ok(Converter {
            channels: channels.max(1) as usize,
            in_rate,
            out_rate,
            resampler,
            out: Framer { frame: Vec::with_capacity(frame_len), frame_len, discard: 0 },
            lost_rem: 0,
        })
    }

    /// `device_frames` of input were lost before the next `push` (a capture ring that overflowed). Returns how
    /// many whole output frames that costs: the partial frame in progress is thrown away, and so is the rest of
    /// the frame slot the loss ends in, so that the frames after it start where they would have started and
    /// their sequence numbers still tell their place in time. The caller advances its sequence by the result.
    pub fn gap(&mut self, device_frames: u64) -> u64 {
        let scaled = device_frames as u128 * self.out_rate as u128 + self.lost_rem;
        self.lost_rem = scaled % self.in_rate as u128;
        let lost_out = (scaled / self.in_rate as u128) as i128;
        let len = self.out.frame_len as i128;
        // Where the audio after the loss falls, counted from the start of the slot the next frame fills.
        let at = self.out.frame.len() as i128 - self.out.discard as i128 + lost_out;
        self.out.frame.clear();
        if at <= 0 {
            self.out.discard = (-at) as usize;
            return 0;
        }
        let slots = (at + len - 1) / len;
        self.out.discard = (slots * len - at) as usize;
        slots as u64
    }

    /// Forgets everything pushed so far: what comes out next is what a new converter would make of the samples
    /// pushed after this.
    pub fn reset(&mut self) {
        if let Some(r) = self.resampler.as_mut() {
            r.rs.reset();
            r.input[0].clear();
            r.skip = r.rs.output_delay();
            r.frames_in = 0;
            r.frames_out = 0;
        }
        self.out.frame.clear();
        self.out.discard = 0;
        self.lost_rem = 0;
    }

    /// Feeds interleaved samples (a whole number of device frames). `emit` receives each complete frame and
    /// returns `false` to stop early; then `push` returns `false` too.
    pub fn push(&mut self, interleaved: &[f32], emit: &mut dyn FnMut(Vec<i16>) -> bool) -> bool {
        let ch = self.channels;
        for group in interleaved.chunks_exact(ch) {
            let mono = if ch == 1 { group[0] } else { group.iter().sum::<f32>() / ch as f32 };
            if !self.push_mono(mono, emit) {
                return false;
            }
        }
        true
    }

    fn push_mono(&mut self, sample: f32, emit: &mut dyn FnMut(Vec<i16>) -> bool) -> bool {
        let Some(r) = self.resampler.as_mut() else {
            return self.out.push(sample, emit);
        };
        r.input[0].push(sample);
        r.frames_in += 1;
        if r.input[0].len() < r.rs.input_frames_next() {
            return true;
        }
        let (_, produced) = match r.rs.process_into_buffer(&r.input, &mut r.output, None) {
            Ok(n) => n,
            // Buffers are sized by the resampler itself; a failure here is a bug, not bad input.
            Err(e) => unreachable!("resampler buffers sized by rubato: {e}"),
        };
        r.input[0].clear();
        drain_output(r, produced, &mut self.out, emit)
    }

    /// Flushes the resampler's tail and pads the last partial frame with silence. Call once at end of input.
    pub fn finish(&mut self, emit: &mut dyn FnMut(Vec<i16>) -> bool) -> bool {
        if let Some(r) = self.resampler.as_mut() {
            let expected = (r.frames_in as u128 * self.out_rate as u128).div_ceil(self.in_rate as u128) as u64;
            while r.frames_out < expected {
                let next = r.rs.input_frames_next();
                r.input[0].resize(next, 0.0);
                let produced = match r.rs.process_into_buffer(&r.input, &mut r.output, None) {
                    Ok((_, n)) => n,
                    Err(e) => unreachable!("resampler buffers sized by rubato: {e}"),
                };
                r.input[0].clear();
                let wanted = (expected - r.frames_out) as usize + r.skip;
                if !drain_output(r, produced.min(wanted), &mut self.out, emit) {
                    return false;
                }
            }
        }
        if !self.out.frame.is_empty() {
            self.out.frame.resize(self.out.frame_len, 0);
            let full = std::mem::replace(&mut self.out.frame, Vec::with_capacity(self.out.frame_len));
            return emit(full);
        }
        true
    }
}

fn drain_output(r: &mut Resampling, produced: usize, out: &mut Framer, emit: &mut dyn FnMut(Vec<i16>) -> bool) -> bool {
    let skip = r.skip.min(produced);
    r.skip -= skip;
    for &s in &r.output[0][skip..produced] {
        r.frames_out += 1;
        if !out.push(s, emit) {
            return false;
        }
    }
    true
}

impl Framer {
    fn push(&mut self, sample: f32, emit: &mut dyn FnMut(Vec<i16>) -> bool) -> bool {
        if self.discard > 0 {
            self.discard -= 1;
            return true;
        }
        self.frame.push(to_i16(sample));
        if self.frame.len() == self.frame_len {
            let full = std::mem::replace(&mut self.frame, Vec::with_capacity(self.frame_len));
            return emit(full);
        }
        true
    }
}

/// A whole mono recording at another rate, cut into frames of `frame_len` (the last one padded with silence).
pub fn resample_all(samples: &[i16], in_rate: u32, out_rate: u32, frame_len: usize) -> Result<Vec<Vec<i16>>, AudioError> {
    let mut conv = Converter::new(1, in_rate, out_rate, frame_len)?;
    let input: Vec<f32> = samples.iter().map(|s| *s as f32 / 32768.0).collect();
    let mut frames = Vec::new();
    let mut keep = |f: Vec<i16>| {
        frames.push(f);
        true
    };
    conv.push(&input, &mut keep);
    conv.finish(&mut keep);
    Ok(frames)
}

/// f32 in [-1, 1) to i16, rounding and clipping.
pub fn to_i16(s: f32) -> i16 {
    (s * 32768.0).round().clamp(-32768.0, 32767.0) as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(conv: &mut Converter, input: &[f32]) -> Vec<Vec<i16>> {
        let mut frames = Vec::new();
        conv.push(input, &mut |f| {
            frames.push(f);
            true
        });
        conv.finish(&mut |f| {
            frames.push(f);
            true
        });
        frames
    }

    #[test]
    fn mono_at_target_rate_is_bit_exact() {
        let pcm: Vec<i16> = (0..3200).map(|i| ((i * 7919) % 65536 - 32768) as i16).collect();
        let input: Vec<f32> = pcm.iter().map(|&s| s as f32 / 32768.0).collect();
        let mut conv = Converter::new(1, 16000, 16000, 320).unwrap();
        let out: Vec<i16> = run(&mut conv, &input).concat();
        assert_eq!(out, pcm);
    }

    #[test]
    fn stereo_is_averaged_and_last_frame_padded() {
        let input = [0.5f32, 0.25, -0.5, -0.25, 0.0, 1.0];
        let mut conv = Converter::new(2, 8000, 8000, 4).unwrap();
        let frames = run(&mut conv, &input);
        assert_eq!(frames, vec![vec![to_i16(0.375), to_i16(-0.375), to_i16(0.5), 0]]);
    }

    #[test]
    fn a_gap_costs_whole_frames_and_keeps_later_frames_in_their_slots() {
        // Frame n of the source holds the value n in every sample: what comes out must keep that.
        let source: Vec<f32> = (0..40u32).flat_map(|n| std::iter::repeat_n(n as f32 / 32768.0, 4)).collect();
        let mut conv = Converter::new(1, 8000, 8000, 4).unwrap();
        let mut out: Vec<(u64, Vec<i16>)> = Vec::new();
        let mut seq = 0u64;
        let mut emit = |f: Vec<i16>, seq: &mut u64| {
            out.push((*seq, f));
            *seq += 1;
            true
        };
        // (source samples delivered, then samples lost): losses mid-frame, at a boundary, shorter than a frame,
        // and two in a row.
        let plan: &[(usize, usize)] = &[(6, 3), (7, 4), (8, 1), (2, 2), (1, 9), (37, 0)];
        let mut at = 0;
        for &(keep, lose) in plan {
            conv.push(&source[at..at + keep], &mut |f| emit(f, &mut seq));
            at += keep;
            if lose > 0 {
                seq += conv.gap(lose as u64);
                at += lose;
            }
        }
        assert_eq!(seq, 20, "seq counts every source frame, sent or lost");
        assert!(out.len() >= 8, "{out:?}");
        for (seq, frame) in &out {
            assert_eq!(frame, &vec![*seq as i16; 4], "frame {seq} holds the audio of source frame {seq}");
        }
    }

    #[test]
    fn a_reset_converter_makes_what_a_new_one_does() {
        let tone = |f: f32| (0..4801).map(move |i| 0.4 * (2.0 * std::f32::consts::PI * f * i as f32 / 48000.0).sin()).collect::<Vec<f32>>();
        for (in_rate, out_rate) in [(48000, 16000), (22050, 16000), (16000, 16000)] {
            // Audio, a loss and part of a frame, all forgotten.
            let mut used = Converter::new(1, in_rate, out_rate, 160).unwrap();
            used.gap(7);
            assert!(!run(&mut used, &tone(300.0)).is_empty());
            used.reset();
            let fresh = run(&mut Converter::new(1, in_rate, out_rate, 160).unwrap(), &tone(1000.0));
            assert!(!fresh.is_empty());
            assert_eq!(run(&mut used, &tone(1000.0)), fresh, "{in_rate} → {out_rate}");
        }
    }

    #[test]
    fn resampling_keeps_duration_and_phase() {
        // 1 s of a 440 Hz tone at 48 kHz → 16 kHz: 16000 samples, still 440 Hz and in phase.
        let input: Vec<f32> = (0..48000).map(|i| 0.5 * (2.0 * std::f32::consts::PI * 440.0 * i as f32 / 48000.0).sin()).collect();
        let mut conv = Converter::new(1, 48000, 16000, 320).unwrap();
        let out: Vec<i16> = run(&mut conv, &input).concat();
        assert_eq!(out.len(), 16000);
        let err: f64 = (100..15900)
            .map(|i| {
                let want = 0.5 * (2.0 * std::f64::consts::PI * 440.0 * i as f64 / 16000.0).sin();
                (out[i] as f64 / 32768.0 - want).abs()
            })
            .fold(0.0, f64::max);
        assert!(err < 0.01, "max error {err}");
    }
}
