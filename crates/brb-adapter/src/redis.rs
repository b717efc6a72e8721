//! A minimal Redis client: one connection, one command at a time, RESP2, every round trip
//! under a timeout. The adapters need a handful of commands (`SET`, `DEL`, `HGET`, `HSET`,
//! `EVAL`...), and a client of our own keeps the dependency graph as it is; the codec (bytes
//! in, values out, no I/O) is `brb-resp`, shared with `brb-bench`.
//!
//! `redis://[user:password@]host[:port][/db]` is understood; `rediss://` (TLS) is refused with
//! a clear error rather than silently sent in clear text.

use std::time::Duration;

pub use brb_resp::Value;
use brb_resp::{MAX_BULK, RespError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one round trip (or the connect) may take.
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("invalid Redis URL {url:?}: {why}")]
    Url { url: String, why: String },
    #[error("cannot reach redis at {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("redis at {addr} did not answer within {secs} s")]
    Timeout { addr: String, secs: u64 },
    #[error("connection to redis at {addr} lost: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("redis at {addr} refused {command}: {message}")]
    Refused {
        addr: String,
        command: String,
        message: String,
    },
    #[error("redis at {addr} answered something that is not RESP: {why}")]
    Protocol { addr: String, why: &'static str },
}

/// Where the broker is.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    pub host: String,
    pub port: u16,
    pub db: u32,
    pub user: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password.
        write!(f, "{self}")
    }
}

impl std::fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "redis://{}:{}/{}", self.host, self.port, self.db)
    }
}

impl RedisUrl {
    pub fn parse(url: &str) -> Result<Self, RedisError> {
        let bad = |why: &str| RedisError::Url {
            // The password stays out of the error.
            url: url.split('@').next_back().unwrap_or(url).to_string(),
            why: why.to_string(),
        };
        let rest = if let Some(r) = url.strip_prefix("redis://") {
            r
        } else if url.starts_with("rediss://") {
            return Err(bad("TLS (rediss://) is not supported by the adapter"));
        } else {
            return Err(bad("must start with redis://"));
        };
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((a, r)) => (Some(a), r),
            None => (None, rest),
        };
        let (hostport, db) = match rest.split_once('/') {
            Some((h, "")) => (h, 0),
            Some((h, d)) => (
                h,
                d.parse::<u32>()
                    .map_err(|_| bad("the database after / must be a number"))?,
            ),
            None => (rest, 0),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, p) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
            (h.to_string(), p.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            Some(p) => p.parse().map_err(|_| bad("the port must be a number"))?,
            None => 6379,
        };
        let (user, password) = match auth {
            None => (None, None),
            Some(a) => match a.split_once(':') {
                Some((u, p)) => ((!u.is_empty()).then(|| u.to_string()), Some(p.to_string())),
                None => (None, Some(a.to_string())),
            },
        };
        Ok(RedisUrl {
            host,
            port,
            db,
            user,
            password,
        })
    }

    fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// One connection, authenticated and on its database.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    addr: String,
}

impl Conn {
    /// Connects, authenticates (`AUTH`) and selects the database. A wrong password, a
    /// database that does not exist or a server that refuses comes back as `Refused`.
    pub async fn open(url: &RedisUrl) -> Result<Conn, RedisError> {
        let addr = url.addr();
        let stream = match tokio::time::timeout(TIMEOUT, TcpStream::connect(&addr)).await {
            Err(_) => {
                return Err(RedisError::Timeout {
                    addr,
                    secs: TIMEOUT.as_secs(),
                });
            }
            Ok(Err(source)) => return Err(RedisError::Connect { addr, source }),
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        let mut c = Conn {
            stream,
            buf: Vec::new(),
            addr,
        };
        if let Some(pw) = &url.password {
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(u) = &url.user {
                args.push(u.as_bytes());
            }
            args.push(pw.as_bytes());
            c.call(&args).await?;
        }
        if url.db != 0 {
            c.call(&[b"SELECT", url.db.to_string().as_bytes()]).await?;
        }
        // Proves the server answers commands (a server still loading its data set refuses).
        c.call(&[b"PING"]).await?;
        Ok(c)
    }

    /// Sends one command and reads its reply; a Redis error reply is `Refused`.
    pub async fn call(&mut self, args: &[&[u8]]) -> Result<Value, RedisError> {
        let command = args
            .first()
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .unwrap_or_default();
        let secs = TIMEOUT.as_secs();
        let v = match tokio::time::timeout(TIMEOUT, self.round_trip(args)).await {
            Err(_) => {
                return Err(RedisError::Timeout {
                    addr: self.addr.clone(),
                    secs,
                });
            }
            Ok(r) => r?,
        };
        match v {
            Value::Error(message) => Err(RedisError::Refused {
                addr: self.addr.clone(),
                command,
                message,
            }),
            v => Ok(v),
        }
    }

    async fn round_trip(&mut self, args: &[&[u8]]) -> Result<Value, RedisError> {
        let io = |addr: &str, source| RedisError::Io {
            addr: addr.to_string(),
            source,
        };
        self.stream
            .write_all(&brb_resp::command(args))
            .await
            .map_err(|e| io(&self.addr, e))?;
        loop {
            match brb_resp::parse(&self.buf) {
                Ok(Some((v, used))) => {
                    self.buf.drain(..used);
                    return Ok(v);
                }
                Ok(None) => {}
                Err(RespError::Invalid(why)) => {
                    return Err(RedisError::Protocol {
                        addr: self.addr.clone(),
                        why,
                    });
                }
            }
            if self.buf.len() > MAX_BULK + 64 {
                return Err(RedisError::Protocol {
                    addr: self.addr.clone(),
                    why: "reply too large",
                });
            }
            let mut chunk = [0u8; 4096];
            let n = self
                .stream
                .read(&mut chunk)
                .await
                .map_err(|e| io(&self.addr, e))?;
            if n == 0 {
                return Err(io(
                    &self.addr,
                    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed by the server"),
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = RedisUrl::parse("redis://127.0.0.1:6390/3").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.db), ("127.0.0.1", 6390, 3));
        let u = RedisUrl::parse("redis://bob:s3cret@cache").unwrap();
        assert_eq!(
            (u.user.as_deref(), u.password.as_deref(), u.port, u.db),
            (Some("bob"), Some("s3cret"), 6379, 0)
        );
        assert!(!format!("{u:?} {u}").contains("s3cret"));
        let u = RedisUrl::parse("redis://:pw@[::1]:7000/").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.user), ("::1", 7000, None));
        for bad in [
            "http://x",
            "rediss://x",
            "redis://",
            "redis://h:port",
            "redis://h/x",
        ] {
            assert!(RedisUrl::parse(bad).is_err(), "{bad}");
        }
        let e = RedisUrl::parse("redis://u:hunter2@h:x").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
}
