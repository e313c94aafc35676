//! The direct-send outlet: a session's sending half, shared under a lock by the detector thread (through the
//! queue's [`Outlet`]) and the session's writer task. A frame leaves from the thread that queues it when the
//! connection can take it without waiting, so no task has to be woken for it (a parked task's wake-up was
//! most of a frame's latency). The lock is held only for sends that do not wait; whichever side holds it sends
//! the oldest queued frame first, so `seq` order holds.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::task::{Context, Poll, Waker};

use futures_util::Sink;
use futures_util::stream::SplitSink;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::SessionQueue;
use super::connect::Socket;
use super::protocol::Codec;
use super::queue::Outlet;

/// The sending half of a session's connection, shared by the detector thread (through the queue's
/// [`Outlet`]) and the writer task. Whoever holds the lock sends the queued frames in order, so `seq` order
/// holds whichever side sends.
pub(super) struct Direct {
    pub wire: Mutex<Option<Wire>>,
    /// Wakes the writer task; registered with the connection whenever it cannot take more.
    pub waker: Waker,
}

pub(super) struct Wire {
    pub sink: SplitSink<Socket, Message>,
    pub codec: Codec,
    /// The first frame's source `seq`: the wire numbers frames from 0.
    pub base: u64,
    pub sent: Arc<AtomicU64>,
    /// A send failed on the detector thread: the writer task ends the session with it.
    pub failed: Option<WsError>,
}

impl Direct {
    pub fn lock(&self) -> MutexGuard<'_, Option<Wire>> {
        self.wire.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Outlet for Direct {
    fn offer(&self, queue: &SessionQueue) -> bool {
        let mut guard = match self.wire.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => return false,
        };
        if let Some(wire) = guard.as_mut().filter(|w| w.failed.is_none()) {
            wire.pump(queue, &mut Context::from_waker(&self.waker));
            if wire.failed.is_some() {
                self.waker.wake_by_ref();
            }
        }
        true
    }
}

impl Wire {
    /// Sends queued frames while the connection takes them without waiting, then flushes. When it cannot go
    /// on, the context's waker (the writer task's) is registered to be woken when it can. A failure is kept in
    /// `failed`.
    pub fn pump(&mut self, queue: &SessionQueue, cx: &mut Context<'_>) {
        if self.failed.is_some() {
            return;
        }
        if let Err(e) = self.try_pump(queue, cx) {
            self.failed = Some(e);
        }
    }

    fn try_pump(&mut self, queue: &SessionQueue, cx: &mut Context<'_>) -> Result<(), WsError> {
        let mut sink = Pin::new(&mut self.sink);
        loop {
            match sink.as_mut().poll_ready(cx) {
                Poll::Pending => return Ok(()),
                Poll::Ready(r) => r?,
            }
            let Some(f) = queue.pop() else { break };
            sink.as_mut().start_send(self.codec.audio(f.seq.saturating_sub(self.base), &f.pcm))?;
            self.sent.fetch_add(1, Ordering::Relaxed);
        }
        match sink.poll_flush(cx) {
            Poll::Ready(Err(e)) => Err(e),
            _ => Ok(()),
        }
    }
}

