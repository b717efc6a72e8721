//! Bearer-token authentication.
//!
//! A token looks like `brb_<id>_<secret>`. The id finds the record; the SHA-256 of the secret is
//! compared with the stored hash in constant time, so neither a wrong secret nor a near miss
//! leaks timing. Secrets are 256-bit random values, so a plain hash (not a password KDF) is the
//! right tool. Records are cached in memory: authenticating a status read costs a hash map
//! lookup and one SHA-256, never a database round trip.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, RwLock};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use brb_api::{ErrorCode, Role, SwitchState, TokenScope};
use brb_store::TokenRecord;
use chrono::{DateTime, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::watch;

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
    /// Limits beyond the role (switches, pause only).
    pub scope: Option<TokenScope>,
    /// Authenticated with the secret from before the last rotation.
    pub via_previous: bool,
    /// When this authentication lapses on its own (expiry or end of rotation grace).
    pub valid_until: Option<DateTime<Utc>>,
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
    /// A scoped token may only see and change its own switches.
    pub fn check_switch(&self, name: &str) -> Result<(), ApiError> {
        match &self.scope {
            Some(sc) if !sc.allows_switch(name) => Err(ApiError::new(
                ErrorCode::OutOfScope,
                format!(
                    "token {:?} is limited to the switches {:?}",
                    self.name, sc.switches
                ),
            )),
            _ => Ok(()),
        }
    }

    /// `check_switch`, and a pause-only token may not resume.
    pub fn check_change(&self, name: &str, to: SwitchState) -> Result<(), ApiError> {
        self.check_switch(name)?;
        match &self.scope {
            Some(sc) if sc.pause_only && to != SwitchState::Paused => Err(ApiError::new(
                ErrorCode::OutOfScope,
                format!("token {:?} may only pause", self.name),
            )),
            _ => Ok(()),
        }
    }

    /// For views and actions that span every switch (the global stream, token and switch
    /// management): scoped tokens are refused.
    pub fn require_unscoped(&self) -> Result<(), ApiError> {
        match &self.scope {
            Some(sc) => Err(ApiError::new(
                ErrorCode::OutOfScope,
                format!(
                    "token {:?} is limited to the switches {:?}; this needs an unscoped token",
                    self.name, sc.switches
                ),
            )),
            None => Ok(()),
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
    expires_at: Option<DateTime<Utc>>,
    scope: Option<TokenScope>,
    /// The secret before the last rotation and until when it still works.
    previous: Option<([u8; 32], DateTime<Utc>)>,
}

/// A successful authentication.
#[derive(Debug, Clone)]
pub struct Verified {
    pub name: String,
    pub role: Role,
    /// None for the `BRB_ADMIN_TOKEN` environment token.
    pub token_id: Option<String>,
    pub scope: Option<TokenScope>,
    /// Authenticated with the secret from before the last rotation.
    pub via_previous: bool,
    /// When this authentication stops being valid on its own (expiry, end of the rotation
    /// grace), if ever. Open event streams end then.
    pub valid_until: Option<DateTime<Utc>>,
}

/// When and from which address a token was last used.
type LastUse = (DateTime<Utc>, Option<String>);

/// The in-memory view of the token table, plus the optional environment admin token.
pub struct TokenBook {
    by_id: RwLock<HashMap<String, Cached>>,
    env_admin_hash: Option<[u8; 32]>,
    /// Bumped on every change to the table: open streams re-check their token then.
    generation: watch::Sender<u64>,
    /// Last uses not yet written to the store (token id → when, from where).
    uses: Mutex<HashMap<String, LastUse>>,
    /// Open event streams per token id.
    streams: Mutex<HashMap<String, usize>>,
}

pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// A freshly minted token: the full secret (shown once) and the record to store.
pub struct NewToken {
    pub secret: String,
    pub record: TokenRecord,
}

fn random_hex<const N: usize>() -> String {
    let mut bytes = [0u8; N];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

pub fn mint(name: &str, role: Role) -> NewToken {
    let id = random_hex::<5>();
    let secret = random_hex::<32>();
    NewToken {
        secret: format!("{PREFIX}{id}_{secret}"),
        record: TokenRecord {
            id,
            name: name.to_string(),
            role,
            secret_hash: hash_secret(&secret).to_vec(),
            created_at: Utc::now(),
            revoked_at: None,
            policy: Default::default(),
            last_used_at: None,
            last_used_addr: None,
        },
    }
}

/// A new secret for an existing token id: the full token and the hash to store.
pub fn mint_secret(id: &str) -> (String, Vec<u8>) {
    let secret = random_hex::<32>();
    (
        format!("{PREFIX}{id}_{secret}"),
        hash_secret(&secret).to_vec(),
    )
}

fn channel_mac(hash: &[u8; 32], id: &str) -> [u8; 16] {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(hash).expect("HMAC takes any key length");
    mac.update(b"brb-ofrep-events\0");
    mac.update(id.as_bytes());
    let full = mac.finalize().into_bytes();
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

/// Splits `brb_<id>_<secret>`.
fn split(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (!id.is_empty() && !secret.is_empty()).then_some((id, secret))
}

fn earliest(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl TokenBook {
    pub fn new(env_admin_token: Option<&str>) -> Self {
        TokenBook {
            by_id: RwLock::new(HashMap::new()),
            env_admin_hash: env_admin_token.filter(|t| !t.is_empty()).map(hash_secret),
            generation: watch::Sender::new(0),
            uses: Mutex::new(HashMap::new()),
            streams: Mutex::new(HashMap::new()),
        }
    }

    pub fn has_env_admin(&self) -> bool {
        self.env_admin_hash.is_some()
    }

    /// Replaces the stored tokens with `records` (at start, and when another replica created,
    /// rotated or revoked one), keeping this process's ephemeral tokens.
    pub fn load(&self, records: &[TokenRecord]) {
        {
            let mut map = self.by_id.write().unwrap_or_else(|e| e.into_inner());
            map.retain(|_, c| c.ephemeral);
            for r in records {
                Self::insert_locked(&mut map, r, false);
            }
        }
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn upsert(&self, record: &TokenRecord) {
        {
            let mut map = self.by_id.write().unwrap_or_else(|e| e.into_inner());
            Self::insert_locked(&mut map, record, false);
        }
        self.generation.send_modify(|g| *g += 1);
    }

    fn insert_locked(map: &mut HashMap<String, Cached>, r: &TokenRecord, ephemeral: bool) {
        let Ok(hash) = <[u8; 32]>::try_from(r.secret_hash.as_slice()) else {
            tracing::warn!(token_id = %r.id, "stored token hash has the wrong length; ignoring");
            return;
        };
        let previous = r.policy.previous.as_ref().and_then(|p| {
            let bytes = hex::decode(&p.secret_hash).ok()?;
            Some((<[u8; 32]>::try_from(bytes.as_slice()).ok()?, p.valid_until))
        });
        map.insert(
            r.id.clone(),
            Cached {
                name: r.name.clone(),
                role: r.role,
                hash,
                revoked: r.revoked_at.is_some(),
                ephemeral,
                expires_at: r.policy.expires_at,
                scope: r.policy.scope.clone(),
                previous,
            },
        );
    }

    /// Adds a token that lives only in this process (never stored): used by the in-process
    /// demo workload, which must authenticate like any external worker.
    pub fn add_ephemeral(&self, name: &str, role: Role) -> String {
        let t = mint(name, role);
        let mut map = self.by_id.write().unwrap_or_else(|e| e.into_inner());
        Self::insert_locked(&mut map, &t.record, true);
        t.secret
    }

    /// Checks a bearer token. The error message never repeats the token.
    pub fn verify(&self, token: &str) -> Result<Verified, ApiError> {
        if let Some(env) = &self.env_admin_hash
            && bool::from(hash_secret(token).ct_eq(env))
        {
            return Ok(Verified {
                name: "admin".to_string(),
                role: Role::Admin,
                token_id: None,
                scope: None,
                via_previous: false,
                valid_until: None,
            });
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
        let presented = hash_secret(secret);
        let now = Utc::now();
        let via_previous = if bool::from(presented.ct_eq(&c.hash)) {
            false
        } else {
            match &c.previous {
                Some((old, until)) if bool::from(presented.ct_eq(old)) => {
                    if *until <= now {
                        return Err(ApiError::new(
                            ErrorCode::TokenExpired,
                            "this secret was replaced by a rotation and its grace period has \
                             ended; use the new secret",
                        ));
                    }
                    true
                }
                _ => return Err(ApiError::unauthorized("unknown token")),
            }
        };
        if c.revoked {
            return Err(ApiError::unauthorized("this token has been revoked"));
        }
        if let Some(exp) = c.expires_at
            && exp <= now
        {
            return Err(ApiError::new(
                ErrorCode::TokenExpired,
                format!("token {:?} expired at {}", c.name, exp.to_rfc3339()),
            ));
        }
        let grace = via_previous.then(|| c.previous.map(|(_, u)| u)).flatten();
        Ok(Verified {
            name: c.name.clone(),
            role: c.role,
            token_id: Some(id.to_string()),
            scope: c.scope.clone(),
            via_previous,
            valid_until: earliest(c.expires_at, grace),
        })
    }

    /// The OFREP event channel of a stored token: `<id>.<mac>`, a MAC of the id keyed by the
    /// hash of the token's current secret. It goes into a URL (a browser's `EventSource` sends
    /// no header), so it is not the token: it opens only the notify-only OFREP event stream of
    /// that token's switches, the same on every replica, and stops working when the token is
    /// revoked, expires or is rotated. None for the `BRB_ADMIN_TOKEN` token (no id).
    pub fn event_channel(&self, id: &str) -> Option<String> {
        let map = self.by_id.read().unwrap_or_else(|e| e.into_inner());
        let c = map.get(id)?;
        Some(format!("{id}.{}", hex::encode(channel_mac(&c.hash, id))))
    }

    /// Checks an OFREP event channel as [`TokenBook::verify`] checks a token.
    pub fn verify_channel(&self, channel: &str) -> Result<Verified, ApiError> {
        let bad = || ApiError::unauthorized("unknown or outdated event channel");
        let (id, mac) = channel.split_once('.').ok_or_else(bad)?;
        let mac = hex::decode(mac).map_err(|_| bad())?;
        let map = self.by_id.read().unwrap_or_else(|e| e.into_inner());
        let c = map.get(id).ok_or_else(bad)?;
        if !bool::from(channel_mac(&c.hash, id).as_slice().ct_eq(&mac)) {
            return Err(bad());
        }
        if c.revoked {
            return Err(ApiError::unauthorized("this token has been revoked"));
        }
        if c.expires_at.is_some_and(|e| e <= Utc::now()) {
            return Err(ApiError::new(
                ErrorCode::TokenExpired,
                "this token has expired",
            ));
        }
        Ok(Verified {
            name: c.name.clone(),
            role: c.role,
            token_id: Some(id.to_string()),
            scope: c.scope.clone(),
            via_previous: false,
            valid_until: c.expires_at,
        })
    }

    /// Whether an earlier authentication still stands (for open streams).
    pub fn still_valid(&self, id: &str, via_previous: bool) -> bool {
        let map = self.by_id.read().unwrap_or_else(|e| e.into_inner());
        let Some(c) = map.get(id) else {
            return false;
        };
        let now = Utc::now();
        !c.revoked
            && c.expires_at.is_none_or(|e| e > now)
            && (!via_previous || c.previous.is_some_and(|(_, u)| u > now))
    }

    /// Changes to the token table, for streams that must end when their token goes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// The next instant after `now` at which some token expires or a rotation grace ends.
    pub fn next_deadline(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let map = self.by_id.read().unwrap_or_else(|e| e.into_inner());
        map.values()
            .filter(|c| !c.revoked)
            .flat_map(|c| [c.expires_at, c.previous.map(|(_, u)| u)])
            .flatten()
            .filter(|t| *t > now)
            .min()
    }

    /// Notes a successful use; written to the store in batches (`AppState::flush_token_uses`,
    /// through [`TokenBook::take_uses`]).
    pub fn record_use(&self, id: &str, addr: Option<String>) {
        let mut uses = self.uses.lock().unwrap_or_else(|e| e.into_inner());
        uses.insert(id.to_string(), (Utc::now(), addr));
    }

    /// Takes the uses noted since the last call.
    pub fn take_uses(&self) -> Vec<brb_store::TokenUse> {
        let mut uses = self.uses.lock().unwrap_or_else(|e| e.into_inner());
        uses.drain()
            .map(|(id, (at, addr))| brb_store::TokenUse { id, at, addr })
            .collect()
    }

    fn open_stream(&self, id: &str, max: usize) -> bool {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        let n = streams.entry(id.to_string()).or_insert(0);
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    fn close_stream(&self, id: &str) {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = streams.get_mut(id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                streams.remove(id);
            }
        }
    }
}

/// Held by every open event stream or long-poll: counts it against its token's cap, and
/// resolves [`StreamLease::ended`] when the token is revoked, expires, or its rotation grace
/// ends, on this replica or (through the token reload) any other.
pub struct StreamLease {
    state: AppState,
    token_id: Option<String>,
    via_previous: bool,
    valid_until: Option<DateTime<Utc>>,
    changes: watch::Receiver<u64>,
}

impl StreamLease {
    /// For event streams, checked whenever the stream wakes (no future of its own: one per
    /// stream would cost a lock on every event; see `sse.rs`). A token-table change, and each
    /// expiry or grace deadline, wakes every stream through the hub (`AppState::
    /// spawn_token_watch`), so this runs at the right moments.
    pub fn is_over(&mut self) -> bool {
        let Some(id) = &self.token_id else {
            return false;
        };
        if self.valid_until.is_some_and(|u| u <= Utc::now()) {
            tracing::info!(token_id = %id, "token expired; ending its stream");
            return true;
        }
        if self.changes.has_changed().unwrap_or(false) {
            self.changes.mark_unchanged();
            if !self.state.tokens().still_valid(id, self.via_previous) {
                tracing::info!(token_id = %id, "token no longer valid; ending its stream");
                return true;
            }
        }
        false
    }
}

impl StreamLease {
    pub fn acquire(state: &AppState, caller: &Caller) -> Result<StreamLease, ApiError> {
        if let Some(id) = &caller.token_id {
            let max = state.config().abuse.max_streams_per_token;
            if !state.tokens().open_stream(id, max) {
                tracing::warn!(token = %caller.name, max, "event stream cap reached");
                return Err(ApiError::rate_limited(
                    ErrorCode::TooManyStreams,
                    format!(
                        "token {:?} already holds {max} open event streams",
                        caller.name
                    ),
                    5,
                ));
            }
        }
        Ok(StreamLease {
            state: state.clone(),
            token_id: caller.token_id.clone(),
            via_previous: caller.via_previous,
            valid_until: caller.valid_until,
            changes: state.tokens().changes(),
        })
    }

    /// Resolves when the stream must end because its token no longer authenticates.
    pub async fn ended(&mut self) {
        let Some(id) = self.token_id.clone() else {
            return std::future::pending().await;
        };
        let deadline = self.valid_until.map(|u| {
            let left = (u - Utc::now()).to_std().unwrap_or_default();
            tokio::time::Instant::now() + left
        });
        loop {
            tokio::select! {
                r = self.changes.changed() => {
                    if r.is_err() {
                        return std::future::pending().await;
                    }
                    if !self.state.tokens().still_valid(&id, self.via_previous) {
                        tracing::info!(token_id = %id, "token no longer valid; ending its stream");
                        return;
                    }
                }
                _ = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => {
                    tracing::info!(token_id = %id, "token expired; ending its stream");
                    return;
                }
            }
        }
    }
}

impl Drop for StreamLease {
    fn drop(&mut self) {
        if let Some(id) = &self.token_id {
            self.state.tokens().close_stream(id);
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Caller::authenticate(parts, state, bearer(parts))
    }
}

impl Caller {
    /// Verifies `token`, taken from whichever header the endpoint accepts (`bearer` here; the
    /// OFREP endpoints also take `X-API-Key`), with the same use records and failure limits
    /// everywhere.
    pub(crate) fn authenticate(
        parts: &Parts,
        state: &AppState,
        token: Result<&str, ApiError>,
    ) -> Result<Caller, ApiError> {
        Caller::from_verified(parts, state, token.and_then(|t| state.tokens().verify(t)))
    }

    /// The caller once a credential was checked (a token, or an OFREP event channel).
    pub(crate) fn from_verified(
        parts: &Parts,
        state: &AppState,
        verified: Result<Verified, ApiError>,
    ) -> Result<Caller, ApiError> {
        let remote_addr = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        match verified {
            Ok(v) => {
                if let Some(id) = &v.token_id {
                    state
                        .tokens()
                        .record_use(id, remote_addr.map(|a| a.ip().to_string()));
                }
                Ok(Caller {
                    name: v.name,
                    role: v.role,
                    token_id: v.token_id,
                    scope: v.scope,
                    via_previous: v.via_previous,
                    valid_until: v.valid_until,
                    remote_addr,
                    client_cert: parts
                        .extensions
                        .get::<crate::tls::ClientCert>()
                        .map(|c| c.0.clone()),
                })
            }
            Err(e) => {
                state.metrics().auth_failure();
                let ip = remote_addr.map(|a| a.ip());
                if let Some(retry) = ip.and_then(|ip| state.limits().auth_failure(ip)) {
                    tracing::warn!(remote = ?remote_addr, "authentication failures over the limit");
                    return Err(ApiError::rate_limited(
                        ErrorCode::RateLimited,
                        "too many failed authentications from this address; slow down",
                        retry,
                    ));
                }
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

pub(crate) fn bearer(parts: &Parts) -> Result<&str, ApiError> {
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
        let v = book.verify(&t.secret).unwrap();
        assert_eq!((v.name.as_str(), v.role), ("ci", Role::Operator));
        assert_eq!(v.token_id.as_deref(), Some(t.record.id.as_str()));

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
    fn expiry_rotation_grace_and_stream_validity() {
        let book = TokenBook::new(None);
        let t = mint("ci", Role::Operator);
        let mut rec = t.record.clone();
        rec.policy.expires_at = Some(Utc::now() - chrono::Duration::seconds(1));
        book.upsert(&rec);
        assert_eq!(
            book.verify(&t.secret).unwrap_err().code,
            ErrorCode::TokenExpired
        );
        assert!(!book.still_valid(&rec.id, false));

        let until = Utc::now() + chrono::Duration::hours(1);
        rec.policy.expires_at = Some(until);
        book.upsert(&rec);
        assert_eq!(book.verify(&t.secret).unwrap().valid_until, Some(until));

        // Rotate: the new secret works, the old one too until its grace ends.
        let (new_secret, new_hash) = mint_secret(&rec.id);
        let grace = Utc::now() + chrono::Duration::minutes(5);
        rec.policy.previous = Some(brb_store::PreviousSecret {
            secret_hash: hex::encode(&rec.secret_hash),
            valid_until: grace,
        });
        rec.secret_hash = new_hash;
        book.upsert(&rec);
        let new = book.verify(&new_secret).unwrap();
        assert!(!new.via_previous);
        let old = book.verify(&t.secret).unwrap();
        assert!(old.via_previous);
        assert_eq!(
            old.valid_until,
            Some(grace),
            "the earlier of expiry and grace"
        );
        rec.policy.previous = Some(brb_store::PreviousSecret {
            secret_hash: rec.policy.previous.unwrap().secret_hash,
            valid_until: Utc::now() - chrono::Duration::seconds(1),
        });
        book.upsert(&rec);
        assert_eq!(
            book.verify(&t.secret).unwrap_err().code,
            ErrorCode::TokenExpired
        );
        assert!(!book.still_valid(&rec.id, true));
        assert!(book.still_valid(&rec.id, false));
        assert!(book.verify(&new_secret).is_ok());
    }

    #[test]
    fn scopes_limit_switches_and_direction() {
        let caller = Caller {
            name: "button".into(),
            role: Role::Operator,
            token_id: Some("b".into()),
            scope: Some(TokenScope {
                switches: vec!["workers".into()],
                pause_only: true,
            }),
            via_previous: false,
            valid_until: None,
            remote_addr: None,
            client_cert: None,
        };
        assert!(caller.check_change("workers", SwitchState::Paused).is_ok());
        assert_eq!(
            caller
                .check_change("workers", SwitchState::Running)
                .unwrap_err()
                .code,
            ErrorCode::OutOfScope
        );
        assert_eq!(
            caller
                .check_change("emails", SwitchState::Paused)
                .unwrap_err()
                .code,
            ErrorCode::OutOfScope
        );
        assert!(caller.require_unscoped().is_err());
    }

    #[test]
    fn env_admin_token() {
        let book = TokenBook::new(Some("let-me-in-0123456789"));
        let v = book.verify("let-me-in-0123456789").unwrap();
        assert_eq!(
            (v.name.as_str(), v.role, v.token_id),
            ("admin", Role::Admin, None)
        );
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
