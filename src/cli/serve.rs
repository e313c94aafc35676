//! `voxgate serve` (the reference voxgate/1 server) and `voxgate demo` (the whole pipeline against it).

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::CliError;
use crate::config::LogConfig;

pub fn serve(listen: &str, record_dir: Option<PathBuf>, reply: Option<&Path>) -> Result<(), CliError> {
    let _log = crate::logging::init(&LogConfig::default());
    if let Some(d) = &record_dir {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let answer = match reply {
        Some(path) => {
            let value = path.to_str().with_context(|| format!("{} is not a UTF-8 path", path.display()))?;
            crate::playback::load_sound("--reply-wav", value, crate::playback::chimes::error).map_err(CliError::Setting)?
        }
        None => None,
    };
    let (runtime, shutdown) = super::run::runtime_with_signals()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| listen.to_string());
        // The ready line: tests and scripts wait for it.
        println!("listening on ws://{addr}/");
        crate::serve::serve(listener, record_dir, shutdown, None, answer).await;
        Ok(())
    })
}

pub fn demo(file: Option<&Path>) -> Result<(), CliError> {
    crate::demo::run(file, &mut std::io::stdout().lock()).context("the demo failed")?;
    Ok(())
}
