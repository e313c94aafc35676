//! Audio out: the chimes and the spoken answers.
//!
//! The [`speaker`] task decides what plays when: the wake chime on a detection (stopping an answer that plays:
//! the user talks over it), the end chime when the session stops listening, the error chime when a session
//! fails or an answer cannot be played, the answers themselves (a Home Assistant `tts-end` URL, a voxgate/1
//! `say`, `voxgate say`), nothing while muted, everything stopped by `voxgate stop`. Fetching and decoding run
//! off the async runtime; the [`output`] thread plays one clip at a time through a cpal output stream.

pub mod chimes;
pub mod decode;
pub mod echo;
pub mod fetch;
pub mod output;
pub mod speaker;

use std::sync::Arc;

/// A sound, decoded: mono 16-bit at its own rate.
#[derive(Debug, Clone, PartialEq)]
pub struct Clip {
    /// What it is, for events and logs: a file, a URL, "built-in wake chime".
    pub name: String,
    pub rate: u32,
    pub samples: Arc<[i16]>,
}

impl Clip {
    pub fn new(name: &str, rate: u32, samples: Vec<i16>) -> Clip {
        Clip { name: name.to_string(), rate, samples: samples.into() }
    }

    pub fn duration_ms(&self) -> u64 {
        self.samples.len() as u64 * 1000 / self.rate.max(1) as u64
    }
}

/// What a session asks to be said.
#[derive(Debug)]
pub enum Answer {
    /// Audio to fetch (Home Assistant's `tts_output.url`, made absolute; a voxgate/1 `say` URL), with the
    /// bearer token when the URL is the speech server's own.
    Url { url: String, bearer: Option<crate::session::homeassistant::Token> },
    /// Audio the server sent (voxgate/1 `say` with `pcm`).
    Pcm(Clip),
}

/// The sound for `key` (`playback.wake_sound`, …): "" the built-in one, "none" none, else a file (WAV, FLAC or
/// MP3), read and decoded now: blocking work.
pub fn load_sound(key: &str, value: &str, builtin: fn() -> Clip) -> Result<Option<Arc<Clip>>, String> {
    match value {
        "" => Ok(Some(Arc::new(builtin()))),
        "none" => Ok(None),
        path => {
            let bytes = std::fs::read(path).map_err(|e| format!("{key}: cannot read {path}: {e}"))?;
            let ext = std::path::Path::new(path).extension().and_then(|e| e.to_str()).map(str::to_lowercase);
            let clip = decode::decode(path, bytes, ext.as_deref()).map_err(|e| format!("{key}: {path}: {e}"))?;
            Ok(Some(Arc::new(clip)))
        }
    }
}

/// The three sounds of a configuration.
#[derive(Debug, Clone, Default)]
pub struct Sounds {
    pub wake: Option<Arc<Clip>>,
    pub end: Option<Arc<Clip>>,
    pub error: Option<Arc<Clip>>,
}

impl Sounds {
    pub fn load(c: &crate::config::PlaybackConfig) -> Result<Sounds, String> {
        Ok(Sounds {
            wake: load_sound("playback.wake_sound", &c.wake_sound, chimes::wake)?,
            end: load_sound("playback.end_sound", &c.end_sound, chimes::end)?,
            error: load_sound("playback.error_sound", &c.error_sound, chimes::error)?,
        })
    }
}
