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
//! `BENCH_FRAMES=N` shortens parts 1 and 4; `BENCH_ONLY=latency,detection,sessions,floor` (any of them) runs
//! only those parts.

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
use voxgate::session::{EndReason, SessionQueue, SessionRequest, State, Trigger};

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
    Reporter { events, state: Arc::new(tokio::sync::watch::Sender::new(State::Listening)) }
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
    });
}
