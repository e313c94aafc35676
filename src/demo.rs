//! `voxgate demo`: the whole loop on the bundled recording (or a given WAV) against a reference server
//! (`voxgate serve`) on loopback in the same process, which answers each command out loud: the wake chime, the
//! session, the end chime and the answer, printed as they happen.
//!
//! The sounds go through a real output stream: to the sound card when there is one, otherwise through ALSA's
//! `file` plugin into a WAV file in the demo's directory. For that the demo defines its own ALSA device
//! (`voxgate-demo`, writing into a FIFO that a thread of the demo copies into the WAV file), which the process
//! must be told through `ALSA_CONFIG_PATH` before anything opens a device ([`Demo::alsa_config`]). With
//! sounds, the recording is played at real time, as a microphone would hear it; with `--fast` and no sounds, as
//! fast as it can be processed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, FilePacing, SourceSpec};
use crate::serve::{self, Record};
use crate::session::Event;

/// The bundled recording: wake word + command, silence, a decoy phrase, and again (16 kHz mono).
pub const DEMO_WAV: &[u8] = include_bytes!("../assets/demo.wav");
/// What the demo's server says back after each command.
pub const ANSWER_WAV: &[u8] = include_bytes!("../assets/answer.wav");
/// The rate of the WAV file the demo plays into.
const PLAYED_RATE: u32 = 16_000;

/// Where the demo plays its sounds.
#[derive(Debug, Clone, PartialEq)]
pub enum Speaker {
    /// Nowhere.
    None,
    /// An output device (`voxgate devices`).
    Device(String),
    /// A WAV file, through ALSA's `file` plugin.
    File(PathBuf),
}

impl Speaker {
    /// `--speaker`: "none", a path ending in `.wav`, or a device; without one, the default device when the
    /// machine has a sound card, else `played.wav` in `dir`.
    pub fn choose(given: Option<&str>, dir: &Path) -> Speaker {
        match given {
            Some("none") => Speaker::None,
            Some(p) if p.to_lowercase().ends_with(".wav") => Speaker::File(PathBuf::from(p)),
            Some(d) => Speaker::Device(d.to_string()),
            None if has_sound_card() => Speaker::Device("default".into()),
            None => Speaker::File(dir.join("played.wav")),
        }
    }
}

/// Whether ALSA lists a sound card (/proc/asound/cards).
pub fn has_sound_card() -> bool {
    std::fs::read_to_string("/proc/asound/cards").is_ok_and(|c| !c.trim().is_empty() && !c.contains("no soundcards"))
}

/// What the demo did, for tests.
#[derive(Debug)]
pub struct Outcome {
    pub events: Vec<Event>,
    pub records: Vec<Record>,
    pub record_dir: PathBuf,
    /// The WAV file played into, and how many samples it holds.
    pub played: Option<(PathBuf, u64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Audio(#[from] crate::audio::AudioError),
    #[error(transparent)]
    Daemon(#[from] crate::daemon::DaemonError),
    #[error("{0}")]
    Answer(String),
    #[error("cannot write {path}: {reason}")]
    Played { path: PathBuf, reason: String },
}

/// A demo about to run.
pub struct Demo {
    dir: PathBuf,
    input: Option<PathBuf>,
    speaker: Speaker,
    /// For [`Speaker::File`]: the FIFO the ALSA device writes into, and its configuration.
    fifo: Option<(PathBuf, PathBuf)>,
}

impl Demo {
    /// Makes the demo's directory and, for a WAV speaker, its ALSA device. `speaker` as `--speaker` takes it;
    /// `fast` plays nothing, as fast as it goes.
    pub fn new(input: Option<&Path>, speaker: Option<&str>, fast: bool) -> Result<Demo, DemoError> {
        let dir = tempfile::Builder::new().prefix("voxgate-demo-").tempdir()?.keep();
        let speaker = if fast { Speaker::None } else { Speaker::choose(speaker, &dir) };
        let fifo = match &speaker {
            Speaker::File(_) => {
                let fifo = dir.join("speaker.fifo");
                nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR).map_err(std::io::Error::from)?;
                let conf = dir.join("asound.conf");
                std::fs::write(
                    &conf,
                    format!(
                        "pcm.voxgate-demo {{\n type file\n slave.pcm {{ type null }}\n file \"{}\"\n format \"raw\"\n hint {{ show on description \"voxgate demo: into a WAV file\" }}\n}}\n",
                        fifo.display()
                    ),
                )?;
                Some((fifo, conf))
            }
            _ => None,
        };
        Ok(Demo { dir, input: input.map(Path::to_path_buf), speaker, fifo })
    }

    /// The ALSA configuration the process must use (`ALSA_CONFIG_PATH`) when the demo plays into a WAV file.
    pub fn alsa_config(&self) -> Option<&Path> {
        self.fifo.as_ref().map(|(_, conf)| conf.as_path())
    }

    /// Runs the demo, printing the timeline to `out` as it happens.
    pub fn run(self, out: &mut dyn Write) -> Result<Outcome, DemoError> {
        let Demo { dir, input, speaker, fifo } = self;
        let wav = match &input {
            Some(p) => p.clone(),
            None => {
                let p = dir.join("demo-input.wav");
                std::fs::write(&p, DEMO_WAV)?;
                p
            }
        };
        let info = crate::audio::probe_wav(&wav)?;
        let answer =
            crate::playback::decode::decode("the server's answer", ANSWER_WAV.to_vec(), Some("wav")).map_err(|e| DemoError::Answer(e.to_string()))?;
        let recorder = match (&speaker, &fifo) {
            (Speaker::File(path), Some((fifo, _))) => Some(Recorder::start(fifo, path)?),
            _ => None,
        };
        let mut config = Config::default();
        config.audio.source = SourceSpec::File(wav.clone());
        config.control.socket = Default::default();
        match &speaker {
            Speaker::None => {
                config.audio.file_pacing = FilePacing::Fast;
                config.playback.device = "none".into();
            }
            Speaker::Device(d) => {
                config.audio.file_pacing = FilePacing::Realtime;
                config.playback.device = d.clone();
            }
            Speaker::File(_) => {
                config.audio.file_pacing = FilePacing::Realtime;
                config.playback.device = "alsa:voxgate-demo".into();
                config.playback.rate = PLAYED_RATE;
            }
        }
        let shown = input.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "the bundled recording".into());
        let pace = if speaker == Speaker::None { "as fast as it goes" } else { "at real time" };
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let outcome = runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let url = format!("ws://{}/", listener.local_addr()?);
            config.session.url = url.clone();
            let stop_server = CancellationToken::new();
            let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
            let answering = (speaker != Speaker::None).then(|| Arc::new(answer));
            let server = tokio::spawn(serve::serve(listener, Some(dir.clone()), stop_server.clone(), Some(done_tx), answering));
            writeln!(
                out,
                "voxgate demo: {shown} ({:.1} s) through the whole pipeline, {pace}, to a reference server at {url}",
                info.duration_ms() as f64 / 1000.0
            )?;
            match &speaker {
                Speaker::None => writeln!(out, "(no sounds: the server does not answer)\n")?,
                Speaker::Device(d) => writeln!(out, "chimes and answers play on {d}\n")?,
                Speaker::File(p) => writeln!(out, "no sound card: chimes and answers play into {} (through ALSA's file plugin)\n", p.display())?,
            }
            let (events_tx, mut events_rx) = broadcast::channel(crate::daemon::EVENTS_QUEUE);
            let started = Instant::now();
            let daemon = crate::daemon::run_with_events(config, CancellationToken::new(), events_tx);
            tokio::pin!(daemon);
            let mut events = Vec::new();
            let mut show = |e: Result<Event, broadcast::error::RecvError>, out: &mut dyn Write| -> std::io::Result<bool> {
                match e {
                    Ok(e) => {
                        print_event(out, &e, started)?;
                        events.push(e);
                        Ok(true)
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => writeln!(out, "           ({n} events not shown)").map(|_| true),
                    Err(broadcast::error::RecvError::Closed) => Ok(false),
                }
            };
            let mut open = true;
            let summary = loop {
                tokio::select! {
                    s = &mut daemon => break s?,
                    e = events_rx.recv(), if open => open = show(e, out)?,
                }
            };
            loop {
                match events_rx.try_recv() {
                    Ok(e) => show(Ok(e), out)?,
                    Err(broadcast::error::TryRecvError::Lagged(n)) => show(Err(broadcast::error::RecvError::Lagged(n)), out)?,
                    Err(_) => break,
                };
            }
            stop_server.cancel();
            let _ = server.await;
            let mut records = Vec::new();
            while let Ok(r) = done_rx.try_recv() {
                records.push(r);
            }
            let played = events.iter().filter(|e| matches!(e, Event::PlaybackEnd { reason, .. } if reason == "done")).count();
            writeln!(
                out,
                "\n{:.1} s of audio in {:.1} s: {} wake words, {} sessions, {} frames sent, {} dropped, {played} sounds played",
                summary.audio_ms as f64 / 1000.0,
                started.elapsed().as_secs_f64(),
                summary.detector.map(|d| d.detections).unwrap_or(0),
                summary.sessions.sessions,
                summary.sessions.frames_sent,
                summary.sessions.frames_dropped
            )?;
            writeln!(out, "the server recorded each session to {} (<session>.wav and <session>.json)", dir.display())?;
            Ok::<_, DemoError>(Outcome { events, records, record_dir: dir.clone(), played: None })
        });
        // Whatever happened, the FIFO's reader is stopped and the WAV file finished.
        let played = recorder.map(|r| r.finish()).transpose()?;
        let mut outcome = outcome?;
        if let (Some(samples), Speaker::File(path)) = (played, &speaker) {
            writeln!(out, "what was played is in {} ({:.1} s)", path.display(), samples as f64 / PLAYED_RATE as f64)?;
            outcome.played = Some((path.clone(), samples));
        }
        Ok(outcome)
    }
}

/// Copies what the demo's ALSA device writes into the FIFO to a WAV file, on a thread of its own.
struct Recorder {
    fifo: PathBuf,
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<u64, String>>,
}

impl Recorder {
    fn start(fifo: &Path, path: &Path) -> Result<Recorder, DemoError> {
        // Opened for reading and writing, the FIFO never reports an end between sounds (each opens the device
        // afresh).
        let mut pipe = std::fs::File::options().read(true).write(true).open(fifo)?;
        let spec = hound::WavSpec { channels: 1, sample_rate: PLAYED_RATE, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
        let failed = |e: hound::Error| DemoError::Played { path: path.to_path_buf(), reason: e.to_string() };
        let mut wav = hound::WavWriter::create(path, spec).map_err(failed)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new().name("demo-speaker".into()).spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            let mut odd: Option<u8> = None;
            let mut samples = 0u64;
            loop {
                let n = match std::io::Read::read(&mut pipe, &mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e.to_string()),
                };
                let bytes: Vec<u8> = odd.take().into_iter().chain(buf[..n].iter().copied()).collect();
                let mut pairs = bytes.chunks_exact(2);
                for b in &mut pairs {
                    wav.write_sample(i16::from_le_bytes([b[0], b[1]])).map_err(|e| e.to_string())?;
                    samples += 1;
                }
                odd = pairs.remainder().first().copied();
                if stopping.load(Ordering::Acquire) {
                    // What is left in the pipe, then the end.
                    nix::fcntl::fcntl(&pipe, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK)).map_err(|e| e.to_string())?;
                }
            }
            wav.finalize().map_err(|e| e.to_string())?;
            Ok(samples)
        })?;
        Ok(Recorder { fifo: fifo.to_path_buf(), path: path.to_path_buf(), stop, thread })
    }

    /// Stops the thread once it has read what is in the FIFO; the samples written.
    fn finish(self) -> Result<u64, DemoError> {
        self.stop.store(true, Ordering::Release);
        // The reader may be waiting for data: one sample of silence wakes it.
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::File::options().write(true).custom_flags(libc::O_NONBLOCK).open(&self.fifo)?.write_all(&[0, 0])?;
        let failed = |reason: String| DemoError::Played { path: self.path.clone(), reason };
        self.thread.join().map_err(|_| failed("the thread writing it panicked".into()))?.map_err(failed)
    }
}

fn print_event(out: &mut dyn Write, e: &Event, started: Instant) -> std::io::Result<()> {
    let short = |s: &str| s.chars().take(8).collect::<String>();
    let now = format!("{:>7.2} s", started.elapsed().as_secs_f64());
    match e {
        Event::Wake { wakeword, score, t_ms, acted_on } => writeln!(
            out,
            "{now}  wake word {wakeword} (score {score:.2}, {:.2} s into the recording){}",
            *t_ms as f64 / 1000.0,
            if *acted_on { "" } else { ", caused by what was playing: not acted on" }
        ),
        Event::SessionStart { session, trigger, preroll_ms, .. } => {
            let trigger = serde_json::to_value(trigger).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
            writeln!(out, "{now}  session {} starts ({trigger}, with {preroll_ms} ms of audio from before the wake word)", short(session))
        }
        Event::ServerMessage { message, .. } => match message.get("type").and_then(|t| t.as_str()).unwrap_or("message") {
            "say" => writeln!(out, "{now}  server: say (an answer to play)"),
            kind => writeln!(out, "{now}  server: {kind} {}", message.get("text").and_then(|t| t.as_str()).unwrap_or("")),
        },
        Event::SessionEnd(s) => writeln!(
            out,
            "{now}  session {} ends: {}{}, after {} ms; {} frames sent, {} dropped",
            short(&s.session),
            s.reason.as_str(),
            s.detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default(),
            s.duration_ms,
            s.frames_sent,
            s.frames_dropped
        ),
        Event::PlaybackStart { what, duration_ms, .. } => writeln!(out, "{now}  playing {what} ({duration_ms} ms)"),
        Event::PlaybackEnd { what, reason, .. } if reason != "done" => {
            writeln!(out, "{now}  {what} not played to the end: {reason}")
        }
        Event::PlaybackEnd { .. } | Event::State { .. } | Event::Lagged { .. } => Ok(()),
        Event::Error { message } => writeln!(out, "{now}  error: {message}"),
    }
}
