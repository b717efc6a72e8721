//! A fault-injecting TCP proxy on loopback: the chaos test's network where it cannot make
//! network namespaces. It accepts, connects upstream and forwards bytes both ways; a fault
//! makes it hold everything (the peers hear nothing, as with dropped packets), reset every
//! connection, or forward each chunk late.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    Pass,
    /// Forward nothing, accept and hold new connections; on heal, what was held flows on.
    Blackhole,
    /// Reset the open connections, and every new one right after accepting it.
    Refuse,
    /// Forward each chunk this late.
    Delay(Duration),
}

struct Shared {
    cut: watch::Sender<Cut>,
    /// Bumped to reset every open connection.
    generation: watch::Sender<u64>,
}

pub struct Proxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            cut: watch::channel(Cut::Pass).0,
            generation: watch::channel(0).0,
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    // EMFILE and the like: try again shortly rather than spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                if *s.cut.borrow() == Cut::Refuse {
                    reset(conn);
                    continue;
                }
                tokio::spawn(connection(conn, upstream, s.clone()));
            }
        });
        Ok(Proxy {
            addr,
            upstream,
            shared,
            task,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    pub fn set(&self, cut: Cut) {
        self.shared.cut.send_replace(cut);
        if cut == Cut::Refuse {
            self.shared.generation.send_modify(|g| *g += 1);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        // Open connections end with the proxy.
        self.shared.cut.send_replace(Cut::Refuse);
        self.shared.generation.send_modify(|g| *g += 1);
    }
}

/// Closes with a reset rather than a FIN, as a refusing host does.
// `set_linger` is deprecated because a non-zero linger blocks the thread on drop; a zero
// linger never blocks: it is how a reset is sent.
#[allow(deprecated)]
fn reset(conn: TcpStream) {
    let _ = conn.set_linger(Some(Duration::ZERO));
    drop(conn);
}

async fn connection(mut client: TcpStream, upstream: SocketAddr, s: Arc<Shared>) {
    let mut gen_rx = s.generation.subscribe();
    let mut cut = s.cut.subscribe();
    // A blackholed link lets no connection through: hold the client until the heal.
    let held = async {
        let _ = cut.wait_for(|c| *c != Cut::Blackhole).await;
    };
    tokio::select! {
        _ = held => {}
        _ = gen_rx.changed() => return reset(client),
    }
    if *s.cut.borrow() == Cut::Refuse {
        return reset(client);
    }
    let Ok(mut up) = TcpStream::connect(upstream).await else {
        // The upstream is down (killed): the client hears a reset, as from the host itself.
        return reset(client);
    };
    let _ = client.set_nodelay(true);
    let _ = up.set_nodelay(true);
    let cut_rx = s.cut.subscribe();
    let refused = {
        let (mut cr, mut cw) = client.split();
        let (mut ur, mut uw) = up.split();
        let both = async {
            tokio::try_join!(
                pump(&mut cr, &mut uw, cut_rx.clone()),
                pump(&mut ur, &mut cw, cut_rx.clone())
            )
        };
        tokio::select! {
            _ = both => false,
            _ = gen_rx.changed() => true,
        }
    };
    if refused || *s.cut.borrow() == Cut::Refuse {
        reset(client);
        reset(up);
    }
}

/// Copies one direction, chunk by chunk, obeying the cut before each write.
async fn pump(
    from: &mut tokio::net::tcp::ReadHalf<'_>,
    to: &mut tokio::net::tcp::WriteHalf<'_>,
    mut cut: watch::Receiver<Cut>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            // Half-close, so the other direction can still finish.
            let _ = to.shutdown().await;
            return Ok(());
        }
        // Held while blackholed: nothing more is read either, so the sender's buffers fill
        // and it stalls, as behind a link that drops everything.
        let now = *cut
            .wait_for(|c| *c != Cut::Blackhole)
            .await
            .map_err(|_| std::io::Error::other("proxy gone"))?;
        match now {
            // The connection is being reset: forward nothing more.
            Cut::Refuse => return Err(std::io::Error::other("refused")),
            Cut::Delay(d) => tokio::time::sleep(d).await,
            Cut::Pass | Cut::Blackhole => {}
        }
        to.write_all(&buf[..n]).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that answers every chunk with the same bytes.
    async fn echo() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = c.read(&mut buf).await {
                        if n == 0 || c.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn roundtrip(c: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        c.write_all(msg).await?;
        let mut got = vec![0u8; msg.len()];
        c.read_exact(&mut got).await?;
        Ok(got)
    }

    #[tokio::test]
    async fn passes_holds_delays_and_refuses() {
        let p = Proxy::start(echo().await).await.unwrap();
        let mut c = TcpStream::connect(p.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut c, b"one").await.unwrap(), b"one");

        // Blackholed: nothing comes back (bounded wait for an absence), and it arrives once
        // the link heals.
        p.set(Cut::Blackhole);
        c.write_all(b"two").await.unwrap();
        let mut got = [0u8; 3];
        let silent = tokio::time::timeout(Duration::from_millis(300), c.read_exact(&mut got)).await;
        assert!(silent.is_err(), "a blackholed link answered");
        p.set(Cut::Pass);
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"two");

        p.set(Cut::Delay(Duration::from_millis(200)));
        let t = std::time::Instant::now();
        assert_eq!(roundtrip(&mut c, b"three").await.unwrap(), b"three");
        // Each direction waits once.
        assert!(
            t.elapsed() >= Duration::from_millis(400),
            "{:?}",
            t.elapsed()
        );

        // Refused: the open connection is reset, and so is a new one.
        p.set(Cut::Refuse);
        assert!(roundtrip(&mut c, b"four").await.is_err());
        let mut d = TcpStream::connect(p.addr()).await.unwrap();
        assert!(roundtrip(&mut d, b"five").await.is_err());
        p.set(Cut::Pass);
        let mut e = TcpStream::connect(p.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut e, b"six").await.unwrap(), b"six");
    }
}
