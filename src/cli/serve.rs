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

/// Runs in a process that has no other thread yet: playing into a WAV file, the demo's ALSA device is put in
/// the environment before anything reads ALSA's configuration.
pub fn demo(file: Option<&Path>, speaker: Option<&str>, fast: bool) -> Result<(), CliError> {
    let demo = crate::demo::Demo::new(file, speaker, fast).context("cannot set the demo up")?;
    if let Some(conf) = demo.alsa_config() {
        // SAFETY: this thread is the only one: the runtime, the server and the daemon start after this.
        unsafe { std::env::set_var("ALSA_CONFIG_PATH", conf) };
    }
    demo.run(&mut std::io::stdout().lock()).context("the demo failed")?;
    Ok(())
}
