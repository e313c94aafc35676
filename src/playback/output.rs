//! The output thread: plays one clip at a time through a cpal output stream it opens for the clip and closes
//! after it, so that an idle daemon holds no device and wakes no thread. Clips asked for while one plays wait
//! their turn (at most [`WAITING`]); the speaker stops what it wants cut short.
//!
//! The clip is converted before the stream starts (mono 16-bit at the clip's rate → the device's rate with the
//! capture side's converter, the channels repeated, the volume applied) and handed to the stream's callback
//! whole: the callback only copies, never waits or allocates. It reports the first sample written and, after
//! the clip and a short tail of silence (so closing the device does not cut the end), that it is done. A
//! device that cannot be opened is reported once and not tried again before a backoff (0.5 s, doubling to
//! 8 s) has passed; a device lost while playing ends the clip with the error, and the next clip opens it afresh.
//! An underrun (the device ran dry while the machine was busy) is counted and played on.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{FromSample, SampleFormat, SizedSample, StreamConfig};

use super::Clip;

/// Silence played after a clip before the stream closes: what the device may still hold.
const TAIL_MS: usize = 150;
/// Clips that may wait behind the one playing; more are refused.
pub const WAITING: usize = 4;
/// Backoff after a device that could not be opened.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(8);

/// What the thread is asked.
pub enum Command {
    Play {
        id: u64,
        clip: Arc<Clip>,
    },
    /// Stop clip `id` (playing or waiting), or for `None` whatever plays and waits.
    Stop {
        id: Option<u64>,
        reason: &'static str,
    },
}

/// What the thread tells.
#[derive(Debug)]
pub enum Report {
    /// The first sample of clip `id` was handed to the device at `at`.
    Started {
        id: u64,
        at: Instant,
        device: String,
    },
    Ended {
        id: u64,
        played_ms: u64,
        reason: String,
    },
    /// Clip `id` could not be played at all.
    Failed {
        id: u64,
        error: String,
    },
}

/// Where to play and how loud.
#[derive(Clone, Debug)]
pub struct OutputConfig {
    /// "default", or a device id from `voxgate devices`.
    pub device: String,
    pub volume: f32,
    /// Play at this rate (0: the clip's own when the device takes it).
    pub rate: u32,
}

/// The handle: dropping it ends the thread.
pub struct Output {
    commands: crossbeam_channel::Sender<Command>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Output {
    pub fn spawn(config: OutputConfig, reports: tokio::sync::mpsc::UnboundedSender<Report>) -> std::io::Result<Output> {
        let (commands, rx) = crossbeam_channel::bounded(16);
        let thread = std::thread::Builder::new().name("playback".into()).spawn(move || run(config, rx, reports))?;
        Ok(Output { commands, thread: Some(thread) })
    }

    /// Never waits: a full queue (16 commands) drops this one, which says so.
    pub fn send(&self, c: Command) -> bool {
        self.commands.try_send(c).is_ok()
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        let (dead, _) = crossbeam_channel::bounded(1);
        drop(std::mem::replace(&mut self.commands, dead));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A clip being played.
struct Playing {
    id: u64,
    _stream: cpal::Stream,
    progress: Arc<Progress>,
    /// Samples per second of the stream, all channels.
    per_second: usize,
    clip_len: usize,
}

impl Playing {
    /// Closes the stream, so that a clip reported ended is off the device: its id and how much of it played.
    fn close(self) -> (u64, u64) {
        let played = (self.progress.position.load(Ordering::Relaxed).min(self.clip_len) * 1000 / self.per_second.max(1)) as u64;
        let underruns = self.progress.underruns.load(Ordering::Relaxed);
        if underruns > 0 {
            tracing::info!("the playback device ran dry {underruns} times during sound {} (the machine was busy); played on", self.id);
        }
        (self.id, played)
    }
}

/// What a stream's callbacks tell the thread without waking it.
#[derive(Default)]
struct Progress {
    /// Samples handed to the device, all channels.
    position: AtomicUsize,
    /// Underruns the stream recovered from: the device ran dry and is played on, which is no reason to end a
    /// clip.
    underruns: AtomicUsize,
}

/// Signals from the stream's callbacks.
enum Signal {
    First(u64, Instant),
    Done(u64),
    Lost(u64, String),
}

fn run(config: OutputConfig, commands: crossbeam_channel::Receiver<Command>, reports: tokio::sync::mpsc::UnboundedSender<Report>) {
    let (signal_tx, signals) = crossbeam_channel::bounded::<Signal>(8);
    let mut player = Player {
        config,
        reports,
        signals: signal_tx,
        current: None,
        waiting: std::collections::VecDeque::new(),
        retry_at: None,
        retry_wait: RETRY_FIRST,
        failing: false,
    };
    loop {
        crossbeam_channel::select! {
            recv(commands) -> c => match c {
                Ok(Command::Play { id, clip }) => {
                    if player.current.is_none() {
                        player.start(id, clip);
                    } else if player.waiting.len() < WAITING {
                        player.waiting.push_back((id, clip));
                    } else {
                        player.report(Report::Failed { id, error: format!("{WAITING} sounds are waiting already") });
                    }
                }
                Ok(Command::Stop { id, reason }) => {
                    let waiting = std::mem::take(&mut player.waiting);
                    for (w, _) in &waiting {
                        if id.is_none_or(|i| i == *w) {
                            player.report(Report::Ended { id: *w, played_ms: 0, reason: reason.into() });
                        }
                    }
                    player.waiting = waiting.into_iter().filter(|(w, _)| id.is_some_and(|i| i != *w)).collect();
                    if let Some(p) = player.current.take_if(|p| id.is_none_or(|i| i == p.id)) {
                        let (id, played_ms) = p.close();
                        player.report(Report::Ended { id, played_ms, reason: reason.into() });
                        player.next();
                    }
                }
                Err(_) => return,
            },
            recv(signals) -> s => match s {
                Ok(Signal::First(id, at)) if player.current.as_ref().is_some_and(|p| p.id == id) => {
                    let device = player.config.device.clone();
                    player.report(Report::Started { id, at, device });
                }
                Ok(Signal::Done(id)) => {
                    if let Some(p) = player.current.take_if(|p| p.id == id) {
                        let (id, played_ms) = p.close();
                        player.report(Report::Ended { id, played_ms, reason: "done".into() });
                        player.next();
                    }
                }
                Ok(Signal::Lost(id, e)) => {
                    if let Some(p) = player.current.take_if(|p| p.id == id) {
                        tracing::warn!("playback device {} failed while playing: {e}; trying it again at the next sound", player.config.device);
                        // Said again once it plays: "works again".
                        player.failing = true;
                        let (id, played_ms) = p.close();
                        player.report(Report::Ended { id, played_ms, reason: format!("device failed: {e}") });
                        player.next();
                    }
                }
                _ => {}
            },
        }
    }
}

/// The output thread's state.
struct Player {
    config: OutputConfig,
    reports: tokio::sync::mpsc::UnboundedSender<Report>,
    signals: crossbeam_channel::Sender<Signal>,
    current: Option<Playing>,
    waiting: std::collections::VecDeque<(u64, Arc<Clip>)>,
    /// After a device that could not be opened: no new attempt before this.
    retry_at: Option<Instant>,
    retry_wait: Duration,
    failing: bool,
}

impl Player {
    fn report(&self, r: Report) {
        let _ = self.reports.send(r);
    }

    /// Starts the next waiting clip, if any.
    fn next(&mut self) {
        while self.current.is_none() {
            let Some((id, clip)) = self.waiting.pop_front() else {
                return;
            };
            self.start(id, clip);
        }
    }

    fn start(&mut self, id: u64, clip: Arc<Clip>) {
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            self.report(Report::Failed { id, error: format!("playback device {} unavailable; trying again after a pause", self.config.device) });
            return;
        }
        match open(&self.config, id, &clip, &self.signals) {
            Ok(p) => {
                if self.failing {
                    tracing::info!("playback device {} works again", self.config.device);
                }
                self.failing = false;
                self.retry_at = None;
                self.retry_wait = RETRY_FIRST;
                self.current = Some(p);
            }
            Err(e) => {
                if !self.failing {
                    tracing::warn!("cannot play through {}: {e}; trying again at the next sound, after a pause", self.config.device);
                }
                self.failing = true;
                self.retry_at = Some(Instant::now() + self.retry_wait);
                self.retry_wait = (self.retry_wait * 2).min(RETRY_MAX);
                self.report(Report::Failed { id, error: e });
            }
        }
    }
}

/// An output device as `voxgate devices` shows it.
pub struct OutputInfo {
    pub id: String,
    pub description: String,
    pub is_default: bool,
    /// "i16 1-2 ch 8000-48000 Hz", one per format range.
    pub formats: Vec<String>,
}

/// The output devices of the default host.
pub fn list() -> Result<Vec<OutputInfo>, String> {
    let host = cpal::default_host();
    let default_id = host.default_output_device().and_then(|d| d.id().ok());
    let devices = host.output_devices().map_err(|e| format!("cannot list output devices: {e}"))?;
    let mut out: Vec<OutputInfo> = devices
        .filter_map(|d| {
            let id = d.id().ok()?;
            let description = d.description().map(|x| x.name().to_string()).unwrap_or_default();
            // One line per sample format voxgate plays: its channels and rates.
            let ranges: Vec<_> = d.supported_output_configs().map(|c| c.collect()).unwrap_or_else(|_| Vec::new());
            let formats = [SampleFormat::I16, SampleFormat::I32, SampleFormat::F32]
                .iter()
                .filter_map(|f| {
                    let of: Vec<&cpal::SupportedStreamConfigRange> = ranges.iter().filter(|r| r.sample_format() == *f).collect();
                    let ch = (of.iter().map(|r| r.channels()).min()?, of.iter().map(|r| r.channels()).max()?);
                    let hz = (of.iter().map(|r| r.min_sample_rate()).min()?, of.iter().map(|r| r.max_sample_rate()).max()?);
                    Some(format!("{f:<4} {}-{} ch  {}-{} Hz", ch.0, ch.1, hz.0, hz.1))
                })
                .collect();
            Some(OutputInfo { is_default: Some(&id) == default_id.as_ref(), id: id.to_string(), description, formats })
        })
        .collect();
    out.dedup_by(|a, b| a.id == b.id);
    Ok(out)
}

fn find(name: &str) -> Result<cpal::Device, String> {
    let host = cpal::default_host();
    if name == "default" {
        return host.default_output_device().ok_or_else(|| "no default output device".to_string());
    }
    crate::audio::device::by_id(&host, name).ok_or_else(|| format!("output device {name:?} not found (see `voxgate devices`)"))
}

/// The stream format for a clip: its own rate (or `rate`) with 16-bit samples and one channel when the device
/// takes them, else the nearest it offers.
fn choose(device: &cpal::Device, want_rate: u32) -> Result<(SampleFormat, u16, u32), String> {
    let ranges: Vec<_> = device.supported_output_configs().map_err(|e| format!("cannot read its formats: {e}"))?.collect();
    let takes = |r: &cpal::SupportedStreamConfigRange| r.min_sample_rate() <= want_rate && want_rate <= r.max_sample_rate();
    let rank = |f: SampleFormat| match f {
        SampleFormat::I16 => 0,
        SampleFormat::F32 => 1,
        SampleFormat::I32 => 2,
        _ => 9,
    };
    if let Some(r) = ranges.iter().filter(|r| takes(r) && rank(r.sample_format()) < 9).min_by_key(|r| (rank(r.sample_format()), r.channels())) {
        return Ok((r.sample_format(), r.channels(), want_rate));
    }
    let d = device.default_output_config().map_err(|e| format!("offers no usable format: {e}"))?;
    if rank(d.sample_format()) == 9 {
        return Err(format!("offers only {} samples", d.sample_format()));
    }
    Ok((d.sample_format(), d.channels(), d.sample_rate()))
}

/// The clip as the device will take it: resampled with the capture side's converter, channels repeated,
/// volume applied, then the tail of silence.
fn prepare(clip: &Clip, rate: u32, channels: u16, volume: f32) -> Result<(Vec<i16>, usize), String> {
    let mono: Vec<i16> = if rate == clip.rate {
        clip.samples.to_vec()
    } else {
        let mut out: Vec<i16> = crate::audio::convert::resample_all(&clip.samples, clip.rate, rate, 1024).map_err(|e| e.to_string())?.concat();
        out.truncate((clip.samples.len() as u64 * rate as u64).div_ceil(clip.rate as u64) as usize);
        out
    };
    let scale = |s: i16| {
        if volume >= 1.0 { s } else { (s as f32 * volume).round() as i16 }
    };
    let mut data: Vec<i16> = mono.iter().flat_map(|s| std::iter::repeat_n(scale(*s), channels as usize)).collect();
    let clip_len = data.len();
    data.resize(clip_len + rate as usize * channels as usize * TAIL_MS / 1000, 0);
    Ok((data, clip_len))
}

fn open(config: &OutputConfig, id: u64, clip: &Clip, signals: &crossbeam_channel::Sender<Signal>) -> Result<Playing, String> {
    let device = find(&config.device)?;
    let want = if config.rate != 0 { config.rate } else { clip.rate };
    let (format, channels, rate) = choose(&device, want)?;
    let (data, clip_len) = prepare(clip, rate, channels, config.volume)?;
    let data: Arc<[i16]> = data.into();
    let progress = Arc::new(Progress::default());
    let stream_config = StreamConfig { channels, sample_rate: rate, buffer_size: cpal::BufferSize::Default };
    let stream = match format {
        SampleFormat::I16 => build::<i16>(&device, stream_config, id, data, progress.clone(), signals.clone()),
        SampleFormat::I32 => build::<i32>(&device, stream_config, id, data, progress.clone(), signals.clone()),
        _ => build::<f32>(&device, stream_config, id, data, progress.clone(), signals.clone()),
    }
    .map_err(|e| format!("cannot open it at {rate} Hz, {channels} ch, {format}: {e}"))?;
    stream.play().map_err(|e| format!("cannot start it: {e}"))?;
    Ok(Playing { id, _stream: stream, progress, per_second: rate as usize * channels as usize, clip_len })
}

fn build<T>(
    device: &cpal::Device,
    config: StreamConfig,
    id: u64,
    data: Arc<[i16]>,
    progress: Arc<Progress>,
    signals: crossbeam_channel::Sender<Signal>,
) -> Result<cpal::Stream, cpal::Error>
where
    T: SizedSample + FromSample<i16> + Send + 'static,
{
    let lost = signals.clone();
    let errors = progress.clone();
    let mut told_first = false;
    let mut told_done = false;
    device.build_output_stream::<T, _, _>(
        config,
        move |out: &mut [T], info| {
            let at = progress.position.load(Ordering::Relaxed);
            let n = out.len().min(data.len().saturating_sub(at));
            for (o, s) in out.iter_mut().zip(&data[at..at + n]) {
                *o = T::from_sample(*s);
            }
            for o in &mut out[n..] {
                *o = T::EQUILIBRIUM;
            }
            progress.position.store(at + n, Ordering::Relaxed);
            if !told_first && n > 0 {
                told_first = true;
                // When the first sample reaches the device, as the stream predicts it.
                let ahead = info.timestamp().playback.duration_since(info.timestamp().callback);
                let _ = signals.try_send(Signal::First(id, Instant::now() + ahead));
            }
            if !told_done && at + n >= data.len() {
                told_done = true;
                let _ = signals.try_send(Signal::Done(id));
            }
        },
        move |e: cpal::Error| {
            if e.kind() == cpal::ErrorKind::Xrun {
                errors.underruns.fetch_add(1, Ordering::Relaxed);
            } else {
                let _ = lost.try_send(Signal::Lost(id, e.to_string()));
            }
        },
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clip_is_prepared_exactly_at_its_rate_and_to_length_when_resampled() {
        let samples: Vec<i16> = (0..1600).map(|i| ((i * 97) % 6000 - 3000) as i16).collect();
        let clip = Clip::new("t", 16000, samples.clone());
        let (data, len) = prepare(&clip, 16000, 1, 1.0).unwrap();
        assert_eq!(&data[..len], &samples[..]);
        assert!(data[len..].iter().all(|s| *s == 0) && data.len() - len == 16000 * TAIL_MS / 1000);
        let (data, len) = prepare(&clip, 48000, 2, 1.0).unwrap();
        assert_eq!(len, 1600 * 3 * 2);
        assert_eq!(data[0], data[1], "channels repeated");
        let (half, _) = prepare(&clip, 16000, 1, 0.5).unwrap();
        assert_eq!(half[1], (samples[1] as f32 * 0.5).round() as i16);
    }
}
