//! The built-in sounds: short tone sequences made at start-up, so that no sound file has to ship.

use super::Clip;

const RATE: u32 = 16_000;

/// Tones of (frequency Hz, length ms); 0 Hz is a pause. Each tone fades in and out over 5 ms, so it does not click.
fn tones(name: &str, parts: &[(f32, u32)]) -> Clip {
    let mut samples = Vec::new();
    let fade = (RATE as usize * 5 / 1000) as f32;
    for &(hz, ms) in parts {
        let n = RATE as usize * ms as usize / 1000;
        for i in 0..n {
            let env = (i as f32 / fade).min((n - 1 - i) as f32 / fade).min(1.0);
            let v = if hz == 0.0 { 0.0 } else { 0.3 * env * (std::f32::consts::TAU * hz * i as f32 / RATE as f32).sin() };
            samples.push(crate::audio::convert::to_i16(v));
        }
    }
    Clip::new(name, RATE, samples)
}

/// Rising: the daemon is listening to you.
pub fn wake() -> Clip {
    tones("built-in wake chime", &[(880.0, 70), (0.0, 20), (1320.0, 90)])
}

/// Falling: it has stopped listening.
pub fn end() -> Clip {
    tones("built-in end chime", &[(1320.0, 70), (0.0, 20), (880.0, 90)])
}

/// Low and twice: something went wrong.
pub fn error() -> Clip {
    tones("built-in error chime", &[(330.0, 120), (0.0, 60), (330.0, 120)])
}

#[cfg(test)]
mod tests {
    #[test]
    fn chimes_are_short_and_audible_and_differ() {
        for c in [super::wake(), super::end(), super::error()] {
            assert!(c.duration_ms() > 100 && c.duration_ms() < 400, "{}: {} ms", c.name, c.duration_ms());
            let peak = c.samples.iter().map(|s| s.unsigned_abs()).max().unwrap();
            assert!(peak > 8000 && peak < 11000, "{}: peak {peak}", c.name);
            assert_eq!((c.samples[0], c.samples[c.samples.len() - 1]), (0, 0), "{}: no click", c.name);
        }
        assert_ne!(super::wake().samples, super::end().samples);
    }
}
