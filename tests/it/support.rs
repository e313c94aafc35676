//! Shared test helpers: the voxgate binary, WAV fixtures, and a fake ALSA microphone.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

pub fn voxgate() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_voxgate"));
    // Keep the tests hermetic: no configuration from the environment of whoever runs them.
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("VOXGATE_")) {
        c.env_remove(k);
    }
    // Tests run many daemons at once: none binds the system's control socket unless a test gives it one.
    c.env("VOXGATE_CONTROL__SOCKET", "");
    c
}

/// Writes 16-bit mono PCM as a WAV file.
pub fn write_wav(path: &Path, rate: u32, pcm: &[i16]) {
    let spec = hound::WavSpec { channels: 1, sample_rate: rate, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for s in pcm {
        w.write_sample(*s).unwrap();
    }
    w.finalize().unwrap();
}

pub fn read_wav(path: &Path) -> (hound::WavSpec, Vec<i16>) {
    let mut r = hound::WavReader::open(path).unwrap();
    let spec = r.spec();
    (spec, r.samples::<i16>().map(Result::unwrap).collect())
}

/// Deterministic noise with no zero sample, so the start of a signal is easy to find after silence.
pub fn noise(n: usize, seed: u64) -> Vec<i16> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let v = ((x >> 33) as i64 % 40000 - 20000) as i16;
            if v == 0 { 1 } else { v }
        })
        .collect()
}

/// A fake microphone: ALSA's `file` plugin reading a FIFO that a thread fills at a fixed multiple of real
/// time. The ALSA configuration replaces the system one for the child processes it is given to.
pub struct FakeMic {
    pub dir: tempfile::TempDir,
    fifo: PathBuf,
    stop: Arc<AtomicBool>,
    writer: Option<JoinHandle<()>>,
    finished: crossbeam_channel::Receiver<()>,
}

impl FakeMic {
    /// `data` is raw audio in the format the device will be opened with; `chunk` bytes are written every
    /// `tick`. After the data, silence follows until the mic is dropped.
    pub fn new(data: Vec<u8>, chunk: usize, tick: Duration) -> FakeMic {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("mic.fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo {}", fifo.display());
        let conf = format!(
            "pcm.fakemic {{\n type file\n slave.pcm {{ type null }}\n file \"/dev/null\"\n infile \"{}\"\n format \"raw\"\n hint {{ show on description \"fake microphone\" }}\n}}\npcm.!default fakemic\n",
            fifo.display()
        );
        std::fs::write(dir.path().join("asound.conf"), conf).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (s, path) = (stop.clone(), fifo.clone());
        let (finished_tx, finished) = crossbeam_channel::bounded(1);
        let writer = std::thread::spawn(move || {
            let ticks = crossbeam_channel::tick(tick);
            let silence = vec![0u8; chunk];
            // cpal opens the device more than once while probing it: each time the reader goes away, start over.
            // The audio before the signal is silence, so whatever a probe left in the pipe is silence too.
            while !s.load(Ordering::Acquire) {
                let Ok(mut f) = File::options().write(true).open(&path) else { return };
                let mut pos = 0;
                loop {
                    if s.load(Ordering::Acquire) {
                        return;
                    }
                    let piece = if pos < data.len() { &data[pos..(pos + chunk).min(data.len())] } else { &silence[..] };
                    let mut buf = piece.to_vec();
                    buf.resize(chunk, 0);
                    if f.write_all(&buf).is_err() {
                        break;
                    }
                    pos += chunk;
                    if pos >= data.len() {
                        let _ = finished_tx.try_send(());
                    }
                    let _ = ticks.recv();
                }
            }
        });
        FakeMic { dir, fifo, stop, writer: Some(writer), finished }
    }

    /// Receives once all of the data has been written to the device.
    pub fn finished(&self) -> crossbeam_channel::Receiver<()> {
        self.finished.clone()
    }

    pub fn alsa_config(&self) -> PathBuf {
        self.dir.path().join("asound.conf")
    }
}

impl Drop for FakeMic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // The writer may be blocked opening the FIFO until a reader comes: be that reader.
        let reader = File::options().read(true).custom_flags(libc::O_NONBLOCK).open(&self.fifo);
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        drop(reader);
    }
}

use std::os::unix::fs::OpenOptionsExt;

/// The index of the first non-zero sample.
pub fn first_sound(pcm: &[i16]) -> Option<usize> {
    pcm.iter().position(|&s| s != 0)
}

/// Kills the child when the test ends, passed or not.
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One labelled phrase of a fixture stream (tests/fixtures/wake/labels.tsv, made by scripts/make-audio.sh).
#[derive(Debug, Clone)]
pub struct Label {
    pub file: String,
    pub kind: String,
    pub text: String,
    pub start_ms: u64,
    pub end_ms: u64,
}

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wake")
}

pub fn labels() -> Vec<Label> {
    let text = std::fs::read_to_string(fixtures().join("labels.tsv")).unwrap();
    let labels: Vec<Label> = text
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            Label { file: f[0].into(), kind: f[1].into(), text: f[2].into(), start_ms: f[3].parse().unwrap(), end_ms: f[4].parse().unwrap() }
        })
        .collect();
    assert!(labels.len() >= 40, "labels.tsv has only {} rows", labels.len());
    labels
}

/// `voxgate serve` on 127.0.0.1:0, as a child process; stopped when dropped.
pub struct ServeChild {
    _child: ChildGuard,
    pub url: String,
}

/// Starts `voxgate serve` and waits for its ready line, which gives its URL.
pub fn serve_child() -> ServeChild {
    use std::io::BufRead;
    let mut child = ChildGuard(voxgate().args(["serve", "--listen", "127.0.0.1:0"]).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null()).spawn().unwrap());
    let mut line = String::new();
    std::io::BufReader::new(child.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().strip_prefix("listening on ").expect(&line).to_string();
    ServeChild { _child: child, url }
}
