//! `audio.source = "default"` or a device id from `voxgate devices`: capture through cpal.
//!
//! Threads: cpal's own audio thread runs the data callback, which converts samples to f32 and pushes them
//! into a lock-free ring (`rtrb`) without blocking or allocating, and unparks the capture thread. What did
//! not fit is not silently skipped: the callback notes where in the stream it was lost and how much, on a
//! second small ring, and the capture thread turns each loss into whole frames that the frame numbers skip,
//! so a session's server sees every capture loss as a gap in `seq`. The capture thread (ours) owns the cpal
//! stream, drains the ring through the [`Converter`] into frames, and rebuilds the stream with capped
//! exponential backoff when the device is missing, busy or lost. While the consumer relaxes the [`Pace`], the
//! callback wakes the capture thread once per batch. cpal's error callback only records the first error and
//! unparks the capture thread: some backends call it in a busy loop once a device is gone, and the stream is
//! dropped from outside.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{FromSample, SampleFormat, SizedSample, StreamConfig, SupportedStreamConfigRange};

use super::pace::RELAXED_BATCH;
use super::{AudioError, Converter, FrameSink, Pace, SourceContext};
use crate::config::{AudioConfig, CaptureFormat, SourceSpec};

/// First wait before reopening a device that failed.
pub const BACKOFF_START: Duration = Duration::from_millis(500);
/// Longest wait between attempts: a re-plugged microphone is picked up within this.
pub const BACKOFF_MAX: Duration = Duration::from_secs(8);
/// Device ring: one second of device samples.
const RING_MS: usize = 1000;
/// How long cpal may take to open a stream.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// What the capture thread opened the device with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chosen {
    pub format: SampleFormat,
    pub channels: u16,
    pub rate: u32,
}

impl std::fmt::Display for Chosen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} Hz, {} ch, {}", self.rate, self.channels, self.format)
    }
}

/// One capture device as `voxgate devices` shows it.
#[derive(Debug)]
pub struct DeviceInfo {
    pub id: String,
    pub description: String,
    pub is_default: bool,
    pub configs: Vec<ConfigRange>,
    /// Why the formats could not be read, if they could not.
    pub error: Option<String>,
}

impl DeviceInfo {
    /// The configurations merged per sample format: (format, channels min..max, rates min..max), usable
    /// formats only, in order of preference.
    pub fn summary(&self) -> Vec<ConfigRange> {
        let mut out: Vec<ConfigRange> = Vec::new();
        for f in SUPPORTED {
            for c in self.configs.iter().filter(|c| c.format == f) {
                match out.iter_mut().find(|o| o.format == f) {
                    Some(o) => {
                        o.min_rate = o.min_rate.min(c.min_rate);
                        o.max_rate = o.max_rate.max(c.max_rate);
                        o.channels = o.channels.max(c.channels);
                    }
                    None => out.push(c.clone()),
                }
            }
        }
        out
    }

    /// Channel counts offered for `format`, lowest first.
    pub fn channels(&self, format: SampleFormat) -> (u16, u16) {
        let mut it = self.configs.iter().filter(|c| c.format == format).map(|c| c.channels);
        let first = it.next().unwrap_or(0);
        it.fold((first, first), |(lo, hi), c| (lo.min(c), hi.max(c)))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigRange {
    pub format: SampleFormat,
    pub channels: u16,
    pub min_rate: u32,
    pub max_rate: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("cannot list capture devices of the {host} audio host: {source}")]
    List { host: String, source: cpal::Error },
    #[error("capture device {0:?} not found (see `voxgate devices`)")]
    NotFound(String),
    #[error("no default capture device")]
    NoDefault,
    #[error("capture device {device}: cannot read its formats: {source}")]
    Formats { device: String, source: cpal::Error },
    #[error("capture device {device} offers no usable format{wanted} (offered: {offered})")]
    NoFormat { device: String, wanted: String, offered: String },
    #[error("capture device {device}: cannot open {chosen}: {source}")]
    Open { device: String, chosen: Chosen, source: cpal::Error },
    #[error("capture device {device}: cannot start: {source}")]
    Play { device: String, source: cpal::Error },
    #[error("capture device {device} failed: {message}")]
    Lost { device: String, message: String },
    #[error(transparent)]
    Audio(#[from] AudioError),
}

const SUPPORTED: [SampleFormat; 7] = [
    SampleFormat::I16,
    SampleFormat::F32,
    SampleFormat::I32,
    SampleFormat::I8,
    SampleFormat::U8,
    SampleFormat::U16,
    SampleFormat::F64,
];

/// Lists the capture devices of the default host.
pub fn list() -> Result<Vec<DeviceInfo>, DeviceError> {
    let host = cpal::default_host();
    let host_name = host.id().name().to_string();
    let default_id = host.default_input_device().and_then(|d| d.id().ok());
    let devices = host.input_devices().map_err(|source| DeviceError::List { host: host_name, source })?;
    let mut out: Vec<DeviceInfo> = devices.filter_map(|d| describe(&d, default_id.as_ref())).collect();
    // ALSA's "default" is often not among the enumerated devices; show it first when it is not.
    if !out.iter().any(|d| d.is_default) {
        if let Some(d) = host.default_input_device() {
            if let Some(mut info) = describe(&d, default_id.as_ref()) {
                info.description = format!("system default capture device {}", info.description).trim_end().to_string();
                out.insert(0, info);
            }
        }
    }
    Ok(out)
}

fn describe(d: &cpal::Device, default_id: Option<&cpal::DeviceId>) -> Option<DeviceInfo> {
    let id = d.id().ok()?;
    let description = d.description().map(|x| x.name().to_string()).unwrap_or_default();
    let (configs, error) = match d.supported_input_configs() {
        Ok(c) => (c.map(|r| range(&r)).collect(), None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    Some(DeviceInfo { is_default: Some(&id) == default_id, id: id.to_string(), description, configs, error })
}

fn range(r: &SupportedStreamConfigRange) -> ConfigRange {
    ConfigRange { format: r.sample_format(), channels: r.channels(), min_rate: r.min_sample_rate(), max_rate: r.max_sample_rate() }
}

/// Finds the device `source` names: "default", a full id ("alsa:hw:1,0"), or an ALSA id without its host.
fn find(name: &str) -> Result<cpal::Device, DeviceError> {
    let host = cpal::default_host();
    if name == "default" {
        return host.default_input_device().ok_or(DeviceError::NoDefault);
    }
    by_id(&host, name).ok_or_else(|| DeviceError::NotFound(name.to_string()))
}

/// The device with this id: a full one ("alsa:hw:1,0"), or one without its host ("hw:1,0"). Capture and
/// playback name devices the same way.
pub fn by_id(host: &cpal::Host, name: &str) -> Option<cpal::Device> {
    let candidates = [name.to_string(), format!("{}:{name}", host.id().name().to_lowercase())];
    candidates.iter().filter_map(|c| c.parse::<cpal::DeviceId>().ok()).find_map(|id| host.device_by_id(&id))
}

/// Picks the capture format: the target rate, mono and 16-bit when offered; otherwise what the device offers
/// (preferring the target rate, then 48 and 44.1 kHz, then fewer channels), converted afterwards. The
/// `audio.capture_*` keys narrow the choice.
pub fn choose(ranges: &[ConfigRange], target_rate: u32, audio: &AudioConfig) -> Option<Chosen> {
    let want_format = match audio.capture_format {
        CaptureFormat::Auto => None,
        CaptureFormat::I16 => Some(SampleFormat::I16),
        CaptureFormat::I32 => Some(SampleFormat::I32),
        CaptureFormat::F32 => Some(SampleFormat::F32),
    };
    let contains = |r: &ConfigRange, rate: u32| r.min_rate <= rate && rate <= r.max_rate;
    ranges
        .iter()
        .filter(|r| SUPPORTED.contains(&r.format))
        .filter(|r| want_format.is_none_or(|f| f == r.format))
        .filter(|r| audio.capture_channels == 0 || r.channels == audio.capture_channels)
        .filter(|r| audio.capture_rate == 0 || contains(r, audio.capture_rate))
        .map(|r| {
            let rate = if audio.capture_rate != 0 {
                audio.capture_rate
            } else {
                [target_rate, 48_000, 44_100].into_iter().find(|&x| contains(r, x)).unwrap_or(r.max_rate)
            };
            let format_rank = SUPPORTED.len() - SUPPORTED.iter().position(|f| *f == r.format).unwrap_or(0);
            let score = (rate == target_rate, std::cmp::Reverse(r.channels), format_rank, rate);
            (score, Chosen { format: r.format, channels: r.channels, rate })
        })
        .max_by_key(|(score, _)| *score)
        .map(|(_, c)| c)
}

/// Shared between the cpal callbacks and the capture thread.
struct Shared {
    capture_thread: std::thread::Thread,
    /// Relaxed: the capture thread is woken once per batch instead of once per callback.
    pace: Arc<Pace>,
    failed: AtomicBool,
    /// First error of this stream; later ones (a busy loop, on some backends) are ignored.
    error: OnceLock<String>,
}

struct Opened {
    stream: cpal::Stream,
    ring: rtrb::Consumer<f32>,
    /// Where the callback lost samples, in stream order.
    losses: rtrb::Consumer<Loss>,
    shared: Arc<Shared>,
    chosen: Chosen,
}

/// Device samples the data callback could not store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loss {
    /// Position in the stream, in samples stored before it (all channels).
    at: u64,
    /// Samples lost there (all channels; a whole number of device frames).
    samples: u64,
}

/// Losses noted between two reads of the capture thread: plenty, since adjacent ones merge.
const LOSSES: usize = 64;

/// The data callback's side of the rings: stores whole device frames, notes where it could not.
struct Writer {
    ring: rtrb::Producer<f32>,
    losses: rtrb::Producer<Loss>,
    channels: usize,
    /// Samples stored so far.
    stored: u64,
    /// A loss not yet on the loss ring (it was full): merged with the next one, so it is late, never lost.
    pending: Option<Loss>,
}

impl Writer {
    fn write<T>(&mut self, data: &[T], stats: &super::AudioStats)
    where
        T: SizedSample,
        f32: FromSample<T>,
    {
        let free = self.ring.slots().min(data.len());
        let n = free - free % self.channels;
        if let Ok(chunk) = self.ring.write_chunk_uninit(n) {
            chunk.fill_from_iter(data[..n].iter().map(|s| f32::from_sample_(*s)));
            self.stored += n as u64;
        }
        let lost = (data.len() - n) as u64;
        if lost > 0 {
            stats.ring_overflow_samples.fetch_add(lost, Ordering::Relaxed);
            let here = Loss { at: self.stored, samples: lost };
            self.pending = Some(match self.pending.take() {
                Some(p) if p.at == here.at => Loss { at: p.at, samples: p.samples + lost },
                // Audio was stored since the pending loss: it goes first, or (ring still full) takes this one in.
                Some(p) => match self.losses.push(p) {
                    Ok(()) => here,
                    Err(_) => Loss { at: p.at, samples: p.samples + lost },
                },
                None => here,
            });
        }
        if let Some(p) = self.pending {
            if self.losses.push(p).is_ok() {
                self.pending = None;
            }
        }
    }
}

fn open(ctx: &SourceContext, name: &str, pace: Arc<Pace>) -> Result<Opened, DeviceError> {
    let device = find(name)?;
    let label = device.id().map(|i| i.to_string()).unwrap_or_else(|_| name.to_string());
    let ranges: Vec<ConfigRange> = device
        .supported_input_configs()
        .map_err(|source| DeviceError::Formats { device: label.clone(), source })?
        .map(|r| range(&r))
        .collect();
    let chosen = choose(&ranges, ctx.spec.sample_rate, &ctx.config).ok_or_else(|| DeviceError::NoFormat {
        device: label.clone(),
        wanted: wanted_text(&ctx.config),
        offered: ranges.iter().map(|r| format!("{} {} ch {}-{} Hz", r.format, r.channels, r.min_rate, r.max_rate)).collect::<Vec<_>>().join(", "),
    })?;
    let (producer, ring) = rtrb::RingBuffer::new(chosen.rate as usize * chosen.channels as usize * RING_MS / 1000);
    let (loss_tx, losses) = rtrb::RingBuffer::new(LOSSES);
    let producer = Writer { ring: producer, losses: loss_tx, channels: chosen.channels as usize, stored: 0, pending: None };
    let shared = Arc::new(Shared { capture_thread: std::thread::current(), pace, failed: AtomicBool::new(false), error: OnceLock::new() });
    let config = StreamConfig { channels: chosen.channels, sample_rate: chosen.rate, buffer_size: cpal::BufferSize::Default };
    let stream = match chosen.format {
        SampleFormat::I16 => build::<i16>(&device, config, producer, &shared, ctx),
        SampleFormat::F32 => build::<f32>(&device, config, producer, &shared, ctx),
        SampleFormat::I32 => build::<i32>(&device, config, producer, &shared, ctx),
        SampleFormat::I8 => build::<i8>(&device, config, producer, &shared, ctx),
        SampleFormat::U8 => build::<u8>(&device, config, producer, &shared, ctx),
        SampleFormat::U16 => build::<u16>(&device, config, producer, &shared, ctx),
        _ => build::<f64>(&device, config, producer, &shared, ctx),
    }
    .map_err(|source| DeviceError::Open { device: label.clone(), chosen, source })?;
    stream.play().map_err(|source| DeviceError::Play { device: label, source })?;
    Ok(Opened { stream, ring, losses, shared, chosen })
}

fn wanted_text(audio: &AudioConfig) -> String {
    let mut parts = Vec::new();
    if audio.capture_format != CaptureFormat::Auto {
        parts.push(format!("format {:?}", audio.capture_format).to_lowercase());
    }
    if audio.capture_channels != 0 {
        parts.push(format!("{} channels", audio.capture_channels));
    }
    if audio.capture_rate != 0 {
        parts.push(format!("{} Hz", audio.capture_rate));
    }
    if parts.is_empty() { String::new() } else { format!(" with {}", parts.join(", ")) }
}

fn build<T>(
    device: &cpal::Device,
    config: StreamConfig,
    mut producer: Writer,
    shared: &Arc<Shared>,
    ctx: &SourceContext,
) -> Result<cpal::Stream, cpal::Error>
where
    T: SizedSample + Send + 'static,
    f32: FromSample<T>,
{
    let data_shared = shared.clone();
    let err_shared = shared.clone();
    let stats = ctx.stats.clone();
    // Device samples in a relaxed batch, and those stored since the capture thread was last woken.
    let batch = config.sample_rate as usize * config.channels as usize * RELAXED_BATCH.as_millis() as usize / 1000;
    let mut held = 0;
    device.build_input_stream::<T, _, _>(
        config,
        move |data: &[T], _| {
            producer.write(data, &stats);
            held += data.len();
            if !data_shared.pace.relaxed() || held >= batch {
                held = 0;
                data_shared.capture_thread.unpark();
            }
        },
        move |e: cpal::Error| {
            if e.kind() == cpal::ErrorKind::DeviceChanged {
                return;
            }
            if err_shared.error.get().is_none() {
                let _ = err_shared.error.set(e.to_string());
            }
            if !err_shared.failed.swap(true, Ordering::AcqRel) {
                err_shared.capture_thread.unpark();
            }
        },
        Some(OPEN_TIMEOUT),
    )
}

/// The capture thread: open, capture until the device fails or we are stopped, back off, repeat.
pub(crate) fn run(ctx: SourceContext, mut sink: FrameSink) -> Result<(), AudioError> {
    let SourceSpec::Device(name) = ctx.config.source.clone() else { unreachable!("device backend chosen for a device source") };
    ctx.stop.register_current_thread();
    let mut delays = crate::backoff::delays(BACKOFF_START, BACKOFF_MAX, false);
    let mut last_error: Option<String> = None;
    while !ctx.stop.is_stopped() {
        let failure = match open(&ctx, &name, sink.pace()) {
            Ok(opened) => {
                ctx.stats.opens.fetch_add(1, Ordering::Relaxed);
                let state = format!("capturing from {name} ({})", opened.chosen);
                tracing::info!(device = %name, "{state}");
                ctx.stats.set_state(state);
                ctx.stats.set_waiting(false);
                last_error = None;
                delays = crate::backoff::delays(BACKOFF_START, BACKOFF_MAX, false);
                match capture(&ctx, &mut sink, opened) {
                    Ok(Ended::Stopped) => return Ok(()),
                    Ok(Ended::Failed(message)) => DeviceError::Lost { device: name.clone(), message },
                    Err(e) => DeviceError::Audio(e),
                }
            }
            Err(e) => e,
        };
        let message = failure.to_string();
        let backoff = delays.next().unwrap_or(BACKOFF_MAX);
        // Logged once per distinct failure, not once per attempt.
        if last_error.as_deref() != Some(&message) {
            tracing::warn!(device = %name, "{message}; waiting for it, retrying every {} s at most", BACKOFF_MAX.as_secs());
            last_error = Some(message.clone());
        } else {
            tracing::debug!(device = %name, "{message}; retrying in {} ms", backoff.as_millis());
        }
        ctx.stats.set_state(format!("waiting for capture device {name}: {message}"));
        ctx.stats.set_waiting(true);
        if !ctx.clock.sleep_until(ctx.clock.now() + backoff, &ctx.stop) {
            return Ok(());
        }
    }
    Ok(())
}

enum Ended {
    Stopped,
    Failed(String),
}

fn capture(ctx: &SourceContext, sink: &mut FrameSink, opened: Opened) -> Result<Ended, AudioError> {
    let Opened { stream, ring, losses, shared, chosen } = opened;
    let conv = Converter::new(chosen.channels, chosen.rate, ctx.spec.sample_rate, ctx.spec.samples())?;
    let mut reader = Reader { ring, losses, channels: chosen.channels as u64, read: 0, conv };
    loop {
        if ctx.stop.is_stopped() {
            return Ok(Ended::Stopped);
        }
        match reader.drain(sink) {
            Drained::Stopped => return Ok(Ended::Stopped),
            Drained::Some => continue,
            Drained::Empty => {}
        }
        if shared.failed.load(Ordering::Acquire) {
            let message = shared.error.get().cloned().unwrap_or_else(|| "stream error".into());
            drop(stream);
            return Ok(Ended::Failed(message));
        }
        // Woken by the data callback, the error callback or stop.
        std::thread::park();
    }
}

/// The capture thread's side of the rings: audio in stream order, each noted loss at its place.
struct Reader {
    ring: rtrb::Consumer<f32>,
    losses: rtrb::Consumer<Loss>,
    channels: u64,
    /// Samples taken from the ring so far: the stream position losses are noted at.
    read: u64,
    conv: Converter,
}

enum Drained {
    /// Audio or a loss was handled; there may be more.
    Some,
    /// Nothing to do until the callback stores more.
    Empty,
    /// Nobody takes frames any more.
    Stopped,
}

impl Reader {
    /// Turns what the rings hold up to the next loss into frames, or a loss the reading has reached into
    /// skipped frame numbers.
    fn drain(&mut self, sink: &mut FrameSink) -> Drained {
        if let Ok(loss) = self.losses.peek().copied() {
            if loss.at <= self.read {
                let _ = self.losses.pop();
                sink.skip(self.conv.gap(loss.samples / self.channels));
                return Drained::Some;
            }
        }
        let available = self.ring.slots() as u64;
        let upto = self.losses.peek().map_or(available, |l| available.min(l.at - self.read));
        let take = (upto - upto % self.channels) as usize;
        if take == 0 {
            return Drained::Empty;
        }
        let Ok(chunk) = self.ring.read_chunk(take) else { return Drained::Empty };
        let (a, b) = chunk.as_slices();
        let mut emit = |pcm: Vec<i16>| sink.push(pcm);
        let alive = self.conv.push(a, &mut emit) && self.conv.push(b, &mut emit);
        chunk.commit_all();
        self.read += take as u64;
        if alive { Drained::Some } else { Drained::Stopped }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_the_ring_could_not_hold_are_skipped_frame_numbers() {
        // A ring of 10 stereo device frames, frames of 4 mono samples: device frame n carries the value n on both
        // channels, so each output frame tells which stretch of the stream it is.
        let (ring_tx, ring) = rtrb::RingBuffer::new(20);
        let (loss_tx, losses) = rtrb::RingBuffer::new(LOSSES);
        let mut writer = Writer { ring: ring_tx, losses: loss_tx, channels: 2, stored: 0, pending: None };
        let mut reader = Reader { ring, losses, channels: 2, read: 0, conv: Converter::new(2, 8000, 8000, 4).unwrap() };
        let stats = Arc::new(crate::audio::AudioStats::default());
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut sink = FrameSink { tx, live: true, stats: stats.clone(), stop: crate::audio::Stop::new().unwrap(), pace: Default::default(), next_seq: 0 };
        let device = |from: u32, n: u32| -> Vec<i16> { (from..from + n).flat_map(|v| [v as i16, v as i16]).collect() };
        let mut next = 0;
        // Callbacks of 7 device frames, the reader taking what is there after every second one: the ring overflows.
        for round in 0..12 {
            writer.write(&device(next, 7), &stats);
            next += 7;
            if round % 2 == 1 {
                while !matches!(reader.drain(&mut sink), Drained::Empty) {}
            }
        }
        while !matches!(reader.drain(&mut sink), Drained::Empty) {}
        let lost = stats.ring_overflow_samples.load(Ordering::Relaxed);
        assert!(lost > 0, "the ring overflowed");
        let frames: Vec<crate::audio::Frame> = rx.try_iter().collect();
        assert!(frames.len() >= 4, "{frames:?}");
        for f in &frames {
            let want: Vec<i16> = (0..4).map(|i| (f.seq * 4 + i) as i16).collect();
            assert_eq!(f.pcm, want, "frame {} holds device frames {}..{}", f.seq, f.seq * 4, f.seq * 4 + 4);
        }
        // Every frame number given out is a frame delivered or a frame counted lost.
        let overruns = stats.overruns.load(Ordering::Relaxed);
        assert!(overruns > 0);
        assert_eq!(frames.len() as u64 + overruns, sink.next_seq);
    }

    fn r(format: SampleFormat, channels: u16, min_rate: u32, max_rate: u32) -> ConfigRange {
        ConfigRange { format, channels, min_rate, max_rate }
    }

    #[test]
    fn choice_prefers_exact_then_converts() {
        let audio = AudioConfig::default();
        let cases: &[(&[ConfigRange], Option<Chosen>)] = &[
            (
                &[r(SampleFormat::F32, 2, 8000, 48000), r(SampleFormat::I16, 1, 8000, 48000)],
                Some(Chosen { format: SampleFormat::I16, channels: 1, rate: 16000 }),
            ),
            (
                // Fewer channels first, then the sample format, then the rate.
                &[r(SampleFormat::F32, 2, 48000, 48000), r(SampleFormat::I16, 2, 44100, 44100), r(SampleFormat::I32, 1, 48000, 48000)],
                Some(Chosen { format: SampleFormat::I32, channels: 1, rate: 48000 }),
            ),
            (
                &[r(SampleFormat::F32, 2, 48000, 48000), r(SampleFormat::I16, 2, 44100, 44100)],
                Some(Chosen { format: SampleFormat::I16, channels: 2, rate: 44100 }),
            ),
            (&[r(SampleFormat::I24, 1, 16000, 16000)], None),
            (&[], None),
        ];
        for (ranges, want) in cases {
            assert_eq!(choose(ranges, 16000, &audio), *want, "{ranges:?}");
        }
    }

    #[test]
    fn overrides_narrow_the_choice() {
        let audio = AudioConfig { capture_rate: 48000, capture_channels: 2, capture_format: CaptureFormat::F32, ..AudioConfig::default() };
        let ranges = [r(SampleFormat::I16, 1, 8000, 48000), r(SampleFormat::F32, 2, 8000, 48000)];
        assert_eq!(choose(&ranges, 16000, &audio), Some(Chosen { format: SampleFormat::F32, channels: 2, rate: 48000 }));
        let mono_only = [r(SampleFormat::F32, 1, 8000, 48000)];
        assert_eq!(choose(&mono_only, 16000, &audio), None);
    }
}
