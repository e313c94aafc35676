//! The system around the daemon: the systemd unit as systemd-analyze sees it, the log as a real journald
//! stores it, and the Debian package booted under a real systemd (systemd-nspawn).

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::{ChildGuard, fixtures, serve_child};

const PATIENCE: Duration = Duration::from_secs(60);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn is_root() -> bool {
    // SAFETY: no failure mode.
    unsafe { libc::geteuid() == 0 }
}

/// The unit as installed, but pointing at the binary under test.
fn unit_copy(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("systemd/voxgate.service")).unwrap();
    assert!(text.contains("ExecStart=/usr/bin/voxgate run"));
    let path = dir.join("voxgate.service");
    std::fs::write(&path, text.replace("/usr/bin/voxgate", env!("CARGO_BIN_EXE_voxgate"))).unwrap();
    path
}

#[test]
fn the_unit_verifies_without_a_warning_and_is_hardened() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_copy(dir.path());
    // `verify` exits 0 on unknown keys and typos; any output at all is a finding. (The man page is checked by
    // lintian in the package; here it is not installed.)
    let out = Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&unit).output().expect("systemd-analyze (package systemd)");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify:\n{said}");

    let out = Command::new("systemd-analyze").args(["security", "--offline=yes", "--no-pager"]).arg(&unit).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let level: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for voxgate.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    assert!(level <= 1.2, "exposure {level}:\n{text}");
    for must in ["Type=notify", "WatchdogSec=", "Restart=on-failure", "RestartPreventExitStatus=78", "RuntimeDirectory=voxgate", "BindPaths=-/dev/snd"] {
        assert!(std::fs::read_to_string(&unit).unwrap().contains(must), "{must}");
    }
    assert!(!std::fs::read_to_string(&unit).unwrap().contains("PrivateUsers=yes"));
}

/// Waits for READY=1 on `notify` (which has a read timeout: a deadline, not a wait).
fn wait_ready(notify: &UnixDatagram, who: &str) {
    let mut buf = [0u8; 4096];
    loop {
        let n = notify.recv(&mut buf).unwrap_or_else(|e| panic!("no READY=1 from {who}: {e}"));
        if String::from_utf8_lossy(&buf[..n]).contains("READY=1") {
            return;
        }
    }
}

/// A mount namespace of its own, with fresh tmpfs on /run and /var/log/journal, held open by a `cat`
/// that ends when dropped. Commands run inside it with `nsenter`.
struct Namespace {
    holder: ChildGuard,
}

impl Namespace {
    fn new() -> Namespace {
        Namespace::with("mkdir -p /var/log/journal && mount -t tmpfs tmpfs /run && mkdir /run/systemd && mount -t tmpfs tmpfs /var/log/journal")
    }

    /// A namespace set up by the shell commands `setup`; its mounts vanish with it.
    fn with(setup: &str) -> Namespace {
        let mut holder = ChildGuard(
            Command::new("unshare")
                .args(["--mount", "--propagation", "private", "sh", "-ec"])
                .arg(format!("{setup}\necho ready\nexec cat"))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let mut line = String::new();
        BufReader::new(holder.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "the namespace setup failed");
        Namespace { holder }
    }

    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t").arg(self.holder.0.id().to_string()).arg("-m").arg("--").arg(program);
        c
    }
}

#[test]
#[ignore = "needs root (a mount namespace for a private journald): `make test` runs the `_as_root` tests as root"]
fn journald_gets_the_structured_fields_and_every_session_line_its_id_as_root() {
    assert!(is_root(), "run as root");
    let ns = Namespace::new();
    let dir = tempfile::tempdir().unwrap();
    // journald says READY=1 on its notify socket once it takes messages.
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(PATIENCE)).unwrap();
    let _journald = ChildGuard(ns.command("/lib/systemd/systemd-journald").env("NOTIFY_SOCKET", &notify_path).stderr(Stdio::null()).spawn().unwrap());
    wait_ready(&notify, "journald");

    let server = serve_child();
    let url = server.url.clone();
    let stream = fixtures().join("stream-en-us_m1.wav");
    let status = ns
        .command(env!("CARGO_BIN_EXE_voxgate"))
        .arg("run")
        .env("VOXGATE_CONTROL__SOCKET", "")
        .env("VOXGATE_AUDIO__SOURCE", format!("file:{}", stream.display()))
        .env("VOXGATE_AUDIO__FILE_PACING", "fast")
        .env("VOXGATE_SESSION__URL", &url)
        .env("VOXGATE_LOG__FORMAT", "journald")
        .status()
        .unwrap();
    assert!(status.success());
    let sync = ns.command("journalctl").arg("--sync").status().unwrap();
    assert!(sync.success());
    let out = ns.command("journalctl").args(["-o", "json", "--no-pager", "SYSLOG_IDENTIFIER=voxgate"]).output().unwrap();
    let lines: Vec<Value> = String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let field = |l: &Value, k: &str| l.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let wakes: Vec<&Value> = lines.iter().filter(|l| field(l, "VOXGATE_EVENT").as_deref() == Some("wake")).collect();
    assert_eq!(wakes.len(), 2, "{lines:#?}");
    let mut sessions = Vec::new();
    for w in &wakes {
        assert_eq!(field(w, "VOXGATE_WAKEWORD").as_deref(), Some("jarvis"));
        let score: f64 = field(w, "VOXGATE_SCORE").unwrap().parse().unwrap();
        assert!(score > 0.5);
        sessions.push(field(w, "VOXGATE_SESSION").expect("the wake line names its session"));
    }
    for id in &sessions {
        // Every line that mentions the session carries its id as a field, and the session has its start,
        // its end (with the reason) and its server replies under that id.
        for l in lines.iter().filter(|l| field(l, "MESSAGE").is_some_and(|m| m.contains(id.as_str()))) {
            assert_eq!(field(l, "VOXGATE_SESSION").as_ref(), Some(id), "{l}");
        }
        let of_session: Vec<&Value> = lines.iter().filter(|l| field(l, "VOXGATE_SESSION").as_ref() == Some(id)).collect();
        let events: Vec<String> = of_session.iter().filter_map(|l| field(l, "VOXGATE_EVENT")).collect();
        assert!(events.contains(&"session_start".into()) && events.contains(&"server_message".into()), "{events:?}");
        let end = of_session.iter().find(|l| field(l, "VOXGATE_EVENT").as_deref() == Some("session_end")).expect("session_end");
        assert_eq!(field(end, "VOXGATE_REASON").as_deref(), Some("silence"));
        assert!(field(end, "VOXGATE_FRAMES_SENT").unwrap().parse::<u64>().unwrap() > 50);
    }
}

/// Runs `cmd`, returning its stdout; panics with everything it said if it fails.
fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed ({}):\n{said}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A booted container: commands run in all its namespaces.
struct Container {
    init: u32,
}

/// systemd-nspawn, killed with its container if the test ends early: the container's init would outlive a
/// killed systemd-nspawn.
struct Nspawn(std::process::Child);

impl Nspawn {
    fn children(&self) -> Vec<i32> {
        let pid = self.0.id();
        let list = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        list.split_whitespace().filter_map(|p| p.parse().ok()).collect()
    }
}

impl Drop for Nspawn {
    fn drop(&mut self) {
        for init in self.children() {
            // SAFETY: SIGKILL to the init of the container's PID namespace ends everything in it.
            unsafe { libc::kill(init, libc::SIGKILL) };
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Container {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.init.to_string(), "-m", "-u", "-i", "-n", "-p", "-C", "--"]).args(args);
        c
    }

    fn run(&self, args: &[&str]) -> String {
        ok(&mut self.command(args))
    }

    fn show(&self, property: &str) -> String {
        self.run(&["systemctl", "show", "-P", property, "voxgate"]).trim().to_string()
    }
}

#[test]
#[ignore = "boots the Debian package under systemd-nspawn; `make system-test` runs it (root)"]
fn the_package_installs_boots_and_is_steered_under_systemd() {
    let deb = PathBuf::from(std::env::var("VOXGATE_DEB").expect("VOXGATE_DEB names the .deb to test (make system-test sets it)"));
    assert!(is_root(), "booting a container needs root");
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("w");
    std::fs::create_dir(&w).unwrap();
    let root = w.join("root");
    // A throwaway copy of this machine's root: an overlay whose upper layer is a tmpfs, inside a mount namespace.
    let ns = Namespace::with(&format!(
        "mount -t tmpfs tmpfs {w}\nmkdir {w}/upper {w}/work {w}/root\n\
         mount -t overlay overlay -o lowerdir=/,upperdir={w}/upper,workdir={w}/work {w}/root\n\
         mount -t tmpfs tmpfs {w}/root/run\nmount -t tmpfs tmpfs {w}/root/tmp",
        w = w.display()
    ));
    let inside = |args: &[&str]| ok(ns.command(args[0]).args(&args[1..]));
    let chroot = |args: &[&str]| {
        let mut full = vec!["chroot", root.to_str().unwrap()];
        full.extend_from_slice(args);
        inside(&full)
    };
    inside(&["cp", deb.to_str().unwrap(), &format!("{}/tmp/voxgate.deb", root.display())]);
    chroot(&["dpkg", "-i", "/tmp/voxgate.deb"]);
    assert!(chroot(&["getent", "passwd", "voxgate"]).contains("voxgate"), "sysusers made the user");
    assert!(chroot(&["systemctl", "is-enabled", "voxgate"]).contains("enabled"));
    for path in ["/usr/share/man/man1/voxgate.1.gz", "/usr/share/bash-completion/completions/voxgate", "/usr/lib/sysusers.d/voxgate.conf"] {
        chroot(&["test", "-f", path]);
    }
    // The device has no sound card: the service listens to a recording that it follows as it would a growing
    // call recording, so it keeps running, and plays through ALSA's file plugin into a file in its runtime
    // directory (the one place the unit lets it write). Sessions open only when triggered, so the state stays
    // what the test expects; they stream to a reference server on the container's loopback.
    let wav = fixtures().join("stream-en-us_m1.wav");
    inside(&["cp", wav.to_str().unwrap(), &format!("{}/var/lib/voxgate-test.wav", root.display())]);
    let tone: Vec<i16> = (0..8000).map(|i| ((i as f32 * 0.05).sin() * 5000.0) as i16 + (i % 7) as i16).collect();
    crate::support::write_wav(&dir.path().join("say.wav"), 16000, &tone);
    inside(&["cp", dir.path().join("say.wav").to_str().unwrap(), &format!("{}/var/lib/voxgate-say.wav", root.display())]);
    let alsa = "pcm.fakespk {\n type file\n slave.pcm { type null }\n file \"/run/voxgate/played.raw\"\n format \"raw\"\n hint { show on description \"fake speaker\" }\n}\n";
    inside(&["sh", "-c", &format!("printf '{alsa}' > {}/etc/asound.conf", root.display())]);
    let config = "[audio]\nsource = \"file:/var/lib/voxgate-test.wav\"\nfile_follow = true\nfile_follow_idle_ms = 600000\n[wake]\nmode = \"manual\"\n\
                  [playback]\ndevice = \"alsa:fakespk\"\nwake_sound = \"none\"\nend_sound = \"none\"\nerror_sound = \"none\"\n\
                  [metrics]\nlisten = \"127.0.0.1:9464\"\n";
    inside(&["sh", "-c", &format!("printf '{config}' > {}/etc/voxgate/voxgate.toml", root.display())]);
    chroot(&["useradd", "--no-create-home", "--groups", "voxgate", "alice"]);
    chroot(&["useradd", "--no-create-home", "bob"]);

    // Boot. nspawn says READY=1 once the container's systemd has finished starting up, voxgate included
    // (Type=notify: it counts as started when it says READY=1).
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut nspawn = Nspawn(
        ns.command("systemd-nspawn")
            .args(["--register=no", "--keep-unit", "--private-network", "--console=passive", "--notify-ready=yes", "-q", "-b", "-D"])
            .arg(&root)
            .env("NOTIFY_SOCKET", &notify_path)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_ready(&notify, "the container");
    let init = *nspawn.children().first().expect("the container's init") as u32;
    let c = Container { init };

    assert_eq!(c.show("ActiveState"), "active", "{}", c.run(&["journalctl", "-u", "voxgate", "--no-pager"]));
    assert!(c.show("StatusText").starts_with("listening"), "{}", c.show("StatusText"));
    assert!(c.show("WatchdogUSec") != "0");

    // A member of group voxgate may use the socket; a stranger cannot even reach it.
    let alice = c.run(&["setpriv", "--reuid=alice", "--regid=alice", "--init-groups", "voxgate", "status", "--json"]);
    let status: Value = serde_json::from_str(alice.trim()).unwrap();
    assert_eq!(status["state"], "listening");
    assert!(status["counters"]["audio_frames"].as_u64().unwrap() > 0);
    let bob = c.command(&["setpriv", "--reuid=bob", "--regid=bob", "--init-groups", "voxgate", "status"]).output().unwrap();
    assert_eq!(bob.status.code(), Some(69), "{bob:?}");
    assert!(String::from_utf8_lossy(&bob.stderr).contains("Permission denied"), "{bob:?}");

    // The sound devices come from group audio, which sysusers made it a member of.
    let audio_gid = chroot(&["getent", "group", "audio"]).split(':').nth(2).unwrap().to_string();
    let groups = c.run(&["sh", "-c", "grep ^Groups: /proc/$(systemctl show -P MainPID voxgate)/status"]);
    assert!(groups.split_whitespace().any(|g| g == audio_gid), "audio ({audio_gid}) not in {groups}");

    // Reload through systemd, then see it done in the journal, with its field.
    let mut follow = ChildGuard(
        c.command(&["journalctl", "-f", "-n", "all", "-o", "json", "-u", "voxgate", "-u", "speech"]).stdout(Stdio::piped()).spawn().unwrap(),
    );
    let mut journal = BufReader::new(follow.0.stdout.take().unwrap()).lines();
    let mut logged = |want: &dyn Fn(&Value) -> bool| loop {
        let line: Value = serde_json::from_str(&journal.next().expect("journal lines").unwrap()).unwrap();
        if want(&line) {
            break line;
        }
    };
    c.run(&["sh", "-c", &format!("printf '{config}[session]\\nmax_ms = 15000\\n' > /etc/voxgate/voxgate.toml")]);
    c.run(&["systemctl", "reload", "voxgate"]);
    let reloaded = logged(&|l| l["VOXGATE_EVENT"] == "reload");
    assert!(reloaded["MESSAGE"].as_str().unwrap().contains("session.max_ms"), "{reloaded}");

    // Outbound TCP under the unit's address allow list: a session to a reference server on loopback.
    c.run(&["systemd-run", "--unit=speech", "/usr/bin/voxgate", "serve", "--listen", "127.0.0.1:8765"]);
    logged(&|l| l["MESSAGE"].as_str().is_some_and(|m| m.starts_with("listening on ws://127.0.0.1:8765/")));
    let as_alice = |cmd: &[&str]| {
        let mut args = vec!["setpriv", "--reuid=alice", "--regid=alice", "--init-groups", "voxgate"];
        args.extend_from_slice(cmd);
        c.run(&args)
    };
    as_alice(&["trigger"]);
    logged(&|l| l["VOXGATE_EVENT"] == "session_start");
    as_alice(&["stop"]);
    let end = logged(&|l| l["VOXGATE_EVENT"] == "session_end");
    assert_eq!(end["VOXGATE_REASON"], "stopped", "{end}");
    assert!(end["VOXGATE_FRAMES_SENT"].as_str().and_then(|n| n.parse::<u64>().ok()).is_some_and(|n| n > 0), "{end}");

    // Playback through ALSA inside the unit's private /dev: the file plugin writes what is played, bit for bit.
    as_alice(&["say", "/var/lib/voxgate-say.wav"]);
    let played = logged(&|l| l["VOXGATE_EVENT"] == "playback_end");
    assert!(played["MESSAGE"].as_str().unwrap().ends_with(": done"), "{played}");
    let size: usize = c.run(&["stat", "-c", "%s", "/run/voxgate/played.raw"]).trim().parse().unwrap();
    assert!(size >= tone.len() * 2, "{size} bytes played");
    c.run(&["cmp", "-n", &(tone.len() * 2).to_string(), "-i", "44:0", "/var/lib/voxgate-say.wav", "/run/voxgate/played.raw"]);

    // The metrics, served on loopback.
    let metrics = c.run(&["python3", "-c", "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9464/metrics').read().decode())"]);
    assert!(metrics.contains("voxgate_sessions_total{reason=\"stopped\"} 1"), "{metrics}");
    drop(follow);

    // Stop: clean, exit 0, its lines in the journal.
    c.run(&["systemctl", "stop", "voxgate"]);
    assert_eq!(c.show("ActiveState"), "inactive");
    assert_eq!(c.show("Result"), "success");
    let log = c.run(&["journalctl", "-u", "voxgate", "--no-pager", "-o", "cat"]);
    assert!(log.contains("voxgate 0.") && log.contains("shutting down"), "{log}");
    assert!(!c.command(&["test", "-e", "/run/voxgate/control.sock"]).status().unwrap().success(), "the socket is removed");

    c.run(&["systemctl", "poweroff", "--no-block"]);
    assert!(nspawn.0.wait().unwrap().success());
}
