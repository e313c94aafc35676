//! Sessions against real WebSocket servers on loopback: the reference server, and small servers that
//! misbehave on purpose.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_util::sync::CancellationToken;
use voxgate::config::{Config, FilePacing};
use voxgate::serve::Record;
use voxgate::session::protocol::{ClientMessage, msgpack_to_json};
use voxgate::session::{EndReason, Event, SessionSummary};

use crate::support::{fixtures, labels, read_wav, write_wav};

/// The reference server on 127.0.0.1:0, recording into a temporary directory.
struct RefServer {
    url: String,
    dir: tempfile::TempDir,
    stop: CancellationToken,
    records: tokio::sync::mpsc::UnboundedReceiver<Record>,
}

async fn reference_server() -> RefServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let (tx, records) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(voxgate::serve::serve(listener, Some(dir.path().to_path_buf()), stop.clone(), Some(tx), None));
    RefServer { url, dir, stop, records }
}

fn file_config(path: &std::path::Path, url: &str) -> Config {
    let mut c = Config::default();
    c.audio.source = voxgate::config::SourceSpec::File(path.into());
    c.audio.file_pacing = FilePacing::Fast;
    c.session.url = url.to_string();
    c.control.socket = Default::default();
    c
}

/// Runs the daemon in process until the source ends; returns every event.
async fn run(config: Config) -> (voxgate::daemon::Summary, Vec<Event>) {
    let (tx, mut rx) = tokio::sync::broadcast::channel(4096);
    let summary = voxgate::daemon::run_with_events(config, CancellationToken::new(), tx).await.unwrap();
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    (summary, events)
}

fn ends(events: &[Event]) -> Vec<SessionSummary> {
    events.iter().filter_map(|e| if let Event::SessionEnd(s) = e { Some(s.clone()) } else { None }).collect()
}

fn wakes(events: &[Event]) -> Vec<u64> {
    events.iter().filter_map(|e| if let Event::Wake { t_ms, .. } = e { Some(*t_ms) } else { None }).collect()
}

/// Where `needle` is in `haystack`, checking every sample.
fn position(haystack: &[i16], needle: &[i16]) -> Option<usize> {
    let head = &needle[..needle.len().min(64)];
    haystack.windows(head.len()).enumerate().filter(|(_, w)| *w == head).map(|(i, _)| i).find(|&i| haystack.get(i..i + needle.len()) == Some(needle))
}

/// Checks a session as the reference server recorded it (its frames one after another, and the `seq` ranges it
/// never got) against the source: every frame received is the source's frame of that number, bit for bit, at
/// one offset for the whole session. Frames lost on the way (a loaded machine may lose some at capture) are
/// allowed, but only as gaps; the number of frames received is returned.
fn frames_are_the_source(source: &[i16], got: &[i16], gaps: &[[u64; 2]], frame: usize) -> Result<u64, String> {
    let frames: Vec<&[i16]> = got.chunks(frame).collect();
    let mut seqs = Vec::with_capacity(frames.len());
    let mut seq = 0u64;
    for _ in &frames {
        while let Some(g) = gaps.iter().find(|g| g[0] <= seq && seq <= g[1]) {
            seq = g[1] + 1;
        }
        seqs.push(seq);
        seq += 1;
    }
    // The first run of frames before any gap places the session in the source.
    let start = seqs.first().copied().unwrap_or(0);
    let run = seqs.iter().zip(start..).take_while(|(s, i)| **s == *i).count();
    let found = position(source, &got[..(run * frame).min(got.len())]).ok_or("the first frames are not a stretch of the source")?;
    let first = found.checked_sub(start as usize * frame).ok_or("the first frame comes before the source starts")?;
    for (f, s) in frames.iter().zip(&seqs) {
        let at = first + *s as usize * frame;
        if source.get(at..at + f.len()) != Some(*f) {
            return Err(format!("frame {s} is not the source's frame at sample {at}"));
        }
    }
    Ok(frames.len() as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_wake_word_streams_its_audio_bit_for_bit_and_ends_on_silence() {
    let mut server = reference_server().await;
    let file = "stream-en-us_m1.wav";
    let path = fixtures().join(file);
    let (summary, events) = run(file_config(&path, &server.url)).await;
    server.stop.cancel();
    let (_, source) = read_wav(&path);
    let wake_labels: Vec<_> = labels().into_iter().filter(|l| l.file == file && l.kind == "wake").collect();
    // Two wake words; the five decoys in between open nothing.
    assert_eq!(summary.sessions.sessions, 2, "{events:?}");
    let ends = ends(&events);
    assert!(ends.iter().all(|s| s.reason == EndReason::Silence && s.frames_dropped == 0), "{ends:?}");
    let mut records = Vec::new();
    while let Some(r) = server.records.recv().await {
        records.push(r);
        if records.len() == 2 {
            break;
        }
    }
    for (r, (t_ms, label)) in records.iter().zip(wakes(&events).into_iter().zip(&wake_labels)) {
        assert_eq!(r.start["type"], "start");
        assert_eq!(r.start["proto"], 1);
        assert_eq!(r.start["trigger"], "wakeword");
        assert_eq!(r.start["wakeword"], "jarvis");
        // The pre-roll is 2 s, or all the audio before a detection that comes sooner.
        assert_eq!(
            (r.start["sample_rate"].as_u64(), r.start["frame_ms"].as_u64(), r.start["preroll_ms"].as_u64()),
            (Some(16000), Some(20), Some(t_ms.min(2000)))
        );
        assert!(r.gaps.is_empty(), "seq contiguous: {:?}", r.gaps);
        assert_eq!(r.end.as_ref().unwrap()["reason"], "silence");
        assert_eq!(r.end.as_ref().unwrap()["frames_sent"].as_u64(), Some(r.frames));
        // The audio is the source from (detection - pre-roll) on, bit for bit.
        let first = (t_ms / 20).saturating_sub(100) as usize * 320;
        let (_, got) = read_wav(r.wav.as_ref().unwrap());
        assert_eq!(got.len() as u64, r.frames * 320);
        assert!(got[..] == source[first..first + got.len()], "session audio differs from the source");
        assert!((first as u64) * 1000 / 16000 <= label.start_ms, "the wake word's start is in the session");
        assert!(r.dir_json_exists(server.dir.path()));
    }
}

trait JsonNextToWav {
    fn dir_json_exists(&self, dir: &std::path::Path) -> bool;
}

impl JsonNextToWav for Record {
    fn dir_json_exists(&self, dir: &std::path::Path) -> bool {
        let json = dir.join(format!("{}.json", self.session));
        std::fs::read_to_string(json).map(|t| t.contains("\"gaps\"")).unwrap_or(false)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wake_word_with_nothing_after_it_ends_with_no_speech() {
    let server = reference_server().await;
    let file = "stream-en-us_m1.wav";
    let (_, source) = read_wav(&fixtures().join(file));
    let wake = labels().into_iter().find(|l| l.file == file && l.kind == "wake").unwrap();
    let mut pcm = source[..((wake.end_ms + 200) * 16) as usize].to_vec();
    pcm.extend(std::iter::repeat_n(0i16, 16000 * 6));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alone.wav");
    write_wav(&path, 16000, &pcm);
    let (summary, events) = run(file_config(&path, &server.url)).await;
    server.stop.cancel();
    assert_eq!(summary.sessions.sessions, 1);
    let end = &ends(&events)[0];
    assert_eq!(end.reason, EndReason::NoSpeech, "{end:?}");
}

/// A server whose behaviour the test chooses; reports what it received.
#[derive(Clone, Copy, PartialEq)]
enum Misbehave {
    /// Reads the start, then nothing until told to resume.
    Stall,
    /// Answers after frame 5 and counts frames.
    ReplyAfterFive,
    /// Closes the connection after 10 frames.
    CloseAfterTen,
    /// Sends a non-MessagePack binary message after 5 frames.
    Garbage,
    /// Sends a 2 MiB message after 5 frames.
    Oversized,
    /// Behaves: reads everything, answers `final`.
    Plain,
    /// Sends `{"type":"end"}` after 5 frames and goes on reading.
    EndAfterFive,
    /// Never answers our end: no final, no close.
    NoFinal,
    /// After 5 frames: a reply holding 900 KB of binary, then one holding 100 KB of text.
    HugeReplies,
    /// After 5 frames: [`PINGS`] pings in a burst, each with its number as payload; it goes on reading.
    PingFlood,
    /// After 5 frames: 20 replies of 900 KB, then 2,000 small ones in a burst; then it tells `flooded`.
    ReplyFlood,
    /// Resets the TCP connection (RST) after 10 frames, as a server that crashed.
    ResetAfterTen,
    /// Shuts its TCP side (FIN) after 10 frames, without a close frame.
    FinAfterTen,
    /// Sends a MessagePack array, not a map, after 5 frames.
    NotAMap,
    /// Sends a text frame that is not UTF-8 after 5 frames.
    BadUtf8,
    /// Sends a JSON object nested 100,000 deep after 5 frames.
    DeepNesting,
}

/// The pings of [`Misbehave::PingFlood`].
const PINGS: u32 = 100_000;

struct TestServer {
    url: String,
    /// Notified when a session's start arrives.
    started: Arc<tokio::sync::Notify>,
    /// The Authorization header of the last connection.
    authorization: Arc<std::sync::Mutex<Option<String>>>,
    resume: Arc<tokio::sync::Notify>,
    received: Arc<AtomicU64>,
    seqs: tokio::sync::mpsc::UnboundedReceiver<(Vec<u64>, Option<serde_json::Value>)>,
    /// Per session, each frame's `seq` and its samples.
    audio: tokio::sync::mpsc::UnboundedReceiver<Vec<(u64, Vec<i16>)>>,
    /// The payloads of the pongs received, in order.
    pongs: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    /// Notified when the flood of [`Misbehave::ReplyFlood`] is sent.
    flooded: Arc<tokio::sync::Notify>,
}

async fn test_server(how: Misbehave) -> TestServer {
    // A small receive buffer (inherited by accepted sockets): on loopback the kernel would otherwise buffer
    // megabytes for a server that does not read, which a server across a network does not.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(16).unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let resume = Arc::new(tokio::sync::Notify::new());
    let received = Arc::new(AtomicU64::new(0));
    let (tx, seqs) = tokio::sync::mpsc::unbounded_channel();
    let (audio_tx, audio) = tokio::sync::mpsc::unbounded_channel();
    let started = Arc::new(tokio::sync::Notify::new());
    let authorization = Arc::new(std::sync::Mutex::new(None));
    let pongs = Arc::new(std::sync::Mutex::new(Vec::new()));
    let flooded = Arc::new(tokio::sync::Notify::new());
    let (r, n, st, auth, po, fl) = (resume.clone(), received.clone(), started.clone(), authorization.clone(), pongs.clone(), flooded.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (r, n, tx, st, auth, audio_tx, po, fl) =
                (r.clone(), n.clone(), tx.clone(), st.clone(), auth.clone(), audio_tx.clone(), po.clone(), fl.clone());
            tokio::spawn(async move {
                #[allow(clippy::result_large_err)]
                // the signature tungstenite's accept_hdr_async asks for
                let callback = |req: &tokio_tungstenite::tungstenite::handshake::server::Request, resp| {
                    *auth.lock().unwrap() = req.headers().get("authorization").map(|v| v.to_str().unwrap_or_default().to_string());
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
                    return;
                };
                let mut seqs = Vec::new();
                let mut frames = Vec::new();
                let mut end = None;
                let mut started = false;
                while let Some(Ok(msg)) = ws.next().await {
                    let b = match msg {
                        Message::Binary(b) => b,
                        Message::Pong(p) => {
                            po.lock().unwrap().push(p.to_vec());
                            continue;
                        }
                        _ => continue,
                    };
                    match ClientMessage::decode(&b) {
                        Ok(ClientMessage::Start { .. }) => {
                            started = true;
                            st.notify_one();
                            if how == Misbehave::Stall {
                                r.notified().await;
                            }
                        }
                        Ok(ClientMessage::Audio { seq, pcm }) => {
                            seqs.push(seq);
                            frames.push((seq, pcm.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect()));
                            let count = n.fetch_add(1, Ordering::SeqCst) + 1;
                            let reply = |v: serde_json::Value| Message::Binary(Bytes::from(rmp_serde::to_vec_named(&v).unwrap()));
                            match (how, count) {
                                (Misbehave::ReplyAfterFive, 5) => {
                                    let _ = ws.send(reply(serde_json::json!({"type": "partial", "text": "five"}))).await;
                                }
                                (Misbehave::CloseAfterTen, 10) => {
                                    let _ = ws.close(None).await;
                                    break;
                                }
                                (Misbehave::ResetAfterTen, 10) => {
                                    // Lingering 0: closing sends RST instead of FIN.
                                    #[allow(deprecated)] // set_linger's replacement is not in every tokio 1.x
                                    let _ = ws.get_ref().set_linger(Some(Duration::ZERO));
                                    break;
                                }
                                (Misbehave::FinAfterTen, 10) => {
                                    use std::os::fd::AsRawFd;
                                    // SAFETY: shutdown on a socket this task owns.
                                    unsafe { libc::shutdown(ws.get_ref().as_raw_fd(), libc::SHUT_WR) };
                                }
                                (Misbehave::Garbage, 5) => {
                                    let _ = ws.send(Message::Binary(Bytes::from_static(&[0xc1, 0x00, 0xff]))).await;
                                }
                                (Misbehave::NotAMap, 5) => {
                                    let _ = ws.send(Message::Binary(Bytes::from_static(&[0x92, 0x01, 0x02]))).await;
                                }
                                (Misbehave::BadUtf8, 5) => {
                                    use tokio_tungstenite::tungstenite::protocol::frame::{Frame, coding::{OpCode, Data}};
                                    let bad = Frame::message(Bytes::from_static(b"{\"type\":\"partial\",\"text\":\"\xff\xfe\"}"), OpCode::Data(Data::Text), true);
                                    let _ = ws.send(Message::Frame(bad)).await;
                                }
                                (Misbehave::DeepNesting, 5) => {
                                    let deep = format!("{}{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
                                    let _ = ws.send(Message::text(deep)).await;
                                }
                                (Misbehave::EndAfterFive, 5) => {
                                    let _ = ws.send(reply(serde_json::json!({"type": "end"}))).await;
                                }
                                (Misbehave::HugeReplies, 5) => {
                                    let audio = rmpv::Value::Map(vec![
                                        ("type".into(), "say".into()),
                                        ("pcm".into(), rmpv::Value::Binary(vec![1u8; 900_000])),
                                    ]);
                                    let mut bytes = Vec::new();
                                    rmpv::encode::write_value(&mut bytes, &audio).unwrap();
                                    let _ = ws.send(Message::Binary(Bytes::from(bytes))).await;
                                    let _ = ws.send(reply(serde_json::json!({"type": "partial", "text": "x".repeat(100_000)}))).await;
                                }
                                (Misbehave::ReplyFlood, 5) => {
                                    let big = rmpv::Value::Map(vec![("type".into(), "partial".into()), ("blob".into(), rmpv::Value::Binary(vec![1u8; 900_000]))]);
                                    let mut bytes = Vec::new();
                                    rmpv::encode::write_value(&mut bytes, &big).unwrap();
                                    for _ in 0..20 {
                                        let _ = ws.feed(Message::Binary(Bytes::from(bytes.clone()))).await;
                                    }
                                    for i in 0..2000 {
                                        let _ = ws.feed(reply(serde_json::json!({"type": "partial", "text": format!("flood {i}")}))).await;
                                    }
                                    let _ = ws.flush().await;
                                    fl.notify_one();
                                }
                                (Misbehave::PingFlood, 5) => {
                                    for i in 0..PINGS {
                                        let _ = ws.feed(Message::Ping(Bytes::from([i.to_be_bytes().to_vec(), vec![7u8; 121]].concat()))).await;
                                    }
                                    let _ = ws.flush().await;
                                }
                                (Misbehave::Oversized, 5) => {
                                    let _ = ws.send(Message::Binary(Bytes::from(vec![0u8; 2 << 20]))).await;
                                }
                                _ => {}
                            }
                        }
                        Ok(ClientMessage::End { .. }) if how == Misbehave::NoFinal => {
                            // Keep reading until the client gives up and closes.
                            end = msgpack_to_json(&b).ok();
                        }
                        Ok(ClientMessage::End { .. }) => {
                            end = msgpack_to_json(&b).ok();
                            let _ = ws.send(Message::text("{\"type\":\"final\",\"text\":\"ok\"}")).await;
                            let _ = ws.close(None).await;
                            break;
                        }
                        Err(_) => break,
                    }
                }
                if started {
                    let _ = audio_tx.send(frames);
                    let _ = tx.send((seqs, end));
                }
            });
        }
    });
    TestServer { url, started, authorization, resume, received, seqs, audio, pongs, flooded }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_arrive_while_audio_is_still_flowing() {
    let mut server = test_server(Misbehave::ReplyAfterFive).await;
    let mut config = file_config(&fixtures().join("stream-en-us_m1.wav"), &server.url);
    // Real time: frames leave one every 20 ms, for 3 s.
    config.audio.file_pacing = FilePacing::Realtime;
    config.session.max_ms = 3000;
    config.session.end_silence_ms = 10_000;
    // No pre-roll burst: every frame leaves when it is captured.
    config.session.preroll_ms = 0;
    let (tx, mut rx) = tokio::sync::broadcast::channel(4096);
    let received = server.received.clone();
    let watcher = tokio::spawn(async move {
        while let Ok(e) = rx.recv().await {
            if let Event::ServerMessage { message, .. } = e {
                // The reply is here: how many frames has the server got by now?
                return Some((message, received.load(Ordering::SeqCst)));
            }
        }
        None
    });
    let stop = CancellationToken::new();
    let daemon = tokio::spawn(voxgate::daemon::run_with_events(config, stop.clone(), tx));
    let (message, frames_then) = watcher.await.unwrap().expect("a server message");
    assert_eq!(message["text"], "five");
    // The reply is handled while the session streams, not after it: however loaded the machine, audio goes on
    // flowing after it (the session is 150 frames long).
    let (seqs, end) = server.seqs.recv().await.unwrap();
    assert!(frames_then < seqs.len() as u64, "the reply came only after all {} frames ({frames_then})", seqs.len());
    assert_eq!(end.unwrap()["reason"], "max_duration");
    stop.cancel();
    daemon.await.unwrap().unwrap();
}

/// A server's large replies are logged and published shortened, with their full size, and long binary values
/// by their length: an event line stays far below the control socket's 64 KiB, and the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_replies_are_shown_shortened_and_the_session_goes_on() {
    let mut server = test_server(Misbehave::HugeReplies).await;
    let config = file_config(&fixtures().join("stream-en-us_m1.wav"), &server.url);
    let (_, events) = run(config).await;
    let shown: Vec<&serde_json::Value> =
        events.iter().filter_map(|e| if let Event::ServerMessage { message, .. } = e { Some(message) } else { None }).collect();
    let big: Vec<(&str, u64)> =
        shown.iter().filter(|m| m["truncated"] == true).map(|m| (m["type"].as_str().unwrap(), m["bytes"].as_u64().unwrap())).collect();
    assert_eq!(big.iter().map(|b| b.0).collect::<Vec<_>>(), ["partial"], "{big:?}");
    assert!(big[0].1 > 100_000, "{big:?}");
    // The binary reply is shown with the length of its binary value.
    assert!(shown.iter().any(|m| m["type"] == "say" && m["pcm"]["bytes"] == 900_000), "{shown:?}");
    for m in &shown {
        assert!(serde_json::to_string(&Event::ServerMessage { session: "x".into(), message: (*m).clone() }).unwrap().len() < 4096, "{m}");
    }
    assert!(ends(&events).iter().all(|e| e.reason == EndReason::Silence), "{:?}", ends(&events));
    assert!(server.seqs.recv().await.is_some());
}

/// The daemon on a fixture with a wake word, at real time and with no pre-roll (so that every frame is live),
/// streaming to `url` with `tweak` applied to its configuration: how its first session ended.
async fn first_live_session_end(url: &str, tweak: impl FnOnce(&mut Config)) -> SessionSummary {
    let mut config = file_config(&fixtures().join("stream-en-us_m1.wav"), url);
    config.audio.file_pacing = FilePacing::Realtime;
    config.session.preroll_ms = 0;
    // No chimes: their device is not what these tests are about.
    config.playback.device = "none".into();
    tweak(&mut config);
    let (tx, mut rx) = tokio::sync::broadcast::channel(4096);
    let stop = CancellationToken::new();
    let daemon = tokio::spawn(voxgate::daemon::run_with_events(config, stop.clone(), tx));
    let end = loop {
        if let Event::SessionEnd(s) = rx.recv().await.unwrap() {
            break s;
        }
    };
    stop.cancel();
    daemon.await.unwrap().unwrap();
    end
}

/// A server that floods the session with pings while it goes on reading: the session is not ended by it, every
/// frame still arrives in order, and the latest ping is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_is_answered_and_does_not_end_the_session() {
    let mut server = test_server(Misbehave::PingFlood).await;
    // The flood comes while frames leave from the detector thread.
    let end = first_live_session_end(&server.url, |c| c.session.max_ms = 2000).await;
    assert_eq!(end.reason, EndReason::MaxDuration, "{end:?}");
    let (seqs, _) = server.seqs.recv().await.unwrap();
    assert_eq!(seqs.len() as u64, end.frames_sent, "{end:?}");
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1) && end.frames_dropped == 0, "{end:?}: {seqs:?}");
    let pongs = server.pongs.lock().unwrap().clone();
    assert_eq!(pongs.last().map(|p| &p[..4]), Some(&(PINGS - 1).to_be_bytes()[..]), "{} pongs, none for the last ping", pongs.len());
}

/// The daemon's resident memory, from /proc.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok()).unwrap()
}

/// A server floods a session with replies (20 of 900 KB, then 2,000 small ones) while a control subscriber
/// reads nothing: the daemon's memory stays within a few MB (replies are kept shortened, the subscriber misses
/// what its queue cannot hold and is told so), its log takes 20 of the messages at once and ten a second and
/// counts the rest, and the session goes on to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_flood_to_a_stuck_subscriber_costs_bounded_memory_and_log() {
    let server = test_server(Misbehave::ReplyFlood).await;
    let url = server.url.clone();
    let d = tokio::task::spawn_blocking(move || crate::support::TestDaemon::start(&url, &[])).await.unwrap();
    let pid = d.child.0.id();
    let d = Arc::new(d);
    let (stuck, before) = tokio::task::spawn_blocking({
        let d = d.clone();
        move || {
            let mut stuck = d.connect();
            assert_eq!(stuck.call(serde_json::json!({"cmd": "subscribe"}))["ok"], true);
            let before = rss_kb(pid);
            assert_eq!(d.connect().call(serde_json::json!({"cmd": "trigger"}))["ok"], true);
            (stuck, before)
        }
    })
    .await
    .unwrap();
    server.started.notified().await;
    server.flooded.notified().await;
    let d2 = d.clone();
    let (after, log) = tokio::task::spawn_blocking(move || {
        assert_eq!(d2.connect().call(serde_json::json!({"cmd": "stop"}))["ok"], true);
        let log = d2.logged(0, |l| l.contains("event=\"session_end\""));
        (rss_kb(pid), log)
    })
    .await
    .unwrap();
    assert!(log.contains("reason=stopped") || log.contains("reason=\"stopped\""), "{log}");
    assert!(after < before + 16 * 1024, "resident memory grew from {before} kB to {after} kB");
    let logged = log.lines().filter(|l| l.contains("server: {")).count();
    let skipped: u64 = log.lines().filter_map(|l| l.split(" server messages not logged").next()?.rsplit(' ').next()?.parse::<u64>().ok()).sum();
    assert!(logged <= 60 && skipped > 1900, "{logged} server messages logged, {skipped} counted as not logged:\n{log}");
    assert!(log.len() < 256 * 1024, "{} bytes of log", log.len());
    // The subscriber that read nothing is told what it missed.
    let mut stuck = stuck;
    let lagged = tokio::task::spawn_blocking(move || stuck.event(|e| e["event"] == "lagged")).await.unwrap();
    assert!(lagged["missed"].as_u64().unwrap() > 0, "{lagged}");
}

/// `make faults`, the servers: each way a server can misbehave, against the daemon streaming a recording at real
/// time with no pre-roll. One line each; each session's accounting holds: every frame the server got is the
/// source's frame of that `seq` (bit for bit, at one offset), and the frames it got plus those counted dropped
/// make every `seq` up to the last one it got.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the fault suite: make faults"]
async fn fault_suite_misbehaving_servers() {
    let (_, source) = read_wav(&fixtures().join("stream-en-us_m1.wav"));
    let scenarios = [
        ("behaves", Misbehave::Plain, None),
        ("replies while audio flows", Misbehave::ReplyAfterFive, None),
        ("closes mid-session (close frame)", Misbehave::CloseAfterTen, Some("closed the connection")),
        ("crashes mid-session (RST)", Misbehave::ResetAfterTen, Some("")),
        ("half-closes mid-session (FIN, no close frame)", Misbehave::FinAfterTen, Some("")),
        ("sends bad MessagePack", Misbehave::Garbage, Some("not a MessagePack map")),
        ("sends a 2 MiB message", Misbehave::Oversized, Some("too long")),
        ("sends a MessagePack array", Misbehave::NotAMap, Some("not a MessagePack map")),
        ("sends a text frame that is not UTF-8", Misbehave::BadUtf8, Some("UTF-8")),
        ("sends JSON nested 100,000 deep", Misbehave::DeepNesting, Some("JSON")),
        ("sends 900 KB and 100 KB replies", Misbehave::HugeReplies, None),
        ("floods 20 x 900 KB and 2,000 replies", Misbehave::ReplyFlood, None),
        ("floods 100,000 pings", Misbehave::PingFlood, None),
        ("ends the session itself", Misbehave::EndAfterFive, None),
        ("never answers the end", Misbehave::NoFinal, None),
    ];
    for (name, how, fails) in scenarios {
        let mut server = test_server(how).await;
        let end = first_live_session_end(&server.url, |c| c.session.max_ms = 3000).await;
        match fails {
            Some(says) => assert!(
                end.reason == EndReason::Error && end.detail.as_deref().unwrap_or_default().contains(says),
                "{name}: {end:?}"
            ),
            None => assert_ne!(end.reason, EndReason::Error, "{name}: {end:?}"),
        }
        let (seqs, _) = server.seqs.recv().await.expect("the server saw the session");
        let frames = server.audio.recv().await.unwrap();
        let accounted = accounting(&source, &frames, end.frames_dropped).unwrap_or_else(|e| panic!("{name}: {e}"));
        println!(
            "fault: server {name}: session {}{}; {} frames sent, the server got {} (seq 0..={}), {} dropped: {accounted}",
            end.reason.as_str(),
            end.detail.map(|d| format!(" ({d})")).unwrap_or_default(),
            end.frames_sent,
            seqs.len(),
            seqs.last().copied().unwrap_or(0),
            end.frames_dropped
        );
    }
    // No session reaches these servers: the session fails within the connect timeout, and nothing is sent.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("ws://{}/", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            held.push(tcp);
        }
    });
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("ws://{}/", l.local_addr().unwrap())
    };
    for (name, url, says) in [("is down", closed, "refused"), ("never answers the handshake", silent_url, "within")] {
        let end = first_live_session_end(&url, |c| c.session.connect_timeout_ms = 500).await;
        assert!(end.reason == EndReason::Error && end.detail.as_deref().unwrap_or_default().contains(says), "{name}: {end:?}");
        assert_eq!(end.frames_sent, 0, "{name}: {end:?}");
        println!("fault: server {name}: session error ({}); nothing sent", end.detail.unwrap_or_default());
    }
    held.abort();
}

/// The accounting invariant for what a server got of a session: `seq` only grows, every frame is the source's
/// frame of that number, and the gaps are no more than the frames counted dropped (all of them when the server
/// got the session's last frame).
fn accounting(source: &[i16], frames: &[(u64, Vec<i16>)], dropped: u64) -> Result<String, String> {
    let Some((first_seq, first)) = frames.first() else { return Ok("nothing sent, nothing to account".into()) };
    if frames.windows(2).any(|w| w[1].0 <= w[0].0) {
        return Err("seq went back or repeated".into());
    }
    let at = position(source, first).ok_or("the first frame is not a stretch of the source")? as i64 - *first_seq as i64 * first.len() as i64;
    for (seq, pcm) in frames {
        let from = (at + *seq as i64 * pcm.len() as i64) as usize;
        if source.get(from..from + pcm.len()) != Some(&pcm[..]) {
            return Err(format!("frame {seq} is not the source's frame at sample {from}"));
        }
    }
    let last = frames.last().map(|f| f.0).unwrap_or(0);
    let gaps = last + 1 - frames.len() as u64;
    if gaps > dropped {
        return Err(format!("{gaps} frames missing before seq {last}, only {dropped} counted dropped"));
    }
    Ok(format!("got + gaps = {} + {gaps} = last seq + 1", frames.len()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_down_at_wake_is_an_error_and_the_daemon_carries_on() {
    // A port nobody listens on.
    let url = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("ws://{}/", l.local_addr().unwrap())
    };
    let (summary, events) = run(file_config(&fixtures().join("stream-en-us_m1.wav"), &url)).await;
    let ends = ends(&events);
    assert_eq!(ends.len(), 2, "both wake words tried: {ends:?}");
    for e in &ends {
        assert_eq!(e.reason, EndReason::Error);
        let detail = e.detail.as_deref().unwrap_or_default();
        assert!(detail.contains("cannot connect") && detail.contains("127.0.0.1"), "{detail}");
    }
    assert_eq!(summary.sessions.failed, 2);
    assert!(events.iter().any(|e| matches!(e, Event::State { state: voxgate::session::State::Backoff })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misbehaving_server_ends_the_session_with_a_clear_reason() {
    for (how, expect) in [
        (Misbehave::CloseAfterTen, "closed the connection mid-session"),
        (Misbehave::Garbage, "not a MessagePack map"),
        (Misbehave::Oversized, "too long"),
    ] {
        let server = test_server(how).await;
        // The server misbehaves while the session is still streaming.
        let end = first_live_session_end(&server.url, |_| {}).await;
        assert_eq!(end.reason, EndReason::Error, "{end:?}");
        let detail = end.detail.as_deref().unwrap_or_default();
        assert!(detail.contains(expect), "{expect:?} not in {detail:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_server_costs_the_oldest_frames_and_no_memory() {
    let mut server = test_server(Misbehave::Stall).await;
    let (_, pcm) = read_wav(&fixtures().join("stream-en-us_m1.wav"));
    // A partial last frame is padded into a whole one.
    let total_frames = pcm.len().div_ceil(320) as u64;
    let mut child = crate::support::ChildGuard(
        crate::support::voxgate()
            .arg("run")
            .env("VOXGATE_AUDIO__SOURCE", "stdin")
            .env("VOXGATE_WAKE__MODE", "always")
            .env("VOXGATE_SESSION__URL", &server.url)
            .env("VOXGATE_SESSION__END_SILENCE_MS", "10000")
            .env("VOXGATE_SESSION__MAX_MS", "600000")
            .env("VOXGATE_SESSION__DRAIN_TIMEOUT_MS", "60000")
            .env("VOXGATE_LOG__LEVEL", "warn")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stdin = child.0.stdin.take().unwrap();
    let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
    // Live audio at ten times real time (a frame every 2 ms) into a daemon whose server does not read.
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let ticks = crossbeam_channel::tick(std::time::Duration::from_millis(2));
        for frame in bytes.chunks(640) {
            stdin.write_all(frame).unwrap();
            let _ = ticks.recv();
        }
    })
    .await
    .unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.0.id())).unwrap();
    let peak_kb: u64 = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(peak_kb < 60 * 1024, "peak RSS {peak_kb} KiB after {} s of audio to a stalled server", total_frames / 50);
    // The server reads again.
    server.resume.notify_one();
    let (seqs, end) = server.seqs.recv().await.unwrap();
    let end = end.expect("the session was ended and drained");
    assert_eq!(end["reason"], "source_ended");
    let gaps: u64 = seqs.windows(2).map(|w| w[1] - w[0] - 1).sum::<u64>() + seqs[0];
    assert!(seqs.windows(2).all(|w| w[1] > w[0]), "seq in capture order");
    assert_eq!(gaps, end["frames_dropped"].as_u64().unwrap(), "the seq gaps are the drop counter");
    assert_eq!(seqs.len() as u64, end["frames_sent"].as_u64().unwrap());
    assert!(
        gaps > total_frames / 2,
        "most of the audio was dropped ({gaps} of {total_frames}); seqs {}..{} ({}), end {end}",
        seqs[0],
        seqs.last().unwrap(),
        seqs.len()
    );
    assert_eq!(*seqs.last().unwrap(), total_frames - 1, "the newest audio arrived");
    assert!(child.0.wait().unwrap().success());
}

/// A CA and a `localhost` certificate it signed, made for the test.
fn test_pki() -> (String, rustls::pki_types::CertificateDer<'static>, rustls::pki_types::PrivateKeyDer<'static>) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap().signed_by(&leaf_key, &ca).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
    (ca.pem(), leaf.der().clone(), key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_with_a_private_ca_in_ca_file() {
    let (ca_pem, cert, key) = test_pki();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, mut got) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                // A client that refuses our certificate fails here: nothing to report.
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                let mut frames = 0;
                while let Some(Ok(Message::Binary(b))) = ws.next().await {
                    match ClientMessage::decode(&b) {
                        Ok(ClientMessage::Audio { .. }) => frames += 1,
                        Ok(ClientMessage::End { reason, .. }) => {
                            let _ = ws.send(Message::text("{\"type\":\"final\"}")).await;
                            let _ = tx.send((frames, reason));
                            break;
                        }
                        _ => {}
                    }
                }
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let url = format!("wss://localhost:{port}/");
    // Without the CA: the certificate is refused, and the error says so.
    let (_, events) = run(file_config(&fixtures().join("stream-en-us_m1.wav"), &url)).await;
    let failed = ends(&events);
    assert!(failed.iter().all(|e| e.reason == EndReason::Error), "{failed:?}");
    assert!(failed[0].detail.as_deref().unwrap_or_default().to_lowercase().contains("certificate"), "{failed:?}");
    // With it: sessions over TLS, ended normally.
    let mut config = file_config(&fixtures().join("stream-en-us_m1.wav"), &url);
    config.session.ca_file = ca_file;
    let (summary, events) = run(config).await;
    assert_eq!(summary.sessions.sessions, 2, "{events:?}");
    for _ in 0..2 {
        let (frames, reason) = got.recv().await.unwrap();
        assert_eq!(reason, EndReason::Silence);
        assert!(frames > 100);
    }
}

/// `voxgate run` capturing from the fake microphone, streaming to `url` with the bearer token in `token`.
fn live_daemon(mic: &crate::support::FakeMic, url: &str, token: &std::path::Path, extra: &[(&str, &str)]) -> crate::support::ChildGuard {
    let mut cmd = crate::support::voxgate();
    cmd.arg("run")
        .env("ALSA_CONFIG_PATH", mic.alsa_config())
        .env("VOXGATE_AUDIO__SOURCE", "alsa:fakemic")
        .env("VOXGATE_SESSION__URL", url)
        .env("VOXGATE_SESSION__TOKEN_FILE", token)
        .env("VOXGATE_LOG__LEVEL", "warn")
        .envs(extra.iter().copied());
    crate::support::ChildGuard(cmd.spawn().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_capture_sessions_are_bit_exact_and_sigterm_ends_one_with_shutdown() {
    use crate::support::FakeMic;
    let file = "stream-en-us_m1.wav";
    let (_, source) = read_wav(&fixtures().join(file));
    let mut server = reference_server().await;
    let chunk = 4096;
    // The microphone hears some silence first, which a pre-roll may reach into: it is part of the source.
    let source: Vec<i16> = std::iter::repeat_n(0i16, chunk * 2).chain(source).collect();
    let data: Vec<u8> = source.iter().flat_map(|s| s.to_le_bytes()).collect();
    let mic = FakeMic::new(data, chunk, std::time::Duration::from_millis(32));
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    let child = live_daemon(&mic, &server.url, &token, &[]);
    // Both wake words of the stream, captured live: each session is a stretch of the source, bit for bit.
    for _ in 0..2 {
        let r = server.records.recv().await.unwrap();
        let (_, got) = read_wav(r.wav.as_ref().unwrap());
        assert!(got.len() > 16000, "{} samples", got.len());
        let received = frames_are_the_source(&source, &got, &r.gaps, 320).unwrap_or_else(|e| panic!("session {}: {e}", r.session));
        let end = r.end.as_ref().unwrap();
        // Whatever a loaded machine lost at capture is counted, and is exactly the gaps.
        let gap_frames: u64 = r.gaps.iter().map(|g| g[1] - g[0] + 1).sum();
        assert_eq!(end["frames_dropped"].as_u64(), Some(gap_frames), "{end}");
        assert_eq!(end["frames_sent"].as_u64(), Some(received), "{end}");
        assert_eq!(r.end.as_ref().unwrap()["reason"], "silence");
    }
    server.stop.cancel();
    // A server that keeps the session open: SIGTERM mid-session sends `end` with `shutdown`, then exit 0.
    drop(child);
    let mut plain = test_server(Misbehave::Plain).await;
    let mic = FakeMic::new(source.iter().flat_map(|s| s.to_le_bytes()).collect(), chunk, std::time::Duration::from_millis(32));
    let mut child = live_daemon(&mic, &plain.url, &token, &[("VOXGATE_SESSION__END_SILENCE_MS", "10000")]);
    plain.started.notified().await;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let (seqs, end) = plain.seqs.recv().await.unwrap();
    let end = end.expect("an end message");
    assert_eq!(end["reason"], "shutdown");
    assert_eq!(end["frames_sent"].as_u64(), Some(seqs.len() as u64));
    assert!(child.0.wait().unwrap().success());
    assert_eq!(plain.authorization.lock().unwrap().as_deref(), Some("Bearer s3cret-token"));
}

/// Runs the daemon at real time without pre-roll until its first session ends; `on_start` is called when it
/// starts. Returns the summary and the server's view of the session.
async fn first_live_session(
    server: &mut TestServer,
    tune: impl FnOnce(&mut Config),
    on_start: impl FnOnce(&tokio::sync::mpsc::Sender<voxgate::control::server::Call>),
) -> (SessionSummary, (Vec<u64>, Option<serde_json::Value>)) {
    let mut config = file_config(&fixtures().join("stream-en-us_m1.wav"), &server.url);
    config.audio.file_pacing = FilePacing::Realtime;
    config.session.preroll_ms = 0;
    tune(&mut config);
    let (tx, mut rx) = tokio::sync::broadcast::channel(4096);
    let stop = CancellationToken::new();
    let daemon = voxgate::daemon::Daemon::new(config, stop.clone()).events(tx);
    let commands_tx = daemon.calls();
    let daemon = tokio::spawn(daemon.run(None));
    let mut on_start = Some(on_start);
    let end = loop {
        match rx.recv().await.unwrap() {
            Event::SessionStart { .. } => {
                if let Some(f) = on_start.take() {
                    f(&commands_tx);
                }
            }
            Event::SessionEnd(s) => break s,
            _ => {}
        }
    };
    stop.cancel();
    daemon.await.unwrap().unwrap();
    let seen = server.seqs.recv().await.unwrap();
    (end, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_can_end_a_session_and_so_can_stop() {
    let mut server = test_server(Misbehave::EndAfterFive).await;
    let (end, (_, msg)) = first_live_session(&mut server, |_| {}, |_| {}).await;
    assert_eq!(end.reason, EndReason::Server, "{end:?}");
    assert_eq!(msg.unwrap()["reason"], "server");

    // Stopped once the server has the session (a stop while it connects calls it off before the server hears
    // of it: `stop_and_sigterm_while_connecting_…`).
    let mut server = test_server(Misbehave::Plain).await;
    let started = server.started.clone();
    let (end, (_, msg)) = first_live_session(
        &mut server,
        |c| c.session.end_silence_ms = 10000,
        move |commands| {
            let commands = commands.clone();
            tokio::spawn(async move {
                started.notified().await;
                commands.try_send((voxgate::control::proto::Request::Stop, tokio::sync::oneshot::channel().0)).unwrap();
            });
        },
    )
    .await;
    assert_eq!(end.reason, EndReason::Stopped, "{end:?}");
    assert_eq!(msg.unwrap()["reason"], "stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_drain_deadlines() {
    // A listener that never answers the WebSocket handshake: the kernel accepts the TCP connection, nobody reads.
    let mute = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = file_config(&fixtures().join("stream-en-us_m1.wav"), &format!("ws://{}/", mute.local_addr().unwrap()));
    config.session.connect_timeout_ms = 300;
    let (_, events) = run(config).await;
    let failed = ends(&events);
    assert_eq!(failed.len(), 2);
    let detail = failed[0].detail.as_deref().unwrap_or_default();
    assert!(detail.contains("no answer") && detail.contains("300 ms"), "{detail}");

    // A server that never answers our end: the session closes once drain_timeout_ms has passed.
    let mut server = test_server(Misbehave::NoFinal).await;
    let mut config = file_config(&fixtures().join("stream-en-us_m1.wav"), &server.url);
    config.session.drain_timeout_ms = 300;
    let (_, events) = run(config).await;
    let done = ends(&events);
    assert_eq!(done.len(), 2);
    for s in &done {
        assert_eq!(s.reason, EndReason::Silence, "{s:?}");
        assert!(s.duration_ms >= 300, "closed after {} ms, before the drain deadline", s.duration_ms);
        let (_, end) = server.seqs.recv().await.unwrap();
        assert_eq!(end.unwrap()["reason"], "silence", "our end was sent before the wait");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_mode_opens_a_session_when_speech_starts_however_late() {
    let server = reference_server().await;
    let (_, speech) = read_wav(&fixtures().join("stream-en-us_m1.wav"));
    // Six seconds of silence first: longer than no_speech_ms, which must not matter while nobody talks.
    let mut pcm = vec![0i16; 16000 * 6];
    pcm.extend_from_slice(&speech[..16000 * 5]);
    pcm.extend(std::iter::repeat_n(0i16, 16000 * 2));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("late.wav");
    write_wav(&path, 16000, &pcm);
    let mut config = file_config(&path, &server.url);
    config.wake.mode = voxgate::config::WakeMode::Always;
    let (summary, events) = run(config).await;
    server.stop.cancel();
    assert!(summary.sessions.sessions >= 1, "{events:?}");
    let first = events.iter().find_map(|e| if let Event::SessionStart { t_ms, trigger, .. } = e { Some((*t_ms, *trigger)) } else { None }).unwrap();
    assert_eq!(first.1, voxgate::session::Trigger::Always);
    assert!(first.0 > 6000 && first.0 < 8000, "the session starts with the speech, at {} ms", first.0);
}

/// A session opened by hand with no pre-roll, for running `session::run::run` on its own.
fn manual_request(session: &str, queue: Arc<voxgate::session::SessionQueue>) -> voxgate::session::SessionRequest {
    voxgate::session::SessionRequest {
        trigger: voxgate::session::Trigger::Manual,
        wakeword: None,
        score: None,
        t_ms: 0,
        first_seq: 0,
        preroll_ms: 0,
        session: session.into(),
        queue,
    }
}

/// A reporter nobody listens to.
fn quiet_reporter() -> voxgate::session::Reporter {
    voxgate::session::Reporter::new(tokio::sync::broadcast::channel(64).0)
}

/// The network deadlines on tokio's paused clock: time only moves when every task waits, so each deadline is
/// met exactly, whatever the machine's speed.
#[tokio::test(start_paused = true)]
async fn connect_and_drain_deadlines_on_the_paused_clock() {
    use voxgate::audio::Frame;
    use voxgate::session::SessionQueue;
    use voxgate::session::connect::Params;
    use voxgate::session::run as client;
    let reporter = quiet_reporter();
    let session = |queue: Arc<SessionQueue>| manual_request("paused", queue);
    let queued = || {
        let q = Arc::new(SessionQueue::new(16, false, 0));
        for seq in 0..5 {
            q.push(Frame { seq, captured: std::time::Instant::now(), pcm: vec![1; 320] });
        }
        q.finish(EndReason::Silence);
        q
    };

    // A server that takes our end and never answers: the session waits drain_timeout_ms for the final reply.
    let mut server = test_server(Misbehave::NoFinal).await;
    let mut config = Config::default();
    config.session.url = server.url.clone();
    config.session.drain_timeout_ms = 2000;
    let params = Params::new(&config).unwrap();
    let t0 = tokio::time::Instant::now();
    let s = client::run(&params, session(queued()), &reporter).await;
    let waited = t0.elapsed();
    assert_eq!(s.reason, EndReason::Silence, "{s:?}");
    assert_eq!(s.frames_sent, 5);
    assert!(waited >= Duration::from_millis(2000) && waited < Duration::from_millis(2100), "drained for {waited:?}");
    let (seqs, end) = server.seqs.recv().await.unwrap();
    assert_eq!(seqs, vec![0, 1, 2, 3, 4]);
    assert_eq!(end.unwrap()["reason"], "silence");

    // A listener that never answers the handshake: the session fails at connect_timeout_ms exactly.
    let mute = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    config.session.url = format!("ws://{}/", mute.local_addr().unwrap());
    config.session.connect_timeout_ms = 1500;
    let params = Params::new(&config).unwrap();
    let t0 = tokio::time::Instant::now();
    let s = client::run(&params, session(queued()), &reporter).await;
    assert_eq!(s.reason, EndReason::Error);
    assert!(s.detail.as_deref().unwrap().contains("1500 ms"), "{s:?}");
    assert_eq!(t0.elapsed(), Duration::from_millis(1500));
}

/// Once connected, a frame leaves from the thread that pushes it: the session's runtime is held busy by a
/// task that blocks its only thread, and the server still gets every frame pushed meanwhile. Frames pushed
/// before the connection was up went out through the writer task.
#[test]
fn frames_leave_from_the_pushing_thread_while_the_runtime_is_busy() {
    use std::sync::mpsc;
    use voxgate::audio::Frame;
    use voxgate::session::SessionQueue;
    use voxgate::session::connect::Params;
    use voxgate::session::run as client;
    const WAIT: Duration = Duration::from_secs(10);

    // A blocking server on a plain thread: it reports each audio frame's seq the moment it reads it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let (heard_tx, heard) = mpsc::channel::<u64>();
    std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let mut ws = tokio_tungstenite::tungstenite::accept(tcp).unwrap();
        while let Ok(Message::Binary(b)) = ws.read() {
            match ClientMessage::decode(&b) {
                Ok(ClientMessage::Audio { seq, .. }) => heard_tx.send(seq).unwrap(),
                Ok(ClientMessage::End { .. }) => {
                    let _ = ws.close(None);
                    let _ = ws.flush();
                }
                _ => {}
            }
        }
    });

    let mut config = Config::default();
    config.session.url = url;
    let params = Params::new(&config).unwrap();
    let queue = Arc::new(SessionQueue::new(64, false, 0));
    let request = manual_request("direct", queue.clone());
    let frame = |seq| Frame { seq, captured: std::time::Instant::now(), pcm: vec![seq as i16; 320] };
    // Pushed before the session connects: the writer task sends it.
    queue.push(frame(0));

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let handle = rt.handle().clone();
    let runtime = std::thread::spawn(move || rt.block_on(client::run(&params, request, &quiet_reporter())));
    assert_eq!(heard.recv_timeout(WAIT), Ok(0), "the writer task sends what was queued before the connection");

    // Hold the runtime's only thread: no task of the session can run until it is let go.
    let (held_tx, held) = mpsc::channel();
    let (release, released) = mpsc::channel::<()>();
    handle.spawn(async move {
        held_tx.send(()).unwrap();
        let _ = released.recv();
    });
    held.recv_timeout(WAIT).expect("the runtime runs the holding task");
    for seq in 1..=5 {
        queue.push(frame(seq));
        assert_eq!(heard.recv_timeout(WAIT), Ok(seq), "frame {seq} reaches the server while the runtime is held");
    }
    assert_eq!(queue.len(), 0);

    release.send(()).unwrap();
    queue.push(frame(6));
    queue.finish(EndReason::Silence);
    let summary = runtime.join().unwrap();
    assert_eq!(summary.reason, EndReason::Silence, "{summary:?}");
    assert_eq!((summary.frames_sent, summary.frames_dropped), (7, 0));
    assert_eq!(heard.recv_timeout(WAIT), Ok(6));
}

/// A microphone far faster than real time: every frame the server gets is the source's frame of that number,
/// and every frame lost on the way (capture ring, frame channel, session queue) is a counted `seq` gap. How much
/// is lost depends on the machine; the capture ring's part is also tested on its own, in `audio::device`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_losses_are_seq_gaps_the_server_can_see() {
    use crate::support::{FakeMic, NUMBERED, TestDaemon};
    let mut server = test_server(Misbehave::Plain).await;
    let mic = FakeMic::numbered();
    let config = format!(
        "[audio]\nsource = \"alsa:fakemic\"\n[wake]\nmode = \"manual\"\n[session]\nurl = \"{}\"\npreroll_ms = 0\nend_silence_ms = 10000\nno_speech_ms = 60000\nmax_ms = 60000\n[log]\nformat = \"text\"\n",
        server.url
    );
    let alsa = mic.alsa_config().display().to_string();
    let d = tokio::task::spawn_blocking(move || TestDaemon::spawn(&config, false, &[("ALSA_CONFIG_PATH", alsa.as_str())])).await.unwrap();
    let (d, code) = tokio::task::spawn_blocking(move || {
        let (code, _) = d.cli(&["trigger"]);
        (d, code)
    })
    .await
    .unwrap();
    assert_eq!(code, 0);
    let frames = server.audio.recv().await.unwrap();
    let (seqs, end) = server.seqs.recv().await.unwrap();
    let end = end.expect("an end message");
    // However the audio clock ends it (the numbering is not speech, but a voice detector may think so).
    assert!(["no_speech", "max_duration", "silence"].contains(&end["reason"].as_str().unwrap_or_default()), "{end}");
    assert!(frames.len() >= 40, "{} frames", frames.len());
    // Sample value minus 320 × seq is the same for every sample of every frame the server got.
    let offset = |seq: u64, i: usize, v: i16| (v as i64 - (seq as i64 * 320 + i as i64)).rem_euclid(NUMBERED);
    let base = offset(frames[0].0, 0, frames[0].1[0]);
    for (seq, pcm) in &frames {
        assert_eq!(pcm.len(), 320);
        for (i, &v) in pcm.iter().enumerate() {
            assert_eq!(offset(*seq, i, v), base, "frame {seq}, sample {i} is not the source's frame {seq}");
        }
    }
    let gaps: u64 = seqs.windows(2).map(|w| w[1] - w[0] - 1).sum::<u64>() + seqs[0];
    assert_eq!(end["frames_dropped"].as_u64(), Some(gaps), "{end}");
    assert_eq!(end["frames_sent"].as_u64(), Some(seqs.len() as u64), "{end}");
    // What the source lost before the session's queue shows in its counters; the session's own count is above.
    let status = tokio::task::spawn_blocking(move || d.status()).await.unwrap();
    assert_eq!(status["counters"]["frames_dropped"].as_u64(), Some(gaps), "{status}");
}

/// A server that stops reading: at the drain deadline the frames still queued are abandoned, counted in the
/// summary beside those sent, and the session still ends with the reason it had.
#[tokio::test(start_paused = true)]
async fn the_drain_deadline_abandons_what_is_still_queued_and_counts_it() {
    use voxgate::audio::Frame;
    use voxgate::session::SessionQueue;
    use voxgate::session::connect::Params;
    use voxgate::session::run as client;
    let server = test_server(Misbehave::Stall).await;
    let mut config = Config::default();
    config.session.url = server.url.clone();
    config.session.drain_timeout_ms = 1000;
    let params = Params::new(&config).unwrap();
    // Far more than the socket buffers on both sides hold.
    let total = 400;
    let queue = Arc::new(SessionQueue::new(total, false, 0));
    for seq in 0..total as u64 {
        queue.push(Frame { seq, captured: std::time::Instant::now(), pcm: vec![7; 320] });
    }
    queue.finish(EndReason::Silence);
    let t0 = tokio::time::Instant::now();
    let s = client::run(&params, manual_request("stalled", queue), &quiet_reporter()).await;
    assert_eq!(s.reason, EndReason::Silence, "{s:?}");
    assert!(s.frames_abandoned > 0 && s.frames_sent > 0, "{s:?}");
    assert_eq!(s.frames_sent + s.frames_abandoned, total as u64, "{s:?}");
    assert!(s.detail.as_deref().unwrap_or_default().contains("within 1000 ms"), "{s:?}");
    assert_eq!(t0.elapsed(), Duration::from_millis(1000));
    server.resume.notify_one();
}
