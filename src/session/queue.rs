//! The bounded queue between the audio side (the detector thread, which pushes) and a session's writer task
//! (which pops), one per session.
//!
//! Live sources never wait: when the queue is full, the oldest frame is dropped and counted, so a slow server
//! gets the newest audio once it reads again. A file played `fast` waits instead (lossless): the detector
//! thread blocks until the writer has taken a frame. The queue also carries how the session ends: the first
//! `finish` wins, and the writer sees it after the frames queued before it.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use super::EndReason;
use crate::audio::Frame;

pub struct SessionQueue {
    state: Mutex<State>,
    /// Wakes the writer task: a frame was queued, or the session was finished.
    ready: Notify,
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

/// What the writer gets next.
#[derive(Debug)]
pub enum Next {
    Frame(Frame),
    /// No more frames will come; this is why.
    End(EndReason),
}

impl SessionQueue {
    /// A queue for a session whose first frame has sequence number `first_seq`.
    pub fn new(capacity: usize, lossless: bool, first_seq: u64) -> Self {
        SessionQueue {
            state: Mutex::new(State { frames: VecDeque::with_capacity(capacity.max(1)), next_seq: first_seq, ..State::default() }),
            ready: Notify::new(),
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
        self.ready.notify_one();
        true
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

    /// The next frame, or the end once the frames queued before it are gone.
    pub async fn next(&self) -> Next {
        loop {
            let notified = self.ready.notified();
            {
                let mut s = self.lock();
                if let Some(f) = s.frames.pop_front() {
                    drop(s);
                    self.space.notify_one();
                    return Next::Frame(f);
                }
                if let Some(r) = s.end {
                    return Next::End(r);
                }
            }
            notified.await;
        }
    }

    /// Frames of this session the server will not get: dropped because the queue was full, or never queued
    /// because the source dropped them. Equals the gaps in the `seq` the server sees.
    pub fn dropped(&self) -> u64 {
        let s = self.lock();
        s.dropped + s.missed
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
            match q.next().await {
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

    #[tokio::test]
    async fn lossless_queue_waits_for_room() {
        let q = Arc::new(SessionQueue::new(2, true, 0));
        let producer = {
            let q = q.clone();
            std::thread::spawn(move || (0..10).all(|s| q.push(frame(s))))
        };
        let mut got = Vec::new();
        while got.len() < 10 {
            if let Next::Frame(f) = q.next().await {
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
