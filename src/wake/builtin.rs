//! The built-in wake words: convolutional models ([`super::conv`]) trained on real people's recordings (the
//! recipe is `scripts/wake/conv.py`, the figures are in docs/BENCHMARKS.md), embedded in the binary.
//!
//! A built-in comes with its own detector settings, measured on the benchmark; the one a user turns is
//! `wake.sensitivity`, which moves the model's decision margin between its strict and its lax end.

use std::sync::Arc;

use super::conv::Model;

/// One built-in wake word.
#[derive(Debug)]
pub struct Builtin {
    /// What `wake.models` calls it (`builtin:NAME`) and what its detections are named.
    pub name: &'static str,
    model: &'static [u8],
    /// The decision margin at sensitivity 0 (strictest) and at sensitivity 1 (laxest).
    strict_margin: f32,
    lax_margin: f32,
    /// Windows at or over the margin needed for a detection.
    pub min_scores: usize,
}

impl Builtin {
    /// The decision margin for `sensitivity` (0 to 1).
    pub fn margin(&self, sensitivity: f64) -> f32 {
        let s = sensitivity.clamp(0.0, 1.0) as f32;
        self.strict_margin + (self.lax_margin - self.strict_margin) * s
    }

    /// The model file's bytes.
    pub fn model_bytes(&self) -> &'static [u8] {
        self.model
    }

    /// The model, read and checked.
    pub fn load(&self) -> Result<Arc<Model>, String> {
        let mut m = Model::from_bytes(self.model)?;
        m.name = self.name.to_string();
        Ok(Arc::new(m))
    }
}

/// The built-in wake words; the first is the default.
pub const BUILTINS: &[Builtin] = &[Builtin {
    name: "jarvis",
    model: include_bytes!("../../assets/wake/jarvis.vxc"),
    strict_margin: 16.0,
    lax_margin: 4.0,
    min_scores: 1,
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
    fn sensitivity_moves_the_margin_down_and_the_middle_is_between() {
        let b = default();
        let (strict, mid, lax) = (b.margin(0.0), b.margin(0.5), b.margin(1.0));
        assert!(strict > mid && mid > lax, "{strict} {mid} {lax}");
        assert_eq!(b.margin(7.0), b.margin(1.0));
        assert_eq!(b.margin(-1.0), b.margin(0.0));
    }

    #[test]
    fn every_builtin_loads() {
        for b in BUILTINS {
            let m = b.load().unwrap_or_else(|e| panic!("{}: {e}", b.name));
            assert_eq!(m.name, b.name);
        }
        assert!(find("jarvis").is_ok());
        assert_eq!(find("hey_jarvis").unwrap_err(), "there is no built-in wake word \"hey_jarvis\" (built-in: jarvis)");
        assert_eq!(default().name, "jarvis");
    }
}
