//! The desktop app's connect screen without a display: "Test connection" names the step that
//! failed (URL, DNS, TCP, TLS, 401, wrong server) against the real `brb server` over TLS with a
//! CA made at test time, and a profile with bad input is refused with a message naming the
//! field. (Tokens in the OS keychain are tested with a real Secret Service in
//! ui/tests/desktop-connect.e2e.mjs.)
#![allow(clippy::unwrap_used)]

use std::path::Path;

use brb_api::{CreateTokenRequest, Role};
use brb_client::{Client, TlsOptions};
use brb_desktop::probe::{ProbeStep, probe};
use brb_desktop::profiles::{ProfileDraft, validate};
use brb_desktop::{Profile, Settings};
use brb_e2e::ServerProc;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

fn ca_and_leaf(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "brb desktop test CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let mut leaf =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, "brb");
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let (ca, c, k) = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&ca, issuer.pem()).unwrap();
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (ca, c, k)
}

/// A port nobody listens on: bound by the OS, then released.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_connection_names_the_step_that_failed() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = ca_and_leaf(dir.path());
    let server = ServerProc::start(
        &dir.path().join("data"),
        &[
            ("BRB_TLS_CERT", cert.to_str().unwrap()),
            ("BRB_TLS_KEY", key.to_str().unwrap()),
            ("BRB_ENVIRONMENT", "staging"),
            ("BRB_ENVIRONMENT_COLOR", "#f9a825"),
        ],
    );
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let admin = server.admin_token();
    let with_ca = TlsOptions {
        ca_file: Some(ca.clone()),
        ..TlsOptions::default()
    };
    let url = server.url.clone();

    let ok = probe(&url, Some(&admin), &with_ca).await;
    assert_eq!(ok.step, ProbeStep::Ok, "{ok:?}");
    let env = ok.environment.clone().unwrap();
    assert_eq!(
        (env.name.as_str(), env.color.as_str()),
        ("staging", "#f9a825")
    );
    assert!(ok.message.contains("can pause"), "{}", ok.message);

    // A viewer token connects, and the person is told it cannot pause.
    let admin_client = Client::with_tls(&[url.as_str()], Some(admin.clone()), &with_ca).unwrap();
    let viewer = admin_client
        .create_token(&CreateTokenRequest {
            name: "wall-screen".into(),
            role: Role::Viewer,
            expires_at: None,
            scope: None,
        })
        .await
        .unwrap();
    let v = probe(&url, Some(&viewer.secret), &with_ca).await;
    assert_eq!(
        (v.step, v.role),
        (ProbeStep::Ok, Some(Role::Viewer)),
        "{v:?}"
    );
    assert!(v.message.contains("NOT pause"), "{}", v.message);

    let tls = probe(&url, Some(&admin), &TlsOptions::default()).await;
    assert_eq!(tls.step, ProbeStep::Tls, "{tls:?}");
    assert!(tls.message.contains("CA file"), "{}", tls.message);

    let refused = probe(&url, Some("brb_not_a_real_token"), &with_ca).await;
    assert_eq!(refused.step, ProbeStep::Unauthorized, "{refused:?}");
    assert!(refused.message.contains("401"), "{}", refused.message);

    // Plain HTTP to the TLS port: something answers, but not our API.
    let plain = url.replace("https://", "http://");
    let wrong = probe(&plain, Some(&admin), &with_ca).await;
    assert_eq!(wrong.step, ProbeStep::WrongServer, "{wrong:?}");

    // Another web server on the address (a proxy's page, a different service).
    let other = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other_url = format!("http://{}", other.local_addr().unwrap());
    let app = axum::Router::new()
        .fallback(|| async { axum::response::Html("<html><body>Welcome to nginx!</body></html>") });
    let web = tokio::spawn(async move { axum::serve(other, app).await });
    let html = probe(&other_url, Some(&admin), &TlsOptions::default()).await;
    assert_eq!(html.step, ProbeStep::WrongServer, "{html:?}");
    assert!(
        html.message.contains("not a Big Red Button"),
        "{}",
        html.message
    );
    web.abort();

    let port = closed_port();
    let closed = probe(
        &format!("http://127.0.0.1:{port}"),
        Some(&admin),
        &TlsOptions::default(),
    )
    .await;
    assert_eq!(closed.step, ProbeStep::Connect, "{closed:?}");

    // `.invalid` never resolves (RFC 2606).
    let dns = probe(
        "https://brb-control-plane.invalid:7070",
        Some(&admin),
        &with_ca,
    )
    .await;
    assert_eq!(dns.step, ProbeStep::Dns, "{dns:?}");
    assert!(
        dns.message.contains("brb-control-plane.invalid"),
        "{}",
        dns.message
    );

    let bad = probe("ftp://example", None, &TlsOptions::default()).await;
    assert_eq!(bad.step, ProbeStep::Settings, "{bad:?}");
}

fn draft(name: &str, urls: &[&str], token: Option<&str>) -> ProfileDraft {
    ProfileDraft {
        name: name.into(),
        urls: urls.iter().map(|u| u.to_string()).collect(),
        token: token.map(str::to_string),
        ..ProfileDraft::default()
    }
}

#[test]
fn bad_profiles_are_refused_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::default();
    settings.profiles.push(Profile {
        name: "production".into(),
        urls: vec!["https://brb.example:7070".into()],
        token: None,
        ca_file: None,
        client_cert: None,
        client_key: None,
        insecure_http: false,
        color: None,
        from_env: false,
    });
    let fails = |d: ProfileDraft, replacing: Option<&str>| match validate(&d, &settings, replacing)
    {
        Ok(p) => panic!("accepted {p:?}"),
        Err(e) => e.to_string(),
    };
    let good = ["https://a.example:7070", "https://b.example:7070"];
    assert!(fails(draft(" ", &good, Some("t")), None).starts_with("Name:"));
    assert!(fails(draft("production", &good, Some("t")), None).contains("exists already"));
    assert!(fails(draft("staging", &[], Some("t")), None).starts_with("URLs:"));
    assert!(fails(draft("staging", &["brb.example"], Some("t")), None).starts_with("URLs:"));
    // Plain HTTP beyond loopback needs the explicit allowance (the client's own rule).
    assert!(
        fails(draft("staging", &["http://10.0.0.5:7070"], Some("t")), None).starts_with("URLs:")
    );
    assert!(fails(draft("staging", &good, None), None).starts_with("Token:"));
    let mut d = draft("staging", &good, Some("t"));
    d.ca_file = Some(dir.path().join("missing.pem").display().to_string());
    assert!(fails(d, None).starts_with("CA file:"));
    let cert = dir.path().join("client.pem");
    std::fs::write(&cert, "x").unwrap();
    let mut d = draft("staging", &good, Some("t"));
    d.client_cert = Some(cert.display().to_string());
    assert!(fails(d, None).starts_with("Client certificate:"));
    let mut d = draft("staging", &good, Some("t"));
    d.color = Some("red".into());
    assert!(fails(d, None).starts_with("Colour:"));

    // Good: several replicas, one per line; editing keeps the saved token when none is pasted.
    let p = validate(
        &draft(
            "staging",
            &["https://a.example:7070\nhttps://b.example:7070/"],
            Some("t"),
        ),
        &settings,
        None,
    )
    .unwrap();
    assert_eq!(p.urls, good);
    assert_eq!(p.token, None, "the token is never part of the profile");
    assert!(
        validate(
            &draft("production", &good, None),
            &settings,
            Some("production")
        )
        .is_ok()
    );
}

/// The desktop app names the environment in a notification from the control plane's own
/// answer, whether or not its window has asked anything yet: `forward_events` reads the info
/// before the stream opens, so a change right after start-up is "[staging] Workers PAUSED",
/// neither an empty "[]" nor the profile's own name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_change_is_announced_with_the_environment_before_the_window_asks() {
    use brb_api::{Source, SwitchState};
    use brb_desktop::{Announcer, Forwarded, forward_events};
    use brb_e2e::calls::set_workers_via;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data"), &[("BRB_ENVIRONMENT", "staging")]);
    let client = Client::new(&[server.url.as_str()], Some(server.admin_token())).unwrap();
    let profile = Profile {
        name: "my-laptop".into(),
        urls: vec![server.url.clone()],
        token: None,
        ca_file: None,
        client_cert: None,
        client_key: None,
        insecure_http: false,
        color: None,
        from_env: false,
    };
    let mut announcer = Announcer::new(Some(&profile));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let forward = tokio::spawn(forward_events(client.clone(), move |f| {
        let _ = tx.send(f);
    }));
    // Until the stream's first event (the state as it is): what came before it.
    let mut before_first = Vec::new();
    loop {
        let f = tokio::time::timeout(std::time::Duration::from_secs(20), rx.recv())
            .await
            .expect("the stream's first event within 20 s")
            .expect("forwarding runs");
        assert_eq!(
            announcer.take(&f),
            None,
            "the first state seen is not a change"
        );
        if matches!(&f, Forwarded::Event(e, _) if e == "switch") {
            break;
        }
        before_first.push(f);
    }
    assert!(
        before_first
            .iter()
            .any(|f| matches!(f, Forwarded::Info(i) if i.environment.name == "staging")),
        "the info came before the first event: {before_first:?}"
    );
    set_workers_via(&client, SwitchState::Paused, "db on fire", Source::Cli).await;
    let (title, body) = loop {
        let f = tokio::time::timeout(std::time::Duration::from_secs(20), rx.recv())
            .await
            .expect("the change is forwarded within 20 s")
            .expect("forwarding runs");
        if let Some(n) = announcer.take(&f) {
            break n;
        }
    };
    forward.abort();
    assert_eq!(title, "[staging] Workers PAUSED");
    assert_eq!(body, "by admin from cli: db on fire");
}
