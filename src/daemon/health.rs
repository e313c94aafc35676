//! What the service manager is told, and when: READY=1 once audio flows (the control socket is bound before
//! the source starts), STATUS= on every state change, WATCHDOG=1 only while frames keep arriving (or while the
//! source knows it is waiting for its device and retries on its own), RELOADING=1 and STOPPING=1 around a
//! reload and the shutdown. The daemon task owns the one [`Health`]; [`Notifier`] only sends.

use std::time::{Duration, Instant};

use super::notify::Notifier;

/// How long a source may go without handing over a frame and still be alive: two relaxed batches.
const STILL_ALIVE: Duration = Duration::from_millis(2 * crate::audio::pace::RELAXED_BATCH.as_millis() as u64);

pub struct Health {
    notifier: Notifier,
    ready: bool,
    stopping: bool,
    /// Frames counted at the last watchdog tick.
    watched_frames: u64,
    /// When a tick last found more frames than the one before.
    moved_at: Instant,
    /// Since when no frame has arrived, once a tick found none.
    stalled_since: Option<Instant>,
}

/// What the source looks like at a watchdog tick.
pub struct Pulse<'a> {
    pub frames: u64,
    /// The source is missing its device and retrying on its own: no frames, but not stuck.
    pub waiting: bool,
    pub source: &'a str,
    pub status: String,
}

impl Health {
    pub fn new(notifier: Notifier) -> Health {
        Health { notifier, ready: false, stopping: false, watched_frames: 0, moved_at: Instant::now(), stalled_since: None }
    }

    /// How often [`Health::tick`] wants to run: half the watchdog timeout, if systemd set one.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.notifier.watchdog_interval()
    }

    pub fn is_ready(&self) -> bool {
        self.ready
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping
    }

    /// The first frame arrived.
    pub fn ready(&mut self, status: &str) {
        self.ready = true;
        tracing::debug!("audio flows: ready");
        self.notifier.ready(status);
    }

    /// A state change, while running.
    pub fn status(&self, status: &str) {
        if self.ready && !self.stopping {
            self.notifier.status(status);
        }
    }

    pub fn reloading(&self) {
        self.notifier.reloading();
    }

    /// A reload is over, applied or not.
    pub fn reloaded(&self, status: &str) {
        self.notifier.ready(status);
    }

    /// The shutdown began; said once.
    pub fn stopping(&mut self) {
        if !self.stopping {
            self.stopping = true;
            tracing::info!("shutting down");
            self.notifier.stopping();
        }
    }

    /// A watchdog tick: ping systemd if the source is alive, else say in STATUS since when it is silent. A
    /// capture that silently stopped gets no ping, and systemd restarts the service.
    pub fn tick(&mut self, pulse: Pulse<'_>) {
        let now = Instant::now();
        if pulse.frames != self.watched_frames {
            self.moved_at = now;
        }
        // A relaxed source hands its frames over in batches (audio::pace): a tick between two is not a stall.
        if pulse.waiting || now.duration_since(self.moved_at) <= STILL_ALIVE {
            if self.stalled_since.take().is_some() {
                tracing::info!("audio frames arrive again from {}", pulse.source);
                self.notifier.status(&pulse.status);
            }
            self.notifier.watchdog();
        } else {
            let since = *self.stalled_since.get_or_insert_with(|| {
                tracing::warn!("no audio frame from {} since the last check: the watchdog is no longer told all is well", pulse.source);
                Instant::now()
            });
            self.notifier.status(&format!("{}; no audio from {} for {} s", pulse.status, pulse.source, since.elapsed().as_secs()));
        }
        self.watched_frames = pulse.frames;
    }
}
