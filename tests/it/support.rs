//! Shared test helpers: the voxgate binary, WAV fixtures, and a fake ALSA microphone.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Receiver;
use serde_json::Value;

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

/// The period of [`FakeMic::numbered`]'s sample values.
pub const NUMBERED: i64 = 32000;

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
        let ticks = crossbeam_channel::tick(tick);
        let silence = vec![0u8; chunk];
        FakeMic::with_writer(move |pos| {
            let _ = ticks.recv();
            let piece = if pos < data.len() { &data[pos..(pos + chunk).min(data.len())] } else { &silence[..] };
            let mut buf = piece.to_vec();
            buf.resize(chunk, 0);
            (buf, pos + chunk >= data.len())
        })
    }

    /// A microphone that delivers as fast as it is read, far faster than real time: sample `i` of the stream
    /// (counted from when the capture opened it) is `i % NUMBERED`, so any stretch of what it delivered tells
    /// which stretch of the stream it is.
    pub fn numbered() -> FakeMic {
        // Two periods of the numbering, so that any 64 KiB stretch of it is one slice.
        let period: Vec<u8> = (0..2 * NUMBERED).flat_map(|i| ((i % NUMBERED) as i16).to_le_bytes()).collect();
        FakeMic::with_writer(move |pos| {
            let at = (pos / 2) % NUMBERED as usize * 2;
            (period[at..at + 64 * 1024].to_vec(), false)
        })
    }

    /// `next(position)` gives the bytes to write at that byte position of the stream, and whether all of the
    /// data has been written by then.
    fn with_writer(mut next: impl FnMut(usize) -> (Vec<u8>, bool) + Send + 'static) -> FakeMic {
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
            // cpal opens the device more than once while probing it: each time the reader goes away, start over.
            // The audio before the signal is silence, so whatever a probe left in the pipe is silence too.
            while !s.load(Ordering::Acquire) {
                let Ok(mut f) = File::options().write(true).open(&path) else {
                    return;
                };
                let mut pos = 0;
                loop {
                    if s.load(Ordering::Acquire) {
                        return;
                    }
                    let (buf, done) = next(pos);
                    if f.write_all(&buf).is_err() {
                        break;
                    }
                    pos += buf.len();
                    if done {
                        let _ = finished_tx.try_send(());
                    }
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
        // The writer may be blocked opening the FIFO until a reader comes, or writing into a full pipe whose
        // reader (the daemon) is still there or just went: be a reader, and read until the writer has gone.
        let reader = File::options().read(true).custom_flags(libc::O_NONBLOCK).open(&self.fifo);
        if let Ok(mut r) = reader.as_ref() {
            // SAFETY: a valid, open descriptor; only its status flags change.
            unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(r), libc::F_SETFL, 0) };
            let mut sink = vec![0u8; 64 * 1024];
            while std::io::Read::read(&mut r, &mut sink).is_ok_and(|n| n > 0) {}
        }
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        drop(reader);
    }
}

use std::os::unix::fs::OpenOptionsExt;

/// A fake speaker: ALSA's `file` plugin writing what is played into a FIFO, which a thread reads and keeps,
/// as fast as it comes or at `bytes_per_second` (then the device plays at real time). Play to it as
/// `playback.device = "alsa:fakespk"` with [`FakeSpeaker::alsa_config`] (which also holds a fake microphone's
/// device when given one). [`FakeSpeaker::unplug`] closes the FIFO's reading end, as a device that goes away.
pub struct FakeSpeaker {
    pub dir: tempfile::TempDir,
    fifo: PathBuf,
    bytes_per_second: Option<usize>,
    heard: Arc<(Mutex<Vec<u8>>, std::sync::Condvar)>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

impl FakeSpeaker {
    pub fn new(bytes_per_second: Option<usize>) -> FakeSpeaker {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("speaker.fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo {}", fifo.display());
        let heard = Arc::new((Mutex::new(Vec::new()), std::sync::Condvar::new()));
        let mut speaker = FakeSpeaker { dir, fifo, bytes_per_second, heard, stop: Arc::new(AtomicBool::new(false)), reader: None };
        speaker.plug();
        speaker
    }

    /// Starts reading the FIFO (again).
    pub fn plug(&mut self) {
        assert!(self.reader.is_none(), "plugged in already");
        let stop = Arc::new(AtomicBool::new(false));
        self.stop = stop.clone();
        let (h, s, bytes_per_second) = (self.heard.clone(), stop, self.bytes_per_second);
        // Opened for reading and writing, the FIFO never reports an end between clips (each opens the device
        // afresh), and what a clip writes is never lost in a reopening.
        let mut f = File::options().read(true).write(true).open(&self.fifo).unwrap();
        if bytes_per_second.is_some() {
            // A real device holds a few tens of milliseconds, not the pipe's 64 KiB: at real time, the one page
            // the pipe can be shrunk to.
            use std::os::fd::AsRawFd;
            // SAFETY: fcntl on a descriptor we own.
            assert!(unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) } >= 0);
        }
        self.reader = Some(std::thread::spawn(move || {
            let ticks = bytes_per_second.map(|_| crossbeam_channel::tick(Duration::from_millis(20)));
            let chunk = bytes_per_second.map(|b| (b / 50).max(2)).unwrap_or(64 * 1024);
            let mut buf = vec![0u8; chunk];
            while !s.load(Ordering::Acquire) {
                if let Some(t) = &ticks {
                    let _ = t.recv();
                }
                match std::io::Read::read(&mut f, &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) if !s.load(Ordering::Acquire) => {
                        h.0.lock().unwrap().extend_from_slice(&buf[..n]);
                        h.1.notify_all();
                    }
                    Ok(_) => return,
                }
            }
        }));
    }

    /// Stops reading and closes the FIFO: a writer then gets an error, as from a device unplugged.
    pub fn unplug(&mut self) {
        self.stop.store(true, Ordering::Release);
        // The reader may be waiting for data: give it a sample of silence (two bytes, so that what a new reader
        // finds left in the pipe stays aligned).
        if let Ok(mut w) = File::options().write(true).custom_flags(libc::O_NONBLOCK).open(&self.fifo) {
            let _ = w.write_all(&[0, 0]);
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }

    /// An ALSA configuration with this speaker as `fakespk` (and `mic`'s device as `fakemic`).
    pub fn alsa_config(&self, mic: Option<&FakeMic>) -> PathBuf {
        let mut conf = format!(
            "pcm.fakespk {{\n type file\n slave.pcm {{ type null }}\n file \"{}\"\n format \"raw\"\n hint {{ show on description \"fake speaker\" }}\n}}\n",
            self.fifo.display()
        );
        if let Some(m) = mic {
            conf.push_str(&std::fs::read_to_string(m.alsa_config()).unwrap());
        }
        let path = self.dir.path().join("asound.conf");
        std::fs::write(&path, conf).unwrap();
        path
    }

    /// Waits until what was played satisfies `want`; returns it.
    pub fn wait_until(&self, want: impl Fn(&[u8]) -> bool) -> Vec<u8> {
        let (heard, grew) = &*self.heard;
        let mut bytes = heard.lock().unwrap();
        while !want(&bytes) {
            let (b, timeout) = grew.wait_timeout(bytes, PATIENCE).unwrap();
            if timeout.timed_out() {
                let kept = std::env::temp_dir().join(format!("voxgate-speaker-{}.raw", std::process::id()));
                let _ = std::fs::write(&kept, &*b);
                panic!("the speaker did not play what was expected ({} bytes played, kept in {})", b.len(), kept.display());
            }
            bytes = b;
        }
        bytes.clone()
    }
}

impl Drop for FakeSpeaker {
    fn drop(&mut self) {
        self.unplug();
    }
}

/// Where `needle` (s16le) starts in `hay` (s16le), at a sample boundary.
pub fn find_samples(hay: &[u8], needle: &[i16]) -> Option<usize> {
    let needle: Vec<u8> = needle.iter().flat_map(|s| s.to_le_bytes()).collect();
    (0..hay.len().saturating_sub(needle.len()) + 1).step_by(2).find(|&i| hay[i..].starts_with(&needle)).map(|i| i / 2)
}

/// Why `needle` is not in `hay` (16-bit samples) bit for bit, for a failure message: where its first 32
/// samples are, if anywhere, and where the rest first differs from it.
pub fn why_not_found(hay: &[i16], needle: &[i16]) -> String {
    let head = &needle[..needle.len().min(32)];
    let Some(at) = hay.windows(head.len()).position(|w| w == head) else {
        return "not even its first 32 samples are there".into();
    };
    let after = &hay[at..];
    match needle.iter().zip(after).position(|(a, b)| a != b) {
        Some(i) => format!(
            "it starts at sample {at} and differs from its sample {i} on: {:?} where {:?} was played",
            &after[i..after.len().min(i + 8)],
            &needle[i..needle.len().min(i + 8)]
        ),
        None => format!("it starts at sample {at} and is cut after {} of its {} samples", after.len().min(needle.len()), needle.len()),
    }
}

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
    let mut child = ChildGuard(
        voxgate()
            .args(["serve", "--listen", "127.0.0.1:0"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufReader::new(child.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().strip_prefix("listening on ").expect(&line).to_string();
    ServeChild { _child: child, url }
}

/// Longest any single step may take before the test gives up (a deadline, not a wait).
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Feeds the daemon's stdin with quiet noise at real time, 20 ms at a time, until dropped; can be paused, and
/// can be given audio to feed instead of the noise ([`Feeder::play`]).
pub struct Feeder {
    pub paused: Arc<AtomicBool>,
    queued: Arc<Mutex<std::collections::VecDeque<i16>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Feeder {
    fn new(mut stdin: ChildStdin) -> Feeder {
        let paused = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let queued: Arc<Mutex<std::collections::VecDeque<i16>>> = Arc::default();
        let (p, s, q) = (paused.clone(), stop.clone(), queued.clone());
        let thread = std::thread::spawn(move || {
            // Real-time pacing stands in for a microphone's clock.
            let tick = crossbeam_channel::tick(Duration::from_millis(20));
            let quiet: Vec<i16> = noise(320, 7).iter().map(|s| s / 200).collect();
            while !s.load(Ordering::Relaxed) {
                let _ = tick.recv();
                let frame: Vec<u8> = {
                    let mut q = q.lock().unwrap();
                    let n = q.len().min(320);
                    let mut f: Vec<i16> = q.drain(..n).collect();
                    f.extend_from_slice(&quiet[n..]);
                    f.iter().flat_map(|s| s.to_le_bytes()).collect()
                };
                if !p.load(Ordering::Relaxed) && stdin.write_all(&frame).is_err() {
                    return;
                }
            }
        });
        Feeder { paused, queued, stop, thread: Some(thread) }
    }

    /// Feeds these samples next, at real time, then the noise again.
    pub fn play(&self, samples: &[i16]) {
        self.queued.lock().unwrap().extend(samples);
    }
}

impl Drop for Feeder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The real daemon (`voxgate run`) as a child process, with its own control socket, notify socket and
/// configuration file. Started, it has sent READY=1; dropped, it is killed. Its log is kept, and shown when a
/// wait for it fails.
pub struct TestDaemon {
    pub child: ChildGuard,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub config: PathBuf,
    notify: Receiver<String>,
    /// Real-time quiet noise on its stdin, when it reads stdin.
    pub feeder: Option<Feeder>,
    /// Everything it logged, and a signal for each new line.
    log: Arc<(Mutex<String>, std::sync::Condvar)>,
    /// Disconnected once its log has ended (the pipe's end reached).
    log_ended: Receiver<()>,
}

impl TestDaemon {
    /// On stdin fed with quiet noise, in manual mode, streaming to `url`; `extra` environment on top.
    pub fn start(url: &str, extra: &[(&str, &str)]) -> TestDaemon {
        TestDaemon::spawn(&config_text(url, "info"), true, extra)
    }

    /// With this configuration file; `feed`: its stdin gets real-time noise (else it is closed).
    pub fn spawn(config_text: &str, feed: bool, extra: &[(&str, &str)]) -> TestDaemon {
        TestDaemon::launch(config_text, feed, extra, true)
    }

    /// As [`TestDaemon::spawn`], without waiting for READY=1.
    pub fn launch(config_text: &str, feed: bool, extra: &[(&str, &str)], ready: bool) -> TestDaemon {
        let dir = tempfile::tempdir().unwrap();
        // Other users must reach the socket for the credential check to be what refuses them.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let socket = dir.path().join("control.sock");
        let config = dir.path().join("voxgate.toml");
        std::fs::write(&config, config_text).unwrap();
        let notify_path = dir.path().join("notify.sock");
        let notify_socket = UnixDatagram::bind(&notify_path).unwrap();
        let (tx, notify) = crossbeam_channel::unbounded();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = notify_socket.recv(&mut buf) {
                if tx.send(String::from_utf8_lossy(&buf[..n]).into_owned()).is_err() {
                    return;
                }
            }
        });
        let mut cmd = voxgate();
        cmd.arg("run")
            .arg("--config")
            .arg(&config)
            .env("VOXGATE_CONTROL__SOCKET", &socket)
            .env("NOTIFY_SOCKET", &notify_path)
            .stdin(if feed { Stdio::piped() } else { Stdio::null() })
            .stderr(Stdio::piped());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let mut child = ChildGuard(cmd.spawn().unwrap());
        let feeder = child.0.stdin.take().map(Feeder::new);
        // Read its log as it comes, or the daemon would block once the pipe is full.
        let log = Arc::new((Mutex::new(String::new()), std::sync::Condvar::new()));
        let stderr = child.0.stderr.take().unwrap();
        let sink = log.clone();
        let (ended, log_ended) = crossbeam_channel::bounded::<()>(0);
        std::thread::spawn(move || {
            let _ended = ended;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.0.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
                sink.1.notify_all();
            }
        });
        let mut d = TestDaemon { child, dir, socket, config, notify, feeder, log, log_ended };
        if ready {
            d.notified(|m| m.contains("READY=1"));
        }
        d
    }

    /// What it has logged so far.
    pub fn log(&self) -> String {
        self.log.0.lock().unwrap().clone()
    }

    /// Waits until its log (from byte `from` on) has a line `want` accepts; the log from `from` up to the end
    /// of that line.
    pub fn logged(&self, from: usize, want: impl Fn(&str) -> bool) -> String {
        let (log, grew) = &*self.log;
        let mut text = log.lock().unwrap();
        loop {
            if let Some(line) = text[from.min(text.len())..].lines().find(|l| want(l)) {
                let end = text[from..].find(line).unwrap_or(0) + from + line.len();
                return text[from..end].to_string();
            }
            let (t, timeout) = grew.wait_timeout(text, PATIENCE).unwrap();
            assert!(!timeout.timed_out(), "no such log line; the log:\n{}", t);
            text = t;
        }
    }

    /// Waits for it to exit, at most `within`; its exit status.
    pub fn wait(&mut self, within: Duration) -> std::process::ExitStatus {
        // A helper thread blocks until the child has exited without reaping it (WNOWAIT), so that this thread
        // can wait on that with a deadline and then collect the status itself.
        let (tx, rx) = crossbeam_channel::bounded(1);
        let pid = self.child.0.id() as libc::id_t;
        std::thread::spawn(move || {
            // SAFETY: a zeroed siginfo_t is a valid out-parameter; waitid only writes to it.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: waits on our own child; WNOWAIT leaves it to be reaped by `try_wait` below.
            unsafe { libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT) };
            let _ = tx.send(());
        });
        if rx.recv_timeout(within).is_err() {
            panic!("the daemon did not exit within {within:?}; its log:\n{}", self.log());
        }
        // Its log is read to the end before anyone looks at it.
        assert!(self.log_ended.recv_timeout(PATIENCE).is_err_and(|e| e.is_disconnected()), "its log did not end");
        self.child.0.try_wait().unwrap().expect("exited")
    }

    /// Waits for the notify message `want` accepts; returns it.
    pub fn notified(&mut self, want: impl Fn(&str) -> bool) -> String {
        loop {
            match self.notify.recv_timeout(PATIENCE) {
                Ok(m) if want(m.trim_end()) => return m.trim_end().to_string(),
                Ok(_) => {}
                Err(e) => panic!("no such notify message ({e}); daemon log:\n{}", self.log()),
            }
        }
    }

    /// `voxgate <args> --socket S --json`: exit code and the JSON lines it printed.
    pub fn cli(&self, args: &[&str]) -> (i32, Vec<Value>) {
        let out = voxgate().args(args).arg("--socket").arg(&self.socket).arg("--json").output().unwrap();
        let lines = String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        (out.status.code().unwrap_or(-1), lines)
    }

    pub fn status(&self) -> Value {
        let (code, lines) = self.cli(&["status"]);
        assert_eq!(code, 0, "{lines:?}");
        lines.into_iter().next().unwrap()
    }

    pub fn connect(&self) -> Raw {
        Raw::new(UnixStream::connect(&self.socket).unwrap())
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.0.id() as i32, sig) };
    }
}

/// The test daemon's configuration: stdin, manual mode, sessions that only `stop` ends.
pub fn config_text(url: &str, level: &str) -> String {
    format!(
        "[audio]\nsource = \"stdin\"\n\n[wake]\nmode = \"manual\"\n\n[session]\nurl = \"{url}\"\nno_speech_ms = 60000\nmax_ms = 60000\n\n[log]\nlevel = \"{level}\"\nformat = \"text\"\n"
    )
}

/// A raw connection to the control socket.
pub struct Raw {
    stream: UnixStream,
    pub reader: BufReader<UnixStream>,
}

impl Raw {
    pub fn new(stream: UnixStream) -> Raw {
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        Raw { reader: BufReader::new(stream.try_clone().unwrap()), stream }
    }

    pub fn send(&mut self, line: &[u8]) {
        self.stream.write_all(line).unwrap();
    }

    pub fn recv(&mut self) -> Value {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    pub fn call(&mut self, req: Value) -> Value {
        self.send(format!("{req}\n").as_bytes());
        self.recv()
    }

    /// The next event line the predicate accepts.
    pub fn event(&mut self, want: impl Fn(&Value) -> bool) -> Value {
        loop {
            let e = self.recv();
            if want(&e) {
                return e;
            }
        }
    }
}

pub fn is(kind: &str) -> impl Fn(&Value) -> bool + '_ {
    move |e| e["event"] == kind
}
