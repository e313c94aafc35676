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
use crate::daemon::{Daemon, DaemonError, Loader};

pub fn run(path: Option<&Path>) -> Result<(), CliError> {
    let loaded = super::load(path)?;
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
        match e {
            // Found before anything started; a restart would fail the same way.
            DaemonError::Unusable(e) => CliError::Setting(e.to_string()),
            e => CliError::Failure(e.into()),
        }
    })
}

/// The async runtime of the long-running commands, and the token the first SIGTERM/SIGINT cancels.
pub(super) fn runtime_with_signals() -> Result<(tokio::runtime::Runtime, CancellationToken), CliError> {
    let shutdown = CancellationToken::new();
    Ok((runtime(shutdown.clone(), None)?, shutdown))
}

/// The async runtime, with signals watched: the first SIGTERM/SIGINT cancels `shutdown`, SIGHUP asks `reload`
/// (when given) to reload.
fn runtime(shutdown: CancellationToken, reload: Option<mpsc::Sender<Call>>) -> Result<tokio::runtime::Runtime, CliError> {
    watch_signals(move || shutdown.cancel(), reload).context("cannot install signal handlers")?;
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("cannot start the async runtime")?)
}

/// The first SIGTERM/SIGINT calls `stop`, for a clean end; a second one exits at once, with 128 + its number.
/// SIGHUP sends a reload to `reload`, when given. For every command that runs until it is stopped.
pub(super) fn watch_signals(stop: impl Fn() + Send + 'static, reload: Option<mpsc::Sender<Call>>) -> std::io::Result<()> {
    let mut wanted = vec![SIGTERM, SIGINT];
    if reload.is_some() {
        wanted.push(SIGHUP);
    }
    let mut signals = signal_hook::iterator::Signals::new(wanted)?;
    std::thread::Builder::new().name("voxgate-signals".into()).spawn(move || {
        let mut stopping = false;
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
            if stopping {
                eprintln!("voxgate: second signal {signal}: exiting at once");
                std::process::exit(128 + signal);
            }
            stopping = true;
            stop();
        }
    })?;
    Ok(())
}
