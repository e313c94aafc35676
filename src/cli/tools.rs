//! The one-shot commands: `check-config`, `devices`, `record`, `wake-test`, `enroll`, and the hidden `assets`
//! (man page and completions for packaging).

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::{CliError, Cli};

/// Every check `run` makes before it touches a device or the network: the file, then the session settings (the
/// token and CA files read and checked), the wake-word models loaded, a file source opened as a WAV file.
pub fn check_config(path: Option<&Path>) -> Result<(), CliError> {
    let loaded = super::load(path)?;
    crate::daemon::prepare(&loaded.config).map_err(|e| CliError::Setting(e.to_string()))?;
    let from = loaded.file.map(|f| f.display().to_string()).unwrap_or_else(|| "built-in defaults".into());
    print!("# effective configuration (from {from} and VOXGATE_* variables)\n{}", crate::config::to_toml(&loaded.config));
    Ok(())
}

pub fn devices() -> Result<(), CliError> {
    let list = crate::audio::device::list().context("cannot list devices")?;
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
    // Output devices, for `playback.device`: a failure to list them does not hide the capture devices.
    match crate::playback::output::list() {
        Ok(outputs) => {
            println!("\noutput devices (playback.device):");
            if outputs.is_empty() {
                println!("  none found");
            }
            for d in outputs {
                let mark = if d.is_default { "  (default)" } else { "" };
                println!("{}{mark}  {}", d.id, d.description);
                for f in d.formats.iter().take(6) {
                    println!("    {f}");
                }
            }
        }
        Err(e) => println!("\noutput devices: {e}"),
    }
    Ok(())
}

/// Records until `--seconds`, the end of the source, or SIGINT/SIGTERM; the WAV file is finished in every case.
pub fn record(out: &Path, path: Option<&Path>, seconds: Option<f64>) -> Result<(), CliError> {
    let loaded = super::load(path)?;
    let _log = super::quiet_log(&loaded.config.log);
    let max_ms = seconds.map(|s| (s.max(0.0) * 1000.0) as u64);
    let audio = &loaded.config.audio;
    let r = crate::record::record(audio, out, max_ms, |stop| super::run::watch_signals(move || stop.stop(), None)).with_context(|| format!("cannot record to {}", out.display()))?;
    eprintln!(
        "recorded {} frames ({} ms) to {}; {} frames lost, {} device samples lost",
        r.frames,
        r.frames * audio.frame_ms as u64,
        out.display(),
        r.overruns,
        r.ring_overflow_samples
    );
    Ok(())
}

pub fn wake_test(file: &Path, path: Option<&Path>, json: bool) -> Result<(), CliError> {
    let loaded = super::load(path)?;
    let _log = super::quiet_log(&loaded.config.log);
    let mut out = std::io::stdout().lock();
    let stats = crate::wake::test::scan(&loaded.config, file, &mut |d| crate::wake::test::print(&mut out, d, json))
        .with_context(|| format!("cannot scan {}", file.display()))?;
    if !json {
        eprintln!("{} detections in {:.1} s of audio", stats.detections, (stats.frames * loaded.config.audio.frame_ms as u64) as f64 / 1000.0);
    }
    Ok(())
}

pub fn enroll(name: &str, out: &Path, samples: &[PathBuf]) -> Result<(), CliError> {
    let _log = super::plain_log();
    let e = crate::wake::enroll::enroll(name, samples, out).context("cannot enroll")?;
    for r in &e.samples {
        let score = r.score.map(|s| format!("scores {s:.2} against the others")).unwrap_or_default();
        println!("{}: {} ms, {} ms after trimming, peak {:.0} dBFS, {score}", r.path.display(), r.duration_ms, r.trimmed_ms, r.peak_dbfs);
    }
    for w in &e.warnings {
        println!("warning: {w}");
    }
    println!(
        "expected detection rate: {:.0} % of new recordings like these (each sample against a wake word built from the others, default settings)",
        e.expected_rate * 100.0
    );
    if let Some(t) = e.stored_threshold {
        println!("the wake word keeps its own threshold {t:.2} (it overrides wake.threshold): with {:.2} it would miss some of its own samples; more samples of the same voice make it more selective", e.threshold);
    } else if let Some(t) = e.suggested_threshold {
        println!("suggestion: wake.threshold = {t:.2} would catch every sample's leave-one-out score; or record more samples");
    }
    if e.samples.len() < 6 {
        println!("tip: 6 to 10 samples, in different tones and at different distances, make a more reliable wake word");
    }
    println!("wrote wake word {name:?} to {}", out.display());
    Ok(())
}

/// Writes `voxgate.1` and completions for bash, zsh and fish into `dir` (the Debian package ships them).
pub fn assets(dir: &Path) -> Result<(), CliError> {
    write_assets(dir).with_context(|| format!("cannot write to {}", dir.display()))?;
    Ok(())
}

fn write_assets(dir: &Path) -> std::io::Result<()> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir)?;
    let cmd = Cli::command();
    let mut man = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut man)?;
    std::fs::write(dir.join("voxgate.1"), man)?;
    for (shell, name) in [(clap_complete::Shell::Bash, "voxgate.bash"), (clap_complete::Shell::Zsh, "_voxgate"), (clap_complete::Shell::Fish, "voxgate.fish")] {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), "voxgate", &mut out);
        std::fs::write(dir.join(name), out)?;
    }
    Ok(())
}
