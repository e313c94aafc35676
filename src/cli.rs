//! The command line, shared by the binary and by the man page and completion generators.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "voxgate", version, about = "Wake-word gated voice streaming daemon", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground (what systemd starts).
    Run {
        /// Configuration file [default: /etc/voxgate/voxgate.toml if it exists, else built-in defaults].
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Validate the configuration and print the effective configuration as TOML.
    CheckConfig {
        /// Configuration file [default: /etc/voxgate/voxgate.toml if it exists, else built-in defaults].
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// List capture devices with the formats and rates each supports.
    Devices,
    /// Record the configured source (as voxgate hears it: mono, 16-bit) to a WAV file.
    Record {
        /// The WAV file to write.
        #[arg(value_name = "OUT.wav")]
        out: PathBuf,
        /// Configuration file [default: /etc/voxgate/voxgate.toml if it exists, else built-in defaults].
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Stop after this many seconds [default: when the source ends, or on Ctrl-C].
        #[arg(long, value_name = "SECONDS")]
        seconds: Option<f64>,
    },
    /// Run the audio front end on a recording and print what it hears.
    Demo {
        /// A WAV file to use instead of the bundled recording.
        #[arg(long, value_name = "FILE.wav")]
        file: Option<PathBuf>,
    },
}
