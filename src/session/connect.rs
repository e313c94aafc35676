//! Opening a session's connection: the parameters prepared once per configuration ([`Params`]: the URL, the
//! bearer token read and checked, the TLS roots with `session.ca_file`), then TCP with a small send buffer and no
//! Nagle, TLS through rustls, and the WebSocket handshake, all within `connect_timeout_ms`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use super::homeassistant::{self, HaParams, Token};
use super::protocol::Codec;
use crate::config::{Config, Protocol};

/// Largest server message accepted: anything bigger ends the session.
pub const MAX_MESSAGE: usize = 1 << 20;
/// Kernel send buffer: about a quarter second of audio, so a stalled server cannot let seconds of stale audio
/// pile up out of reach of the drop-oldest queue.
pub const SEND_BUFFER: u32 = 8 * 1024;

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{0} is not a usable URL")]
    Url(String),
    #[error("cannot resolve {host}: {source}")]
    Resolve { host: String, source: std::io::Error },
    #[error("cannot connect to {addr}: {source}")]
    Tcp { addr: String, source: std::io::Error },
    #[error("WebSocket handshake with {url} failed: {source}")]
    Handshake { url: String, source: Box<tokio_tungstenite::tungstenite::Error> },
    #[error("no answer from {url} within {ms} ms")]
    Timeout { url: String, ms: u64 },
    #[error("Home Assistant at {url} refused the access token in {token_file} (session.token_file): {message}")]
    TokenRefused { url: String, token_file: String, message: String },
    #[error("{url} does not answer as Home Assistant's WebSocket API: {message}")]
    HomeAssistant { url: String, message: String },
}

/// What is wrong with the session settings; each names its key.
#[derive(Debug, thiserror::Error)]
pub enum ParamsError {
    #[error("session.url: {0:?} is not a usable URL")]
    Url(String),
    #[error("session.token_file: cannot read {path}: {source}")]
    TokenRead { path: String, source: std::io::Error },
    #[error("session.token_file: Home Assistant needs a long-lived access token: name the file that holds it")]
    TokenMissing,
    #[error("session.token_file: {path} holds no token")]
    TokenEmpty { path: String },
    #[error("session.token_file: the token in {path} has characters an HTTP header cannot carry (a line break inside it?)")]
    TokenValue { path: String },
    #[error("session.ca_file: cannot read {path}: {reason}")]
    CaRead { path: String, reason: String },
    #[error("session.ca_file: {path} holds no PEM certificate")]
    NoCert { path: String },
    #[error("session.ca_file: {path}: {reason}")]
    BadCert { path: String, reason: String },
    #[error("session.url: cannot set up TLS: {0}")]
    Tls(String),
}

/// Everything needed to open sessions, prepared once from the configuration.
#[derive(Clone)]
pub struct Params {
    pub url: url::Url,
    pub codec: Codec,
    /// `Bearer <token>`, read and checked once per configuration; marked sensitive, so never logged.
    authorization: Option<HeaderValue>,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// `session.protocol = "homeassistant"`: the token and what to ask for.
    pub ha: Option<HaParams>,
    /// Home Assistant: the connection kept open ahead of the next session, once the supervisor started it.
    pub warm: Option<super::warm::Warm>,
    pub connect_timeout: Duration,
    pub drain_timeout: Duration,
    pub sample_rate: u32,
    pub frame_ms: u32,
    pub host: String,
}

impl Params {
    /// Reads the token and CA files: blocking work, to be done off the async runtime.
    pub fn new(config: &Config) -> Result<Self, ParamsError> {
        let s = &config.session;
        let url = url::Url::parse(&s.url).map_err(|_| ParamsError::Url(s.url.clone()))?;
        let token = if s.token_file.as_os_str().is_empty() { None } else { Some(read_token(&s.token_file)?) };
        let tls = if url.scheme() == "wss" { Some(Arc::new(tls_config(&s.ca_file)?)) } else { None };
        // Home Assistant takes the token in its first message, not in the handshake.
        let (authorization, ha) = match (s.protocol, token) {
            (Protocol::Homeassistant, Some(token)) => {
                let ha = HaParams {
                    token: Token(token),
                    token_file: s.token_file.display().to_string(),
                    pipeline: config.homeassistant.pipeline.clone(),
                    end_stage: config.homeassistant.end_stage,
                };
                (None, Some(ha))
            }
            (Protocol::Homeassistant, None) => return Err(ParamsError::TokenMissing),
            (_, Some(token)) => (Some(authorization(&token)), None),
            (_, None) => (None, None),
        };
        Ok(Params {
            url,
            codec: Codec::new(s.protocol),
            authorization,
            tls,
            ha,
            warm: None,
            connect_timeout: Duration::from_millis(s.connect_timeout_ms),
            drain_timeout: Duration::from_millis(s.drain_timeout_ms),
            sample_rate: config.audio.sample_rate,
            frame_ms: config.audio.frame_ms,
            host: hostname(),
        })
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "unknown".into())
}

/// The token in `path`: one line; surrounding white space is ignored.
fn read_token(path: &Path) -> Result<String, ParamsError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ParamsError::TokenRead { path: shown.clone(), source })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(ParamsError::TokenEmpty { path: shown });
    }
    // A header value may hold spaces but no line break; a token holds neither.
    if token.contains(char::is_whitespace) || HeaderValue::from_str(token).is_err() {
        return Err(ParamsError::TokenValue { path: shown });
    }
    Ok(token.to_string())
}

/// The `Authorization` header for a checked token, marked sensitive so that no log shows it.
fn authorization(token: &str) -> HeaderValue {
    let mut value = HeaderValue::from_str(&format!("Bearer {token}")).unwrap_or_else(|_| HeaderValue::from_static("Bearer"));
    value.set_sensitive(true);
    value
}

/// The system's roots, plus the certificates in `ca_file`.
fn tls_config(ca_file: &Path) -> Result<rustls::ClientConfig, ParamsError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if !ca_file.as_os_str().is_empty() {
        let path = ca_file.display().to_string();
        let certs: Vec<CertificateDer> = CertificateDer::pem_file_iter(ca_file)
            .map_err(|e| ParamsError::CaRead { path: path.clone(), reason: e.to_string() })?
            .collect::<Result<_, _>>()
            .map_err(|e| ParamsError::CaRead { path: path.clone(), reason: e.to_string() })?;
        if certs.is_empty() {
            return Err(ParamsError::NoCert { path });
        }
        for c in certs {
            roots.add(c).map_err(|e| ParamsError::BadCert { path: path.clone(), reason: e.to_string() })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ParamsError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
        .write_buffer_size(0)
        .max_write_buffer_size(64 * 1024)
}

/// An open connection, authenticated where the protocol wants it.
pub struct Connected {
    pub ws: Socket,
    /// Home Assistant's version, from its `auth_ok`.
    pub ha_version: Option<String>,
    /// Home Assistant: the id of the next command (ids only increase over a connection).
    pub next_id: u64,
    /// Home Assistant: the id of the pipeline `homeassistant.pipeline` names (none: the preferred one).
    pub pipeline: Option<String>,
}

/// Opens the WebSocket and, for Home Assistant, authenticates: all of it within `connect_timeout`.
pub async fn connect(p: &Params) -> Result<Connected, ConnectError> {
    let url = p.url.as_str().to_string();
    let opened = async {
        let mut ws = open(p).await?;
        let (mut ha_version, mut next_id, mut pipeline) = (None, 1, None);
        if let Some(ha) = &p.ha {
            ha_version = Some(homeassistant::authenticate(&mut ws, ha, p.url.as_str()).await?);
            if !ha.pipeline.is_empty() {
                pipeline = Some(homeassistant::resolve_pipeline(&mut ws, &ha.pipeline, next_id, p.url.as_str()).await?);
                next_id += 1;
            }
        }
        Ok(Connected { ws, ha_version, next_id, pipeline })
    };
    tokio::time::timeout(p.connect_timeout, opened)
        .await
        .unwrap_or(Err(ConnectError::Timeout { url, ms: p.connect_timeout.as_millis() as u64 }))
}

async fn open(p: &Params) -> Result<Socket, ConnectError> {
    let host = p.url.host_str().ok_or_else(|| ConnectError::Url(p.url.to_string()))?.trim_matches(['[', ']']).to_string();
    let port = p.url.port_or_known_default().ok_or_else(|| ConnectError::Url(p.url.to_string()))?;
    let addrs: Vec<_> =
        tokio::net::lookup_host((host.as_str(), port)).await.map_err(|source| ConnectError::Resolve { host: host.clone(), source })?.collect();
    let mut last = None;
    let mut tcp = None;
    for addr in addrs {
        let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() };
        let result = async {
            let socket = socket?;
            socket.set_send_buffer_size(SEND_BUFFER)?;
            let stream = socket.connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok::<_, std::io::Error>(stream)
        }
        .await;
        match result {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(source) => last = Some(ConnectError::Tcp { addr: addr.to_string(), source }),
        }
    }
    let tcp = tcp.ok_or_else(|| last.unwrap_or(ConnectError::Resolve { host: host.clone(), source: std::io::Error::other("no address") }))?;
    let mut request = p.url.as_str().into_client_request().map_err(|e| ConnectError::Handshake { url: p.url.to_string(), source: Box::new(e) })?;
    if let Some(value) = &p.authorization {
        request.headers_mut().insert("Authorization", value.clone());
    }
    let connector = match &p.tls {
        Some(cfg) => Connector::Rustls(cfg.clone()),
        None => Connector::Plain,
    };
    let (ws, _) = tokio_tungstenite::client_async_tls_with_config(request, tcp, Some(ws_config()), Some(connector))
        .await
        .map_err(|e| ConnectError::Handshake { url: p.url.to_string(), source: Box::new(e) })?;
    Ok(ws)
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_and_ca_problems_name_their_own_key() {
        let dir = tempfile::tempdir().unwrap();
        let with = |token: Option<&str>, ca: Option<&str>| {
            let mut config = Config::default();
            config.session.url = "wss://speech.example/".into();
            if let Some(t) = token {
                let p = dir.path().join("token");
                std::fs::write(&p, t).unwrap();
                config.session.token_file = p;
            }
            if let Some(c) = ca {
                let p = dir.path().join("ca.pem");
                std::fs::write(&p, c).unwrap();
                config.session.ca_file = p;
            }
            Params::new(&config).err().map(|e| e.to_string())
        };
        let cases = [
            (with(Some("two\nlines\n"), None), "session.token_file"),
            (with(Some("  \n"), None), "session.token_file"),
            (with(None, Some("not a certificate")), "session.ca_file"),
        ];
        for (err, key) in cases {
            let err = err.expect("refused");
            assert!(err.starts_with(key), "{err}");
        }
        assert_eq!(with(Some("s3cret\n"), None), None);
        // Read once: the header is ready, marked sensitive so that no log shows it.
        let mut config = Config::default();
        config.session.token_file = dir.path().join("token");
        let p = Params::new(&config).unwrap();
        let value = p.authorization.as_ref().unwrap();
        assert_eq!(value.to_str().unwrap(), "Bearer s3cret");
        assert!(value.is_sensitive());
        assert!(!format!("{value:?}").contains("s3cret"));
    }
}
