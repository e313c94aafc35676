//! The built-in wake words: rustpotter neural models trained on real people's recordings (the recipe is
//! `scripts/wake/`, the figures are in docs/BENCHMARKS.md), embedded in the binary.
//!
//! A built-in comes with its own detector settings, measured on the benchmark; the one a user turns is
//! `wake.sensitivity`, which moves the model's decision margin between its strict and its lax end.

/// rustpotter's score reference (`score_ref` 0.22, times 10): a neural model's score is
/// sigmoid((margin − R) / R), where the margin is how far its wake-word output is above its "none" output.
const SCORE_REF: f32 = 2.2;

/// One built-in wake word.
#[derive(Debug)]
pub struct Builtin {
    /// What `wake.models` calls it (`builtin:NAME`) and what its detections are named.
    pub name: &'static str,
    pub model: &'static [u8],
    /// The decision margin at sensitivity 0 (strictest) and at sensitivity 1 (laxest).
    strict_margin: f32,
    lax_margin: f32,
    /// Windows over the margin needed for a detection (rustpotter's `min_scores`, eager).
    pub min_scores: usize,
}

impl Builtin {
    /// rustpotter's score threshold for `sensitivity` (0 to 1).
    pub fn threshold(&self, sensitivity: f64) -> f32 {
        let s = sensitivity.clamp(0.0, 1.0) as f32;
        let margin = self.strict_margin + (self.lax_margin - self.strict_margin) * s;
        1.0 / (1.0 + (-(margin - SCORE_REF) / SCORE_REF).exp())
    }
}

/// The built-in wake words; the first is the default.
pub const BUILTINS: &[Builtin] = &[Builtin {
    name: "jarvis",
    model: include_bytes!("../../assets/wake/jarvis.rpw"),
    strict_margin: 8.0,
    lax_margin: 2.2,
    min_scores: 12,
}];

/// The default wake word (`wake.models = []`).
pub fn default() -> &'static Builtin {
    &BUILTINS[0]
}

/// The built-in called `name`, or why there is none (naming the ones there are), for `check-config` and the
/// detector alike.
pub fn find(name: &str) -> Result<&'static Builtin, String> {
    BUILTINS.iter().find(|b| b.name == name).ok_or_else(|| {
        let names = BUILTINS.iter().map(|b| b.name).collect::<Vec<_>>().join(", ");
        format!("there is no built-in wake word {name:?} (built-in: {names})")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sensitivity_moves_the_threshold_down_and_the_middle_is_between() {
        let b = default();
        let (strict, mid, lax) = (b.threshold(0.0), b.threshold(0.5), b.threshold(1.0));
        assert!(strict > mid && mid > lax, "{strict} {mid} {lax}");
        assert!((lax - 0.5).abs() < 1e-6, "margin R is score 0.5: {lax}");
        assert_eq!(b.threshold(7.0), b.threshold(1.0));
    }

    #[test]
    fn every_builtin_loads_into_rustpotter() {
        for b in BUILTINS {
            let mut rp = rustpotter::Rustpotter::new(&rustpotter::RustpotterConfig::default()).unwrap();
            rp.add_wakeword_from_buffer(b.name, b.model).unwrap_or_else(|e| panic!("{}: {e}", b.name));
        }
        assert!(find("jarvis").is_ok());
        assert_eq!(find("hey_jarvis").unwrap_err(), "there is no built-in wake word \"hey_jarvis\" (built-in: jarvis)");
        assert_eq!(default().name, "jarvis");
    }
}
