//! The bounded queue between the audio side (the detector thread, which pushes) and a session's connection
//! (which takes frames from it), one per session.
//!
//! Live sources never wait: when the queue is full, the oldest frame is dropped and counted, so a slow server
//! gets the newest audio once it reads again. A file played `fast` waits instead (lossless): the detector
//! thread blocks until the writer has taken a frame. The queue also carries how the session ends: the first
//! `finish` wins, and the writer sees it after the frames queued before it.
//!
//! Once the connection is up, the session attaches an [`Outlet`]: from then on the pushing thread itself sends
//! each frame when the connection can take it without waiting, so a frame leaves without waking the writer task
//! (a wake-up of a parked task is most of a frame's latency). Whatever cannot leave at once stays queued under
//! the drop-oldest policy, and the writer task sends it when the connection is ready again.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Wake, Waker};

use tokio::sync::Notify;

use super::EndReason;
use crate::audio::Frame;

pub struct SessionQueue {
    state: Mutex<State>,
    /// Wakes the writer task: a frame was queued and not sent, the connection is ready again, or the session
    /// was finished.
    ready: Arc<Notify>,
    /// Sends frames from the pushing thread, once the connection is up.
    outlet: OnceLock<Arc<dyn Outlet>>,
    /// Wakes a lossless producer: room was made, or the session was finished.
    space: Condvar,
    /// Set once, by `finish`: for waiting on the end without taking frames.
    end_tx: tokio::sync::watch::Sender<Option<EndReason>>,
    capacity: usize,
    lossless: bool,
}

#[derive(Default)]
struct State {
    frames: VecDeque<Frame>,
    end: Option<EndReason>,
    dropped: u64,
    /// Frames that never reached the queue (the source dropped them): gaps in `seq`.
    missed: u64,
    /// The `seq` expected next.
    next_seq: u64,
}

/// Takes frames from the pushing thread, when it can without waiting (see [`SessionQueue::attach`]).
pub trait Outlet: Send + Sync {
    /// Called on the pushing thread after each push: send what is queued, in order, as far as the connection
    /// takes it without waiting. Returns `false` when it could not try (the writer task is using the
    /// connection); the writer task is then woken to do it.
    fn offer(&self, queue: &SessionQueue) -> bool;
}

/// Wakes the writer task: the waker to register with the connection.
struct WakeWriter(Arc<Notify>);

impl Wake for WakeWriter {
    fn wake(self: Arc<Self>) {
        self.0.notify_one();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.notify_one();
    }
}

impl SessionQueue {
    /// A queue for a session whose first frame has sequence number `first_seq`.
    pub fn new(capacity: usize, lossless: bool, first_seq: u64) -> Self {
        SessionQueue {
            state: Mutex::new(State { frames: VecDeque::with_capacity(capacity.max(1)), next_seq: first_seq, ..State::default() }),
            ready: Arc::new(Notify::new()),
            outlet: OnceLock::new(),
            space: Condvar::new(),
            end_tx: tokio::sync::watch::Sender::new(None),
            capacity: capacity.max(1),
            lossless,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a frame. Returns `false` once the session has ended: the frame was not taken and the producer
    /// should stop feeding this queue.
    pub fn push(&self, frame: Frame) -> bool {
        let mut s = self.lock();
        if s.end.is_some() {
            return false;
        }
        while s.frames.len() >= self.capacity {
            if self.lossless {
                s = self.space.wait(s).unwrap_or_else(PoisonError::into_inner);
                if s.end.is_some() {
                    return false;
                }
            } else {
                s.frames.pop_front();
                s.dropped += 1;
            }
        }
        s.missed += frame.seq.saturating_sub(s.next_seq);
        s.next_seq = s.next_seq.max(frame.seq + 1);
        s.frames.push_back(frame);
        drop(s);
        match self.outlet.get() {
            Some(outlet) if outlet.offer(self) => {}
            _ => self.ready.notify_one(),
        }
        true
    }

    /// From now on, each push offers the queued frames to `outlet` on the pushing thread. Set once; later calls
    /// are ignored.
    pub fn attach(&self, outlet: Arc<dyn Outlet>) {
        let _ = self.outlet.set(outlet);
    }

    /// A waker for the writer task: wakes whoever waits on [`SessionQueue::wait`].
    pub fn waker(&self) -> Waker {
        Waker::from(Arc::new(WakeWriter(self.ready.clone())))
    }

    /// Waits until something may be there for the writer: a frame not yet sent, the connection ready again,
    /// or the end. A wake-up that came while the writer was busy is kept, so none is lost.
    pub async fn wait(&self) {
        self.ready.notified().await;
    }

    /// The oldest queued frame.
    pub fn pop(&self) -> Option<Frame> {
        let f = self.lock().frames.pop_front();
        // Only a lossless producer ever waits for room (a notify is a system call even with nobody waiting).
        if f.is_some() && self.lossless {
            self.space.notify_one();
        }
        f
    }

    /// The end, once it is decided and no frame queued before it is left.
    pub fn drained(&self) -> Option<EndReason> {
        let s = self.lock();
        if s.frames.is_empty() { s.end } else { None }
    }

    /// Ends the session with `reason` unless it already ended. Returns whether this call ended it.
    pub fn finish(&self, reason: EndReason) -> bool {
        let mut s = self.lock();
        if s.end.is_some() {
            return false;
        }
        s.end = Some(reason);
        drop(s);
        self.end_tx.send_replace(Some(reason));
        self.ready.notify_one();
        self.space.notify_all();
        true
    }

    pub fn ended(&self) -> Option<EndReason> {
        self.lock().end
    }

    /// Returns once the session's end is decided (frames may still be queued).
    pub async fn wait_ended(&self) {
        let mut rx = self.end_tx.subscribe();
        let _ = rx.wait_for(|e| e.is_some()).await;
    }

    /// Returns once the session is ended from outside (`stop`, mute, shutdown), as opposed to by its audio:
    /// what is still connecting then gives up instead of delivering.
    pub async fn wait_called_off(&self) {
        let mut rx = self.end_tx.subscribe();
        let _ = rx.wait_for(|e| matches!(e, Some(EndReason::Stopped | EndReason::Shutdown))).await;
    }

    /// Frames of this session the server will not get: dropped because the queue was full, or never queued
    /// because the source dropped them. Equals the gaps in the `seq` the server sees.
    pub fn dropped(&self) -> u64 {
        let s = self.lock();
        s.dropped + s.missed
    }

    /// Throws away the frames still waiting (they will never be sent); returns how many.
    pub fn clear(&self) -> usize {
        let mut s = self.lock();
        let n = s.frames.len();
        s.frames.clear();
        drop(s);
        if n > 0 && self.lossless {
            self.space.notify_one();
        }
        n
    }

    /// Frames still waiting.
    pub fn len(&self) -> usize {
        self.lock().frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn frame(seq: u64) -> Frame {
        Frame { seq, captured: std::time::Instant::now(), pcm: vec![0; 4] }
    }

    enum Next {
        Frame(Frame),
        End(EndReason),
    }

    /// What a writer gets next: a frame, or the end once the frames queued before it are gone.
    async fn next(q: &SessionQueue) -> Next {
        loop {
            if let Some(f) = q.pop() {
                return Next::Frame(f);
            }
            if let Some(r) = q.drained() {
                return Next::End(r);
            }
            q.wait().await;
        }
    }

    #[tokio::test]
    async fn live_queue_drops_the_oldest_and_keeps_the_end_last() {
        let q = SessionQueue::new(3, false, 0);
        for s in 0..5 {
            assert!(q.push(frame(s)));
        }
        assert_eq!(q.dropped(), 2);
        assert!(q.finish(EndReason::Silence));
        assert!(!q.finish(EndReason::Stopped), "the first reason wins");
        assert!(!q.push(frame(5)), "nothing is taken after the end");
        let mut got = Vec::new();
        loop {
            match next(&q).await {
                Next::Frame(f) => got.push(f.seq),
                Next::End(r) => {
                    assert_eq!(r, EndReason::Silence);
                    break;
                }
            }
        }
        assert_eq!(got, vec![2, 3, 4]);
    }

    #[test]
    fn frames_the_source_dropped_count_as_dropped() {
        let q = SessionQueue::new(10, false, 5);
        for s in [5, 6, 9, 10] {
            q.push(frame(s));
        }
        assert_eq!(q.dropped(), 2, "seq 7 and 8 never came");
    }

    /// Takes a frame on each offer, or declines every offer.
    struct Taker {
        accept: bool,
        offers: std::sync::atomic::AtomicUsize,
    }

    impl Outlet for Taker {
        fn offer(&self, queue: &SessionQueue) -> bool {
            self.offers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if self.accept {
                queue.pop();
            }
            self.accept
        }
    }

    /// On the paused clock: `wait` returns at once if the writer was woken, and times out at once if not.
    async fn writer_woken(q: &SessionQueue) -> bool {
        tokio::time::timeout(std::time::Duration::from_secs(1), q.wait()).await.is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn an_attached_outlet_sends_without_waking_the_writer() {
        let q = SessionQueue::new(8, false, 0);
        assert!(q.push(frame(0)));
        assert!(writer_woken(&q).await, "before the outlet, a push wakes the writer");
        let taker = Arc::new(Taker { accept: true, offers: Default::default() });
        q.attach(taker.clone());
        assert!(q.push(frame(1)));
        assert_eq!(taker.offers.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(q.pop().map(|f| f.seq), Some(1), "the outlet took the oldest frame, 0");
        assert!(!writer_woken(&q).await, "a frame the outlet took does not wake the writer");

        let q = SessionQueue::new(8, false, 0);
        q.attach(Arc::new(Taker { accept: false, offers: Default::default() }));
        assert!(q.push(frame(0)));
        assert!(writer_woken(&q).await, "a declined offer wakes the writer");
        assert_eq!(q.len(), 1);
        q.finish(EndReason::Silence);
        assert!(writer_woken(&q).await, "the end wakes the writer");
        assert_eq!(q.drained(), None, "frame 0 is still queued before the end");
        q.pop();
        assert_eq!(q.drained(), Some(EndReason::Silence));
    }

    #[tokio::test]
    async fn lossless_queue_waits_for_room() {
        let q = Arc::new(SessionQueue::new(2, true, 0));
        let producer = {
            let q = q.clone();
            std::thread::spawn(move || (0..10).all(|s| q.push(frame(s))))
        };
        let mut got = Vec::new();
        while got.len() < 10 {
            if let Next::Frame(f) = next(&q).await {
                got.push(f.seq);
            }
        }
        assert!(producer.join().unwrap());
        assert_eq!(got, (0..10).collect::<Vec<_>>());
        assert_eq!(q.dropped(), 0);
    }

    #[tokio::test]
    async fn finishing_releases_a_waiting_producer() {
        let q = Arc::new(SessionQueue::new(1, true, 0));
        assert!(q.push(frame(0)));
        let producer = {
            let q = q.clone();
            std::thread::spawn(move || q.push(frame(1)))
        };
        q.finish(EndReason::Shutdown);
        assert!(!producer.join().unwrap());
    }
}
