//! `audio.source = "file:PATH.wav"`: a WAV file of any rate, channel count, 8/16/24/32-bit integer or 32-bit
//! float samples, converted to the configured frames.
//!
//! hound parses the header; the data chunk is then read directly, so that `file_follow` can keep reading a
//! file that is still being written (its RIFF and data sizes are then 0 or stale). Without follow, the data
//! size in the header is the length, and a file shorter than that is reported as truncated after the frames
//! it did hold were delivered. A header data size of 0 means "unknown": the file is read to its end.
//!
//! Pacing: `realtime` hands frame `n` over at `(n + 1) * frame_ms` on the source clock; `fast` as soon as the
//! consumer takes it.

use std::fs::File;
use std::io::{BufReader, ErrorKind, Read};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hound::{SampleFormat, WavReader, WavSpec};
use nix::poll::PollTimeout;

use super::{AudioError, Converter, FrameSink, Pace, SourceContext};
use crate::config::{FilePacing, SourceSpec};

/// Bytes read per step: 4 KiB.
const READ_BYTES: usize = 4096;

/// The parts of a WAV header the reader needs.
#[derive(Debug, Clone, Copy)]
pub struct WavInfo {
    pub spec: WavSpec,
    /// Declared data bytes; 0 when unknown.
    pub data_bytes: u64,
}

impl WavInfo {
    fn bytes_per_sample(&self) -> usize {
        (self.spec.bits_per_sample as usize).div_ceil(8)
    }

    pub fn duration_ms(&self) -> u64 {
        let frame = self.bytes_per_sample() as u64 * self.spec.channels as u64;
        (self.data_bytes / frame) * 1000 / self.spec.sample_rate as u64
    }
}

/// Opens a WAV file and checks it can be read; the reader is left at the first data byte.
pub fn open(path: &Path) -> Result<(WavInfo, BufReader<File>), AudioError> {
    let file = File::open(path).map_err(|e| AudioError::WavOpen { path: path.into(), source: hound::Error::IoError(e) })?;
    let reader = WavReader::new(BufReader::new(file)).map_err(|source| AudioError::WavOpen { path: path.into(), source })?;
    let spec = reader.spec();
    let data_bytes = reader.len() as u64 * (spec.bits_per_sample as u64).div_ceil(8);
    let info = WavInfo { spec, data_bytes };
    check_format(path, &info)?;
    Ok((info, reader.into_inner()))
}

/// Opens and closes the file: reports a missing, unreadable or unsupported file before the thread starts.
pub fn probe(path: &Path) -> Result<WavInfo, AudioError> {
    open(path).map(|(info, _)| info)
}

fn check_format(path: &Path, info: &WavInfo) -> Result<(), AudioError> {
    let s = info.spec;
    let ok = match s.sample_format {
        SampleFormat::Int => matches!(s.bits_per_sample, 8 | 16 | 24 | 32),
        SampleFormat::Float => s.bits_per_sample == 32,
    };
    if !ok {
        let kind = if s.sample_format == SampleFormat::Int { "integer" } else { "float" };
        return Err(AudioError::WavFormat {
            path: path.into(),
            what: format!("{}-bit {kind} samples (supported: 8/16/24/32-bit integer, 32-bit float)", s.bits_per_sample),
        });
    }
    if s.channels == 0 || s.sample_rate < 1000 || s.sample_rate > 384_000 {
        return Err(AudioError::WavFormat {
            path: path.into(),
            what: format!("{} channels at {} Hz", s.channels, s.sample_rate),
        });
    }
    Ok(())
}

/// Decodes one little-endian sample to f32 in [-1, 1).
fn decode(bytes: &[u8], spec: WavSpec) -> f32 {
    match (spec.sample_format, bytes.len()) {
        (SampleFormat::Float, _) => f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        (SampleFormat::Int, 1) => (bytes[0] as f32 - 128.0) / 128.0,
        (SampleFormat::Int, 2) => i16::from_le_bytes([bytes[0], bytes[1]]) as f32 / 32768.0,
        (SampleFormat::Int, 3) => (i32::from_le_bytes([0, bytes[0], bytes[1], bytes[2]]) >> 8) as f32 / 8_388_608.0,
        (SampleFormat::Int, _) => i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as f32 / 2_147_483_648.0,
    }
}

pub(crate) fn run(ctx: SourceContext, mut sink: FrameSink) -> Result<(), AudioError> {
    let SourceSpec::File(path) = &ctx.config.source else { unreachable!("file backend chosen for a file source") };
    let (info, reader) = open(path)?;
    ctx.stats.set_state(format!(
        "reading {} ({} Hz, {} ch, {}-bit)",
        path.display(),
        info.spec.sample_rate,
        info.spec.channels,
        info.spec.bits_per_sample
    ));
    let mut conv = Converter::new(info.spec.channels, info.spec.sample_rate, ctx.spec.sample_rate, ctx.spec.samples())?;
    let mut follower = if ctx.config.file_follow { Some(Follower::new(path)?) } else { None };
    let limit = if follower.is_some() || info.data_bytes == 0 { None } else { Some(info.data_bytes) };
    let mut pacer = Pacer::new(&ctx);
    let mut data = DataReader { reader, path: path.clone(), info, limit, read: 0, pending: Vec::new() };
    let mut samples = Vec::with_capacity(READ_BYTES);

    let frame_ms = ctx.spec.frame_ms;
    let mut emit = |pcm: Vec<i16>| {
        let relaxed = sink.relaxed();
        pacer.wait_turn(&ctx, frame_ms, relaxed) && sink.push(pcm)
    };
    loop {
        samples.clear();
        match data.next_block(&mut samples)? {
            Block::Samples => {
                if !conv.push(&samples, &mut emit) {
                    return Ok(());
                }
            }
            Block::End => break,
            Block::WouldGrow => {
                let Some(f) = follower.as_mut() else { break };
                let idle = Duration::from_millis(ctx.config.file_follow_idle_ms);
                match f.wait_for_growth(&ctx, idle)? {
                    Growth::Grew => continue,
                    Growth::Idle => {
                        tracing::info!(file = %path.display(), "file stopped growing for {} ms: end of source", idle.as_millis());
                        break;
                    }
                    Growth::Stopped => return Ok(()),
                }
            }
        }
    }
    conv.finish(&mut emit);
    data.check_complete()
}

enum Block {
    Samples,
    /// The declared length was reached.
    End,
    /// End of the file as it is now; it may still grow.
    WouldGrow,
}

struct DataReader {
    reader: BufReader<File>,
    path: PathBuf,
    info: WavInfo,
    limit: Option<u64>,
    read: u64,
    /// Bytes of an incomplete sample frame, kept until the rest is written.
    pending: Vec<u8>,
}

impl DataReader {
    fn next_block(&mut self, samples: &mut Vec<f32>) -> Result<Block, AudioError> {
        let want = match self.limit {
            Some(l) if self.read >= l => return Ok(Block::End),
            Some(l) => (l - self.read).min(READ_BYTES as u64) as usize,
            None => READ_BYTES,
        };
        let start = self.pending.len();
        self.pending.resize(start + want, 0);
        let n = loop {
            match self.reader.read(&mut self.pending[start..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(source) => return Err(AudioError::Read { what: format!("WAV file {}", self.path.display()), source }),
            }
        };
        self.pending.truncate(start + n);
        self.read += n as u64;
        if n == 0 {
            return Ok(Block::WouldGrow);
        }
        let frame_bytes = self.info.bytes_per_sample() * self.info.spec.channels as usize;
        let whole = self.pending.len() / frame_bytes * frame_bytes;
        let bps = self.info.bytes_per_sample();
        samples.extend(self.pending[..whole].chunks_exact(bps).map(|b| decode(b, self.info.spec)));
        self.pending.drain(..whole);
        Ok(Block::Samples)
    }

    fn check_complete(&self) -> Result<(), AudioError> {
        match self.limit {
            Some(expected) if self.read < expected => {
                Err(AudioError::WavTruncated { path: self.path.clone(), expected, found: self.read })
            }
            _ => Ok(()),
        }
    }
}

/// Real-time pacing on the source clock.
struct Pacer {
    realtime: bool,
    start: Duration,
    emitted: u64,
}

impl Pacer {
    fn new(ctx: &SourceContext) -> Self {
        Pacer { realtime: ctx.config.file_pacing == FilePacing::Realtime, start: ctx.clock.now(), emitted: 0 }
    }

    /// Waits until the next frame is due; `false` when stopped. `relaxed`: until the end of the relaxed batch it
    /// belongs to, so a batch goes at once (see [`crate::audio::pace`]).
    fn wait_turn(&mut self, ctx: &SourceContext, frame_ms: u32, relaxed: bool) -> bool {
        self.emitted += 1;
        if !self.realtime {
            return !ctx.stop.is_stopped();
        }
        let upto = if relaxed {
            let batch = Pace::batch_frames(frame_ms);
            self.emitted.div_ceil(batch) * batch
        } else {
            self.emitted
        };
        let due = self.start + Duration::from_millis(upto * frame_ms as u64);
        ctx.clock.sleep_until(due, &ctx.stop)
    }
}

enum Growth {
    Grew,
    Idle,
    Stopped,
}

/// Waits for a followed file to be written to (inotify), for at most the idle time.
struct Follower {
    inotify: inotify::Inotify,
    path: PathBuf,
    buf: Vec<u8>,
}

impl Follower {
    fn new(path: &Path) -> Result<Self, AudioError> {
        let err = |source| AudioError::Read { what: format!("changes to WAV file {}", path.display()), source };
        let inotify = inotify::Inotify::init().map_err(err)?;
        inotify
            .watches()
            .add(path, inotify::WatchMask::MODIFY | inotify::WatchMask::CLOSE_WRITE)
            .map_err(err)?;
        Ok(Follower { inotify, path: path.into(), buf: vec![0; 4096] })
    }

    fn wait_for_growth(&mut self, ctx: &SourceContext, idle: Duration) -> Result<Growth, AudioError> {
        // A write may have happened between our last read and the watch: look again before waiting.
        // The reader re-reads on `Grew`; spurious wake-ups only cost one empty read.
        let deadline = ctx.clock.now() + idle;
        loop {
            let now = ctx.clock.now();
            if now >= deadline {
                return Ok(Growth::Idle);
            }
            let timeout = PollTimeout::try_from((deadline - now).as_millis().min(i32::MAX as u128) as i32).unwrap_or(PollTimeout::MAX);
            let (grew, stopped) = match ctx.stop.wait_readable(self.inotify.as_fd(), timeout) {
                Ok(r) => r,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(AudioError::Read { what: format!("changes to WAV file {}", self.path.display()), source: e.into() }),
            };
            if stopped {
                return Ok(Growth::Stopped);
            }
            if grew {
                match self.inotify.read_events(&mut self.buf) {
                    Ok(mut events) => {
                        if events.next().is_some() {
                            return Ok(Growth::Grew);
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
                    Err(source) => {
                        return Err(AudioError::Read { what: format!("changes to WAV file {}", self.path.display()), source });
                    }
                }
            }
        }
    }
}
