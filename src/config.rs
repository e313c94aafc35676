//! Configuration: built-in defaults, then the TOML file, then `VOXGATE_<SECTION>__<KEY>` environment
//! variables, layered with the `config` crate into [`Config`], then validated as a whole.
//!
//! Every problem is reported with where the offending value came from (the file, the variable, or the
//! built-in default), the key and what is wrong; all problems are reported at once. Unknown keys are errors.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where `voxgate run` looks when `--config` is not given. Missing is fine: built-in defaults apply.
pub const DEFAULT_PATH: &str = "/etc/voxgate/voxgate.toml";
/// Prefix of configuration environment variables: `VOXGATE_SESSION__URL` sets `session.url`.
pub const ENV_PREFIX: &str = "VOXGATE_";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub audio: AudioConfig,
    pub wake: WakeConfig,
    pub session: SessionConfig,
    pub homeassistant: HomeAssistantConfig,
    pub playback: PlaybackConfig,
    pub control: ControlConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AudioConfig {
    /// "default", a device id from `voxgate devices`, "file:PATH.wav" or "stdin"; parsed once, when loaded.
    pub source: SourceSpec,
    pub sample_rate: u32,
    pub frame_ms: u32,
    pub file_pacing: FilePacing,
    pub file_follow: bool,
    /// With `file_follow`: the file has ended once it has not grown for this long.
    pub file_follow_idle_ms: u64,
    /// Capture devices: force this device rate (0 = choose).
    pub capture_rate: u32,
    /// Capture devices: force this channel count (0 = choose).
    pub capture_channels: u16,
    /// Capture devices: force this sample format.
    pub capture_format: CaptureFormat,
}

impl Default for AudioConfig {
    fn default() -> Self {
        AudioConfig {
            source: SourceSpec::Device("default".into()),
            sample_rate: 16000,
            frame_ms: 20,
            file_pacing: FilePacing::Realtime,
            file_follow: false,
            file_follow_idle_ms: 5000,
            capture_rate: 0,
            capture_channels: 0,
            capture_format: CaptureFormat::Auto,
        }
    }
}

/// What `audio.source` selects; written in the configuration as "default", a device id, "file:PATH" or
/// "stdin".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum SourceSpec {
    Device(String),
    File(PathBuf),
    Stdin,
}

impl TryFrom<String> for SourceSpec {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("file:") {
            if path.is_empty() {
                return Err("\"file:\" needs a path: \"file:/path/to/audio.wav\"".into());
            }
            Ok(SourceSpec::File(PathBuf::from(path)))
        } else if s == "stdin" {
            Ok(SourceSpec::Stdin)
        } else if s.trim().is_empty() {
            Err("empty; use \"default\", a device from `voxgate devices`, \"file:PATH.wav\" or \"stdin\"".into())
        } else {
            Ok(SourceSpec::Device(s))
        }
    }
}

impl From<SourceSpec> for String {
    fn from(s: SourceSpec) -> String {
        s.to_string()
    }
}

impl fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceSpec::Device(d) => f.write_str(d),
            SourceSpec::File(p) => write!(f, "file:{}", p.display()),
            SourceSpec::Stdin => f.write_str("stdin"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FilePacing {
    Realtime,
    Fast,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptureFormat {
    Auto,
    I16,
    I32,
    F32,
}

/// One entry of `wake.models`: `builtin:NAME` or the path of a .rpw file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum ModelRef {
    Builtin(String),
    File(PathBuf),
}

impl From<String> for ModelRef {
    fn from(s: String) -> Self {
        match s.strip_prefix("builtin:") {
            Some(name) => ModelRef::Builtin(name.to_string()),
            None => ModelRef::File(PathBuf::from(s)),
        }
    }
}

impl From<ModelRef> for String {
    fn from(m: ModelRef) -> String {
        m.to_string()
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelRef::Builtin(name) => write!(f, "builtin:{name}"),
            ModelRef::File(p) => write!(f, "{}", p.display()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WakeConfig {
    pub mode: WakeMode,
    /// Built-in wake words (`builtin:jarvis`) and .rpw files; empty = `builtin:jarvis`.
    pub models: Vec<ModelRef>,
    /// The built-in wake words' one setting, 0 to 1: higher wakes more readily (fewer misses, more false
    /// wakes). Their measured trade-off is in docs/BENCHMARKS.md.
    pub sensitivity: f64,
    /// The settings from here to `band_pass_high_hz` are for .rpw files (`voxgate enroll`'s and others').
    pub threshold: f64,
    pub refractory_ms: u64,
    /// How the scores against each sample of a wake word combine.
    pub score_mode: ScoreMode,
    /// Score against the averaged sample needed before the samples are compared one by one (0: always
    /// compare). A cheap first test: most non-wake audio stops here.
    pub avg_threshold: f64,
    /// Consecutive scoring frames above the threshold needed for a detection.
    pub min_scores: u32,
    /// Report a detection as soon as `min_scores` is reached instead of waiting for the best frame: faster,
    /// more false detections.
    pub eager: bool,
    /// Normalise the input level towards the wake word's recorded level.
    pub gain_normalizer: bool,
    /// Band-pass filter the input before detection.
    pub band_pass: bool,
    pub band_pass_low_hz: u32,
    pub band_pass_high_hz: u32,
    /// Skip detection on silence and steady noise.
    pub gate: bool,
    /// How far above the noise floor a frame must be to open the gate (dB).
    pub gate_margin_db: f64,
}

impl WakeConfig {
    /// The wake words listened for: `models`, or the default built-in when it is empty.
    pub fn models_or_default(&self) -> std::borrow::Cow<'_, [ModelRef]> {
        if self.models.is_empty() {
            vec![ModelRef::Builtin(crate::wake::builtin::default().name.to_string())].into()
        } else {
            self.models.as_slice().into()
        }
    }
}

impl Default for WakeConfig {
    fn default() -> Self {
        WakeConfig {
            mode: WakeMode::Wakeword,
            models: Vec::new(),
            sensitivity: 0.5,
            threshold: 0.52,
            refractory_ms: 1000,
            score_mode: ScoreMode::P75,
            avg_threshold: 0.0,
            min_scores: 5,
            eager: false,
            gain_normalizer: false,
            band_pass: false,
            band_pass_low_hz: 80,
            band_pass_high_hz: 400,
            gate: true,
            gate_margin_db: 9.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScoreMode {
    Max,
    Average,
    Median,
    P25,
    P50,
    P75,
    P80,
    P90,
    P95,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WakeMode {
    Wakeword,
    Always,
    Manual,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    pub url: String,
    pub protocol: Protocol,
    pub token_file: PathBuf,
    pub ca_file: PathBuf,
    pub preroll_ms: u64,
    pub queue_ms: u64,
    pub end_silence_ms: u64,
    pub no_speech_ms: u64,
    pub max_ms: u64,
    pub connect_timeout_ms: u64,
    pub drain_timeout_ms: u64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            url: "ws://127.0.0.1:8765/".into(),
            protocol: Protocol::Voxgate,
            token_file: PathBuf::new(),
            ca_file: PathBuf::new(),
            preroll_ms: 2000,
            queue_ms: 2000,
            end_silence_ms: 800,
            no_speech_ms: 4000,
            max_ms: 20000,
            connect_timeout_ms: 2000,
            drain_timeout_ms: 2000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Voxgate,
    Vosk,
    /// Home Assistant's WebSocket API: an Assist pipeline run per session.
    Homeassistant,
}

/// `[homeassistant]`: used when `session.protocol = "homeassistant"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HomeAssistantConfig {
    /// A pipeline's id or name; empty: Home Assistant's preferred pipeline.
    pub pipeline: String,
    /// The last stage of each run.
    pub end_stage: EndStage,
}

impl Default for HomeAssistantConfig {
    fn default() -> Self {
        HomeAssistantConfig { pipeline: String::new(), end_stage: EndStage::Tts }
    }
}

/// `[playback]`: the chimes and the spoken answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlaybackConfig {
    /// "default", an output device id from `voxgate devices`, or "none" (nothing is played).
    pub device: String,
    /// 0 (silent) to 1 (as recorded).
    pub volume: f64,
    /// Play at this rate; 0: each sound's own rate when the device takes it.
    pub rate: u32,
    /// A sound file (WAV, FLAC, MP3); "": the built-in chime; "none": no sound.
    pub wake_sound: String,
    pub end_sound: String,
    pub error_sound: String,
}

impl Default for PlaybackConfig {
    fn default() -> Self {
        PlaybackConfig {
            device: "default".into(),
            volume: 1.0,
            rate: 0,
            wake_sound: String::new(),
            end_sound: String::new(),
            error_sound: String::new(),
        }
    }
}

/// `[metrics]`: Prometheus metrics, off by default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve them at http://ADDR/metrics: "127.0.0.1:9464"; "": not served.
    pub listen: String,
    /// Write them into this file (atomically) for node-exporter's textfile collector; "": no file.
    pub textfile: PathBuf,
    /// How often the file is written, in milliseconds.
    pub textfile_interval_ms: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { listen: String::new(), textfile: PathBuf::new(), textfile_interval_ms: 15_000 }
    }
}

/// Where an Assist pipeline run stops: at the transcript, the intent's answer, or the answer spoken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndStage {
    Stt,
    Intent,
    Tts,
}

impl EndStage {
    pub fn as_str(&self) -> &'static str {
        match self {
            EndStage::Stt => "stt",
            EndStage::Intent => "intent",
            EndStage::Tts => "tts",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Where the control socket is bound; empty: no control socket.
    pub socket: PathBuf,
    /// Permission bits of the socket file, written as an octal string ("0660").
    pub socket_mode: SocketMode,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig { socket: PathBuf::from("/run/voxgate/control.sock"), socket_mode: SocketMode(0o660) }
    }
}

/// File permission bits, parsed once from an octal string of digits 0-7 ("0660"), at most 0o777.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SocketMode(pub u32);

impl TryFrom<String> for SocketMode {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an octal permission mode like \"0660\"");
        if s.is_empty() || s.len() > 4 || !s.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            return Err(bad());
        }
        u32::from_str_radix(&s, 8).ok().filter(|m| *m <= 0o777).map(SocketMode).ok_or_else(bad)
    }
}

impl From<SocketMode> for String {
    fn from(m: SocketMode) -> String {
        format!("{:04o}", m.0)
    }
}


#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter: "info", "debug", "voxgate=debug,warn", …
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".into(), format: LogFormat::Auto }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Auto,
    Journald,
    Text,
    Json,
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// "configuration file /etc/voxgate/voxgate.toml", "environment variable VOXGATE_AUDIO__SOURCE", …
    pub origin: String,
    /// "audio.sample_rate"
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.origin, self.key, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("configuration file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("invalid configuration:\n{}", list(.0))]
    Invalid(Vec<Problem>),
}

fn list(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n")
}

/// A loaded, validated configuration and where it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// The file read, if any.
    pub file: Option<PathBuf>,
}

/// Loads the configuration for a command: `explicit` from `--config` (must exist), else [`DEFAULT_PATH`] if it
/// exists, else built-in defaults; with the process environment on top.
pub fn load(explicit: Option<&Path>) -> Result<Loaded, ConfigError> {
    let env: BTreeMap<String, String> = std::env::vars().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect();
    let path = match explicit {
        Some(p) => Some(p.to_path_buf()),
        None => Path::new(DEFAULT_PATH).exists().then(|| PathBuf::from(DEFAULT_PATH)),
    };
    let text = match &path {
        Some(p) => Some(std::fs::read_to_string(p).map_err(|source| ConfigError::Read { path: p.clone(), source })?),
        None => None,
    };
    let config = from_sources(path.as_deref().zip(text.as_deref()), &env)?;
    Ok(Loaded { config, file: path })
}

/// Layers defaults, an optional file `(path, text)` and environment variables, then validates.
pub fn from_sources(file: Option<(&Path, &str)>, env: &BTreeMap<String, String>) -> Result<Config, ConfigError> {
    let known = known_keys();
    let mut problems = Vec::new();
    let mut file_table = toml::Table::new();
    let mut builder = config::Config::builder().add_source(
        config::Config::try_from(&Config::default()).map_err(|e| invalid("built-in defaults", "", e.to_string()))?,
    );
    let file_origin = file.map(|(p, _)| format!("configuration file {}", p.display()));
    if let Some((path, text)) = file {
        file_table = text
            .parse::<toml::Table>()
            .map_err(|e| ConfigError::Syntax { path: path.into(), message: e.to_string().trim_end().to_string() })?;
        check_file_keys(&file_table, &known, file_origin.as_deref().unwrap_or_default(), &mut problems);
        check_file_types(&file_table, file_origin.as_deref().unwrap_or_default(), &mut problems);
        builder = builder.add_source(config::File::from_str(text, config::FileFormat::Toml));
    }
    let mut env_vars = BTreeMap::new();
    for (var, value) in env {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else { continue };
        // Only VOXGATE_<SECTION>__<KEY> is configuration; other VOXGATE_* variables are left alone.
        let Some((section, key)) = rest.split_once("__") else { continue };
        let dotted = format!("{}.{}", section.to_lowercase(), key.to_lowercase());
        if known.get(&section.to_lowercase()).is_none_or(|keys| !keys.contains(&key.to_lowercase())) {
            problems.push(Problem { origin: format!("environment variable {var}"), key: dotted, message: "unknown key".into() });
            continue;
        }
        if let Some(message) = env_type_problem(&dotted, value) {
            problems.push(Problem { origin: format!("environment variable {var}"), key: dotted, message });
            continue;
        }
        env_vars.insert(var.clone(), value.clone());
    }
    if !problems.is_empty() {
        return Err(ConfigError::Invalid(problems));
    }
    let origins = Origins { file: file_origin.as_deref(), file_table: &file_table, env: &env_vars };
    builder = builder.add_source(
        config::Environment::with_prefix("VOXGATE")
            .prefix_separator("_")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("wake.models")
            .source(Some(env_vars.clone().into_iter().collect())),
    );
    let config: Config = builder
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| {
            let message = e.to_string();
            let key = key_in_message(&message).unwrap_or_default();
            let message = match (message.split_once("does not have variant constructor "), choices(&key)) {
                (Some((_, value)), Some(allowed)) => {
                    format!("{:?} is not one of {allowed}", strip_key_suffix(value))
                }
                _ => strip_key_suffix(&message),
            };
            ConfigError::Invalid(vec![Problem { origin: origins.of(&key), key, message }])
        })?;
    let problems: Vec<Problem> = validate(&config)
        .into_iter()
        .map(|(key, message)| Problem { origin: origins.of(key), key: key.to_string(), message })
        .collect();
    if problems.is_empty() { Ok(config) } else { Err(ConfigError::Invalid(problems)) }
}

fn invalid(origin: &str, key: &str, message: String) -> ConfigError {
    ConfigError::Invalid(vec![Problem { origin: origin.into(), key: key.into(), message }])
}

/// Which source a key's effective value came from.
struct Origins<'a> {
    file: Option<&'a str>,
    file_table: &'a toml::Table,
    env: &'a BTreeMap<String, String>,
}

impl Origins<'_> {
    fn of(&self, key: &str) -> String {
        let (section, name) = key.split_once('.').unwrap_or((key, ""));
        let var = format!("{ENV_PREFIX}{}__{}", section.to_uppercase(), name.to_uppercase());
        if self.env.contains_key(&var) {
            return format!("environment variable {var}");
        }
        let in_file = self.file_table.get(section).and_then(|s| s.as_table()).is_some_and(|t| t.contains_key(name));
        match self.file {
            Some(f) if in_file => f.to_string(),
            _ => "built-in default".to_string(),
        }
    }
}

/// `config` names the key as "for key `audio.sample_rate`"; pull it out so the origin can be named.
fn key_in_message(message: &str) -> Option<String> {
    let start = message.find("for key `")? + "for key `".len();
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_string())
}

/// The values a key of a fixed set takes, for the error that names a wrong one.
fn choices(key: &str) -> Option<&'static str> {
    Some(match key {
        "audio.file_pacing" => "\"realtime\", \"fast\"",
        "audio.capture_format" => "\"auto\", \"i16\", \"i32\", \"f32\"",
        "wake.mode" => "\"wakeword\", \"always\", \"manual\"",
        "wake.score_mode" => "\"max\", \"average\", \"median\", \"p25\", \"p50\", \"p75\", \"p80\", \"p90\", \"p95\"",
        "session.protocol" => "\"voxgate\", \"vosk\", \"homeassistant\"",
        "homeassistant.end_stage" => "\"stt\", \"intent\", \"tts\"",
        "log.format" => "\"auto\", \"journald\", \"text\", \"json\"",
        _ => return None,
    })
}

fn strip_key_suffix(message: &str) -> String {
    match message.find(" for key `") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// Section → keys, taken from the defaults so the list cannot drift from the types.
fn known_keys() -> BTreeMap<String, Vec<String>> {
    let table = toml::Table::try_from(Config::default()).unwrap_or_default();
    table
        .into_iter()
        .map(|(section, v)| {
            let keys = v.as_table().map(|t| t.keys().cloned().collect()).unwrap_or_default();
            (section, keys)
        })
        .collect()
}

fn check_file_keys(table: &toml::Table, known: &BTreeMap<String, Vec<String>>, origin: &str, problems: &mut Vec<Problem>) {
    let sections = known.keys().cloned().collect::<Vec<_>>().join(", ");
    for (section, value) in table {
        let Some(keys) = known.get(section) else {
            problems.push(Problem { origin: origin.into(), key: section.clone(), message: format!("unknown section (known: {sections})") });
            continue;
        };
        let Some(t) = value.as_table() else {
            problems.push(Problem { origin: origin.into(), key: section.clone(), message: format!("must be a table: [{section}]") });
            continue;
        };
        for key in t.keys().filter(|k| !keys.contains(k)) {
            problems.push(Problem {
                origin: origin.into(),
                key: format!("{section}.{key}"),
                message: format!("unknown key (known in [{section}]: {})", keys.join(", ")),
            });
        }
    }
}

/// The TOML type of `v`, as an error names it.
fn type_name(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "a whole number",
        toml::Value::Float(_) => "a number",
        toml::Value::Boolean(_) => "true or false",
        toml::Value::Datetime(_) => "a date",
        toml::Value::Array(_) => "a list",
        toml::Value::Table(_) => "a table",
    }
}

/// Each key of the file has the type of its default: `frame_ms = "20"`, `connect_timeout_ms = 150.7` or
/// `min_scores = true` are refused, not coerced. A whole number is a number too (`threshold = 1`).
fn check_file_types(table: &toml::Table, origin: &str, problems: &mut Vec<Problem>) {
    let defaults = toml::Table::try_from(Config::default()).unwrap_or_default();
    for (section, values) in table {
        let (Some(values), Some(want)) = (values.as_table(), defaults.get(section).and_then(|d| d.as_table())) else { continue };
        for (key, value) in values {
            let Some(default) = want.get(key) else { continue };
            let fits = match (default, value) {
                (toml::Value::Float(_), toml::Value::Integer(_)) => true,
                (toml::Value::Array(_), toml::Value::Array(items)) => items.iter().all(|i| i.is_str()),
                (d, v) => std::mem::discriminant(d) == std::mem::discriminant(v),
            };
            if !fits {
                let want = match default {
                    toml::Value::Array(_) => "a list of strings",
                    d => type_name(d),
                };
                problems.push(Problem {
                    origin: origin.into(),
                    key: format!("{section}.{key}"),
                    message: format!("{value} is {}, not {want}", type_name(value)),
                });
            }
        }
    }
}

/// An environment value is text: it must read as the key's type (a whole number, a number, true or false).
fn env_type_problem(key: &str, value: &str) -> Option<String> {
    let defaults = toml::Table::try_from(Config::default()).unwrap_or_default();
    let (section, name) = key.split_once('.')?;
    let default = defaults.get(section)?.as_table()?.get(name)?;
    let fits = match default {
        toml::Value::Integer(_) => value.trim().parse::<i64>().is_ok(),
        toml::Value::Float(_) => value.trim().parse::<f64>().is_ok_and(f64::is_finite),
        toml::Value::Boolean(_) => matches!(value.trim(), "true" | "false"),
        _ => true,
    };
    (!fits).then(|| format!("{value:?} is not {}", type_name(default)))
}

/// Checks ranges, formats and files. Returns (key, what is wrong) pairs.
pub fn validate(c: &Config) -> Vec<(&'static str, String)> {
    let mut p: Vec<(&'static str, String)> = Vec::new();
    let mut out_of_range = Vec::new();
    let mut range = |key: &'static str, v: u64, lo: u64, hi: u64| {
        if v < lo || v > hi {
            out_of_range.push((key, format!("{v} is out of range ({lo}..={hi})")));
        }
    };
    let a = &c.audio;
    range("audio.sample_rate", a.sample_rate as u64, 8000, 48000);
    range("audio.frame_ms", a.frame_ms as u64, 10, 100);
    range("audio.file_follow_idle_ms", a.file_follow_idle_ms, 100, 86_400_000);
    range("audio.capture_channels", a.capture_channels as u64, 0, 32);
    if a.capture_rate != 0 {
        range("audio.capture_rate", a.capture_rate as u64, 4000, 384_000);
    }
    let s = &c.session;
    range("wake.refractory_ms", c.wake.refractory_ms, 0, 60_000);
    range("session.preroll_ms", s.preroll_ms, 0, 10_000);
    range("session.queue_ms", s.queue_ms, a.frame_ms as u64, 60_000);
    range("session.end_silence_ms", s.end_silence_ms, 100, 10_000);
    range("session.no_speech_ms", s.no_speech_ms, 500, 60_000);
    range("session.max_ms", s.max_ms, 1000, 3_600_000);
    range("session.connect_timeout_ms", s.connect_timeout_ms, 100, 60_000);
    range("session.drain_timeout_ms", s.drain_timeout_ms, 0, 60_000);
    if (a.sample_rate as u64 * a.frame_ms as u64) % 1000 != 0 {
        p.push(("audio.frame_ms", format!("{} ms at {} Hz is not a whole number of samples", a.frame_ms, a.sample_rate)));
    }
    if let SourceSpec::File(path) = &a.source {
        if !path.is_file() {
            p.push(("audio.source", format!("{} is not a file", path.display())));
        }
    }
    if !(c.wake.threshold > 0.0 && c.wake.threshold < 1.0) {
        p.push(("wake.threshold", format!("{} is out of range (between 0 and 1)", c.wake.threshold)));
    }
    if !(0.0..1.0).contains(&c.wake.avg_threshold) {
        p.push(("wake.avg_threshold", format!("{} is out of range (0 to below 1; 0 turns it off)", c.wake.avg_threshold)));
    }
    range("wake.min_scores", c.wake.min_scores as u64, 1, 50);
    range("wake.band_pass_low_hz", c.wake.band_pass_low_hz as u64, 1, 8000);
    range("wake.band_pass_high_hz", c.wake.band_pass_high_hz as u64, 1, 8000);
    if c.wake.band_pass_low_hz >= c.wake.band_pass_high_hz {
        p.push(("wake.band_pass_low_hz", format!("{} Hz must be below wake.band_pass_high_hz ({} Hz)", c.wake.band_pass_low_hz, c.wake.band_pass_high_hz)));
    }
    if !(3.0..=40.0).contains(&c.wake.gate_margin_db) {
        p.push(("wake.gate_margin_db", format!("{} is out of range (3 to 40)", c.wake.gate_margin_db)));
    }
    if !(0.0..=1.0).contains(&c.wake.sensitivity) {
        p.push(("wake.sensitivity", format!("{} is out of range (0 to 1)", c.wake.sensitivity)));
    }
    let builtin = c.wake.models_or_default().iter().any(|m| matches!(m, ModelRef::Builtin(_)));
    if c.wake.mode == WakeMode::Wakeword && builtin && c.audio.sample_rate < crate::wake::mfcc::RATE {
        p.push(("audio.sample_rate", crate::wake::conv::rate_problem(c.audio.sample_rate)));
    }
    for m in &c.wake.models {
        match m {
            ModelRef::File(path) if !path.is_file() => p.push(("wake.models", format!("{} is not a file", path.display()))),
            ModelRef::Builtin(name) => {
                if let Err(e) = crate::wake::builtin::find(name) {
                    p.push(("wake.models", e));
                }
            }
            ModelRef::File(_) => {}
        }
    }
    match url::Url::parse(&s.url) {
        Ok(u) if !matches!(u.scheme(), "ws" | "wss") => p.push(("session.url", format!("{:?}: the scheme must be ws or wss", s.url))),
        Ok(u) if u.host_str().is_none_or(str::is_empty) => p.push(("session.url", format!("{:?} has no host", s.url))),
        Ok(_) => {}
        Err(e) => p.push(("session.url", format!("{:?} is not a URL: {e}", s.url))),
    }
    if s.protocol == Protocol::Homeassistant && s.token_file.as_os_str().is_empty() {
        p.push(("session.token_file", "Home Assistant needs a long-lived access token: name the file that holds it".into()));
    }
    if !(0.0..=1.0).contains(&c.playback.volume) {
        p.push(("playback.volume", format!("{} is out of range (0 to 1)", c.playback.volume)));
    }
    if c.playback.rate != 0 {
        range("playback.rate", c.playback.rate as u64, 8000, 192_000);
    }
    if c.playback.device.is_empty() {
        p.push(("playback.device", "empty: use \"default\", a device id from `voxgate devices`, or \"none\"".into()));
    }
    if !c.metrics.listen.is_empty() && c.metrics.listen.parse::<std::net::SocketAddr>().is_err() {
        p.push(("metrics.listen", format!("{:?} is not an address and port such as \"127.0.0.1:9464\"", c.metrics.listen)));
    }
    range("metrics.textfile_interval_ms", c.metrics.textfile_interval_ms, 1000, 86_400_000);
    if !c.metrics.textfile.as_os_str().is_empty() {
        match c.metrics.textfile.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(dir) if !dir.is_dir() => p.push(("metrics.textfile", format!("{} is not a directory", dir.display()))),
            None => p.push(("metrics.textfile", "give the file's full path".into())),
            _ => {}
        }
    }
    if c.homeassistant.pipeline.len() > 256 {
        p.push(("homeassistant.pipeline", "longer than a pipeline id or name may be (256 bytes)".into()));
    }
    for (key, path) in [("session.token_file", &s.token_file), ("session.ca_file", &s.ca_file)] {
        if !path.as_os_str().is_empty() {
            if let Err(e) = std::fs::File::open(path) {
                p.push((key, format!("cannot read {}: {e}", path.display())));
            }
        }
    }
    let sock = &c.control.socket;
    if sock.as_os_str().is_empty() {
        // No control socket.
    } else if !sock.is_absolute() {
        p.push(("control.socket", format!("{} must be an absolute path (or \"\" for no control socket)", sock.display())));
    } else if sock.as_os_str().len() > 107 {
        p.push(("control.socket", format!("{} is longer than a Unix socket path may be (107 bytes)", sock.display())));
    }
    if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&c.log.level) {
        p.push(("log.level", format!("{:?} is not a log filter (e.g. \"info\", \"debug\", \"voxgate=debug,warn\"): {e}", c.log.level)));
    }
    p.extend(out_of_range);
    p
}

/// The keys ("session.url") whose values differ between two configurations, in order.
pub fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) = (serde_json::to_value(old), serde_json::to_value(new)) else {
        return Vec::new();
    };
    let mut changed = Vec::new();
    for (section, values) in &a {
        let (Some(values), Some(other)) = (values.as_object(), b.get(section).and_then(|v| v.as_object())) else { continue };
        for (key, value) in values {
            if other.get(key) != Some(value) {
                changed.push(format!("{section}.{key}"));
            }
        }
    }
    changed
}

/// The effective configuration as TOML, for `check-config`.
pub fn to_toml(c: &Config) -> String {
    toml::to_string(c).unwrap_or_else(|e| format!("# cannot print the configuration: {e}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn load_str(text: &str, e: &[(&str, &str)]) -> Result<Config, ConfigError> {
        from_sources(Some((Path::new("/etc/voxgate/test.toml"), text)), &env(e))
    }

    fn problems(r: Result<Config, ConfigError>) -> Vec<Problem> {
        match r {
            Err(ConfigError::Invalid(p)) => p,
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn defaults_match_the_design() {
        let c = from_sources(None, &BTreeMap::new()).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.session.url, "ws://127.0.0.1:8765/");
        assert_eq!((c.audio.sample_rate, c.audio.frame_ms, c.session.preroll_ms), (16000, 20, 2000));
    }

    #[test]
    fn file_then_env_layering() {
        let c = load_str("[audio]\nsample_rate = 8000\n[session]\nurl = \"ws://a/\"\nmax_ms = 5000\n", &[
            ("VOXGATE_SESSION__URL", "wss://b:9/x"),
            ("VOXGATE_WAKE__MODELS", "/dev/null,/dev/null"),
            ("VOXGATE_LOG__LEVEL", "debug"),
            ("VOXGATE_UNRELATED", "ignored"),
        ])
        .unwrap_err();
        // /dev/null is not a regular file: the env list reached validation, entry by entry.
        let p = problems(Err(c));
        assert_eq!(p.len(), 2);
        assert!(p.iter().all(|x| x.key == "wake.models" && x.origin == "environment variable VOXGATE_WAKE__MODELS"), "{p:?}");

        let c = load_str("[audio]\nsample_rate = 8000\n[session]\nurl = \"ws://a/\"\nmax_ms = 5000\n", &[
            ("VOXGATE_SESSION__URL", "wss://b:9/x"),
            ("VOXGATE_WAKE__MODE", "always"),
            ("VOXGATE_SESSION__NO_SPEECH_MS", "1500"),
            ("VOXGATE_AUDIO__FILE_FOLLOW", "true"),
        ])
        .unwrap();
        assert_eq!(c.audio.sample_rate, 8000);
        assert_eq!(c.session.url, "wss://b:9/x");
        assert_eq!(c.session.max_ms, 5000);
        assert_eq!(c.session.no_speech_ms, 1500);
        assert!(c.audio.file_follow);
        assert_eq!(c.wake, WakeConfig { mode: WakeMode::Always, ..WakeConfig::default() });
    }

    #[test]
    fn wrong_types_are_refused_not_coerced() {
        for (text, key, says) in [
            ("[audio]\nframe_ms = \"20\"", "audio.frame_ms", "\"20\" is a string, not a whole number"),
            ("[session]\nconnect_timeout_ms = 150.7", "session.connect_timeout_ms", "150.7 is a number, not a whole number"),
            ("[wake]\nmin_scores = true", "wake.min_scores", "true is true or false, not a whole number"),
            ("[wake]\nthreshold = \"0.5\"", "wake.threshold", "not a number"),
            ("[audio]\nfile_follow = \"yes\"", "audio.file_follow", "not true or false"),
            ("[wake]\nmodels = [1]", "wake.models", "not a list of strings"),
        ] {
            let err = load_str(text, &[]).unwrap_err().to_string();
            assert!(err.contains(&format!("{key}: ")) && err.contains(says), "{text}: {err}");
        }
        // A whole number is a number; environment values are read as the key's type.
        assert!(!load_str("[wake]\nthreshold = 0", &[]).unwrap_err().to_string().contains("is a whole number"));
        assert!(load_str("", &[("VOXGATE_AUDIO__FRAME_MS", "20")]).is_ok());
        for (var, value) in [("VOXGATE_SESSION__CONNECT_TIMEOUT_MS", "150.7"), ("VOXGATE_WAKE__MIN_SCORES", "true"), ("VOXGATE_WAKE__EAGER", "1")] {
            let err = load_str("", &[(var, value)]).unwrap_err().to_string();
            assert!(err.contains(&format!("environment variable {var}")) && err.contains("is not"), "{err}");
        }
    }

    #[test]
    fn a_wrong_choice_names_the_key_and_every_allowed_value() {
        let keys = ["audio.file_pacing", "audio.capture_format", "wake.mode", "wake.score_mode", "session.protocol", "homeassistant.end_stage", "log.format"];
        for key in keys {
            let (section, name) = key.split_once('.').unwrap();
            let allowed = choices(key).unwrap();
            // Every value listed is one; the list is complete when all but those are refused.
            for value in allowed.split(", ") {
                // Home Assistant needs a token file.
                let token = if section == "session" { "token_file = \"/dev/null\"\n" } else { "" };
                let text = format!("[{section}]\n{name} = {value}\n{token}");
                assert!(load_str(&text, &[]).is_ok(), "{key} = {value}");
            }
            let err = load_str(&format!("[{section}]\n{name} = \"nope\"\n"), &[]).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(&format!("\"nope\" is not one of {allowed}")), "{err}");
        }
    }

    #[test]
    fn metrics_addresses_and_files_are_checked() {
        assert!(load_str("[metrics]\nlisten = \"127.0.0.1:0\"\ntextfile = \"/tmp/voxgate.prom\"\n", &[]).is_ok());
        for (text, key, says) in [
            ("listen = \"localhost\"", "metrics.listen", "not an address and port"),
            ("textfile = \"/no/such/dir/voxgate.prom\"", "metrics.textfile", "/no/such/dir is not a directory"),
            ("textfile = \"voxgate.prom\"", "metrics.textfile", "full path"),
            ("textfile_interval_ms = 10", "metrics.textfile_interval_ms", "out of range"),
        ] {
            let p = problems(load_str(&format!("[metrics]\n{text}\n"), &[]));
            assert!(p.len() == 1 && p[0].key == key && p[0].message.contains(says), "{text}: {p:?}");
        }
    }

    #[test]
    fn unknown_keys_and_sections_name_the_origin() {
        let p = problems(load_str("[audio]\nsorce = \"x\"\n[wakeword]\nmode = \"always\"\n", &[("VOXGATE_SESSION__URI", "ws://x/")]));
        let got: Vec<(String, String)> = p.iter().map(|x| (x.origin.clone(), x.key.clone())).collect();
        assert_eq!(got, vec![
            ("configuration file /etc/voxgate/test.toml".into(), "audio.sorce".into()),
            ("configuration file /etc/voxgate/test.toml".into(), "wakeword".into()),
            ("environment variable VOXGATE_SESSION__URI".into(), "session.uri".into()),
        ]);
        assert!(p[0].message.contains("source"), "known keys listed: {}", p[0].message);
    }

    #[test]
    fn bad_values_name_key_and_origin() {
        // (file text, environment, key named, origin named)
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: &[Case] = &[
            ("[audio]\nsample_rate = \"fast\"\n", &[], "audio.sample_rate", "configuration file"),
            ("[audio]\nfile_pacing = \"slow\"\n", &[], "audio.file_pacing", "configuration file"),
            ("", &[("VOXGATE_AUDIO__SAMPLE_RATE", "abc")], "audio.sample_rate", "environment variable"),
            ("[audio]\nsample_rate = 96000\n", &[], "audio.sample_rate", "configuration file"),
            ("[audio]\nsample_rate = 11025\n[wake]\nmode = \"manual\"\n", &[], "audio.frame_ms", "built-in default"),
            ("[audio]\nsample_rate = 8000\n", &[], "audio.sample_rate", "configuration file"),
            ("[audio]\nsource = \"file:/nonexistent.wav\"\n", &[], "audio.source", "configuration file"),
            ("[wake]\nthreshold = 1.5\n", &[], "wake.threshold", "configuration file"),
            ("[wake]\nsensitivity = 1.2\n", &[], "wake.sensitivity", "configuration file"),
            ("[wake]\nmodels = [\"builtin:hey_jarvis\"]\n", &[], "wake.models", "configuration file"),
            ("[session]\nurl = \"http://x/\"\n", &[], "session.url", "configuration file"),
            ("[session]\nurl = \"not a url\"\n", &[], "session.url", "configuration file"),
            ("[session]\ntoken_file = \"/nonexistent/token\"\n", &[], "session.token_file", "configuration file"),
            ("[control]\nsocket_mode = \"0999\"\n", &[], "control.socket_mode", "configuration file"),
            ("[control]\nsocket = \"relative.sock\"\n", &[], "control.socket", "configuration file"),
            ("[log]\nlevel = \"loud=[\"\n", &[], "log.level", "configuration file"),
            ("[log]\nformat = \"xml\"\n", &[], "log.format", "configuration file"),
        ];
        for (text, e, key, origin) in cases {
            let p = problems(load_str(text, e));
            assert_eq!(p.len(), 1, "{text}: {p:?}");
            assert_eq!(p[0].key, *key, "{text}: {}", p[0]);
            assert!(p[0].origin.starts_with(origin), "{text}: {}", p[0]);
            assert!(!p[0].message.is_empty());
        }
    }

    #[test]
    fn syntax_errors_name_the_file_and_line() {
        let e = load_str("[audio]\nsample_rate = \n", &[]).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, ConfigError::Syntax { .. }), "{text}");
        assert!(text.contains("/etc/voxgate/test.toml") && text.contains("line 2"), "{text}");
    }

    #[test]
    fn effective_config_round_trips_through_toml() {
        let c = load_str("[session]\nprotocol = \"vosk\"\n[wake]\nmode = \"manual\"\n", &[]).unwrap();
        let again = load_str(&to_toml(&c), &[]).unwrap();
        assert_eq!(again, c);
        assert_eq!(again.session.protocol, Protocol::Vosk);
    }

    #[test]
    fn source_forms() {
        let spec = |s: &str| SourceSpec::try_from(s.to_string());
        assert_eq!(spec("default"), Ok(SourceSpec::Device("default".into())));
        assert_eq!(spec("alsa:hw:1,0"), Ok(SourceSpec::Device("alsa:hw:1,0".into())));
        assert_eq!(spec("file:/a b.wav"), Ok(SourceSpec::File("/a b.wav".into())));
        assert_eq!(spec("stdin"), Ok(SourceSpec::Stdin));
        assert!(spec("file:").is_err() && spec(" ").is_err());
        for s in ["default", "alsa:hw:1,0", "file:/a b.wav", "stdin"] {
            assert_eq!(String::from(spec(s).unwrap()), s);
        }
    }

    #[test]
    fn socket_modes_are_octal_digits_only() {
        let mode = |s: &str| SocketMode::try_from(s.to_string()).map(|m| m.0);
        assert_eq!(mode("0660"), Ok(0o660));
        assert_eq!(mode("600"), Ok(0o600));
        for bad in ["+777", "0999", "07777", "", "rw", "-1", "0o660"] {
            assert!(mode(bad).is_err(), "{bad:?}");
        }
        assert_eq!(String::from(SocketMode(0o640)), "0640");
    }

}
