//! TLS for the control plane: rustls with the ring provider, PEM files from `[tls]`.
//!
//! The whole `ServerConfig` sits behind a lock and is rebuilt from the files on SIGHUP and
//! whenever their modification times change, so a renewed certificate (or a new client CA)
//! takes effect for the next handshake while established connections, the long-lived SSE
//! streams of every worker, keep running untouched. A file that fails to load is reported and
//! the previous configuration stays: a botched renewal must not take the brake offline.
//!
//! With a client CA, clients may (or must) present a certificate; the SHA-256 fingerprint of a
//! verified one travels with each request ([`ClientCert`]) into the audit's "from where".

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use sha2::{Digest as _, Sha256};

use crate::config::{ClientAuth, TlsConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS certificate {path}: {message}")]
    Cert { path: PathBuf, message: String },
    #[error("TLS private key {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("TLS client CA {path}: {message}")]
    ClientCa { path: PathBuf, message: String },
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// The fingerprint of the verified client certificate on this connection, if any.
#[derive(Debug, Clone)]
pub struct ClientCert(pub String);

/// Live TLS settings: the current `ServerConfig` and what it was built from.
pub struct Tls {
    settings: TlsConfig,
    current: RwLock<Arc<ServerConfig>>,
    stamps: RwLock<Vec<Option<SystemTime>>>,
}

impl Tls {
    pub fn load(settings: TlsConfig) -> Result<Arc<Tls>, TlsError> {
        let config = build(&settings)?;
        let stamps = stamps(&settings);
        Ok(Arc::new(Tls {
            settings,
            current: RwLock::new(Arc::new(config)),
            stamps: RwLock::new(stamps),
        }))
    }

    /// The configuration for the next handshake.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let cfg = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        tokio_rustls::TlsAcceptor::from(cfg)
    }

    /// Re-reads the files; on failure the previous configuration stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let stamps = stamps(&self.settings);
        let config = build(&self.settings)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
        *self.stamps.write().unwrap_or_else(|e| e.into_inner()) = stamps;
        Ok(())
    }

    fn changed_on_disk(&self) -> bool {
        let now = stamps(&self.settings);
        *self.stamps.read().unwrap_or_else(|e| e.into_inner()) != now
    }

    /// Reloads on SIGHUP and when a file's modification time changes (checked every 2 s).
    pub fn spawn_watcher(self: &Arc<Self>) {
        let tls = Arc::clone(self);
        tokio::spawn(async move {
            #[cfg(unix)]
            let mut hup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            loop {
                #[cfg(unix)]
                let why = match hup.as_mut() {
                    Some(h) => tokio::select! {
                        _ = h.recv() => "SIGHUP",
                        _ = tokio::time::sleep(Duration::from_secs(2)) => "poll",
                    },
                    None => {
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        "poll"
                    }
                };
                #[cfg(not(unix))]
                let why = {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    "poll"
                };
                if why == "poll" && !tls.changed_on_disk() {
                    continue;
                }
                match tls.reload() {
                    Ok(()) => tracing::info!(trigger = why, cert = %tls.settings.cert.display(),
                        "TLS certificate reloaded; new connections use it"),
                    Err(e) => {
                        // Remember the stamps anyway so a broken file is reported once, not
                        // every 2 s; the next change (or SIGHUP) tries again.
                        *tls.stamps.write().unwrap_or_else(|e| e.into_inner()) =
                            stamps(&tls.settings);
                        tracing::error!(trigger = why, error = %e,
                            "TLS reload failed; still serving the previous certificate")
                    }
                }
            }
        });
    }
}

/// SHA-256 of a DER certificate, hex, first 16 bytes: short enough for an audit line, long
/// enough to name one certificate.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(&Sha256::digest(der)[..16])
}

fn stamps(s: &TlsConfig) -> Vec<Option<SystemTime>> {
    let mut paths: Vec<&Path> = vec![&s.cert, &s.key];
    if let Some(ca) = &s.client_ca {
        paths.push(ca);
    }
    paths
        .into_iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

fn build(s: &TlsConfig) -> Result<ServerConfig, TlsError> {
    let certs = read_certs(&s.cert).map_err(|message| TlsError::Cert {
        path: s.cert.clone(),
        message,
    })?;
    let key = PrivateKeyDer::from_pem_file(&s.key).map_err(|e| TlsError::Key {
        path: s.key.clone(),
        message: pem_message(&e),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    let builder = match &s.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            let ca_certs = read_certs(ca).map_err(|message| TlsError::ClientCa {
                path: ca.clone(),
                message,
            })?;
            for c in ca_certs {
                roots.add(c).map_err(|e| TlsError::ClientCa {
                    path: ca.clone(),
                    message: e.to_string(),
                })?;
            }
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let v = match s.client_auth {
                ClientAuth::Required => v,
                ClientAuth::Optional => v.allow_unauthenticated(),
            };
            builder.with_client_cert_verifier(v.build().map_err(|e| TlsError::ClientCa {
                path: ca.clone(),
                message: e.to_string(),
            })?)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Key {
            path: s.key.clone(),
            message: format!("does not fit the certificate: {e}"),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_message(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_message(&e))?;
    if certs.is_empty() {
        return Err("no PEM certificate in the file".into());
    }
    Ok(certs)
}

fn pem_message(e: &rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => "no PEM item of the right kind".into(),
        other => format!("{other:?}"),
    }
}
