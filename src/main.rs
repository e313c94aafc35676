//! The `voxgate` binary: parses the command line, loads the configuration, sets up logging and signals, and
//! calls into the library.

use std::process::ExitCode;

use clap::Parser;
use signal_hook::consts::{SIGINT, SIGTERM};
use tokio_util::sync::CancellationToken;
use voxgate::cli::{Cli, Command};
use voxgate::{config, exit};

/// rustpotter allocates and frees many small vectors per 10 ms of audio; mimalloc halves what that costs.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
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
    let _log = voxgate::logging::init(&loaded.config.log);
    let (runtime, shutdown) = match runtime_with_signals() {
        Ok(r) => r,
        Err(code) => return code,
    };
    match runtime.block_on(voxgate::daemon::run(loaded.config, shutdown)) {
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
    watch_signals(shutdown.clone()).map_err(|e| fail(exit::FAILURE, format!("cannot install signal handlers: {e}")))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| fail(exit::FAILURE, format!("cannot start the async runtime: {e}")))?;
    Ok((runtime, shutdown))
}

/// The first SIGTERM/SIGINT asks for a clean shutdown; a second one exits at once.
fn watch_signals(shutdown: CancellationToken) -> std::io::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    std::thread::Builder::new().name("voxgate-signals".into()).spawn(move || {
        for signal in signals.forever() {
            if shutdown.is_cancelled() {
                eprintln!("voxgate: second signal {signal}: exiting at once");
                std::process::exit(128 + signal);
            }
            shutdown.cancel();
        }
    })?;
    Ok(())
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
