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
    /// A frame the connection gave back, its write buffer full: sent before any other.
    pub pending: Option<Message>,
    /// Where each frame's wait is counted, and when the session was asked for.
    pub metrics: Option<WireMetrics>,
}

pub(super) struct WireMetrics {
    pub metrics: Arc<crate::metrics::Metrics>,
    pub asked: std::time::Instant,
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
            let Poll::Ready(r) = sink.as_mut().poll_ready(cx) else {
                return Ok(());
            };
            if given_back(&mut self.pending, r)? {
                // The pongs a flood of pings asks for filled the write buffer: the frame it gave back waits until
                // they are written (the flush wakes this side when it can go on).
                let Poll::Ready(r) = sink.as_mut().poll_flush(cx) else {
                    return Ok(());
                };
                r?;
                continue;
            }
            let message = match self.pending.take() {
                Some(m) => m,
                None => match queue.pop() {
                    Some(f) => {
                        let before = self.sent.fetch_add(1, Ordering::Relaxed);
                        if let Some(w) = &self.metrics {
                            // Live frames only: the pre-roll was captured before anyone asked for it.
                            if f.captured >= w.asked {
                                w.metrics.frame_seconds.observe(f.captured.elapsed().as_secs_f64());
                            }
                            if before == 0 {
                                w.metrics.first_audio_seconds.observe(w.asked.elapsed().as_secs_f64());
                            }
                        }
                        self.codec.audio(f.seq.saturating_sub(self.base), &f.pcm)
                    }
                    None => {
                        let Poll::Ready(r) = sink.as_mut().poll_flush(cx) else {
                            return Ok(());
                        };
                        if given_back(&mut self.pending, r)? {
                            continue;
                        }
                        return Ok(());
                    }
                },
            };
            sink.as_mut().start_send(message)?;
        }
    }
}

/// The result of a write into the connection: `true` when it gave the message back because its write buffer
/// was full (kept in `pending`, to be sent first once there is room), an error when it failed.
fn given_back(pending: &mut Option<Message>, r: Result<(), WsError>) -> Result<bool, WsError> {
    match r {
        Ok(()) => Ok(false),
        Err(WsError::WriteBufferFull(back)) => {
            *pending = Some(*back);
            Ok(true)
        }
        Err(e) => Err(e),
    }
}

/// `sink.send(message)`, waiting while the write buffer is full: the pongs a flood of pings asks for can fill
/// it, and a message then waits for them to be written instead of failing the session.
pub async fn send_when_room<S>(sink: &mut S, mut message: Message) -> Result<(), WsError>
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    use futures_util::SinkExt;
    loop {
        match sink.send(message).await {
            Err(WsError::WriteBufferFull(back)) => {
                message = *back;
                sink.flush().await?;
            }
            r => return r,
        }
    }
}
