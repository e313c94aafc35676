//! The control socket: accepts connections, checks each peer's credentials, reads request lines and answers
//! them, and streams events to subscribers.
//!
//! Channels: each request goes to the daemon as a [`Call`] (mpsc, bounded; the daemon answers on the
//! oneshot); `subscribe` takes a receiver of the daemon's event broadcast. The broadcast ring is each
//! subscriber's bounded queue: one that does not keep up is told how many events it missed (`lagged`) and
//! never slows anybody else.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, broadcast, mpsc, oneshot, watch};
use tokio_util::codec::{Decoder, FramedRead, LinesCodec, LinesCodecError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::proto::{MAX_LINE, Reply, Request};
use crate::session::{Event, State};

/// A request for the daemon and where its reply goes.
pub type Call = (Request, oneshot::Sender<Reply>);

/// Connections served at once; more are told to come back later.
pub const MAX_CLIENTS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control.socket {path}: another voxgate is already listening there")]
    InUse { path: String },
    #[error("control.socket {path}: exists and is not a socket; remove it or choose another path")]
    NotASocket { path: String },
    #[error("control.socket {path}: cannot {what}: {source}")]
    Io { path: String, what: &'static str, source: std::io::Error },
}

/// The bound socket. Dropping it removes the socket file, if it is still ours.
pub struct Listener {
    pub listener: UnixListener,
    pub path: PathBuf,
    ino: u64,
    /// Group of the socket file: its members may connect.
    gid: u32,
    /// Its name, looked up once here: a name service can be slow, and refusals are answered on the event loop.
    group: String,
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Another daemon may have replaced it since (after deciding ours was stale): leave theirs alone.
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds the socket at `path` with permissions `mode`, atomically: it is bound under a temporary name, given
/// its mode, then renamed into place, so nobody ever connects to it with the wrong permissions. A socket left
/// by a daemon that died is replaced; one that answers is refused.
pub fn bind(path: &Path, mode: u32) -> Result<Listener, ControlError> {
    let shown = path.display().to_string();
    let io = |what: &'static str| {
        let path = shown.clone();
        move |source| ControlError::Io { path, what, source }
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ControlError::InUse { path: shown });
            }
            tracing::info!("replacing the stale control socket {shown}");
        }
        Ok(_) => return Err(ControlError::NotASocket { path: shown }),
        Err(_) => {}
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io("create its directory"))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "control.sock".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(io("bind"))?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .map_err(io("set its mode"))
        .and_then(|_| std::fs::rename(&tmp, path).map_err(io("move it into place")))
        .and_then(|_| std::fs::symlink_metadata(path).map_err(io("inspect it")));
    match placed {
        Ok(meta) => Ok(Listener { listener, path: path.to_path_buf(), ino: meta.ino(), gid: meta.gid(), group: group_name(meta.gid()) }),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub pid: Option<i32>,
    /// Primary and supplementary groups.
    pub groups: Vec<u32>,
}

/// Linux's SO_PEERGROUPS (since 4.13; the same number on every architecture voxgate targets): the peer's
/// supplementary groups as they were when it connected. Neither nix nor rustix offers it: this is the one
/// call voxgate makes through libc directly.
const SO_PEERGROUPS: libc::c_int = 59;

fn peer(stream: &UnixStream) -> std::io::Result<Peer> {
    use std::os::fd::AsRawFd;
    let cred = stream.peer_cred()?;
    let mut groups = vec![cred.gid()];
    let mut buf = vec![0 as libc::gid_t; 64];
    loop {
        let mut len = (buf.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: `buf` has room for `len` bytes; the kernel writes at most that and updates `len`.
        let r = unsafe { libc::getsockopt(stream.as_raw_fd(), libc::SOL_SOCKET, SO_PEERGROUPS, buf.as_mut_ptr().cast(), &mut len) };
        if r == 0 {
            buf.truncate(len as usize / std::mem::size_of::<libc::gid_t>());
            groups.extend(buf);
            break;
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ERANGE) if buf.len() < 65536 => buf.resize((len as usize / std::mem::size_of::<libc::gid_t>()).max(buf.len() * 2), 0),
            // A kernel without SO_PEERGROUPS: the primary group is all we know.
            Some(libc::ENOPROTOOPT) => break,
            _ => return Err(e),
        }
    }
    Ok(Peer { uid: cred.uid(), pid: cred.pid(), groups })
}

/// Root, the daemon's own user, and members of the socket's group may control the daemon.
pub fn allowed(peer: &Peer, own_uid: u32, socket_gid: u32) -> bool {
    peer.uid == 0 || peer.uid == own_uid || peer.groups.contains(&socket_gid)
}

/// Serves connections until `shutdown` fires; then waits for the connections to end (subscribers are closed).
/// A new subscriber is first told the current `state`.
pub async fn serve(listener: Listener, calls: mpsc::Sender<Call>, events: broadcast::Sender<Event>, state: watch::Receiver<State>, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    let own_uid = nix::unistd::geteuid().as_raw();
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("control socket {}: accept failed: {e}", listener.path.display());
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refuse(&stream, &format!("too many clients (at most {MAX_CLIENTS}); try again later"));
            continue;
        };
        let peer = match peer(&stream) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("control socket: cannot read the credentials of a client: {e}");
                continue;
            }
        };
        if !allowed(&peer, own_uid, listener.gid) {
            tracing::warn!(uid = peer.uid, pid = peer.pid, "control socket: refused uid {} (not root, uid {own_uid} or group {})", peer.uid, listener.group);
            refuse(&stream, &format!("uid {} may not control voxgate: only root, uid {own_uid} and members of group {} may", peer.uid, listener.group));
            continue;
        }
        tracing::debug!(uid = peer.uid, pid = peer.pid, "control client connected");
        let conn = Connection { calls: calls.clone(), events: events.clone(), state: state.clone(), shutdown: shutdown.clone() };
        tracker.spawn(async move {
            conn.run(stream).await;
            drop(slot);
        });
    }
    tracker.close();
    tracker.wait().await;
}

/// The name of group `gid`, or its number. Called once, when the socket is bound (reentrant: `getgrgid_r`).
fn group_name(gid: u32) -> String {
    match nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid)) {
        Ok(Some(group)) => group.name,
        _ => gid.to_string(),
    }
}

/// Tells a client it is not served, without waiting: the short line goes into the new connection's empty socket
/// buffer, and the connection is closed when the caller drops it. However many connect at once, none is kept.
fn refuse(stream: &tokio::net::UnixStream, why: &str) {
    if let Ok(mut line) = serde_json::to_vec(&Reply::error(why)) {
        line.push(b'\n');
        let _ = stream.try_write(&line);
    }
}

async fn write_line<T: serde::Serialize>(stream: &mut (impl AsyncWriteExt + Unpin), value: &T) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line).await
}

/// Request lines, at most [`MAX_LINE`] bytes: a longer line, or one that is not UTF-8, is skipped up to its
/// newline and reported as an item, so the connection goes on (a plain `LinesCodec` error would end the stream).
struct Lines(LinesCodec);

enum Line {
    Text(String),
    TooLong,
    NotUtf8,
}

impl Lines {
    fn item(decoded: Result<Option<String>, LinesCodecError>) -> Result<Option<Line>, std::io::Error> {
        match decoded {
            Ok(line) => Ok(line.map(Line::Text)),
            Err(LinesCodecError::MaxLineLengthExceeded) => Ok(Some(Line::TooLong)),
            // The codec has taken the line off the buffer before it checks the encoding, and a decoder reads
            // nothing itself: its only I/O error is this one.
            Err(LinesCodecError::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData => Ok(Some(Line::NotUtf8)),
            Err(LinesCodecError::Io(e)) => Err(e),
        }
    }
}

impl Decoder for Lines {
    type Item = Line;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut bytes::BytesMut) -> Result<Option<Line>, std::io::Error> {
        Lines::item(self.0.decode(buf))
    }

    fn decode_eof(&mut self, buf: &mut bytes::BytesMut) -> Result<Option<Line>, std::io::Error> {
        Lines::item(self.0.decode_eof(buf))
    }
}

struct Connection {
    calls: mpsc::Sender<Call>,
    events: broadcast::Sender<Event>,
    state: watch::Receiver<State>,
    shutdown: CancellationToken,
}

impl Connection {
    /// Writes one line, unless shutdown comes first: a client that does not read must not hold up the exit.
    async fn send<T: serde::Serialize>(&self, write: &mut (impl AsyncWriteExt + Unpin), value: &T) -> std::io::Result<()> {
        tokio::select! {
            r = write_line(write, value) => r,
            _ = self.shutdown.cancelled() => Err(std::io::ErrorKind::Interrupted.into()),
        }
    }

    async fn run(self, stream: UnixStream) {
        let (read, mut write) = stream.into_split();
        let mut lines = FramedRead::new(read, Lines(LinesCodec::new_with_max_length(MAX_LINE)));
        let mut subscription: Option<broadcast::Receiver<Event>> = None;
        // Just subscribed: the current state follows the reply.
        let mut subscribed = false;
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                line = lines.next() => {
                    let reply = match line {
                        None => break,
                        Some(Ok(Line::Text(line))) if line.trim().is_empty() => continue,
                        Some(Ok(Line::Text(line))) => match Request::parse(&line) {
                            Ok(Request::Subscribe) => {
                                if subscription.is_none() {
                                    subscription = Some(self.events.subscribe());
                                    subscribed = true;
                                }
                                Reply::ok()
                            }
                            Ok(req) => self.call(req).await,
                            Err(e) => Reply::error(e),
                        },
                        Some(Ok(Line::TooLong)) => Reply::error(format!("line longer than {MAX_LINE} bytes: ignored")),
                        Some(Ok(Line::NotUtf8)) => Reply::error("line is not UTF-8: ignored"),
                        Some(Err(e)) => {
                            tracing::debug!("control client: {e}");
                            break;
                        }
                    };
                    if self.send(&mut write, &reply).await.is_err() {
                        break;
                    }
                    if subscribed {
                        subscribed = false;
                        let state = Event::State { state: *self.state.borrow() };
                        if self.send(&mut write, &state).await.is_err() {
                            break;
                        }
                    }
                }
                event = async { subscription.as_mut().expect("guarded").recv().await }, if subscription.is_some() => {
                    let line = match event {
                        Ok(e) => serde_json::to_value(&e),
                        Err(broadcast::error::RecvError::Lagged(missed)) => serde_json::to_value(Event::Lagged { missed }),
                        Err(broadcast::error::RecvError::Closed) => break,
                    };
                    let Ok(line) = line else { continue };
                    if self.send(&mut write, &line).await.is_err() {
                        break;
                    }
                }
            }
        }
        if !self.shutdown.is_cancelled() {
            let _ = write.shutdown().await;
        }
    }

    async fn call(&self, req: Request) -> Reply {
        let (tx, rx) = oneshot::channel();
        if self.calls.send((req, tx)).await.is_err() {
            return Reply::error("the daemon is shutting down");
        }
        rx.await.unwrap_or_else(|_| Reply::error("the daemon is shutting down"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_may_connect() {
        let p = |uid, groups: &[u32]| Peer { uid, pid: None, groups: groups.to_vec() };
        // (peer, daemon uid, socket group) → allowed
        let table = [
            (p(0, &[0]), 999, 120, true),
            (p(999, &[999]), 999, 120, true),
            (p(1000, &[1000, 120]), 999, 120, true),
            (p(1000, &[120]), 999, 120, true),
            (p(1000, &[1000, 27]), 999, 120, false),
            (p(65534, &[65534]), 999, 120, false),
        ];
        for (peer, own, gid, want) in table {
            assert_eq!(allowed(&peer, own, gid), want, "{peer:?}");
        }
    }

    #[tokio::test]
    async fn a_live_socket_is_refused_a_stale_one_replaced_and_ours_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/control.sock");
        let first = bind(&path, 0o660).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
        let e = bind(&path, 0o660).err().unwrap();
        assert!(matches!(e, ControlError::InUse { .. }), "{e}");
        assert!(e.to_string().contains(&path.display().to_string()));
        drop(first);
        assert!(!path.exists());
        // A daemon that crashed leaves its socket file behind, with nobody listening.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let second = bind(&path, 0o600).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(std::fs::read_dir(path.parent().unwrap()).unwrap().count() == 1, "no temporary file left");
        drop(second);
        assert!(!path.exists());
        std::fs::write(&path, "x").unwrap();
        assert!(matches!(bind(&path, 0o660), Err(ControlError::NotASocket { .. })));
    }
}
