//! Bearer-token authentication.
//!
//! A token looks like `brb_<id>_<secret>`. The id finds the record; the SHA-256 of the secret is
//! compared with the stored hash in constant time, so neither a wrong secret nor a near miss
//! leaks timing. Secrets are 256-bit random values, so a plain hash (not a password KDF) is the
//! right tool. Records are cached in memory: authenticating a status read costs a hash map
//! lookup and one SHA-256, never a database round trip.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::RwLock;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use brb_api::{ErrorCode, Role};
use brb_store::TokenRecord;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::error::ApiError;

const PREFIX: &str = "brb_";

/// Who is calling, once authenticated.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub role: Role,
    /// The record id, or `None` for the `BRB_ADMIN_TOKEN` environment token.
    pub token_id: Option<String>,
    pub remote_addr: Option<SocketAddr>,
    /// Fingerprint of the verified TLS client certificate (mutual TLS), if one was presented.
    pub client_cert: Option<String>,
}

impl Caller {
    /// Where the call came from, for the audit: the address, and the client certificate when
    /// mutual TLS identified the machine too.
    pub fn origin(&self) -> Option<String> {
        let ip = self.remote_addr.map(|a| a.ip().to_string());
        match (ip, &self.client_cert) {
            (Some(ip), Some(c)) => Some(format!("{ip} cert:{c}")),
            (None, Some(c)) => Some(format!("cert:{c}")),
            (ip, None) => ip,
        }
    }
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorCode::Forbidden,
                format!(
                    "token {:?} has role {}; this needs {} or higher",
                    self.name, self.role, role
                ),
            ))
        }
    }
}

struct Cached {
    name: String,
    role: Role,
    hash: [u8; 32],
    revoked: bool,
    /// Lives only in this process (never stored): survives a reload from the store.
    ephemeral: bool,
}

/// The in-memory view of the token table, plus the optional environment admin token.
pub struct TokenBook {
    by_id: RwLock<HashMap<String, Cached>>,
    env_admin_hash: Option<[u8; 32]>,
}

pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// A freshly minted token: the full secret (shown once) and the record to store.
pub struct NewToken {
    pub secret: String,
    pub record: TokenRecord,
}

pub fn mint(name: &str, role: Role) -> NewToken {
    let mut rng = rand::rng();
    let mut id = [0u8; 5];
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut id);
    rng.fill_bytes(&mut secret);
    let id = hex::encode(id);
    let secret = hex::encode(secret);
    NewToken {
        secret: format!("{PREFIX}{id}_{secret}"),
        record: TokenRecord {
            id,
            name: name.to_string(),
            role,
            secret_hash: hash_secret(&secret).to_vec(),
            created_at: chrono::Utc::now(),
            revoked_at: None,
        },
    }
}

/// Splits `brb_<id>_<secret>`.
fn split(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (!id.is_empty() && !secret.is_empty()).then_some((id, secret))
}

impl TokenBook {
    pub fn new(env_admin_token: Option<&str>) -> Self {
        TokenBook {
            by_id: RwLock::new(HashMap::new()),
            env_admin_hash: env_admin_token.filter(|t| !t.is_empty()).map(hash_secret),
        }
    }

    pub fn has_env_admin(&self) -> bool {
        self.env_admin_hash.is_some()
    }

    /// Replaces the stored tokens with `records` (at start, and when another replica created
    /// or revoked one), keeping this process's ephemeral tokens.
    pub fn load(&self, records: &[TokenRecord]) {
        let mut map = self.by_id.write().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, c| c.ephemeral);
        for r in records {
            self.insert_locked(&mut map, r, false);
        }
    }

    pub fn upsert(&self, record: &TokenRecord) {
        let mut map = self.by_id.write().unwrap_or_else(|e| e.into_inner());
        self.insert_locked(&mut map, record, false);
    }

    fn insert_locked(&self, map: &mut HashMap<String, Cached>, r: &TokenRecord, ephemeral: bool) {
        let Ok(hash) = <[u8; 32]>::try_from(r.secret_hash.as_slice()) else {
            tracing::warn!(token_id = %r.id, "stored token hash has the wrong length; ignoring");
            return;
        };
        map.insert(
            r.id.clone(),
            Cached {
                name: r.name.clone(),
                role: r.role,
                hash,
                revoked: r.revoked_at.is_some(),
                ephemeral,
            },
        );
    }

    /// Adds a token that lives only in this process (never stored): used by the in-process
    /// demo workload, which must authenticate like any external worker.
    pub fn add_ephemeral(&self, name: &str, role: Role) -> String {
        let t = mint(name, role);
        let mut map = self.by_id.write().unwrap_or_else(|e| e.into_inner());
        self.insert_locked(&mut map, &t.record, true);
        t.secret
    }

    /// Checks a bearer token. The error message never repeats the token.
    pub fn verify(&self, token: &str) -> Result<(String, Role, Option<String>), ApiError> {
        if let Some(env) = &self.env_admin_hash
            && bool::from(hash_secret(token).ct_eq(env))
        {
            return Ok(("admin".to_string(), Role::Admin, None));
        }
        let Some((id, secret)) = split(token) else {
            return Err(ApiError::unauthorized(
                "malformed token: expected brb_<id>_<secret>",
            ));
        };
        let map = self.by_id.read().unwrap_or_else(|e| e.into_inner());
        let Some(c) = map.get(id) else {
            return Err(ApiError::unauthorized("unknown token"));
        };
        let ok: bool = hash_secret(secret).ct_eq(&c.hash).into();
        if !ok {
            return Err(ApiError::unauthorized("unknown token"));
        }
        if c.revoked {
            return Err(ApiError::unauthorized("this token has been revoked"));
        }
        Ok((c.name.clone(), c.role, Some(id.to_string())))
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let remote_addr = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        match bearer(parts).and_then(|t| state.tokens().verify(t)) {
            Ok((name, role, token_id)) => Ok(Caller {
                name,
                role,
                token_id,
                remote_addr,
                client_cert: parts
                    .extensions
                    .get::<crate::tls::ClientCert>()
                    .map(|c| c.0.clone()),
            }),
            Err(e) => {
                state.metrics().auth_failure();
                tracing::info!(remote = ?remote_addr, reason = %e.message, "authentication failed");
                Err(e)
            }
        }
    }
}

/// The peer's address, when the request came over a socket (not in in-process tests).
pub struct RemoteAddr(pub Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for RemoteAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(RemoteAddr(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
        ))
    }
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token> header"))?;
    let value = header
        .to_str()
        .map_err(|_| ApiError::unauthorized("Authorization header is not ASCII"))?;
    Ok(value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| ApiError::unauthorized("Authorization must be 'Bearer <token>'"))?
        .trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_verify_and_wrong_ones_do_not() {
        let book = TokenBook::new(None);
        let t = mint("ci", Role::Operator);
        book.upsert(&t.record);
        let (name, role, id) = book.verify(&t.secret).unwrap();
        assert_eq!((name.as_str(), role), ("ci", Role::Operator));
        assert_eq!(id.as_deref(), Some(t.record.id.as_str()));

        let mut wrong = t.secret.clone();
        wrong.pop();
        wrong.push('x');
        assert_eq!(
            book.verify(&wrong).unwrap_err().code,
            ErrorCode::Unauthorized
        );
        assert!(book.verify("garbage").is_err());
        assert!(book.verify("brb__").is_err());
        assert!(book.verify("").is_err());
    }

    #[test]
    fn revoked_tokens_fail() {
        let book = TokenBook::new(None);
        let t = mint("ci", Role::Viewer);
        let mut rec = t.record.clone();
        book.upsert(&rec);
        rec.revoked_at = Some(chrono::Utc::now());
        book.upsert(&rec);
        let e = book.verify(&t.secret).unwrap_err();
        assert!(e.message.contains("revoked"));
    }

    #[test]
    fn env_admin_token() {
        let book = TokenBook::new(Some("let-me-in-0123456789"));
        let (name, role, id) = book.verify("let-me-in-0123456789").unwrap();
        assert_eq!((name.as_str(), role, id), ("admin", Role::Admin, None));
        assert!(book.verify("let-me-in").is_err());
    }

    #[test]
    fn errors_never_echo_the_token() {
        let book = TokenBook::new(None);
        let secret = "brb_deadbeef00_supersecretvalue";
        let e = book.verify(secret).unwrap_err();
        assert!(!e.message.contains("supersecret"));
    }
}
