//! Logging through `tracing`: journald (structured fields prefixed `VOXGATE_`), text on stderr, or JSON lines
//! on stderr, chosen by `log.format`. `auto` picks journald when stderr is connected to the journal (systemd
//! sets `JOURNAL_STREAM` to that stream's device and inode) and text otherwise. If journald cannot be reached,
//! logs go to stderr as text with one warning. The level filter can be changed later (on reload).

use std::os::unix::fs::MetadataExt;

use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

use crate::config::{LogConfig, LogFormat};

type Output = Box<dyn Layer<Registry> + Send + Sync>;

/// Changes the level filter of the installed logger.
pub struct LogHandle {
    filter: reload::Handle<EnvFilter, Layered<Output, Registry>>,
    /// What the logs go to: "journald", "text", "json".
    pub output: &'static str,
}

impl LogHandle {
    /// Parses a level filter without applying it (a reload prepares before it switches).
    pub fn parse_level(&self, level: &str) -> Result<EnvFilter, String> {
        EnvFilter::builder().parse(level).map_err(|e| format!("{level:?}: {e}"))
    }

    /// Applies a filter from [`LogHandle::parse_level`].
    pub fn set_filter(&self, filter: EnvFilter) {
        if let Err(e) = self.filter.reload(filter) {
            tracing::warn!("cannot change the log level: {e}");
        }
    }
}

/// Whether an event may be logged at all, whatever the level: the WebSocket library logs each handshake
/// request and response whole at trace, headers and all, so the `Authorization: Bearer` token too. No secret is
/// logged at any level.
fn never_secret(meta: &tracing::Metadata<'_>) -> bool {
    !(*meta.level() == tracing::Level::TRACE && meta.target().starts_with("tungstenite"))
}

/// Whether stderr is the journal stream systemd gave us.
pub fn stderr_is_journal() -> bool {
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.split_once(':') else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// Installs the global logger. Call once, early in `main`.
pub fn init(cfg: &LogConfig) -> LogHandle {
    let filter = EnvFilter::builder().parse(&cfg.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let want_journald = match cfg.format {
        LogFormat::Journald => true,
        LogFormat::Auto => stderr_is_journal(),
        LogFormat::Text | LogFormat::Json => false,
    };
    let mut journald_error = None;
    let (output, name): (Output, &'static str) = if want_journald {
        match tracing_journald::layer() {
            Ok(l) => (Box::new(l.with_field_prefix(Some("VOXGATE".into())).with_syslog_identifier("voxgate".into())), "journald"),
            Err(e) => {
                journald_error = Some(e);
                (text_layer(), "text")
            }
        }
    } else if cfg.format == LogFormat::Json {
        (Box::new(tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr)), "json")
    } else {
        (text_layer(), "text")
    };
    let (filter, handle) = reload::Layer::new(filter);
    let _ = tracing_subscriber::registry().with(output).with(filter).with(tracing_subscriber::filter::filter_fn(never_secret)).try_init();
    if let Some(e) = journald_error {
        tracing::warn!("journald is not reachable ({e}); logging to stderr instead");
    }
    LogHandle { filter: handle, output: name }
}

fn text_layer() -> Output {
    // Under a supervisor that timestamps lines itself, our own timestamps are noise.
    let timestamps = std::env::var_os("INVOCATION_ID").is_none();
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false).with_ansi(ansi);
    if timestamps { Box::new(layer) } else { Box::new(layer.without_time()) }
}

/// A rate limit for a log line a peer can make us write (a server's messages): `burst` lines at once, then one
/// per `every`. Each line that may be written says how many were left out before it.
#[derive(Debug)]
pub struct Budget {
    burst: u32,
    every: std::time::Duration,
    /// Lines that may still be written now, and when the next one is earned.
    left: u32,
    next: tokio::time::Instant,
    /// Left out since the last line written.
    skipped: u64,
}

impl Budget {
    pub fn new(burst: u32, every: std::time::Duration) -> Budget {
        Budget { burst, every, left: burst, next: tokio::time::Instant::now() + every, skipped: 0 }
    }

    /// Whether a line may be written now: `Some(left out before it)`, or `None` (counted).
    pub fn take(&mut self) -> Option<u64> {
        let now = tokio::time::Instant::now();
        if now >= self.next {
            let earned = ((now - self.next).as_nanos() / self.every.as_nanos().max(1)) as u32 + 1;
            self.left = self.left.saturating_add(earned).min(self.burst);
            self.next = now + self.every;
        }
        if self.left == 0 {
            self.skipped += 1;
            return None;
        }
        self.left -= 1;
        Some(std::mem::take(&mut self.skipped))
    }

    /// Lines left out since the last one written.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }
}

#[cfg(test)]
mod budget_tests {
    use super::Budget;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_one_line_per_period_each_saying_how_many_were_left_out() {
        let mut b = Budget::new(3, Duration::from_secs(1));
        let first: Vec<Option<u64>> = (0..10).map(|_| b.take()).collect();
        assert_eq!(first, [Some(0), Some(0), Some(0), None, None, None, None, None, None, None]);
        assert_eq!(b.skipped(), 7);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!((b.take(), b.take()), (Some(7), None));
        // A long quiet spell earns the burst back, no more.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!((0..5).map(|_| b.take()).collect::<Vec<_>>(), [Some(1), Some(0), Some(0), None, None]);
    }
}
