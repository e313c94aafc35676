//! Fetching an answer's audio over HTTP(S), off the async runtime: the same roots as the session's TLS (the
//! system's plus `session.ca_file`), a bearer token only for the speech server's own origin, bounded in time
//! and size.

use std::path::Path;
use std::time::Duration;

use ureq::tls::{Certificate, RootCerts, TlsConfig};

/// The largest answer fetched.
pub const MAX_BYTES: u64 = 16 << 20;
/// The longest a fetch may take, all of it.
pub const TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url} is not an http:// or https:// URL")]
    Scheme { url: String },
    #[error("cannot fetch {url}: {reason}")]
    Http { url: String, reason: String },
    #[error("session.ca_file: {0}")]
    Ca(String),
}

/// An HTTP client with the session's trust.
pub struct Fetcher {
    agent: ureq::Agent,
}

impl Fetcher {
    /// Reads the CA file: blocking work.
    pub fn new(ca_file: &Path) -> Result<Self, FetchError> {
        let mut certs: Vec<Certificate<'static>> =
            rustls_native_certs::load_native_certs().certs.iter().map(|c| Certificate::from_der(c.as_ref()).to_owned()).collect();
        if !ca_file.as_os_str().is_empty() {
            let pem = std::fs::read(ca_file).map_err(|e| FetchError::Ca(format!("cannot read {}: {e}", ca_file.display())))?;
            for item in ureq::tls::parse_pem(&pem) {
                if let Ok(ureq::tls::PemItem::Certificate(c)) = item {
                    certs.push(c);
                }
            }
        }
        let tls = TlsConfig::builder().root_certs(RootCerts::new_with_certs(&certs)).build();
        let agent = ureq::Agent::config_builder().timeout_global(Some(TIMEOUT)).tls_config(tls).http_status_as_error(true).build().into();
        Ok(Fetcher { agent })
    }

    /// GETs `url`: the body and its content type. `bearer` is sent as `Authorization: Bearer …`.
    pub fn get(&self, url: &str, bearer: Option<&str>) -> Result<(Vec<u8>, Option<String>), FetchError> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(FetchError::Scheme { url: url.to_string() });
        }
        let failed = |reason: String| FetchError::Http { url: url.to_string(), reason };
        let mut req = self.agent.get(url);
        if let Some(token) = bearer {
            req = req.header("Authorization", &format!("Bearer {token}"));
        }
        let mut resp = req.call().map_err(|e| failed(e.to_string()))?;
        let mime = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).map(|s| s.split(';').next().unwrap_or("").trim().to_string());
        let body = resp.body_mut().with_config().limit(MAX_BYTES).read_to_vec().map_err(|e| failed(e.to_string()))?;
        Ok((body, mime))
    }
}
