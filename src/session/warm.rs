//! Home Assistant: one connection opened and authenticated ahead of the next session, so that a wake word
//! only costs the run command, not the TCP, TLS and authentication handshakes.
//!
//! A task of its own holds the spare connection: it reads it (the library answers Home Assistant's pings), pings
//! Home Assistant every [`HEARTBEAT`] and replaces a connection that closes or stops answering. A session asks
//! for it with [`Warm::take`]; the task hands it over and opens the next one at once. When none is ready (Home
//! Assistant away, still connecting) the session connects by itself, as it would without this. Failures to open
//! one are retried with backoff and logged once until one succeeds.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tracing::Instrument;

use super::connect::{Connected, Params, connect};
use super::homeassistant::{self as ha, SharedStatus};
use super::supervisor::{BACKOFF_MAX, BACKOFF_START};

/// How often the idle connection is pinged; a ping not answered by the next one replaces the connection.
pub const HEARTBEAT: Duration = Duration::from_secs(20);

type Request = oneshot::Sender<Option<Connected>>;

/// The handle sessions ask; the task ends when every handle is gone.
#[derive(Clone)]
pub struct Warm {
    requests: mpsc::Sender<Request>,
}

impl std::fmt::Debug for Warm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Warm")
    }
}

impl Warm {
    /// Starts the task for these parameters (which must not hold a handle themselves).
    pub fn spawn(p: Params, status: SharedStatus) -> Warm {
        let (requests, rx) = mpsc::channel(4);
        tokio::spawn(keep(p, status, rx).instrument(tracing::info_span!("homeassistant")));
        Warm { requests }
    }

    /// The open connection, if one is ready now.
    pub async fn take(&self) -> Option<Connected> {
        let (tx, rx) = oneshot::channel();
        self.requests.send(tx).await.ok()?;
        rx.await.ok().flatten()
    }
}

/// Until every handle is gone: open a connection, hold it until it is asked for or lost, again.
async fn keep(p: Params, status: SharedStatus, mut requests: mpsc::Receiver<Request>) {
    let mut delays = crate::backoff::delays(BACKOFF_START, BACKOFF_MAX, true);
    let mut failing = false;
    loop {
        let opened = {
            let open = connect(&p);
            tokio::pin!(open);
            loop {
                tokio::select! {
                    r = &mut open => break r,
                    req = requests.recv() => match req {
                        Some(tx) => {
                            let _ = tx.send(None);
                        }
                        None => return,
                    },
                }
            }
        };
        let conn = match opened {
            Ok(c) => c,
            Err(e) => {
                if !failing {
                    tracing::warn!("cannot open a connection to Home Assistant ahead of the next session: {e}; retrying with backoff");
                    failing = true;
                } else {
                    tracing::debug!("still no connection to Home Assistant: {e}");
                }
                ha::update(&status, |s| {
                    s.connected = false;
                    s.link_error = Some(ha::clip(&e.to_string()));
                });
                let pause = tokio::time::sleep(delays.next().unwrap_or(BACKOFF_MAX));
                tokio::pin!(pause);
                loop {
                    tokio::select! {
                        () = &mut pause => break,
                        req = requests.recv() => match req {
                            Some(tx) => {
                                let _ = tx.send(None);
                            }
                            None => return,
                        },
                    }
                }
                continue;
            }
        };
        if failing {
            tracing::info!("connected to Home Assistant again");
            failing = false;
        }
        delays = crate::backoff::delays(BACKOFF_START, BACKOFF_MAX, true);
        ha::update(&status, |s| {
            s.connected = true;
            s.version = conn.ha_version.clone();
            s.link_error = None;
        });
        match hold(conn, &mut requests).await {
            Held::HandedOver => {}
            Held::Lost(why) => tracing::info!("the idle connection to Home Assistant ended ({why}); opening another"),
            Held::Unwanted => return,
        }
        ha::update(&status, |s| s.connected = false);
    }
}

enum Held {
    HandedOver,
    Lost(String),
    /// Every handle is gone.
    Unwanted,
}

/// Holds an idle connection: reads it, pings it, and hands it to the first session that asks.
async fn hold(conn: Connected, requests: &mut mpsc::Receiver<Request>) -> Held {
    let mut conn = Some(conn);
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    let mut awaiting: Option<(u64, tokio::time::Instant)> = None;
    loop {
        let Some(c) = conn.as_mut() else { return Held::HandedOver };
        tokio::select! {
            req = requests.recv() => match req {
                // A ping's answer still on its way is left to the session, which reads only its run's id.
                Some(tx) => match tx.send(conn.take()) {
                    Ok(()) => return Held::HandedOver,
                    // The session gave up asking: keep it.
                    Err(back) => conn = back,
                },
                None => return Held::Unwanted,
            },
            msg = c.ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap_or_default();
                    if let Some((id, sent)) = awaiting.filter(|(id, _)| v.get("type").and_then(|t| t.as_str()) == Some("pong") && v.get("id").and_then(|i| i.as_u64()) == Some(*id)) {
                        tracing::debug!("Home Assistant answered ping {id} in {} ms", sent.elapsed().as_millis());
                        awaiting = None;
                    }
                }
                Some(Ok(Message::Close(frame))) => return Held::Lost(format!("closed: {frame:?}")),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Held::Lost(e.to_string()),
                None => return Held::Lost("closed".into()),
            },
            _ = heartbeat.tick() => {
                if awaiting.is_some() {
                    return Held::Lost(format!("no answer to a ping within {} s", HEARTBEAT.as_secs()));
                }
                let id = c.next_id;
                c.next_id += 1;
                let ping = serde_json::json!({"id": id, "type": "ping"}).to_string();
                if let Err(e) = c.ws.send(Message::text(ping)).await {
                    return Held::Lost(e.to_string());
                }
                awaiting = Some((id, tokio::time::Instant::now()));
            }
        }
    }
}
