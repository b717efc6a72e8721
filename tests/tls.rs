//! TLS end to end: a test CA made at test time (rcgen), the real `brb server` on HTTPS, the
//! SDK, the CLI and an SSE watcher over it; the wrong CA refused with a clear message; mutual
//! TLS; certificate reload (SIGHUP and file change) under a live watcher; and the refusal to
//! serve plain HTTP beyond loopback.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use brb_api::{SetStateRequest, SwitchState};
use brb_client::{Client, EventScope, StreamItem, TlsOptions};
use brb_e2e::{ServerProc, brb_bin, cli, eventually};
use futures_util::StreamExt as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// A CA that can issue server and client certificates.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Ca { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf for `names` (DNS names or IP addresses); returns (cert PEM, key PEM, cert DER).
    fn issue(&self, cn: &str, names: &[&str]) -> (String, String, Vec<u8>) {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Installs a new server certificate the way an operator (or certbot) would: write a temp
/// file, rename over the old one. The new file gets the modification time `mtime`: the server
/// also reloads when a file's modification time changes, so a test of the SIGHUP path keeps
/// the old time (only the signal can then explain a reload), and a test of the file-change
/// path sets a different one.
fn replace(path: &Path, text: &str, mtime: SystemTime) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&tmp)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn mtime(path: &Path) -> SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

/// SHA-256 of a DER certificate, hex, first 16 bytes (the server's own fingerprint format).
fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(&sha2::Sha256::digest(der)[..16])
}

/// The fingerprint of the certificate a fresh handshake with `addr` is shown.
async fn served(addr: &str, ca_pem: &str) -> String {
    fingerprint(&presented_cert(addr, ca_pem).await)
}

/// Polls what a fresh handshake is shown until it is `want`; panics naming `what`, with the
/// server's log, after `limit`.
async fn wait_served(server: &ServerProc, ca_pem: &str, want: &str, limit: Duration, what: &str) {
    let addr = server.url.trim_start_matches("https://");
    let deadline = Instant::now() + limit;
    loop {
        let got = served(addr, ca_pem).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still serving {got}, want {want} after {limit:?}; server log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many lines of the server's log contain every one of `needles`.
fn log_lines(server: &ServerProc, needles: &[&str]) -> usize {
    server
        .log()
        .lines()
        .filter(|l| needles.iter().all(|w| l.contains(w)))
        .count()
}

/// Waits until the server's log has more than `before` lines with every one of `needles`.
async fn wait_log_lines(server: &ServerProc, needles: &[&str], before: usize, limit: Duration) {
    assert!(
        eventually(limit, || log_lines(server, needles) > before).await,
        "no new log line with {needles:?} within {limit:?}; log:\n{}",
        server.log()
    );
}

fn sighup(server: &ServerProc) {
    let rc = Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(rc.success());
}

/// The DER of the leaf certificate a fresh TLS connection to `addr` is shown.
async fn presented_cert(addr: &str, ca_pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn tls_env(cert: &Path, key: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("BRB_TLS_CERT", cert.display().to_string()),
        ("BRB_TLS_KEY", key.display().to_string()),
    ]
}

fn start(data: &Path, env: &[(&'static str, String)]) -> ServerProc {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    ServerProc::start(data, &env)
}

fn pause(reason: &str) -> SetStateRequest {
    SetStateRequest {
        state: SwitchState::Paused,
        reason: Some(reason.into()),
        source: None,
        expected_version: None,
        ramp: None,
        guards: Vec::new(),
    }
}

fn resume() -> SetStateRequest {
    SetStateRequest {
        state: SwitchState::Running,
        reason: None,
        source: None,
        expected_version: None,
        ramp: None,
        guards: Vec::new(),
    }
}

/// Waits for the next state event on `stream` showing `state`.
async fn next_state(
    stream: &mut (impl futures_util::Stream<Item = brb_client::Result<StreamItem>> + Unpin),
    state: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let item = tokio::time::timeout(left, stream.next())
            .await
            .unwrap_or_else(|_| panic!("no {state} event within 10 s"))
            .unwrap_or_else(|| panic!("stream ended before {state}"))
            .unwrap();
        if let StreamItem::Event(ev) = item
            && ev.data.contains(&format!("\"state\":\"{state}\""))
        {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_cli_and_sse_over_tls_and_reload_under_a_live_watcher() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("brb test CA");
    let ca_file = write(dir.path(), "ca.pem", &ca.pem());
    let (c1, k1, der1) = ca.issue("brb-1", &["localhost", "127.0.0.1"]);
    let cert = write(dir.path(), "server.pem", &c1);
    let key = write(dir.path(), "server.key", &k1);
    let server = start(&dir.path().join("data"), &tls_env(&cert, &key));
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let addr = server.url.trim_start_matches("https://").to_string();
    let token = server.admin_token();
    let tls = TlsOptions {
        ca_file: Some(ca_file.clone()),
        ..TlsOptions::default()
    };
    let client = Client::with_tls(&[server.url.as_str()], Some(token.clone()), &tls).unwrap();
    assert_eq!(
        client.switch("workers").await.unwrap().state,
        SwitchState::Running
    );

    // A real SDK gate over TLS sees a pause made by the CLI over TLS.
    let mut gcfg =
        brb_client::GateConfig::new(&[server.url.as_str()], Some(token.clone()), "workers");
    gcfg.tls = tls.clone();
    let gate = brb_client::Gate::start(gcfg).unwrap();
    assert!(
        gate.ready(Duration::from_secs(10)).await,
        "gate connected over TLS"
    );
    assert!(gate.is_open());
    let home = dir.path().join("home");
    let env = [
        ("BRB_URL", server.url.as_str()),
        ("BRB_TOKEN", token.as_str()),
        ("BRB_CA_FILE", ca_file.to_str().unwrap()),
    ];
    let out = cli(&home, &env, &["pause", "--reason", "tls test"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = Instant::now();
    while gate.is_open() {
        assert!(t.elapsed() < Duration::from_secs(10), "gate never closed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let out = cli(&home, &env, &["status", "--json"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("paused"));

    // Without the CA: a clear refusal, never a fallback to plain HTTP.
    let out = cli(&home, &env[..2], &["status"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not trusted") && err.contains("--ca-file"),
        "{err}"
    );
    let other = Ca::new("some other CA");
    let other_file = write(dir.path(), "other-ca.pem", &other.pem());
    let wrong = Client::with_tls(
        &[server.url.as_str()],
        Some(token.clone()),
        &TlsOptions {
            ca_file: Some(other_file),
            ..TlsOptions::default()
        },
    )
    .unwrap();
    let e = wrong.switches().await.unwrap_err();
    assert!(matches!(e, brb_client::ClientError::Unreachable(_)), "{e}");
    assert!(e.to_string().contains("not trusted"), "{e}");

    // An SSE watcher opened on the first certificate...
    let mut watcher = client
        .events(&EventScope::Switch("workers".into()), None)
        .await
        .unwrap();
    client.set_state("workers", &resume()).await.unwrap();
    next_state(&mut watcher, "running").await;
    let fp1 = fingerprint(&der1);
    assert_eq!(served(&addr, &ca.pem()).await, fp1);
    const RELOADED: &str = "TLS certificate reloaded";

    // ...stays connected through a reload on SIGHUP: new handshakes get the new certificate,
    // and the same stream keeps delivering. The new files keep the old modification times,
    // so the file watcher sees nothing: only the signal can make the server serve them.
    let (c2, k2, der2) = ca.issue("brb-2", &["localhost", "127.0.0.1"]);
    let fp2 = fingerprint(&der2);
    assert_ne!(fp1, fp2);
    replace(&key, &k2, mtime(&key));
    replace(&cert, &c2, mtime(&cert));
    assert_eq!(
        served(&addr, &ca.pem()).await,
        fp1,
        "reloaded before the signal"
    );
    let before = log_lines(&server, &[RELOADED, "SIGHUP"]);
    sighup(&server);
    wait_served(
        &server,
        &ca.pem(),
        &fp2,
        Duration::from_secs(10),
        "SIGHUP did not reload",
    )
    .await;
    wait_log_lines(
        &server,
        &[RELOADED, "SIGHUP"],
        before,
        Duration::from_secs(5),
    )
    .await;
    client
        .set_state("workers", &pause("after reload"))
        .await
        .unwrap();
    next_state(&mut watcher, "paused").await;

    // A changed file is picked up without a signal too (the watcher compares modification
    // times every 2 s).
    let (c3, k3, der3) = ca.issue("brb-3", &["localhost", "127.0.0.1"]);
    let fp3 = fingerprint(&der3);
    let later = mtime(&cert) + Duration::from_secs(60);
    let before = log_lines(&server, &[RELOADED, "poll"]);
    replace(&key, &k3, later);
    replace(&cert, &c3, later);
    wait_served(
        &server,
        &ca.pem(),
        &fp3,
        Duration::from_secs(15),
        "file change did not reload",
    )
    .await;
    wait_log_lines(&server, &[RELOADED, "poll"], before, Duration::from_secs(5)).await;
    client.set_state("workers", &resume()).await.unwrap();
    next_state(&mut watcher, "running").await;

    // A broken certificate file is refused and the previous one keeps serving: wait for the
    // server to report that it tried, then look at what it serves.
    let before = log_lines(&server, &["TLS reload failed"]);
    replace(&cert, "not a certificate", later + Duration::from_secs(60));
    sighup(&server);
    wait_log_lines(
        &server,
        &["TLS reload failed"],
        before,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        served(&addr, &ca.pem()).await,
        fp3,
        "a broken file replaced the certificate"
    );
    // The stream still delivers after all three reloads.
    client
        .set_state("workers", &pause("after a failed reload"))
        .await
        .unwrap();
    next_state(&mut watcher, "paused").await;
    drop(gate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_accepts_known_client_certificates_only() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("brb test CA");
    let ca_file = write(dir.path(), "ca.pem", &ca.pem());
    let (c, k, _) = ca.issue("brb", &["localhost", "127.0.0.1"]);
    let cert = write(dir.path(), "server.pem", &c);
    let key = write(dir.path(), "server.key", &k);
    let clients = Ca::new("brb client CA");
    let clients_file = write(dir.path(), "clients.pem", &clients.pem());
    let mut env = tls_env(&cert, &key);
    env.push(("BRB_TLS_CLIENT_CA", clients_file.display().to_string()));
    let server = start(&dir.path().join("data"), &env);
    let token = server.admin_token();

    let (bc, bk, bder) = clients.issue("office-button", &["office-button"]);
    let with_cert = TlsOptions {
        ca_file: Some(ca_file.clone()),
        client_cert: Some(write(dir.path(), "button.pem", &bc)),
        client_key: Some(write(dir.path(), "button.key", &bk)),
        allow_insecure_http: false,
    };
    let ok = Client::with_tls(&[server.url.as_str()], Some(token.clone()), &with_cert).unwrap();
    ok.set_state("workers", &pause("button via mTLS"))
        .await
        .unwrap();
    // The audit names the certificate next to the address.
    let audit = ok.audit(Some("workers"), 1, None).await.unwrap();
    let from = audit.entries[0].remote_addr.clone().unwrap_or_default();
    assert_eq!(from, format!("127.0.0.1 cert:{}", fingerprint(&bder)));

    // No certificate: the handshake fails, with a hint.
    let without = TlsOptions {
        ca_file: Some(ca_file.clone()),
        ..TlsOptions::default()
    };
    let no = Client::with_tls(&[server.url.as_str()], Some(token.clone()), &without).unwrap();
    let e = no.switches().await.unwrap_err();
    assert!(matches!(e, brb_client::ClientError::Unreachable(_)), "{e}");

    // A certificate from a CA the server does not trust: refused too.
    let rogue = Ca::new("rogue CA");
    let (rc, rk, _) = rogue.issue("office-button", &["office-button"]);
    let rogue_opts = TlsOptions {
        ca_file: Some(ca_file),
        client_cert: Some(write(dir.path(), "rogue.pem", &rc)),
        client_key: Some(write(dir.path(), "rogue.key", &rk)),
        allow_insecure_http: false,
    };
    let bad = Client::with_tls(&[server.url.as_str()], Some(token), &rogue_opts).unwrap();
    assert!(bad.switches().await.is_err());
    assert_eq!(
        ok.switch("workers").await.unwrap().state,
        SwitchState::Paused
    );
}

#[test]
fn plain_http_beyond_loopback_is_refused_unless_explicitly_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(brb_bin())
        .args(["server", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path().join("a"))
        .env_remove("BRB_INSECURE_HTTP")
        .env_remove("BRB_CONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to listen on 0.0.0.0:0 without TLS"),
        "{err}"
    );
    assert!(err.contains("--insecure-http"), "{err}");

    let data = dir.path().join("b");
    let server = ServerProc::start_at(&data, "0.0.0.0:0", &[("BRB_INSECURE_HTTP", "1")]);
    assert!(server.url.starts_with("http://0.0.0.0:"), "{}", server.url);
    let log = server.log();
    assert!(
        log.contains("INSECURE: serving plain HTTP beyond loopback"),
        "{log}"
    );

    // The CLI refuses plain HTTP to a non-loopback address unless told too.
    let port = server.url.rsplit(':').next().unwrap().to_string();
    let home = dir.path().join("home");
    let url = format!("http://192.0.2.1:{port}");
    let out = cli(&home, &[("BRB_URL", url.as_str())], &["status"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing plain HTTP"), "{err}");
}
