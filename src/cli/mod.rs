//! The commands of the `voxgate` binary, one module per group: `run` (the daemon), `client` (the control
//! client commands), `tools` (devices, record, wake-test, enroll, assets) and `serve` (the reference
//! server and the demo). Each returns a [`CliError`]; [`main`] maps it to the exit code, in one place:
//! 0 success, 78 configuration error, 69 daemon unreachable, 1 anything else.

mod args;
mod client;
mod run;
mod serve;
mod tools;

use std::path::Path;
use std::process::ExitCode;

pub use args::{Cli, ClientArgs, Command};

use crate::config::{self, ConfigError, Loaded, LogConfig, LogFormat};
use crate::control::proto::Request;
use crate::exit;
use crate::logging::LogHandle;

/// Why a command failed; the exit code follows from the kind.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A configuration that cannot be used: exit 78, so systemd does not restart into the same error.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A configuration value that validation let through but using it showed wrong: exit 78 as well.
    #[error("{0}")]
    Setting(String),
    /// No daemon answers at the control socket: exit 69.
    #[error("{0}")]
    Unreachable(String),
    /// Anything else: exit 1.
    #[error("{0:#}")]
    Failure(#[from] anyhow::Error),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Config(_) | CliError::Setting(_) => exit::CONFIG,
            CliError::Unreachable(_) => exit::UNREACHABLE,
            CliError::Failure(_) => exit::FAILURE,
        }
    }
}

/// Runs one command line; what the process exits with.
pub fn main(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Run { config } => run::run(config.as_deref()),
        Command::CheckConfig { config } => tools::check_config(config.as_deref()),
        Command::Devices => tools::devices(),
        Command::WakeTest { file, config, json } => tools::wake_test(&file, config.as_deref(), json),
        Command::Enroll { name, out, samples } => tools::enroll(&name, &out, &samples),
        Command::Record { out, config, seconds } => tools::record(&out, config.as_deref(), seconds),
        Command::Serve { listen, record_dir, reply_wav } => serve::serve(&listen, record_dir, reply_wav.as_deref()),
        Command::Demo { file, speaker, fast } => serve::demo(file.as_deref(), speaker.as_deref(), fast),
        Command::Assets { dir } => tools::assets(&dir),
        Command::Status(a) => client::call(&a, Request::Status),
        Command::Trigger(a) => client::call(&a, Request::Trigger),
        Command::Stop(a) => client::call(&a, Request::Stop),
        Command::Mute(a) => client::call(&a, Request::Mute),
        Command::Unmute(a) => client::call(&a, Request::Unmute),
        Command::Reload(a) => client::call(&a, Request::Reload),
        Command::Events(a) => client::call(&a, Request::Subscribe),
        Command::Say { what, client: a } => {
            // The daemon reads the file: a relative path is made absolute here, where it means something.
            let what = if what.contains("://") { what } else { std::path::absolute(&what).map(|p| p.display().to_string()).unwrap_or(what) };
            client::call(&a, Request::Say { what })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("voxgate: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// The configuration a command uses: `--config`, else the default file if it exists, else built-in defaults.
fn load(path: Option<&Path>) -> Result<Loaded, CliError> {
    Ok(config::load(path)?)
}

/// Logging for the one-shot commands: warnings and errors only, as the configuration formats them.
fn quiet_log(log: &LogConfig) -> LogHandle {
    crate::logging::init(&LogConfig { level: "warn".into(), ..log.clone() })
}

/// Logging for commands that have no configuration: warnings and errors, as text.
fn plain_log() -> LogHandle {
    crate::logging::init(&LogConfig { level: "warn".into(), format: LogFormat::Text })
}
