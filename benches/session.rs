//! `make bench`, part 2: sessions on loopback.
//!
//! 1. Latency of each frame from the moment it is captured (queued for the session) to its arrival at a
//!    WebSocket server on 127.0.0.1, over BENCH_FRAMES frames (default 10,000) produced at real time, against
//!    two servers: a blocking one (a thread parked in `read`) and an async one (tokio, one thread). Also what
//!    the push costs the producer thread, which sends the frame itself when the connection can take it.
//! 2. Time from a wake-word detection to the server receiving `start` and the first audio (the bundled demo
//!    recording, played at real time through the whole daemon).
//! 3. 1,000 sessions back to back: open file descriptors and RSS before and after.
//! 4. The wake-up floor: what handing something to a parked thread or task costs on this machine, and what a
//!    bare TCP write of one frame's bytes to a thread parked in `read` takes to arrive.
//!
//! 5. The whole daemon (`voxgate run`, the release binary) on a real-time feed through stdin to a loopback
//!    server, as a satellite runs: nine 8 s cycles of a wake word and a command (from the demo recording),
//!    then 60 s of digital silence. CPU per thread from /proc, the latency of every live frame from its write
//!    to the daemon's stdin to its arrival at the server, and how long after its last frame was written each
//!    wake word's session reaches the server. Each frame carries its own number in the lowest bit of its first
//!    samples, so the server knows exactly which write it is.
//!
//! 6. The soak: the whole daemon on a real-time feed for `BENCH_SOAK_MINUTES` (default 60) minutes, a wake
//!    word and its command at the start of every minute, each session to a loopback server; its resident size
//!    and open descriptors sampled every minute. Then 10,000 sessions back to back (part 3, ten times over).
//!
//! `VOXGATE_BENCH_BIN=path` runs parts 5 and 6 on another build. `BENCH_FRAMES=N` shortens parts 1 and 4;
//! `BENCH_ONLY=latency,detection,sessions,floor,daemon,soak` (any of them) runs only those parts.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use voxgate::audio::Frame;
use voxgate::config::{Config, FilePacing};
use voxgate::session::Reporter;
use voxgate::session::connect::Params;
use voxgate::session::run as client;
use voxgate::session::protocol::ClientMessage;
use voxgate::session::{EndReason, SessionQueue, SessionRequest, Trigger};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Each message a server got, with when it arrived.
type Arrivals = Arc<Mutex<Vec<(Instant, ClientMessage)>>>;

/// A server that notes when each message arrives (or, with `keep` false, only reads them). It runs on a
/// thread of its own with its own single-threaded runtime, as a server process would: it does not share the
/// client's workers.
async fn timing_server(keep: bool) -> (String, Arrivals) {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let url = format!("ws://{}/", std_listener.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = TcpListener::from_std(std_listener).unwrap();
            while let Ok((tcp, _)) = listener.accept().await {
                let l = l.clone();
                tokio::spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else { return };
                    while let Some(Ok(Message::Binary(b))) = ws.next().await {
                        let at = Instant::now();
                        if let Ok(m) = ClientMessage::decode(&b) {
                            let end = matches!(m, ClientMessage::End { .. });
                            if keep {
                                l.lock().unwrap().push((at, m));
                            }
                            if end {
                                let _ = ws.close(None).await;
                                break;
                            }
                        }
                    }
                });
            }
        });
    });
    (url, log)
}

/// A TCP stream that notes when its last read returned: when the server had the bytes, before any WebSocket
/// parsing.
struct Timed {
    tcp: std::net::TcpStream,
    last_read: Instant,
}

impl Read for Timed {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.tcp.read(buf)?;
        self.last_read = Instant::now();
        Ok(n)
    }
}

impl Write for Timed {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tcp.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.tcp.flush()
    }
}

/// A blocking server: a plain thread per connection, parked in `read` between messages. A message's arrival
/// is when the read that completed it returned.
fn blocking_server() -> (String, Arrivals) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { return };
            let l = l.clone();
            std::thread::spawn(move || {
                let _ = tcp.set_nodelay(true);
                let Ok(mut ws) = tokio_tungstenite::tungstenite::accept(Timed { tcp, last_read: Instant::now() }) else { return };
                while let Ok(Message::Binary(b)) = ws.read() {
                    let at = ws.get_ref().last_read;
                    let Ok(m) = ClientMessage::decode(&b) else { continue };
                    let end = matches!(m, ClientMessage::End { .. });
                    l.lock().unwrap().push((at, m));
                    if end {
                        let _ = ws.close(None);
                        let _ = ws.flush();
                        break;
                    }
                }
            });
        }
    });
    (url, log)
}

fn reporter() -> Reporter {
    let (events, _) = tokio::sync::broadcast::channel(1024);
    Reporter::new(events)
}

fn request(queue: Arc<SessionQueue>) -> SessionRequest {
    SessionRequest { trigger: Trigger::Manual, wakeword: None, score: None, t_ms: 0, first_seq: 0, preroll_ms: 0, session: uuid::Uuid::new_v4().to_string(), queue }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[derive(Clone, Copy)]
enum Server {
    Blocking,
    Tokio,
}

fn summarise(lat: &mut [f64]) -> String {
    lat.sort_by(f64::total_cmp);
    format!("p50 {:.3} ms | p99 {:.3} ms | max {:.3} ms", percentile(lat, 0.5), percentile(lat, 0.99), lat.last().unwrap())
}

async fn frame_latency(frames: u64, server: Server) {
    let ((url, log), name) = match server {
        Server::Blocking => (blocking_server(), "blocking server (a thread parked in read)"),
        Server::Tokio => (timing_server(true).await, "async server (tokio, one thread)"),
    };
    let mut config = Config::default();
    config.session.url = url;
    config.control.socket = Default::default();
    config.session.drain_timeout_ms = 5000;
    let params = Params::new(&config).unwrap();
    let queue = Arc::new(SessionQueue::new(100, false, 0));
    let session = tokio::spawn({
        let (queue, reporter) = (queue.clone(), reporter());
        async move { client::run(&params, request(queue), &reporter).await }
    });
    let (captured, mut pushes) = {
        let q = queue.clone();
        std::thread::Builder::new().name("producer".into()).spawn(move || {
            let ticks = crossbeam_channel::tick(Duration::from_millis(20));
            let mut captured = Vec::with_capacity(frames as usize);
            let mut pushes = Vec::with_capacity(frames as usize);
            for seq in 0..frames {
                let mut frame = Frame { seq, captured: Instant::now(), pcm: vec![0; 320] };
                let _ = ticks.recv();
                let now = Instant::now();
                frame.captured = now;
                q.push(frame);
                pushes.push(now.elapsed().as_secs_f64() * 1000.0);
                captured.push(now);
            }
            q.finish(EndReason::Stopped);
            (captured, pushes)
        })
        .unwrap()
        .join()
        .unwrap()
    };
    let summary = session.await.unwrap();
    let mut lat: Vec<f64> = log
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(at, m)| if let ClientMessage::Audio { seq, .. } = m { Some((*at - captured[*seq as usize]).as_secs_f64() * 1000.0) } else { None })
        .collect();
    println!("| frame latency, capture → {name} | {} frames at real time | {} | dropped {} |", lat.len(), summarise(&mut lat), summary.frames_dropped);
    println!("| push on the producer thread (queue, encode, send) | {} frames | {} | |", pushes.len(), summarise(&mut pushes));
}

/// Notes the moment each acted-on wake word is logged: on the detector thread, as it detects.
#[derive(Clone, Default)]
struct WakeClock(Arc<Mutex<Vec<Instant>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for WakeClock {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        #[derive(Default)]
        struct Fields {
            wake: bool,
            acted_on: bool,
        }
        impl tracing::field::Visit for Fields {
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if field.name() == "event" {
                    self.wake = value == "wake";
                }
            }
            fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
                if field.name() == "acted_on" {
                    self.acted_on = value;
                }
            }
            fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
        }
        let at = Instant::now();
        let mut f = Fields::default();
        event.record(&mut f);
        if f.wake && f.acted_on {
            self.0.lock().unwrap().push(at);
        }
    }
}

async fn detection_to_server(wakes: WakeClock) {
    let (url, log) = timing_server(true).await;
    let mut config = Config::default();
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("demo.wav");
    std::fs::write(&wav, voxgate::demo::DEMO_WAV).unwrap();
    config.audio.source = voxgate::config::SourceSpec::File(wav.clone());
    config.audio.file_pacing = FilePacing::Realtime;
    config.session.url = url;
    config.control.socket = Default::default();
    voxgate::daemon::run(config, CancellationToken::new()).await.unwrap();
    let wakes = wakes.0.lock().unwrap();
    let log = log.lock().unwrap();
    let starts: Vec<Instant> = log.iter().filter(|(_, m)| matches!(m, ClientMessage::Start { .. })).map(|(t, _)| *t).collect();
    let firsts: Vec<Instant> = log.iter().filter(|(_, m)| matches!(m, ClientMessage::Audio { seq: 0, .. })).map(|(t, _)| *t).collect();
    assert_eq!((wakes.len(), starts.len(), firsts.len()), (2, 2, 2), "the demo recording has two wake words");
    for (i, w) in wakes.iter().enumerate() {
        println!(
            "| detection → server, session {} | demo recording at real time | start {:.2} ms | first audio {:.2} ms | | |",
            i + 1,
            (starts[i] - *w).as_secs_f64() * 1000.0,
            (firsts[i] - *w).as_secs_f64() * 1000.0
        );
    }
}

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

async fn many_sessions(n: usize) {
    let (url, _log) = timing_server(false).await;
    let mut config = Config::default();
    config.session.url = url;
    config.control.socket = Default::default();
    let params = Params::new(&config).unwrap();
    let reporter = reporter();
    let run_one = |i: u64| {
        let queue = Arc::new(SessionQueue::new(100, false, 0));
        for seq in 0..10 {
            queue.push(Frame { seq, captured: Instant::now(), pcm: vec![i as i16; 320] });
        }
        queue.finish(EndReason::Silence);
        let (params, reporter) = (params.clone(), reporter.clone());
        async move { client::run(&params, request(queue), &reporter).await }
    };
    // Warm up allocator pools and the runtime before the baseline.
    for i in 0..20 {
        run_one(i).await;
    }
    let (fd0, rss0) = (fds(), rss_kb());
    let started = Instant::now();
    let mut failed = 0;
    for i in 0..n as u64 {
        if run_one(i).await.reason != EndReason::Silence {
            failed += 1;
        }
    }
    let took = started.elapsed();
    println!(
        "| {n} sessions back to back | 10 frames each | {:.2} ms per session | fds {fd0} → {} | RSS {rss0} → {} KiB | failed {failed} |",
        took.as_secs_f64() * 1000.0 / n as f64,
        fds(),
        rss_kb()
    );
}

/// The floor under the frame latency: one hand-over to a parked thread, every 20 ms, with nothing else to do.
/// The frame path has two (the session's writer task, then the server), so twice this is the least it can cost.
async fn wakeup_floor(samples: usize) {
    // A std thread waking another std thread (crossbeam channel).
    let (tx, rx) = crossbeam_channel::bounded::<Instant>(1);
    let waiter = std::thread::spawn(move || rx.iter().map(|sent| sent.elapsed().as_secs_f64() * 1000.0).collect::<Vec<f64>>());
    let tick = crossbeam_channel::tick(Duration::from_millis(20));
    for _ in 0..samples {
        let _ = tick.recv();
        tx.send(Instant::now()).unwrap();
    }
    drop(tx);
    let mut threads = waiter.join().unwrap();
    // A std thread waking a task on this runtime (tokio Notify), as the session queue wakes its writer.
    let notify = Arc::new(tokio::sync::Notify::new());
    let sent = Arc::new(Mutex::new(Instant::now()));
    let task = tokio::spawn({
        let (notify, sent) = (notify.clone(), sent.clone());
        async move {
            let mut lat = Vec::with_capacity(samples);
            for _ in 0..samples {
                notify.notified().await;
                lat.push(sent.lock().unwrap().elapsed().as_secs_f64() * 1000.0);
            }
            lat
        }
    });
    std::thread::spawn(move || {
        let tick = crossbeam_channel::tick(Duration::from_millis(20));
        for _ in 0..samples {
            let _ = tick.recv();
            *sent.lock().unwrap() = Instant::now();
            notify.notify_one();
        }
    })
    .join()
    .unwrap();
    let mut tasks = task.await.unwrap();
    // A bare TCP write of one audio message's bytes (672) to a thread parked in `read` on 127.0.0.1: what any
    // client's frame costs on this machine's loopback, with no WebSocket and no runtime.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    client.set_nodelay(true).unwrap();
    let (mut peer, _) = listener.accept().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 672];
        (0..samples).map(|_| peer.read_exact(&mut buf).map(|_| Instant::now()).unwrap()).collect::<Vec<_>>()
    });
    let tick = crossbeam_channel::tick(Duration::from_millis(20));
    let mut written = Vec::with_capacity(samples);
    for _ in 0..samples {
        let _ = tick.recv();
        written.push(Instant::now());
        client.write_all(&[0x5a; 672]).unwrap();
    }
    let mut tcp: Vec<f64> = reader.join().unwrap().iter().zip(&written).map(|(r, w)| (*r - *w).as_secs_f64() * 1000.0).collect();
    for (what, lat) in [("thread → parked thread", &mut threads), ("thread → parked tokio task", &mut tasks), ("bare TCP write → thread parked in read", &mut tcp)] {
        println!("| wake-up floor, {what} | {} hand-overs, one every 20 ms | {} | |", lat.len(), summarise(lat));
    }
}

fn main() {
    voxgate::small_pages();
    let frames: u64 = std::env::var("BENCH_FRAMES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let run = |part: &str| only.is_empty() || only.split(',').any(|p| p.trim() == part);
    let wakes = WakeClock::default();
    {
        use tracing_subscriber::layer::SubscriberExt;
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(wakes.clone())).unwrap();
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    println!("| measure | load | | | | |");
    println!("|---|---|---|---|---|---|");
    rt.block_on(async {
        if run("sessions") {
            many_sessions(1000).await;
        }
        if run("detection") {
            detection_to_server(wakes).await;
        }
        if run("latency") {
            frame_latency(frames, Server::Blocking).await;
            frame_latency(frames, Server::Tokio).await;
        }
        if run("floor") {
            wakeup_floor(frames.min(3000) as usize).await;
        }
        if run("daemon") {
            daemon_on_a_live_feed().await;
        }
        if run("soak") {
            let minutes = std::env::var("BENCH_SOAK_MINUTES").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
            soak(minutes).await;
            many_sessions(10_000).await;
        }
    });
}

/// Bits of a frame's number carried in the lowest bit of its first samples.
const SEQ_BITS: usize = 24;

fn stamp(frame: &mut [i16], seq: u64) {
    for (i, s) in frame.iter_mut().take(SEQ_BITS).enumerate() {
        *s = (*s & !1) | ((seq >> i) & 1) as i16;
    }
}

fn stamped(pcm: &[u8]) -> u64 {
    (0..SEQ_BITS).map(|i| ((pcm[2 * i] & 1) as u64) << i).sum()
}

/// CPU time so far of each thread of `pid`, by thread id, with its name (ns, from /proc/PID/task/*/schedstat).
fn thread_cpu(pid: u32) -> std::collections::BTreeMap<String, (String, u64)> {
    let mut by_tid = std::collections::BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default().trim().to_string();
        let ns = std::fs::read_to_string(task.path().join("schedstat")).ok().and_then(|s| s.split_whitespace().next()?.parse().ok()).unwrap_or(0);
        by_tid.insert(task.file_name().to_string_lossy().into_owned(), (name, ns));
    }
    by_tid
}

/// Share of one core each thread name used between two samples, busiest first, and the whole. A thread that
/// ended in between (tokio's blocking pool lets idle ones go) is not counted: its last figure is gone with it.
fn cpu_between(before: &std::collections::BTreeMap<String, (String, u64)>, after: &std::collections::BTreeMap<String, (String, u64)>, wall: Duration) -> String {
    let share = |ns: u64| ns as f64 / wall.as_nanos() as f64 * 100.0;
    let mut by_name: std::collections::BTreeMap<&String, u64> = std::collections::BTreeMap::new();
    for (tid, (name, ns)) in after {
        *by_name.entry(name).or_insert(0) += ns.saturating_sub(before.get(tid).map_or(0, |b| b.1));
    }
    let mut rows: Vec<(u64, &String)> = by_name.into_iter().map(|(name, ns)| (ns, name)).collect();
    rows.sort_by(|a, b| b.cmp(a));
    let total: u64 = rows.iter().map(|(ns, _)| ns).sum();
    let parts: Vec<String> = rows.iter().filter(|(ns, _)| *ns > 0).map(|(ns, name)| format!("{name} {:.3}", share(*ns))).collect();
    format!("**{:.3} %** of a core ({})", share(total), parts.join(", "))
}

/// The first wake word and its command from the demo recording, padded to 8 s with the recording's own
/// background: it ends at the first stretch of 1.2 s without speech after the command.
fn wake_cycle() -> Vec<i16> {
    wake_cycle_of(8)
}

/// The demo recording's first wake word and command, padded to `seconds` with its own background noise.
fn wake_cycle_of(seconds: usize) -> Vec<i16> {
    let pcm: Vec<i16> = hound::WavReader::new(std::io::Cursor::new(voxgate::demo::DEMO_WAV)).unwrap().samples::<i16>().map(Result::unwrap).collect();
    let frames: Vec<&[i16]> = pcm.chunks_exact(320).collect();
    let loud: Vec<bool> = frames.iter().map(|f| voxgate::audio::level_dbfs(f) > -40.0).collect();
    let first_speech = loud.iter().position(|l| *l).expect("the demo recording has speech");
    let quiet = 60;
    let end = (first_speech + 1..loud.len()).find(|&i| i >= quiet && loud[i - quiet..i].iter().all(|l| !l)).expect("a pause after the command");
    let background: Vec<i16> = frames[..first_speech].concat();
    let mut cycle: Vec<i16> = frames[..end].concat();
    while cycle.len() < seconds * 16000 {
        cycle.extend_from_slice(&background[..background.len().min(seconds * 16000 - cycle.len())]);
    }
    cycle
}

/// A process's resident size (KiB) and open descriptors.
fn rss_and_fds(pid: u32) -> (u64, usize) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0);
    (rss, std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0))
}

/// Part 6: `voxgate run` on stdin at real time for `minutes`, a wake word and command every minute.
async fn soak(minutes: usize) {
    let (url, _) = timing_server(false).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("voxgate.toml");
    std::fs::write(&config, format!("[audio]\nsource = \"stdin\"\n[session]\nurl = \"{url}\"\n[control]\nsocket = \"\"\n[log]\nformat = \"text\"\n")).unwrap();
    let bin = std::env::var_os("VOXGATE_BENCH_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_voxgate").into());
    let log_path = dir.path().join("voxgate.log");
    let mut child = std::process::Command::new(bin)
        .args(["run", "--config"])
        .arg(&config)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("the release binary runs");
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    let minute = wake_cycle_of(60);
    let feeder = std::thread::Builder::new()
        .name("feeder".into())
        .spawn(move || {
            let ticks = crossbeam_channel::tick(Duration::from_millis(20));
            let mut samples = Vec::with_capacity(minutes + 1);
            for _ in 0..minutes {
                samples.push(rss_and_fds(pid));
                for frame in minute.chunks_exact(320) {
                    let _ = ticks.recv();
                    let bytes: Vec<u8> = frame.iter().flat_map(|s| s.to_le_bytes()).collect();
                    stdin.write_all(&bytes).unwrap();
                }
            }
            samples.push(rss_and_fds(pid));
            drop(stdin);
            samples
        })
        .unwrap();
    let samples = tokio::task::spawn_blocking(move || feeder.join().unwrap()).await.unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "voxgate run: {status}");
    let log = std::fs::read_to_string(&log_path).unwrap();
    // Sessions by how they ended: `reason="silence"` in the text log.
    let mut reasons = std::collections::BTreeMap::<String, usize>::new();
    for line in log.lines().filter(|l| l.contains("event=\"session_end\"")) {
        let reason = line.split("reason=").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or("?").trim_matches('"');
        *reasons.entry(reason.to_string()).or_default() += 1;
    }
    let ends: usize = reasons.values().sum();
    let reasons = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect::<Vec<_>>().join(", ");
    // From the end of the first minute: what start-up and the first session allocate is not growth.
    let steady = &samples[1.min(samples.len() - 1)..];
    let rss: Vec<u64> = steady.iter().map(|s| s.0).collect();
    let fds: Vec<usize> = steady.iter().map(|s| s.1).collect();
    println!(
        "| soak: {minutes} min at real time, a wake word a minute | {ends} sessions ({reasons}) | RSS {} → {} KiB (min {}, max {}) | fds {} → {} (max {}) | RSS every minute: {} |",
        rss[0],
        rss[rss.len() - 1],
        rss.iter().min().unwrap(),
        rss.iter().max().unwrap(),
        fds[0],
        fds[fds.len() - 1],
        fds.iter().max().unwrap(),
        rss.iter().map(u64::to_string).collect::<Vec<_>>().join(" ")
    );
}

/// Part 5: `voxgate run` on stdin at real time, sessions to a loopback server.
async fn daemon_on_a_live_feed() {
    const CYCLES: usize = 9;
    const SILENCE_S: usize = 60;
    // Silence before the measured minute: the gate learns it and closes.
    const SETTLE_S: usize = 3;
    let (url, log) = timing_server(true).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("voxgate.toml");
    std::fs::write(&config, format!("[audio]\nsource = \"stdin\"\n[session]\nurl = \"{url}\"\n[control]\nsocket = \"\"\n[log]\nformat = \"text\"\n")).unwrap();
    // VOXGATE_BENCH_BIN: another build of voxgate to measure the same way (an older commit, side by side).
    let bin = std::env::var_os("VOXGATE_BENCH_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_voxgate").into());
    let mut child = std::process::Command::new(bin)
        .args(["run", "--config"])
        .arg(&config)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("voxgate.log")).unwrap())
        .spawn()
        .expect("the release binary runs");
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();

    // What is written, in 20 ms frames: a second of silence to start, the cycles, then the silence.
    let cycle = wake_cycle();
    let mut audio: Vec<Vec<i16>> = Vec::new();
    audio.extend((0..50).map(|_| vec![0i16; 320]));
    let cycles_from = audio.len();
    for _ in 0..CYCLES {
        audio.extend(cycle.chunks_exact(320).map(<[i16]>::to_vec));
    }
    let cycles_to = audio.len();
    let silence_from = audio.len() + SETTLE_S * 50;
    audio.extend((0..(SETTLE_S + SILENCE_S) * 50).map(|_| vec![0i16; 320]));
    // CPU is sampled as the first frame of each is written, and after the last.
    let marks = [cycles_from, cycles_to, silence_from];

    let feeder = std::thread::Builder::new().name("feeder".into()).spawn(move || {
        let ticks = crossbeam_channel::tick(Duration::from_millis(20));
        let mut written = Vec::with_capacity(audio.len());
        let mut samples = Vec::new();
        for (seq, mut frame) in audio.into_iter().enumerate() {
            let _ = ticks.recv();
            if marks.contains(&seq) {
                samples.push((Instant::now(), thread_cpu(pid)));
            }
            stamp(&mut frame, seq as u64);
            let bytes: Vec<u8> = frame.iter().flat_map(|s| s.to_le_bytes()).collect();
            stdin.write_all(&bytes).unwrap();
            written.push(Instant::now());
        }
        let _ = ticks.recv();
        samples.push((Instant::now(), thread_cpu(pid)));
        drop(stdin);
        (written, samples)
    }).unwrap();
    let (written, samples) = tokio::task::spawn_blocking(move || feeder.join().unwrap()).await.unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "voxgate run: {status}");

    // Sessions as the server saw them: each `start`, then its frames.
    let log = log.lock().unwrap();
    let mut live = Vec::new();
    let mut wake_to_start = Vec::new();
    let mut sessions = 0;
    let mut start_at = None;
    for (at, m) in log.iter() {
        match m {
            ClientMessage::Start { preroll_ms, .. } => {
                sessions += 1;
                start_at = Some((*at, preroll_ms / 20));
            }
            ClientMessage::Audio { seq, pcm } => {
                let Some((started, preroll)) = start_at else { continue };
                let source_seq = stamped(pcm) as usize;
                if *seq + 1 == preroll {
                    // The pre-roll's last frame is the one that completed the wake word.
                    wake_to_start.push((started - written[source_seq]).as_secs_f64() * 1000.0);
                }
                // Live frames: written after the session reached the server.
                if written[source_seq] > started {
                    live.push((*at - written[source_seq]).as_secs_f64() * 1000.0);
                }
            }
            ClientMessage::End { .. } => start_at = None,
        }
    }
    println!(
        "| daemon: {CYCLES} cycles of wake word + command, 8 s each, stdin at real time → loopback server | {sessions} sessions | {} | |",
        cpu_between(&samples[0].1, &samples[1].1, samples[1].0 - samples[0].0)
    );
    println!("| daemon: {SILENCE_S} s of digital silence | | {} | |", cpu_between(&samples[2].1, &samples[3].1, samples[3].0 - samples[2].0));
    println!("| live frame latency, write to stdin → server (tokio) | {} frames | {} | |", live.len(), summarise(&mut live));
    println!("| wake word's last frame written → `start` at the server | {} sessions | {} | |", wake_to_start.len(), summarise(&mut wake_to_start));
}
