//! The command line: configuration checking, exit codes, help.

use std::path::PathBuf;

use crate::support::voxgate;

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("etc/voxgate.toml")
}

#[test]
fn example_config_parses_and_documents_every_key() {
    let out = voxgate().env_remove("VOXGATE_CONTROL__SOCKET").args(["check-config", "--config"]).arg(example()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let effective: toml::Table = String::from_utf8(out.stdout).unwrap().parse().unwrap();
    let example: toml::Table = std::fs::read_to_string(example()).unwrap().parse().unwrap();
    let defaults = toml::Table::try_from(voxgate::config::Config::default()).unwrap();
    let mut keys = 0;
    for (section, table) in &defaults {
        for key in table.as_table().unwrap().keys() {
            keys += 1;
            assert!(example[section].get(key).is_some(), "{section}.{key} is not in etc/voxgate.toml");
            assert_eq!(example[section][key], effective[section][key], "{section}.{key}");
        }
    }
    assert!(keys >= 25, "only {keys} keys checked");
    // The example shows the defaults: loading it changes nothing.
    assert_eq!(effective, defaults);
}

#[test]
fn bad_config_exits_78_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[audio]\nsample_rate = 1\nsorce = \"x\"\n").unwrap();
    for cmd in ["check-config", "run"] {
        let out = voxgate().args([cmd, "--config"]).arg(&path).output().unwrap();
        assert_eq!(out.status.code(), Some(78), "{cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(path.to_str().unwrap()) && err.contains("audio.sorce"), "{cmd}: {err}");
    }
    // Values are checked once the keys are known: the range error comes with the file and key too.
    std::fs::write(&path, "[audio]\nsample_rate = 1\n").unwrap();
    let out = voxgate().args(["check-config", "--config"]).arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78));
    assert!(err.contains("audio.sample_rate") && err.contains("out of range") && err.contains("bad.toml"), "{err}");
    // A value of the wrong type is refused, not coerced.
    std::fs::write(&path, "[audio]\nframe_ms = \"20\"\n[session]\nconnect_timeout_ms = 150.7\n").unwrap();
    let out = voxgate().args(["check-config", "--config"]).arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78));
    assert!(err.contains("audio.frame_ms: \"20\" is a string") && err.contains("session.connect_timeout_ms: 150.7 is a number"), "{err}");
}

/// What `run` would refuse, `check-config` refuses too, before any device or network is touched: exit 78 with
/// the key, never a run that exits 1 and is restarted into the same error.
#[test]
fn unusable_files_are_configuration_errors_for_check_config_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let not_wav = dir.path().join("notes.wav");
    std::fs::write(&not_wav, "these are words, not audio").unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "two\nlines\n").unwrap();
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "not a certificate").unwrap();
    let model = dir.path().join("model.rpw");
    std::fs::write(&model, "not a model").unwrap();
    let cases: [(&str, String, &str); 6] = [
        ("VOXGATE_WAKE__MODELS", "builtin:jarvis,builtin:nope".into(), "no built-in wake word \"nope\" (built-in: jarvis)"),
        ("VOXGATE_AUDIO__SOURCE", format!("file:{}", not_wav.display()), "audio.source"),
        ("VOXGATE_SESSION__TOKEN_FILE", token.display().to_string(), "session.token_file"),
        ("VOXGATE_SESSION__CA_FILE", not_pem.display().to_string(), "session.ca_file"),
        ("VOXGATE_WAKE__MODELS", model.display().to_string(), "wake.models"),
        ("VOXGATE_PLAYBACK__WAKE_SOUND", not_wav.display().to_string(), "playback.wake_sound"),
    ];
    for (var, value, key) in &cases {
        for cmd in ["check-config", "run"] {
            let out = voxgate().arg(cmd).env(var, value).env("VOXGATE_SESSION__URL", "wss://speech.example/").output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(78), "{cmd} with {var}: {err}");
            assert!(err.contains(key), "{cmd} with {var}: {err}");
        }
    }
    // wake-test loads the built-ins by name too, and refuses an unknown one the same way.
    let wav = crate::support::fixtures().join("two-words.wav");
    let out = voxgate().arg("wake-test").arg(&wav).env("VOXGATE_WAKE__MODELS", "builtin:nope").output().unwrap();
    assert_eq!(out.status.code(), Some(78), "{}", String::from_utf8_lossy(&out.stderr));
    let out = voxgate().args(["wake-test", "--json"]).arg(&wav).env("VOXGATE_WAKE__MODELS", "builtin:jarvis").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"wakeword\":\"jarvis\""), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn missing_explicit_config_is_a_config_error() {
    let out = voxgate().args(["check-config", "--config", "/nonexistent/voxgate.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/voxgate.toml"));
}

#[test]
fn environment_overrides_the_file() {
    let out = voxgate()
        .args(["check-config", "--config"])
        .arg(example())
        .env("VOXGATE_SESSION__URL", "wss://speech.example:443/v1")
        .env("VOXGATE_SESSION__MAX_MS", "9000")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let effective: toml::Table = String::from_utf8(out.stdout).unwrap().parse().unwrap();
    assert_eq!(effective["session"]["url"].as_str(), Some("wss://speech.example:443/v1"));
    assert_eq!(effective["session"]["max_ms"].as_integer(), Some(9000));

    let out = voxgate().args(["check-config"]).env("VOXGATE_SESSION__MAX_MS", "soon").output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("VOXGATE_SESSION__MAX_MS") && err.contains("session.max_ms"), "{err}");
}

#[test]
fn help_and_version() {
    let out = voxgate().arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(concat!("voxgate ", env!("CARGO_PKG_VERSION"))));
    let out = voxgate().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in ["run", "check-config", "devices", "record", "demo"] {
        assert!(help.contains(cmd), "{cmd} missing from --help");
    }
    let out = voxgate().arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn file_source_run_ends_with_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("a.wav");
    crate::support::write_wav(&wav, 16000, &crate::support::noise(16000, 9));
    let out = voxgate()
        .arg("run")
        .env("VOXGATE_AUDIO__SOURCE", format!("file:{}", wav.display()))
        .env("VOXGATE_AUDIO__FILE_PACING", "fast")
        .env("VOXGATE_LOG__FORMAT", "json")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = err.lines().map(|l| serde_json::from_str(l).expect("JSON log lines")).collect();
    let end = lines.iter().find(|l| l["fields"]["frames"].as_u64().is_some()).expect("a summary line");
    assert_eq!(end["fields"]["frames"].as_u64(), Some(50));
}

#[test]
#[ignore = "needs root (a mount namespace without journald's socket): `make test` runs the `_as_root` tests as root"]
fn journald_unreachable_falls_back_to_stderr_with_one_warning_as_root() {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("a.wav");
    crate::support::write_wav(&wav, 16000, &crate::support::noise(3200, 10));
    // An empty /run/systemd of its own: whatever this machine runs, no journald is there.
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-ec", "mkdir -p /run/systemd && mount -t tmpfs tmpfs /run/systemd && exec \"$0\" run"])
        .arg(env!("CARGO_BIN_EXE_voxgate"))
        .env("VOXGATE_CONTROL__SOCKET", "")
        .env("VOXGATE_AUDIO__SOURCE", format!("file:{}", wav.display()))
        .env("VOXGATE_AUDIO__FILE_PACING", "fast")
        .env("VOXGATE_LOG__FORMAT", "journald")
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("journald is not reachable").count(), 1, "{err}");
    assert!(err.contains("captured 200 ms of audio"), "later lines go to stderr: {err}");
}
