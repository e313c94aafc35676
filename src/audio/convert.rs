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
    frame: Vec<i16>,
    frame_len: usize,
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
            frame: Vec::with_capacity(frame_len),
            frame_len,
        })
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
            return push_out(&mut self.frame, self.frame_len, sample, emit);
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
        drain_output(r, produced, &mut self.frame, self.frame_len, emit)
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
                if !drain_output(r, produced.min(wanted), &mut self.frame, self.frame_len, emit) {
                    return false;
                }
            }
        }
        if !self.frame.is_empty() {
            self.frame.resize(self.frame_len, 0);
            let full = std::mem::replace(&mut self.frame, Vec::with_capacity(self.frame_len));
            return emit(full);
        }
        true
    }
}

fn drain_output(
    r: &mut Resampling,
    produced: usize,
    frame: &mut Vec<i16>,
    frame_len: usize,
    emit: &mut dyn FnMut(Vec<i16>) -> bool,
) -> bool {
    let skip = r.skip.min(produced);
    r.skip -= skip;
    for &s in &r.output[0][skip..produced] {
        r.frames_out += 1;
        if !push_out(frame, frame_len, s, emit) {
            return false;
        }
    }
    true
}

fn push_out(frame: &mut Vec<i16>, frame_len: usize, sample: f32, emit: &mut dyn FnMut(Vec<i16>) -> bool) -> bool {
    frame.push(to_i16(sample));
    if frame.len() == frame_len {
        let full = std::mem::replace(frame, Vec::with_capacity(frame_len));
        return emit(full);
    }
    true
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
