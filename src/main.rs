//! The `voxgate` binary: parses the command line, loads the configuration, sets up logging and signals, and
//! calls into the library.

use std::process::ExitCode;

use clap::Parser;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use tokio_util::sync::CancellationToken;
use voxgate::cli::{ClientArgs, Cli, Command};
use voxgate::control::client::{Client, ClientError};
use voxgate::control::proto::Request;
use voxgate::{config, exit};

/// rustpotter allocates and frees many small vectors per 10 ms of audio; mimalloc halves what that costs.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    voxgate::small_pages();
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run(config.as_deref()),
        Command::CheckConfig { config } => match config::load(config.as_deref()) {
            Ok(loaded) => {
                let from = loaded.file.map(|f| f.display().to_string()).unwrap_or_else(|| "built-in defaults".into());
                print!("# effective configuration (from {from} and VOXGATE_* variables)\n{}", config::to_toml(&loaded.config));
                ExitCode::SUCCESS
            }
            Err(e) => fail(exit::CONFIG, e),
        },
        Command::Devices => devices(),
        Command::WakeTest { file, config, json } => wake_test(&file, config.as_deref(), json),
        Command::Enroll { name, out, samples } => enroll(&name, &out, &samples),
        Command::Record { out, config, seconds } => record(&out, config.as_deref(), seconds),
        Command::Serve { listen, record_dir } => serve(&listen, record_dir),
        Command::Status(a) => control(&a, Request::Status),
        Command::Trigger(a) => control(&a, Request::Trigger),
        Command::Stop(a) => control(&a, Request::Stop),
        Command::Mute(a) => control(&a, Request::Mute),
        Command::Unmute(a) => control(&a, Request::Unmute),
        Command::Reload(a) => control(&a, Request::Reload),
        Command::Events(a) => control(&a, Request::Subscribe),
        Command::Assets { dir } => match voxgate::cli::write_assets(&dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(exit::FAILURE, format!("cannot write to {}: {e}", dir.display())),
        },
        Command::Demo { file } => match voxgate::demo::run(file.as_deref(), &mut std::io::stdout().lock()) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => fail(exit::FAILURE, format!("{e:#}")),
        },
    }
}

fn fail(code: u8, e: impl std::fmt::Display) -> ExitCode {
    eprintln!("voxgate: {e}");
    ExitCode::from(code)
}

fn run(path: Option<&std::path::Path>) -> ExitCode {
    let loaded = match config::load(path) {
        Ok(l) => l,
        Err(e) => return fail(exit::CONFIG, e),
    };
    let log = voxgate::logging::init(&loaded.config.log);
    let shutdown = CancellationToken::new();
    let explicit = path.map(std::path::Path::to_path_buf);
    // A reload reads what a restart would: the same file (or the default one), the environment on top.
    let loader: voxgate::daemon::Loader = std::sync::Arc::new(move || config::load(explicit.as_deref()).map(|l| l.config).map_err(|e| e.to_string()));
    let daemon = voxgate::daemon::Daemon::new(loaded.config, shutdown.clone()).loader(loaded.file, loader).log(log);
    let runtime = match runtime(shutdown, Some(daemon.calls())) {
        Ok(r) => r,
        Err(code) => return code,
    };
    match runtime.block_on(daemon.run()) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            fail(exit::FAILURE, e)
        }
    }
}

/// The async runtime of the long-running commands, and the token the first SIGTERM/SIGINT cancels.
fn runtime_with_signals() -> Result<(tokio::runtime::Runtime, CancellationToken), ExitCode> {
    let shutdown = CancellationToken::new();
    Ok((runtime(shutdown.clone(), None)?, shutdown))
}

/// The async runtime, with signals watched: the first SIGTERM/SIGINT cancels `shutdown`, SIGHUP asks `reload`
/// (when given) to reload.
fn runtime(shutdown: CancellationToken, reload: Option<tokio::sync::mpsc::Sender<voxgate::control::server::Call>>) -> Result<tokio::runtime::Runtime, ExitCode> {
    watch_signals(shutdown, reload).map_err(|e| fail(exit::FAILURE, format!("cannot install signal handlers: {e}")))?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| fail(exit::FAILURE, format!("cannot start the async runtime: {e}")))
}

/// The first SIGTERM/SIGINT asks for a clean shutdown; a second one exits at once. SIGHUP sends a reload.
fn watch_signals(shutdown: CancellationToken, reload: Option<tokio::sync::mpsc::Sender<voxgate::control::server::Call>>) -> std::io::Result<()> {
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

/// The control client: one request, its reply printed; `events` prints events until the daemon goes away.
fn control(args: &ClientArgs, request: Request) -> ExitCode {
    let socket = match &args.socket {
        Some(s) => s.clone(),
        None => match config::load(args.config.as_deref()) {
            Ok(l) => l.config.control.socket,
            Err(e) => return fail(exit::CONFIG, e),
        },
    };
    if socket.as_os_str().is_empty() {
        return fail(exit::UNREACHABLE, "control.socket is empty: this configuration has no control socket");
    }
    let result = Client::connect(&socket).and_then(|mut client| {
        let reply = client.call(request)?;
        // For scripts, the reply as the daemon sent it; `events` prints only the events that follow a success.
        if args.json && (!reply.ok || request != Request::Subscribe) {
            println!("{}", serde_json::to_string(&reply).unwrap_or_default());
        }
        let reply = match reply.into_result() {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        if request != Request::Subscribe {
            if !args.json {
                print!("{}", voxgate::control::client::describe(request, &reply));
            }
            return Ok(Ok(()));
        }
        let mut out = std::io::stdout().lock();
        while let Some(event) = client.line()? {
            let line = match args.json {
                true => event.to_string(),
                false => voxgate::control::client::describe_event(&event),
            };
            if std::io::Write::write_all(&mut out, format!("{line}\n").as_bytes()).and_then(|_| std::io::Write::flush(&mut out)).is_err() {
                break;
            }
        }
        Ok(Ok(()))
    });
    match result {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => fail(exit::FAILURE, format!("the daemon at {} says: {e}", socket.display())),
        Err(e @ ClientError::Unreachable { .. }) => fail(exit::UNREACHABLE, e),
        Err(e) => fail(exit::FAILURE, e),
    }
}

fn record(out: &std::path::Path, path: Option<&std::path::Path>, seconds: Option<f64>) -> ExitCode {
    let loaded = match config::load(path) {
        Ok(l) => l,
        Err(e) => return fail(exit::CONFIG, e),
    };
    let _log = voxgate::logging::init(&voxgate::config::LogConfig { level: "warn".into(), ..loaded.config.log.clone() });
    let max_ms = seconds.map(|s| (s.max(0.0) * 1000.0) as u64);
    match voxgate::record::record(&loaded.config.audio, out, max_ms) {
        Ok(r) => {
            eprintln!(
                "recorded {} frames ({} ms) to {}; {} frames dropped, {} device samples lost",
                r.frames,
                r.frames * loaded.config.audio.frame_ms as u64,
                out.display(),
                r.overruns,
                r.ring_overflow_samples
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(exit::FAILURE, format!("{e:#}")),
    }
}

fn wake_test(file: &std::path::Path, path: Option<&std::path::Path>, json: bool) -> ExitCode {
    let loaded = match config::load(path) {
        Ok(l) => l,
        Err(e) => return fail(exit::CONFIG, e),
    };
    let _log = voxgate::logging::init(&voxgate::config::LogConfig { level: "warn".into(), ..loaded.config.log.clone() });
    let mut out = std::io::stdout().lock();
    match voxgate::wake::test::scan(&loaded.config, file, &mut |d| voxgate::wake::test::print(&mut out, d, json)) {
        Ok(stats) => {
            if !json {
                eprintln!(
                    "{} detections in {:.1} s of audio",
                    stats.detections,
                    (stats.frames * loaded.config.audio.frame_ms as u64) as f64 / 1000.0
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(exit::FAILURE, format!("{e:#}")),
    }
}

fn enroll(name: &str, out: &std::path::Path, samples: &[std::path::PathBuf]) -> ExitCode {
    let _log = voxgate::logging::init(&voxgate::config::LogConfig { level: "warn".into(), format: voxgate::config::LogFormat::Text });
    match voxgate::wake::enroll::enroll(name, samples, out) {
        Ok(reports) => {
            for r in &reports {
                let score = r.score.map(|s| format!("scores {s:.2} against the others")).unwrap_or_default();
                println!(
                    "{}: {} ms, {} ms after trimming, peak {:.0} dBFS {score}",
                    r.path.display(),
                    r.duration_ms,
                    r.trimmed_ms,
                    r.peak_dbfs
                );
            }
            if let Some(low) = reports.iter().filter(|r| r.score.is_some_and(|s| s < 0.5)).map(|r| r.path.display().to_string()).reduce(|a, b| a + ", " + &b) {
                println!("low scores ({low}): these samples are unlike the others; consider recording them again");
            }
            if reports.len() < 3 {
                println!("tip: 3 to 8 samples, in different tones and distances, make a more reliable wake word");
            }
            println!("wrote wake word {name:?} to {}", out.display());
            ExitCode::SUCCESS
        }
        Err(e) => fail(exit::FAILURE, e),
    }
}

fn serve(listen: &str, record_dir: Option<std::path::PathBuf>) -> ExitCode {
    let _log = voxgate::logging::init(&voxgate::config::LogConfig::default());
    if let Some(d) = &record_dir {
        if let Err(e) = std::fs::create_dir_all(d) {
            return fail(exit::FAILURE, format!("cannot create {}: {e}", d.display()));
        }
    }
    let (runtime, shutdown) = match runtime_with_signals() {
        Ok(r) => r,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => return fail(exit::FAILURE, format!("cannot listen on {listen}: {e}")),
        };
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| listen.to_string());
        // The ready line: tests and scripts wait for it.
        println!("listening on ws://{addr}/");
        voxgate::serve::serve(listener, record_dir, shutdown, None).await;
        ExitCode::SUCCESS
    })
}

fn devices() -> ExitCode {
    let list = match voxgate::audio::device::list() {
        Ok(l) => l,
        Err(e) => return fail(exit::FAILURE, e),
    };
    if list.is_empty() {
        println!("no capture devices found");
    }
    for d in list {
        let mark = if d.is_default { "  (default)" } else { "" };
        println!("{}{mark}  {}", d.id, d.description);
        if let Some(e) = &d.error {
            println!("    formats unavailable: {e}");
        }
        for c in d.summary() {
            let (lo, hi) = d.channels(c.format);
            let ch = if lo == hi { lo.to_string() } else { format!("{lo}-{hi}") };
            println!("    {:<4} {ch} ch  {}-{} Hz", c.format.to_string(), c.min_rate, c.max_rate);
        }
    }
    ExitCode::SUCCESS
}
