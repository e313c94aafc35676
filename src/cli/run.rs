//! `voxgate run`, and the async runtime with signal handling that the long-running commands share.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::CliError;
use crate::config;
use crate::control::proto::Request;
use crate::control::server::Call;
use crate::daemon::{Daemon, Loader};

pub fn run(path: Option<&Path>) -> Result<(), CliError> {
    let loaded = super::load(path)?;
    usable(&loaded.config)?;
    let log = crate::logging::init(&loaded.config.log);
    let shutdown = CancellationToken::new();
    let explicit = path.map(Path::to_path_buf);
    // A reload reads what a restart would: the same file (or the default one), the environment on top.
    let loader: Loader = Arc::new(move || config::load(explicit.as_deref()).map(|l| l.config).map_err(|e| e.to_string()));
    let socket = (loaded.config.control.socket.clone(), loaded.config.control.socket_mode.0);
    let daemon = Daemon::new(loaded.config, shutdown.clone()).loader(loaded.file, loader).log(log);
    let runtime = runtime(shutdown, Some(daemon.calls()))?;
    // The socket before the microphone: if another daemon owns it, leave the microphone alone.
    let control = match socket.0.as_os_str().is_empty() {
        true => None,
        false => Some(runtime.block_on(async { crate::control::server::bind(&socket.0, socket.1) }).context("cannot start")?),
    };
    runtime.block_on(daemon.run(control)).map(drop).map_err(|e| {
        tracing::error!("{e}");
        CliError::Failure(e.into())
    })
}

/// What makes a valid configuration unusable, found before anything starts: a token or CA file that cannot be
/// used, a wake-word model that does not load, a file source that is not a WAV file. A restart would fail the
/// same way, so these are configuration errors (exit 78), for `run` and `check-config` alike.
pub(super) fn usable(config: &crate::config::Config) -> Result<(), CliError> {
    let setting = |e: &dyn std::fmt::Display| CliError::Setting(e.to_string());
    crate::session::connect::Params::new(config).map_err(|e| setting(&e))?;
    crate::daemon::build_detector(config).map_err(|e| setting(&format!("wake.models: {e}")))?;
    if let crate::config::SourceSpec::File(path) = &config.audio.source {
        crate::audio::probe_wav(path).map_err(|e| setting(&format!("audio.source: {e}")))?;
    }
    Ok(())
}

/// The async runtime of the long-running commands, and the token the first SIGTERM/SIGINT cancels.
pub(super) fn runtime_with_signals() -> Result<(tokio::runtime::Runtime, CancellationToken), CliError> {
    let shutdown = CancellationToken::new();
    Ok((runtime(shutdown.clone(), None)?, shutdown))
}

/// The async runtime, with signals watched: the first SIGTERM/SIGINT cancels `shutdown`, SIGHUP asks `reload`
/// (when given) to reload.
fn runtime(shutdown: CancellationToken, reload: Option<mpsc::Sender<Call>>) -> Result<tokio::runtime::Runtime, CliError> {
    watch_signals(shutdown, reload).context("cannot install signal handlers")?;
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("cannot start the async runtime")?)
}

/// The first SIGTERM/SIGINT asks for a clean shutdown; a second one exits at once. SIGHUP sends a reload.
fn watch_signals(shutdown: CancellationToken, reload: Option<mpsc::Sender<Call>>) -> std::io::Result<()> {
    let mut wanted = vec![SIGTERM, SIGINT];
    if reload.is_some() {
        wanted.push(SIGHUP);
    }
    let mut signals = signal_hook::iterator::Signals::new(wanted)?;
    std::thread::Builder::new().name("voxgate-signals".into()).spawn(move || {
        for signal in signals.forever() {
            if signal == SIGHUP {
                if let Some(calls) = &reload {
                    // The daemon logs the outcome; nobody waits for the reply here.
                    let (tx, _) = tokio::sync::oneshot::channel();
                    if calls.try_send((Request::Reload, tx)).is_err() {
                        tracing::warn!("SIGHUP: a reload is already waiting");
                    }
                }
                continue;
            }
            if shutdown.is_cancelled() {
                eprintln!("voxgate: second signal {signal}: exiting at once");
                std::process::exit(128 + signal);
            }
            shutdown.cancel();
        }
    })?;
    Ok(())
}
