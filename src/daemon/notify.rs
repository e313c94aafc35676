//! The service manager's side channel (sd_notify): READY, STATUS, WATCHDOG, RELOADING, STOPPING. Without
//! `NOTIFY_SOCKET` (not under systemd) every call does nothing. When each is sent is [`super::health`]'s call.

use std::time::Duration;

use sd_notify::NotifyState;

#[derive(Debug, Clone, Copy)]
pub struct Notifier {
    enabled: bool,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        Notifier { enabled: std::env::var_os("NOTIFY_SOCKET").is_some() }
    }

    fn send(&self, states: &[NotifyState]) {
        if self.enabled {
            if let Err(e) = sd_notify::notify(states) {
                tracing::debug!("sd_notify: {e}");
            }
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    pub fn reloading(&self) {
        // systemd wants the time with RELOADING=1 (for Type=notify-reload; harmless otherwise).
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now, NotifyState::Status("reloading the configuration")]),
            Err(_) => self.send(&[NotifyState::Reloading, NotifyState::Status("reloading the configuration")]),
        }
    }

    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("shutting down")]);
    }

    /// How often to ping the watchdog: half its timeout, if the service manager set one for us.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        if !self.enabled {
            return None;
        }
        sd_notify::watchdog_enabled().map(|d| d / 2).filter(|d| !d.is_zero())
    }
}
