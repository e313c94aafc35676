//! The command line's shape (clap), shared by the binary and by the man page and completion generators.

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
    /// Run the configured wake-word detector over a WAV file; one line per detection.
    WakeTest {
        /// The recording to scan.
        #[arg(value_name = "FILE.wav")]
        file: PathBuf,
        /// Configuration file (the [wake] section is used) [default: /etc/voxgate/voxgate.toml if it exists].
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
        /// One JSON object per line: {"t_ms":…,"wakeword":"…","score":…}.
        #[arg(long)]
        json: bool,
    },
    /// Build a wake word (.rpw) from your own recordings of it.
    Enroll {
        /// The wake word's name, reported in detections.
        #[arg(long, value_name = "NAME")]
        name: String,
        /// Where to write the wake word.
        #[arg(long, value_name = "F.rpw")]
        out: PathBuf,
        /// Recordings of the phrase, one utterance each (3 or more recommended).
        #[arg(value_name = "SAMPLE.wav", required = true)]
        samples: Vec<PathBuf>,
    },
    /// A reference voxgate/1 server: records each session, replies like a speech server.
    Serve {
        /// Address to listen on.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8765")]
        listen: String,
        /// Write <session>.wav and <session>.json here.
        #[arg(long, value_name = "DIR")]
        record_dir: Option<PathBuf>,
        /// Answer each session with this sound (WAV, FLAC or MP3) in a `say` message before the `final`.
        #[arg(long, value_name = "FILE")]
        reply_wav: Option<PathBuf>,
    },
    /// Show the running daemon's state and counters.
    Status(ClientArgs),
    /// Open a session now, as the wake word would.
    Trigger(ClientArgs),
    /// End the current session.
    Stop(ClientArgs),
    /// Ignore the microphone (end any session, detect nothing) until unmuted.
    Mute(ClientArgs),
    /// Listen again after a mute.
    Unmute(ClientArgs),
    /// Re-read the configuration file (as SIGHUP does); on error the daemon keeps its configuration.
    Reload(ClientArgs),
    /// Print the daemon's events as they happen (wake words, sessions, server replies) until interrupted.
    Events(ClientArgs),
    /// Play a sound file (WAV, FLAC, MP3) or an http(s) URL through the daemon's playback device.
    Say {
        /// A file the daemon can read (an absolute path), or an http:// or https:// URL.
        #[arg(value_name = "FILE|URL")]
        what: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Write the man page and shell completions into a directory (for packaging).
    #[command(hide = true)]
    Assets {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// The whole loop on a bundled recording against an in-process server that answers out loud, printing the
    /// timeline.
    Demo {
        /// A WAV file to use instead of the bundled recording.
        #[arg(long, value_name = "FILE.wav")]
        file: Option<PathBuf>,
        /// Where the chimes and answers play: an output device from `voxgate devices`, a FILE.wav (through ALSA's
        /// file plugin), or "none" [default: "default" with a sound card, else played.wav in the demo's directory].
        #[arg(long, value_name = "DEVICE|FILE.wav|none")]
        speaker: Option<String>,
        /// Nothing played, the recording processed as fast as it goes.
        #[arg(long)]
        fast: bool,
    },
}

/// Options of the control client commands.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// The daemon's control socket [default: control.socket of the configuration].
    #[arg(long, short, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Configuration file to take control.socket from [default: /etc/voxgate/voxgate.toml if it exists].
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the daemon's replies (and events) as JSON lines, for scripts.
    #[arg(long)]
    pub json: bool,
}
