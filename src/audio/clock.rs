//! Time for the audio sources: real-time file pacing, follow-mode idle detection and device-retry backoff all
//! ask a [`Clock`] to wait, so tests drive them with a [`ManualClock`] instead of waiting out real time.
//!
//! Every wait also ends when the source's [`Stop`] fires, so a source thread never outlives its handle for
//! longer than it takes to notice.

use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::Thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// The stop signal of one source thread. The handle owner fires it once; the source thread waits on it
/// through the channel (`recv`), the file descriptor (`poll`) or its parked thread, whichever it sleeps on.
#[derive(Clone)]
pub struct Stop(Arc<StopInner>);

struct StopInner {
    stopped: AtomicBool,
    /// Never carries a message: the sender is dropped on stop, which wakes every `recv` on `rx`.
    rx: Receiver<()>,
    /// Held by the owner until stop; dropping the stream end makes `wake_fd` readable (EOF) for `poll`.
    closers: Mutex<Option<(Sender<()>, UnixStream)>>,
    wake_fd: UnixStream,
    /// The source thread, unparked on stop (the cpal capture thread parks between callbacks).
    thread: Mutex<Option<Thread>>,
}

impl Stop {
    pub fn new() -> std::io::Result<Self> {
        let (tx, rx) = crossbeam_channel::bounded(0);
        let (write_end, wake_fd) = UnixStream::pair()?;
        Ok(Stop(Arc::new(StopInner {
            stopped: AtomicBool::new(false),
            rx,
            closers: Mutex::new(Some((tx, write_end))),
            wake_fd,
            thread: Mutex::new(None),
        })))
    }

    /// Fires the signal; idempotent.
    pub fn stop(&self) {
        self.0.stopped.store(true, Ordering::Release);
        drop(self.0.closers.lock().unwrap_or_else(PoisonError::into_inner).take());
        if let Some(t) = self.0.thread.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
            t.unpark();
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.0.stopped.load(Ordering::Acquire)
    }

    /// Closed (every `recv` returns `Err`) once stopped.
    pub fn channel(&self) -> &Receiver<()> {
        &self.0.rx
    }

    /// Readable (at EOF) once stopped; for `poll(2)` next to another descriptor.
    pub fn fd(&self) -> &UnixStream {
        &self.0.wake_fd
    }

    /// Waits until `fd` is readable, the signal fires, or `timeout` passes, whichever is first: (`fd` may be
    /// read, stopped). A readiness the kernel reports in a way nix does not know counts as readable: the read
    /// then says what it is. Interrupted by a signal handler: `EINTR`, to wait again.
    pub fn wait_readable(&self, fd: BorrowedFd<'_>, timeout: PollTimeout) -> nix::Result<(bool, bool)> {
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN), PollFd::new(self.0.wake_fd.as_fd(), PollFlags::POLLIN)];
        poll(&mut fds, timeout)?;
        Ok((fds[0].any().unwrap_or(true), fds[1].any().unwrap_or(false) || self.is_stopped()))
    }

    /// Waits until the signal fires or `timeout` passes: whether it fired. Interrupted by a signal handler:
    /// `EINTR`, to wait again.
    pub fn wait(&self, timeout: PollTimeout) -> nix::Result<bool> {
        let mut fds = [PollFd::new(self.0.wake_fd.as_fd(), PollFlags::POLLIN)];
        poll(&mut fds, timeout)?;
        Ok(fds[0].any().unwrap_or(false) || self.is_stopped())
    }

    /// Registers the calling thread to be unparked on stop.
    pub fn register_current_thread(&self) {
        *self.0.thread.lock().unwrap_or_else(PoisonError::into_inner) = Some(std::thread::current());
        if self.is_stopped() {
            std::thread::current().unpark();
        }
    }
}

/// A monotonic clock the sources wait on.
pub trait Clock: Send + Sync + 'static {
    /// Time since the clock's origin.
    fn now(&self) -> Duration;
    /// Blocks until `now() >= deadline` or `stop` fires. Returns `false` when stopped.
    fn sleep_until(&self, deadline: Duration, stop: &Stop) -> bool;
}

/// The wall clock (monotonic).
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    pub fn shared() -> Arc<dyn Clock> {
        Arc::new(SystemClock { origin: Instant::now() })
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn sleep_until(&self, deadline: Duration, stop: &Stop) -> bool {
        // `poll` on the stop descriptor (`Stop::wait`): the thread sleeps in the kernel until the deadline,
        // without the spinning a channel's timed receive does first (a relaxed source waits like this twice a
        // second).
        loop {
            if stop.is_stopped() {
                return false;
            }
            let now = self.now();
            if now >= deadline {
                return true;
            }
            // Rounded up to whole milliseconds, so the deadline is never missed by a wake-up a little early.
            let ms = (deadline - now).as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
            match stop.wait(PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)) {
                Ok(false) | Err(nix::errno::Errno::EINTR) => continue,
                Ok(true) => return false,
                // Cannot happen with one valid descriptor; should it, wait on the stop channel instead.
                Err(_) => {
                    let _ = stop.channel().recv_timeout(deadline - now);
                }
            }
        }
    }
}

/// A clock that only moves when told to ([`ManualClock::advance`]); for tests of pacing and backoff.
/// Every wait is reported on the channel given to [`ManualClock::new`], so a test knows when the source is
/// blocked and on what deadline.
pub struct ManualClock {
    now: Mutex<Duration>,
    sleepers: Mutex<Vec<Sender<()>>>,
    waits: Sender<Duration>,
}

impl ManualClock {
    /// Returns the clock and the receiver of every deadline a source starts waiting for.
    pub fn new() -> (Arc<ManualClock>, Receiver<Duration>) {
        let (waits, rx) = crossbeam_channel::unbounded();
        let clock = ManualClock { now: Mutex::new(Duration::ZERO), sleepers: Mutex::new(Vec::new()), waits };
        (Arc::new(clock), rx)
    }

    /// Moves the clock forward and wakes every waiter, which re-checks its deadline.
    pub fn advance(&self, by: Duration) {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner) += by;
        for s in self.sleepers.lock().unwrap_or_else(PoisonError::into_inner).drain(..) {
            let _ = s.try_send(());
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn sleep_until(&self, deadline: Duration, stop: &Stop) -> bool {
        let _ = self.waits.send(deadline);
        loop {
            if stop.is_stopped() {
                return false;
            }
            let (tx, rx) = crossbeam_channel::bounded(1);
            self.sleepers.lock().unwrap_or_else(PoisonError::into_inner).push(tx);
            // Checked after registering, so an advance between the check and the wait is not missed.
            if self.now() >= deadline {
                return true;
            }
            crossbeam_channel::select! {
                recv(rx) -> _ => {},
                recv(stop.channel()) -> _ => return false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_reports_waits_and_wakes_on_advance() {
        let (clock, waits) = ManualClock::new();
        let stop = Stop::new().unwrap();
        let (c, s) = (clock.clone(), stop.clone());
        let t = std::thread::spawn(move || (c.sleep_until(Duration::from_millis(30), &s), c.now()));
        assert_eq!(waits.recv().unwrap(), Duration::from_millis(30));
        clock.advance(Duration::from_millis(20));
        clock.advance(Duration::from_millis(10));
        assert_eq!(t.join().unwrap(), (true, Duration::from_millis(30)));
    }

    #[test]
    fn stop_interrupts_system_clock_wait() {
        let clock = SystemClock::shared();
        let stop = Stop::new().unwrap();
        let s = stop.clone();
        let t = std::thread::spawn(move || clock.sleep_until(Duration::from_secs(3600), &s));
        stop.stop();
        assert!(!t.join().unwrap());
    }
}
