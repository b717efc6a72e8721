//! The SDK conformance suite: every scenario of `sdk/conformance/scenarios/*.json`, run
//! against real `brb server` processes on loopback, for each SDK through its driver
//! (`sdk/conformance/PROTOCOL.md`; the SDKs and how to start their drivers are listed in
//! `sdk/conformance/sdks.json`). The scenario format is documented in
//! `sdk/conformance/README.md`.
//!
//! The orchestrator does the control plane's side: servers (SQLite, or replicas on a private
//! PostgreSQL), kills and restarts, presses through the API, a TCP proxy of its own that can go
//! down, refuse event streams (502) or buffer them, TLS with a private CA made here (rcgen) and
//! client certificates. The driver only exposes what its SDK knows; every judgement is made here.
//! Nothing sleeps for a fixed time to wait for a result: steps poll the driver's `state` (or
//! the control plane) until a condition holds or its deadline passes.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use brb_api::{CreateSwitchRequest, CreateTokenRequest, Role, SetStateRequest, SwitchState};
use brb_client::{Client, TlsOptions};
use brb_e2e::ServerProc;
use brb_e2e::sdk::{Driver, SdkSpec, repo_root, sdk};
use brb_pgtest::PgCluster;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ----- one test per SDK: add a line here and an entry in sdks.json -----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_rust() {
    run_sdk("rust").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_python() {
    run_sdk("python").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_node() {
    run_sdk("node").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_go() {
    run_sdk("go").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_ruby() {
    run_sdk("ruby").await;
}

/// The scenario files parse, every step is known and every key is used: a typo in a scenario
/// must not silently skip a check.
#[test]
fn scenarios_are_well_formed() {
    let scenarios = load_scenarios().unwrap();
    assert!(scenarios.len() >= 10, "{} scenarios", scenarios.len());
    for s in &scenarios {
        validate(s).unwrap_or_else(|e| panic!("scenario {}: {e}", s.name));
    }
}

// ----- running an SDK through every scenario -----

/// At most this many scenario runs at once in this process (SDK tests run in parallel; two
/// cores do not time 1 s deadlines reliably under more). `BRB_CONFORMANCE_PARALLEL` overrides.
fn parallel_limit() -> usize {
    std::env::var("BRB_CONFORMANCE_PARALLEL")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(2)
}

static SLOTS: Mutex<usize> = Mutex::new(0);
static SLOT_FREED: Condvar = Condvar::new();

struct Slot;

impl Slot {
    fn take() -> Slot {
        let limit = parallel_limit();
        let mut n = SLOTS.lock().unwrap_or_else(|e| e.into_inner());
        while *n >= limit {
            n = SLOT_FREED.wait(n).unwrap_or_else(|e| e.into_inner());
        }
        *n += 1;
        Slot
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        *SLOTS.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        SLOT_FREED.notify_one();
    }
}

async fn run_sdk(name: &str) {
    let spec = sdk(name, false).unwrap_or_else(|e| panic!("{e}"));
    tokio::task::block_in_place(|| spec.run_setup()).unwrap_or_else(|e| panic!("{e}"));
    let only = std::env::var("BRB_CONFORMANCE_SCENARIO").ok();
    let scenarios = load_scenarios().unwrap();
    let mut failures = Vec::new();
    let mut ran = 0;
    for sc in scenarios {
        if only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|o| o == sc.name))
        {
            continue;
        }
        ran += 1;
        let slot = tokio::task::block_in_place(Slot::take);
        let t = Instant::now();
        let res = run_scenario(&spec, &sc).await;
        drop(slot);
        match res {
            Ok(()) => println!("[{name}] {}: passed in {:.1?}", sc.name, t.elapsed()),
            Err(e) => {
                println!("[{name}] {}: FAILED in {:.1?}", sc.name, t.elapsed());
                failures.push(e);
            }
        }
    }
    assert!(
        ran > 0,
        "no scenario ran (BRB_CONFORMANCE_SCENARIO={only:?})"
    );
    assert!(
        failures.is_empty(),
        "{} of {ran} scenarios failed for the {name} SDK:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

// ----- scenarios -----

struct Scenario {
    name: String,
    doc: Value,
}

fn scenario_dir() -> PathBuf {
    repo_root().join("sdk/conformance/scenarios")
}

fn load_scenarios() -> Result<Vec<Scenario>, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(scenario_dir())
        .map_err(|e| format!("{}: {e}", scenario_dir().display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            let doc: Value =
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?;
            let name = doc
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("{}: no name", p.display()))?
                .to_string();
            let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            if stem != name {
                return Err(format!(
                    "{}: name {name:?} is not the file's name",
                    p.display()
                ));
            }
            Ok(Scenario { name, doc })
        })
        .collect()
}

/// An object whose keys must all be read: what is left over at the end is a typo.
struct Args<'a> {
    map: &'a Map<String, Value>,
    used: HashSet<&'static str>,
    what: String,
}

impl<'a> Args<'a> {
    fn new(v: &'a Value, what: impl Into<String>) -> Result<Args<'a>, String> {
        let what = what.into();
        Ok(Args {
            map: v
                .as_object()
                .ok_or_else(|| format!("{what}: not an object"))?,
            used: HashSet::new(),
            what,
        })
    }

    fn get(&mut self, k: &'static str) -> Option<&'a Value> {
        self.used.insert(k);
        self.map.get(k).filter(|v| !v.is_null())
    }

    fn req(&mut self, k: &'static str) -> Result<&'a Value, String> {
        let what = self.what.clone();
        self.get(k)
            .ok_or_else(|| format!("{what}: {k:?} is required"))
    }

    fn str(&mut self, k: &'static str) -> Result<Option<&'a str>, String> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(format!("{}: {k:?} must be a string, not {v}", self.what)),
        }
    }

    fn u64(&mut self, k: &'static str) -> Result<Option<u64>, String> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| format!("{}: {k:?} must be a whole number, not {v}", self.what)),
        }
    }

    fn done(self) -> Result<(), String> {
        let extra: Vec<&String> = self
            .map
            .keys()
            .filter(|k| !self.used.contains(k.as_str()))
            .collect();
        if extra.is_empty() {
            Ok(())
        } else {
            Err(format!("{}: unknown keys {extra:?}", self.what))
        }
    }
}

const STEP_KINDS: &[&str] = &[
    "start",
    "expect",
    "hold",
    "send",
    "await",
    "pause",
    "resume",
    "toggle",
    "drill",
    "mark",
    "kill",
    "restart",
    "proxy",
    "expect_proxy",
    "expect_workers",
    "expect_log",
    "count_metric",
    "reconnect_spread",
];

/// Structural checks that need no server: known steps, known keys (each step's keys are
/// checked when it runs, too).
fn validate(s: &Scenario) -> Result<(), String> {
    let mut top = Args::new(&s.doc, "scenario")?;
    top.req("name")?;
    top.req("about")?;
    top.get("setup");
    top.get("gate_defaults");
    let steps = top
        .req("steps")?
        .as_array()
        .ok_or("steps: not a list")?
        .clone();
    top.done()?;
    if let Some(setup) = s.doc.get("setup") {
        parse_setup(setup)?;
    }
    for (i, st) in steps.iter().enumerate() {
        let kind = st
            .get("do")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("step {}: no \"do\"", i + 1))?;
        if !STEP_KINDS.contains(&kind) {
            return Err(format!("step {}: unknown step {kind:?}", i + 1));
        }
    }
    Ok(())
}

#[derive(Debug, Default)]
struct Setup {
    servers: usize,
    postgres: bool,
    tls: bool,
    proxies: Vec<(usize, ProxyMode)>,
    switches: Vec<(String, SwitchState)>,
    driver_env: BTreeMap<String, String>,
}

fn parse_setup(v: &Value) -> Result<Setup, String> {
    let mut a = Args::new(v, "setup")?;
    let mut s = Setup {
        servers: a.u64("servers")?.unwrap_or(1) as usize,
        ..Setup::default()
    };
    s.postgres = match a.str("store")?.unwrap_or("sqlite") {
        "sqlite" => false,
        "postgres" => true,
        other => return Err(format!("setup.store: {other:?} (sqlite | postgres)")),
    };
    if s.servers > 1 && !s.postgres {
        return Err("setup: several servers are replicas: store must be postgres".into());
    }
    s.tls = a.get("tls").and_then(Value::as_bool).unwrap_or(false);
    if let Some(list) = a.get("proxies") {
        for p in list.as_array().ok_or("setup.proxies: not a list")? {
            let mut pa = Args::new(p, "setup.proxies[]")?;
            let server = pa.u64("server")?.unwrap_or(0) as usize;
            let mode = ProxyMode::parse(pa.str("mode")?.unwrap_or("pass"))?;
            pa.done()?;
            s.proxies.push((server, mode));
        }
    }
    if let Some(list) = a.get("switches") {
        for w in list.as_array().ok_or("setup.switches: not a list")? {
            let mut wa = Args::new(w, "setup.switches[]")?;
            let name = wa.str("name")?.ok_or("setup.switches[]: name")?.to_string();
            let state = match wa.str("state")?.unwrap_or("running") {
                "running" => SwitchState::Running,
                "paused" => SwitchState::Paused,
                o => return Err(format!("setup.switches[]: state {o:?}")),
            };
            wa.done()?;
            s.switches.push((name, state));
        }
    }
    if let Some(env) = a.get("driver_env") {
        for (k, v) in env.as_object().ok_or("setup.driver_env: not an object")? {
            s.driver_env.insert(
                k.clone(),
                v.as_str()
                    .ok_or("setup.driver_env: values are strings")?
                    .into(),
            );
        }
    }
    a.done()?;
    if s.servers == 0 || s.proxies.iter().any(|(i, _)| *i >= s.servers) {
        return Err("setup: no server, or a proxy to a server that does not exist".into());
    }
    Ok(s)
}

// ----- the world a scenario runs in -----

/// A private CA and the files made from it.
struct Pki {
    ca_file: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn make_pki(dir: &Path) -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "brb conformance CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let issue = |cn: &str, names: &[&str]| {
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &ca).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let w = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let (sc, sk) = issue("brb.test", &["localhost", "127.0.0.1"]);
    let (cc, ck) = issue("conformance-worker", &[]);
    Pki {
        ca_file: w("ca.pem", &ca.pem()),
        server_cert: w("server.pem", &sc),
        server_key: w("server.key", &sk),
        client_cert: w("client.pem", &cc),
        client_key: w("client.key", &ck),
    }
}

const ADMIN: &str = "brb_conformance_admin_token_0123456789abcdef";

struct Server {
    proc_: Option<ServerProc>,
    data_dir: PathBuf,
    listen: String,
    url: String,
    env: Vec<(String, String)>,
}

impl Server {
    fn start(data_dir: &Path, listen: &str, env: &[(String, String)]) -> ServerProc {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        ServerProc::start_at(data_dir, listen, &env)
    }
}

#[derive(Default)]
struct Mark {
    at_ms: i64,
    values: BTreeMap<String, Value>,
}

struct World {
    sdk: String,
    scenario: String,
    _dir: tempfile::TempDir,
    servers: Vec<Server>,
    proxies: Vec<Proxy>,
    tls: Option<TlsOptions>,
    http: reqwest::Client,
    vars: BTreeMap<String, Value>,
    marks: HashMap<String, Mark>,
    driver: Driver,
    /// Commands sent without waiting: name → (id, sent at, the step that sent it).
    pending: HashMap<String, (u64, Instant, Value)>,
    /// Saved `work` answers, for fractions relative to a baseline.
    saved: HashMap<String, f64>,
    /// Gate names started, for `name.*` patterns.
    gates: Vec<String>,
    /// The scenario's `gate_defaults`, under each `start`'s own config.
    gate_defaults: Map<String, Value>,
    secrets: Vec<String>,
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn run_scenario(spec: &SdkSpec, sc: &Scenario) -> Result<(), String> {
    let head = format!("[{}] scenario {:?}", spec.name, sc.name);
    validate(sc).map_err(|e| format!("{head}: {e}"))?;
    let mut world = World::new(spec, sc)
        .await
        .map_err(|e| format!("{head}, setup: {e}"))?;
    let steps = sc.doc["steps"].as_array().cloned().unwrap_or_default();
    let mut result = Ok(());
    for (i, step) in steps.iter().enumerate() {
        if let Err(e) = world.step(step).await {
            let what = step
                .get("note")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| summarize(step));
            result = Err(format!("{head}, step {} ({what}): {e}", i + 1));
            break;
        }
    }
    // Every driver must exit cleanly when its stdin closes.
    let closed = world.driver.close(Duration::from_secs(10)).await;
    if result.is_ok()
        && let Err(e) = closed
    {
        result = Err(format!("{head}, at the end: {e}"));
    }
    let stderr = world.driver.stderr();
    // Whatever happened, no secret may appear in what the driver printed.
    if let Some(s) = world.secrets.iter().find(|s| stderr.contains(s.as_str())) {
        let which = if s.starts_with("brb_conformance_admin") {
            "the admin token"
        } else {
            "a token"
        };
        let msg = format!(
            "{head}: {which} appears in the driver's stderr ({} chars)",
            s.len()
        );
        result = Err(match result {
            Ok(()) => msg,
            Err(e) => format!("{e}\n{msg}"),
        });
    }
    result.map_err(|e| {
        let tail: Vec<&str> = stderr.lines().rev().take(25).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        let server_log = world
            .servers
            .iter()
            .filter_map(|s| s.proc_.as_ref())
            .map(|p| {
                let log = p.log();
                let lines: Vec<&str> = log.lines().rev().take(8).collect();
                lines.into_iter().rev().collect::<Vec<_>>().join("\n    ")
            })
            .collect::<Vec<_>>()
            .join("\n  --\n    ");
        format!(
            "{e}\n  driver stderr (last lines):\n    {}\n  server log (last lines):\n    {server_log}",
            tail.join("\n    ")
        )
    })
}

fn summarize(step: &Value) -> String {
    let mut s = step.to_string();
    if s.len() > 160 {
        s.truncate(157);
        s.push_str("...");
    }
    s
}

impl World {
    async fn new(spec: &SdkSpec, sc: &Scenario) -> Result<World, String> {
        let setup = match sc.doc.get("setup") {
            Some(v) => parse_setup(v)?,
            None => parse_setup(&json!({}))?,
        };
        let dir = tempfile::Builder::new()
            .prefix(&format!("brb-conf-{}-{}-", spec.name, sc.name))
            .tempdir()
            .map_err(|e| e.to_string())?;
        let pki = setup.tls.then(|| make_pki(dir.path()));
        let tls = pki.as_ref().map(|p| TlsOptions {
            ca_file: Some(p.ca_file.clone()),
            client_cert: Some(p.client_cert.clone()),
            client_key: Some(p.client_key.clone()),
            allow_insecure_http: false,
        });
        let mut env: Vec<(String, String)> = vec![("BRB_ADMIN_TOKEN".into(), ADMIN.into())];
        if let Some(p) = &pki {
            env.push(("BRB_TLS_CERT".into(), p.server_cert.display().to_string()));
            env.push(("BRB_TLS_KEY".into(), p.server_key.display().to_string()));
            env.push(("BRB_TLS_CLIENT_CA".into(), p.ca_file.display().to_string()));
        }
        if setup.postgres {
            let db = tokio::task::spawn_blocking(|| PgCluster::shared().database("conformance"))
                .await
                .map_err(|e| e.to_string())?;
            env.push(("BRB_DATABASE_URL".into(), db));
        }
        let mut servers = Vec::new();
        for i in 0..setup.servers {
            let data_dir = dir.path().join(format!("server{i}"));
            std::fs::create_dir_all(&data_dir).map_err(|e| e.to_string())?;
            let env2 = env.clone();
            let dd = data_dir.clone();
            let p = tokio::task::spawn_blocking(move || Server::start(&dd, "127.0.0.1:0", &env2))
                .await
                .map_err(|e| format!("server {i} did not start: {e}"))?;
            let listen = p
                .url
                .rsplit_once("://")
                .map(|(_, a)| a.to_string())
                .unwrap_or_default();
            servers.push(Server {
                url: p.url.clone(),
                proc_: Some(p),
                data_dir,
                listen,
                env: env.clone(),
            });
        }
        let http = {
            let mut b = reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .redirect(reqwest::redirect::Policy::none());
            if let Some(p) = &pki {
                let ca = std::fs::read(&p.ca_file).map_err(|e| e.to_string())?;
                b = b.add_root_certificate(
                    reqwest::Certificate::from_pem(&ca).map_err(|e| e.to_string())?,
                );
                let mut id = std::fs::read(&p.client_cert).map_err(|e| e.to_string())?;
                id.extend(std::fs::read(&p.client_key).map_err(|e| e.to_string())?);
                b = b.identity(reqwest::Identity::from_pem(&id).map_err(|e| e.to_string())?);
            }
            b.build().map_err(|e| e.to_string())?
        };
        let mut vars = BTreeMap::new();
        for (i, s) in servers.iter().enumerate() {
            vars.insert(format!("server.{i}.url"), json!(s.url));
        }
        if let Some(p) = &pki {
            vars.insert("tls.ca_file".into(), json!(p.ca_file.display().to_string()));
            vars.insert(
                "tls.client_cert".into(),
                json!(p.client_cert.display().to_string()),
            );
            vars.insert(
                "tls.client_key".into(),
                json!(p.client_key.display().to_string()),
            );
        }
        let mut secrets = vec![ADMIN.to_string()];
        // The workers' token: a stored viewer token, so a restarted server still knows it.
        let admin = admin_client(&servers[0].url, &tls)?;
        let worker = admin
            .create_token(&CreateTokenRequest {
                name: "conformance-worker".into(),
                role: Role::Viewer,
                expires_at: None,
                scope: None,
            })
            .await
            .map_err(|e| format!("creating the worker token: {e}"))?
            .secret;
        // Replicas learn of a token through the database: wait until each accepts it.
        for s in &servers {
            let c = Client::with_tls(
                &[s.url.as_str()],
                Some(worker.clone()),
                &tls_or_default(&tls),
            )
            .map_err(|e| e.to_string())?;
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.info().await.is_err() {
                if Instant::now() > deadline {
                    return Err(format!("{} never accepted the worker token", s.url));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let token_file = dir.path().join("worker-token");
        std::fs::write(&token_file, format!("{worker}\n")).map_err(|e| e.to_string())?;
        vars.insert("token.worker".into(), json!(worker));
        vars.insert(
            "token_file.worker".into(),
            json!(token_file.display().to_string()),
        );
        secrets.push(worker);
        for (name, state) in &setup.switches {
            admin
                .create_switch(&CreateSwitchRequest {
                    name: name.clone(),
                    description: "conformance".into(),
                    source: None,
                })
                .await
                .map_err(|e| format!("creating switch {name}: {e}"))?;
            if *state == SwitchState::Paused {
                admin
                    .set_state(name, &set(SwitchState::Paused, None))
                    .await
                    .map_err(|e| format!("pausing {name}: {e}"))?;
            }
        }
        let mut proxies = Vec::new();
        for (i, (server, mode)) in setup.proxies.iter().enumerate() {
            let upstream: SocketAddr = servers[*server]
                .listen
                .parse()
                .map_err(|e| format!("proxy upstream: {e}"))?;
            let p = Proxy::start(upstream, *mode).await;
            vars.insert(
                format!("proxy.{i}.url"),
                json!(format!("http://{}", p.addr)),
            );
            proxies.push(p);
        }
        let mut driver_env = BTreeMap::new();
        for (k, v) in &setup.driver_env {
            let v = resolve(&json!(v), &vars, &HashMap::new())?;
            driver_env.insert(k.clone(), v.as_str().unwrap_or_default().to_string());
        }
        let driver = spec.spawn(&dir.path().join("driver.stderr"), &driver_env)?;
        Ok(World {
            sdk: spec.name.clone(),
            scenario: sc.name.clone(),
            _dir: dir,
            servers,
            proxies,
            tls,
            http,
            vars,
            marks: HashMap::new(),
            driver,
            pending: HashMap::new(),
            saved: HashMap::new(),
            gates: Vec::new(),
            gate_defaults: sc
                .doc
                .get("gate_defaults")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
            secrets,
        })
    }

    fn resolve(&self, v: &Value) -> Result<Value, String> {
        resolve(v, &self.vars, &self.marks)
    }

    fn admin(&self, via: usize) -> Result<Client, String> {
        let s = self
            .servers
            .get(via)
            .ok_or_else(|| format!("no server {via}"))?;
        admin_client(&s.url, &self.tls)
    }

    fn live_server(&self, via: Option<u64>) -> Result<usize, String> {
        match via {
            Some(v) => Ok(v as usize),
            None => self
                .servers
                .iter()
                .position(|s| s.proc_.is_some())
                .ok_or_else(|| "every server is down".to_string()),
        }
    }

    fn mark(&mut self, name: Option<&str>, at_ms: i64, values: BTreeMap<String, Value>) {
        if let Some(n) = name {
            self.marks.insert(n.to_string(), Mark { at_ms, values });
        }
    }

    fn mark_at(&self, name: &str) -> Result<i64, String> {
        self.marks
            .get(name)
            .map(|m| m.at_ms)
            .ok_or_else(|| format!("no mark {name:?} (marks are made by earlier steps)"))
    }

    /// Gate names a step names: one, a list, or `prefix.*` for every gate of a `count` start.
    fn gate_names(&self, v: &Value) -> Result<Vec<String>, String> {
        let list: Vec<String> = match v {
            Value::String(s) => vec![s.clone()],
            Value::Array(a) => a
                .iter()
                .map(|g| {
                    g.as_str()
                        .map(str::to_string)
                        .ok_or("gate names are strings")
                })
                .collect::<Result<_, _>>()?,
            _ => return Err("gate: a name or a list of names".into()),
        };
        let mut out = Vec::new();
        for g in list {
            if let Some(prefix) = g.strip_suffix(".*") {
                let p = format!("{prefix}.");
                let found: Vec<String> = self
                    .gates
                    .iter()
                    .filter(|n| n.starts_with(&p))
                    .cloned()
                    .collect();
                if found.is_empty() {
                    return Err(format!("no gate matches {g:?}"));
                }
                out.extend(found);
            } else {
                out.push(g);
            }
        }
        Ok(out)
    }

    async fn state(&mut self, gate: &str) -> Result<Value, String> {
        self.driver
            .call(
                json!({"op": "state", "gate": gate}),
                Duration::from_secs(10),
            )
            .await
            .map_err(|e| format!("state of gate {gate}: {e}"))
    }

    /// Waits until `deadline_ms` (Unix ms) if the step says `not_before`.
    async fn schedule(&self, a: &mut Args<'_>) -> Result<(), String> {
        if let Some(nb) = a.get("not_before") {
            let mut na = Args::new(nb, "not_before")?;
            let at = self.mark_at(na.str("mark")?.ok_or("not_before.mark")?)?
                + na.u64("plus_ms")?.unwrap_or(0) as i64;
            na.done()?;
            let wait = at - unix_ms();
            if wait > 0 {
                // A schedule (an operator pressing while work runs), not a wait for a result.
                tokio::time::sleep(Duration::from_millis(wait as u64)).await;
            }
        }
        Ok(())
    }

    async fn step(&mut self, step: &Value) -> Result<(), String> {
        let mut a = Args::new(step, "step")?;
        a.get("note");
        let kind = a.str("do")?.ok_or("no \"do\"")?;
        if !self.pending.is_empty()
            && !matches!(
                kind,
                "await"
                    | "pause"
                    | "resume"
                    | "toggle"
                    | "drill"
                    | "kill"
                    | "restart"
                    | "proxy"
                    | "mark"
                    | "expect_workers"
                    | "expect_proxy"
                    | "count_metric"
                    | "expect_log"
            )
        {
            return Err(format!(
                "a driver command is still outstanding ({:?}): await it before {kind:?}",
                self.pending.keys().collect::<Vec<_>>()
            ));
        }
        self.schedule(&mut a).await?;
        match kind {
            "start" => self.do_start(&mut a).await?,
            "expect" => self.do_expect(&mut a, false).await?,
            "hold" => self.do_expect(&mut a, true).await?,
            "send" => self.do_send(&mut a).await?,
            "await" => self.do_await(&mut a).await?,
            "pause" | "resume" => self.do_press(&mut a, kind == "pause").await?,
            "toggle" => self.do_toggle(&mut a).await?,
            "drill" => self.do_drill(&mut a).await?,
            "mark" => self.do_mark(&mut a).await?,
            "kill" => self.do_kill(&mut a).await?,
            "restart" => self.do_restart(&mut a).await?,
            "proxy" => self.do_proxy(&mut a)?,
            "expect_proxy" => self.do_expect_proxy(&mut a).await?,
            "expect_workers" => self.do_expect_workers(&mut a).await?,
            "expect_log" => self.do_expect_log(&mut a).await?,
            "count_metric" => self.do_count_metric(&mut a).await?,
            "reconnect_spread" => self.do_reconnect_spread(&mut a).await?,
            other => return Err(format!("unknown step {other:?}")),
        }
        a.done()
    }

    fn gate_config(&self, cfg: Option<&Value>) -> Result<Value, String> {
        let mut merged = Map::new();
        // Defaults for this run: the first server, the workers' token, the primary switch.
        merged.insert("urls".into(), json!(["${server.0.url}"]));
        merged.insert("token".into(), json!("${token.worker}"));
        merged.insert("switch".into(), json!("workers"));
        for (k, v) in &self.gate_defaults {
            merged.insert(k.clone(), v.clone());
        }
        if let Some(c) = cfg {
            for (k, v) in c.as_object().ok_or("config: not an object")? {
                merged.insert(k.clone(), v.clone());
            }
        }
        // `null` removes a default (e.g. no token at all, or the token from the environment).
        merged.retain(|_, v| !v.is_null());
        self.resolve(&Value::Object(merged))
    }

    async fn do_start(&mut self, a: &mut Args<'_>) -> Result<(), String> {
        let gate = a.str("gate")?.ok_or("gate is required")?.to_string();
        let count = a.u64("count")?;
        let config = self.gate_config(a.get("config"))?;
        let expect_error = a
            .get("expect_error")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let names: Vec<(String, Value)> = match count {
            None => vec![(gate.clone(), config)],
            Some(n) => (0..n)
                .map(|i| {
                    let mut c = config.clone();
                    let id = c
                        .get("worker_id")
                        .and_then(Value::as_str)
                        .unwrap_or("conf")
                        .to_string();
                    c["worker_id"] = json!(format!("{id}-{i}"));
                    (format!("{gate}.{i}"), c)
                })
                .collect(),
        };
        for (name, config) in names {
            let id = self
                .driver
                .send(json!({"op": "start", "gate": name, "config": config}))
                .await?;
            let ans = self.driver.answer(id, Duration::from_secs(20)).await?;
            let ok = ans.get("ok") == Some(&Value::Bool(true));
            match (ok, expect_error) {
                (true, false) => self.gates.push(name),
                (false, true) => {
                    let err = ans.get("error").and_then(Value::as_str).unwrap_or("");
                    if err.trim().is_empty() {
                        return Err(format!(
                            "expected: start refused with a message; seen: {ans}"
                        ));
                    }
                }
                (true, true) => {
                    return Err(format!(
                        "expected: the SDK refuses this config; seen: gate {name} started"
                    ));
                }
                (false, false) => {
                    return Err(format!("expected: gate {name} started; seen: {ans}"));
                }
            }
        }
        Ok(())
    }

    /// `expect`: polls until every gate's state matches (within a deadline, and for `hold`
    /// continuously for `for_ms`).
    async fn do_expect(&mut self, a: &mut Args<'_>, hold: bool) -> Result<(), String> {
        let gates = self.gate_names(a.req("gate")?)?;
        let want = self.resolve(a.req("state")?)?;
        let want = want
            .as_object()
            .ok_or("state: an object of matchers")?
            .clone();
        let since = match a.str("since")? {
            Some(m) => self.mark_at(m)?,
            None => unix_ms(),
        };
        let (window, not_before) = if hold {
            (a.u64("for_ms")?.ok_or("for_ms is required")?, None)
        } else {
            (a.u64("within_ms")?.unwrap_or(5000), a.u64("not_before_ms")?)
        };
        let deadline = since + window as i64;
        let mut pending: Vec<String> = gates.clone();
        let mut last: HashMap<String, Value> = HashMap::new();
        loop {
            let now = unix_ms();
            let mut still = Vec::new();
            for g in &pending {
                let st = self.state(g).await?;
                let verdict = match_object(&want, &st);
                let seen_at = unix_ms();
                if hold {
                    if let Err(e) = verdict {
                        return Err(format!(
                            "gate {g}: expected to hold {} for {window} ms; at +{} ms {e}; state {st}",
                            Value::Object(want.clone()),
                            seen_at - since
                        ));
                    }
                } else if verdict.is_ok() {
                    if let Some(nb) = not_before
                        && seen_at - since < nb as i64
                    {
                        return Err(format!(
                            "gate {g}: expected {} no sooner than {nb} ms after the mark; seen at +{} ms: {st}",
                            Value::Object(want.clone()),
                            seen_at - since
                        ));
                    }
                } else {
                    still.push(g.clone());
                }
                last.insert(g.clone(), st);
            }
            if hold {
                if now >= deadline {
                    return Ok(());
                }
            } else {
                pending = still;
                if pending.is_empty() {
                    return Ok(());
                }
                if now >= deadline {
                    let g = &pending[0];
                    let st = &last[g];
                    let why = match_object(&want, st).err().unwrap_or_default();
                    return Err(format!(
                        "expected gate {g}{} to show {} within {window} ms; {why}; last state seen (at +{} ms): {st}",
                        if pending.len() > 1 {
                            format!(" (and {} more)", pending.len() - 1)
                        } else {
                            String::new()
                        },
                        Value::Object(want.clone()),
                        now - since
                    ));
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn do_send(&mut self, a: &mut Args<'_>) -> Result<(), String> {
        let cmd = self.resolve(a.req("cmd")?)?;
        let op = cmd
            .get("op")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let budget = command_budget(&cmd);
        let id = self.driver.send(cmd.clone()).await?;
        if let Some(name) = a.str("async")? {
            // `await` checks the answer; the step's own checks go with it.
            let mut later = Map::new();
            for k in ["answer", "jobs"] {
                if let Some(v) = a.get(k) {
                    later.insert(k.into(), v.clone());
                }
            }
            self.mark(Some(name), unix_ms(), BTreeMap::new());
            self.pending.insert(
                name.to_string(),
                (id, Instant::now() + budget, Value::Object(later)),
            );
            return Ok(());
        }
        let ans = self.driver.answer(id, budget).await?;
        let answer = a.get("answer").cloned();
        let jobs = a.get("jobs").cloned();
        self.check_answer(&op, &ans, answer.as_ref(), jobs.as_ref())
    }

    async fn do_await(&mut self, a: &mut Args<'_>) -> Result<(), String> {
        let name = a.str("async")?.ok_or("async is required")?;
        let (id, deadline, checks) = self
            .pending
            .remove(name)
            .ok_or_else(|| format!("no outstanding command {name:?}"))?;
        let within = match (a.str("since")?, a.u64("within_ms")?) {
            (Some(m), Some(w)) => Some((m.to_string(), self.mark_at(m)? + w as i64, w)),
            (None, None) => None,
            _ => return Err("since and within_ms go together".into()),
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let ans = self.driver.answer(id, left).await?;
        let got_at = unix_ms();
        if let Some((m, by, w)) = within
            && got_at > by
        {
            return Err(format!(
                "expected the answer within {w} ms of {m:?}; it came {} ms after it: {ans}",
                got_at - (by - w as i64)
            ));
        }
        self.check_answer(name, &ans, checks.get("answer"), checks.get("jobs"))
    }

    fn check_answer(
        &mut self,
        op: &str,
        ans: &Value,
        answer: Option<&Value>,
        jobs: Option<&Value>,
    ) -> Result<(), String> {
        let want = match answer {
            Some(w) => self.resolve(w)?,
            None => json!({"ok": true}),
        };
        match_object(
            want.as_object().ok_or("answer: an object of matchers")?,
            ans,
        )
        .map_err(|e| format!("{op}: {e}; answer {}", short(ans)))?;
        if let Some(j) = jobs {
            self.check_jobs(ans, j)?;
        }
        Ok(())
    }

    /// Checks a `work` answer's job times.
    fn check_jobs(&mut self, ans: &Value, spec: &Value) -> Result<(), String> {
        let jobs: Vec<(i64, i64)> = ans
            .get("jobs")
            .and_then(Value::as_array)
            .ok_or("the answer has no jobs list")?
            .iter()
            .map(|j| {
                let s = j.get(0).and_then(Value::as_i64);
                let e = j.get(1).and_then(Value::as_i64);
                match (s, e) {
                    (Some(s), Some(e)) if e >= s => Ok((s, e)),
                    _ => Err(format!("a job that is not [start, end]: {j}")),
                }
            })
            .collect::<Result<_, _>>()?;
        let mut a = Args::new(spec, "jobs")?;
        if let Some(min) = a.u64("min_count")?
            && (jobs.len() as u64) < min
        {
            return Err(format!("expected at least {min} jobs; seen {}", jobs.len()));
        }
        let point = |w: &World, v: &Value| -> Result<i64, String> {
            let mut pa = Args::new(v, "time")?;
            let m = pa.str("mark")?.ok_or("a time names a mark")?;
            let base = match pa.str("field")? {
                None => w.mark_at(m)?,
                Some(f) => w
                    .marks
                    .get(m)
                    .and_then(|mk| mk.values.get(f))
                    .and_then(Value::as_i64)
                    .ok_or_else(|| format!("mark {m:?} has no {f:?}"))?,
            };
            let plus = pa.get("plus_ms").and_then(Value::as_i64).unwrap_or(0);
            pa.done()?;
            Ok(base + plus)
        };
        if let Some(v) = a.get("started_before") {
            let t = point(self, v)?;
            if !jobs.iter().any(|(s, _)| *s < t) {
                return Err(format!(
                    "expected a job started before {t} ({v}); first job started at {:?}",
                    jobs.first().map(|j| j.0)
                ));
            }
        }
        if let Some(v) = a.get("none_started_after") {
            let t = point(self, v)?;
            if let Some((s, _)) = jobs.iter().find(|(s, _)| *s > t) {
                return Err(format!(
                    "expected no job to start after {v}; one started {} ms after it",
                    s - t
                ));
            }
        }
        if let Some(v) = a.get("none_started_between") {
            let from = point(self, v.get("from").ok_or("none_started_between.from")?)?;
            let to = point(self, v.get("to").ok_or("none_started_between.to")?)?;
            if let Some((s, _)) = jobs.iter().find(|(s, _)| *s > from && *s < to) {
                return Err(format!(
                    "expected no job to start between {from} and {to}; one started at +{} ms",
                    s - from
                ));
            }
        }
        let slots = a.u64("slots")?.unwrap_or(1) as f64;
        let busy = |from: i64, to: i64| -> f64 {
            let total: i64 = jobs
                .iter()
                .map(|(s, e)| (e.min(&to) - s.max(&from)).max(0))
                .sum();
            total as f64 / ((to - from).max(1) as f64 * slots)
        };
        if let Some(name) = a.str("save_busy_as")? {
            let (first, last) = match (jobs.first(), jobs.iter().map(|j| j.1).max()) {
                (Some(f), Some(l)) => (f.0, l),
                _ => return Err("no jobs to measure a baseline from".into()),
            };
            self.saved.insert(name.to_string(), busy(first, last));
        }
        if let Some(list) = a.get("busy") {
            for b in list.as_array().ok_or("busy: a list")? {
                let mut ba = Args::new(b, "busy[]")?;
                let from = point(self, ba.req("from")?)?;
                let to = point(self, ba.req("to")?)?;
                let want = ba.req("fraction")?.as_f64().ok_or("fraction: a number")?;
                let tol = ba.req("tolerance")?.as_f64().ok_or("tolerance: a number")?;
                let of = match ba.str("relative_to")? {
                    Some(n) => *self
                        .saved
                        .get(n)
                        .ok_or_else(|| format!("no saved baseline {n:?}"))?,
                    None => 1.0,
                };
                ba.done()?;
                let seen = busy(from, to) / of;
                if (seen - want).abs() > tol {
                    return Err(format!(
                        "expected an admitted fraction of {want} ± {tol} over [{from}, {to}] ({} ms); seen {seen:.3} (busy {:.3}, baseline {of:.3}, {} jobs)",
                        to - from,
                        busy(from, to),
                        jobs.iter().filter(|(s, e)| *e > from && *s < to).count()
                    ));
                }
                println!(
                    "[{}] {}: admitted fraction {seen:.3} over {} ms (want {want} ± {tol})",
                    self.sdk,
                    self.scenario,
                    to - from
                );
            }
        }
        a.done()
    }

    async fn do_press(&mut self, a: &mut Args<'_>, pause: bool) -> Result<(), String> {
        let switch = a.str("switch")?.unwrap_or("workers").to_string();
        let via = self.live_server(a.u64("via")?)?;
        let ramp = match a.get("ramp") {
            Some(r) => Some(
                serde_json::from_value::<brb_api::RampSpec>(r.clone())
                    .map_err(|e| format!("ramp: {e}"))?,
            ),
            None => None,
        };
        let mark = a.str("mark")?.map(str::to_string);
        let state = if pause {
            SwitchState::Paused
        } else {
            SwitchState::Running
        };
        let admin = self.admin(via)?;
        let at = unix_ms();
        let sw = admin
            .set_state(&switch, &set(state, ramp))
            .await
            .map_err(|e| format!("pressing {state} on {switch} via server {via}: {e}"))?;
        let mut values = BTreeMap::new();
        values.insert("version".into(), json!(sw.version));
        values.insert("acked_ms".into(), json!(unix_ms()));
        if let Some(r) = &sw.ramp {
            values.insert(
                "ramp_started_ms".into(),
                json!(r.started_at.timestamp_millis()),
            );
        }
        self.mark(mark.as_deref(), at, values);
        Ok(())
    }

    async fn do_toggle(&mut self, a: &mut Args<'_>) -> Result<(), String> {
        let switch = a.str("switch")?.unwrap_or("workers").to_string();
        let times = a.u64("times")?.ok_or("times is required")?;
        let mark = a.str("mark")?.map(str::to_string);
        let via = self.live_server(a.u64("via")?)?;
        let admin = self.admin(via)?;
        let mut sw = admin.switch(&switch).await.map_err(|e| e.to_string())?;
        let at = unix_ms();
        for _ in 0..times {
            let next = match sw.state {
                SwitchState::Paused => SwitchState::Running,
                SwitchState::Running => SwitchState::Paused,
            };
            sw = admin
                .set_state(&switch, &set(next, None))
                .await
                .map_err(|e| format!("toggling {switch}: {e}"))?;
        }
        let mut values = BTreeMap::new();
        values.insert("version".into(), json!(sw.version));
        values.insert("state".into(), json!(sw.state.as_str()));
        self.mark(mark.as_deref(), at, values);
        Ok(())
    }

    /// A fire drill (`POST /api/v1/switches/{name}/drill`): marks the drill's version.
    async fn do_drill(&mut self, a: &mut Args<'_>) -> Result<(), String> {
        let switch = a.str("switch")?.unwrap_or("workers").to_string();
        let mark = a.str("mark")?.map(str::to_string);
        let via = self.live_server(a.u64("via")?)?;
        let admin = self.admin(via)?;
        let at = unix_ms();
        let d = admin
            .drill(&switch, &brb_api::DrillRequest::default())
            .await
            .map_err(|e| format!("drilling {switch}: {e}"))?;
        let mut values = BTreeMap::new();
        values.insert("version".into(), json!(d.version));
        self.mark(mark.as_deref(), at, values);
        Ok(())
    }

    async fn do_mark(&mut self, a: &mut Args<'_>) -> Result<(), String> {
        let name = a.str("mark")?.ok_or("mark is required")?.to_string();
        let mut values = BTreeMap::new();
        if let Some(switch) = a.str("switch")? {
            let via = self.live_server(a.u64("via")?)?;
            let sw = self
                .admin(via)?
                .switch(switch)
                .await
                .map_err(|e| e.to_string())?;
            values.insert("version".into(), json!(sw.version));
            values.insert("state".into(), json!(sw.state.as_str()));
        }
        self.mark(Some(&name), unix_ms(), values);
        Ok(())
    }

    async fn do_kill(&mut self, a: &mut Args<'_>) -> Result<(), String> {
        let i = a.u64("server")?.unwrap_or(0) as usize;
        let mark = a.str("mark")?.map(str::to_string);
        let s = self.servers.get_mut(i).ok_or("no such server")?;
        let p = s
            .proc_
            .take()
            .ok_or_else(|| format!("server {i} is already down"))?;
        let at = unix_ms();
        tokio::task::block_in_place(|| p.kill9());
        self.mark(mark.as_deref(), at, BTreeMap::new());
        Ok(())
    }

    async fn do_restart(&mut self, a: &mut Args<'_>) -> Result<(), String> {
        let i = a.u64("server")?.unwrap_or(0) as usize;
        let mark = a.str("mark")?.map(str::to_string);
        let s = self.servers.get_mut(i).ok_or("no such server")?;
        if s.proc_.is_some() {
            return Err(format!("server {i} is running"));
        }
        let at = unix_ms();
        let (dd, listen, env) = (s.data_dir.clone(), s.listen.clone(), s.env.clone());
        let p = tokio::task::spawn_blocking(move || Server::start(&dd, &listen, &env))
            .await
            .map_err(|e| format!("server {i} did not restart: {e}"))?;
        s.proc_ = Some(p);
        self.mark(mark.as_deref(), at, BTreeMap::new());
        Ok(())
    }

    fn do_proxy(&mut self, a: &mut Args<'_>) -> Result<(), String> {
        let i = a.u64("proxy")?.unwrap_or(0) as usize;
        let mode = ProxyMode::parse(a.str("mode")?.ok_or("mode is required")?)?;
        let mark = a.str("mark")?.map(str::to_string);
        self.proxies.get(i).ok_or("no such proxy")?.set_mode(mode);
        self.mark(mark.as_deref(), unix_ms(), BTreeMap::new());
        Ok(())
    }

    async fn do_expect_proxy(&mut self, a: &mut Args<'_>) -> Result<(), String> {
        let i = a.u64("proxy")?.unwrap_or(0) as usize;
        let within = a.u64("within_ms")?.unwrap_or(5000);
        let path = a.str("path_contains")?.map(str::to_string);
        let header = match a.get("header") {
            Some(h) => Some(self.resolve(h)?),
            None => None,
        };
        let response = a.str("response_contains")?.map(str::to_string);
        let proxy = self.proxies.get(i).ok_or("no such proxy")?;
        let deadline = Instant::now() + Duration::from_millis(within);
        loop {
            let found = proxy.requests().iter().any(|r| {
                path.as_ref().is_none_or(|p| r.target.contains(p.as_str()))
                    && header.as_ref().is_none_or(|h| {
                        h.as_object().is_some_and(|h| {
                            h.iter().all(|(k, v)| {
                                let want = match v {
                                    Value::String(s) => s.clone(),
                                    other => other.to_string(),
                                };
                                r.headers
                                    .iter()
                                    .any(|(hk, hv)| hk.eq_ignore_ascii_case(k) && *hv == want)
                            })
                        })
                    })
            }) && response.as_ref().is_none_or(|r| proxy.response_seen(r));
            if found {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let seen: Vec<String> = proxy
                    .requests()
                    .iter()
                    .rev()
                    .take(6)
                    .map(|r| format!("{} {:?}", r.target, r.headers))
                    .collect();
                return Err(format!(
                    "expected the proxy to pass a request (path containing {path:?}, headers {header:?}){} within {within} ms; last requests seen: {seen:?}",
                    response
                        .as_ref()
                        .map(|r| format!(" and a response containing {r:?}"))
                        .unwrap_or_default()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn do_expect_workers(&mut self, a: &mut Args<'_>) -> Result<(), String> {
        let switch = a.str("switch")?.unwrap_or("workers").to_string();
        let within = a.u64("within_ms")?.unwrap_or(5000);
        let want_workers = match a.get("workers") {
            Some(w) => self.resolve(w)?,
            None => json!({}),
        };
        let want_counts = match a.get("counts") {
            Some(c) => self.resolve(c)?,
            None => json!({}),
        };
        let via = self.live_server(a.u64("via")?)?;
        let url = format!("{}/api/v1/switches/{switch}/workers", self.servers[via].url);
        let deadline = Instant::now() + Duration::from_millis(within);
        loop {
            let got: Value = self
                .http
                .get(&url)
                .bearer_auth(ADMIN)
                .send()
                .await
                .map_err(|e| format!("GET {url}: {e}"))?
                .json()
                .await
                .map_err(|e| format!("GET {url}: {e}"))?;
            let verdict = (|| -> Result<(), String> {
                match_object(want_counts.as_object().ok_or("counts: an object")?, &got)?;
                for (id, want) in want_workers.as_object().ok_or("workers: an object")? {
                    let w = got["workers"]
                        .as_array()
                        .and_then(|l| l.iter().find(|w| w["worker_id"] == json!(id)))
                        .ok_or_else(|| format!("worker {id} is not listed"))?;
                    let mut w = w.clone();
                    if let Some(t) = w["last_seen"].as_str()
                        && let Ok(t) = chrono::DateTime::parse_from_rfc3339(t)
                    {
                        w["last_seen_ms"] = json!(t.timestamp_millis());
                    }
                    match_object(
                        want.as_object().ok_or("a worker's matchers: an object")?,
                        &w,
                    )
                    .map_err(|e| format!("worker {id}: {e}"))?;
                }
                Ok(())
            })();
            match verdict {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!(
                        "expected the control plane to count workers {want_workers} / {want_counts} within {within} ms; {e}; last seen: {}",
                        short(&got)
                    ));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    async fn do_expect_log(&mut self, a: &mut Args<'_>) -> Result<(), String> {
        let any: Vec<String> = a
            .req("contains_any")?
            .as_array()
            .ok_or("contains_any: a list")?
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_lowercase)
            .collect();
        let within = a.u64("within_ms")?.unwrap_or(5000);
        let deadline = Instant::now() + Duration::from_millis(within);
        loop {
            let log = self.driver.stderr().to_lowercase();
            if any.iter().any(|s| log.contains(s.as_str())) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "expected the driver's stderr to say one of {any:?} within {within} ms; it did not"
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn metric(&self, server: usize, name: &str) -> Result<f64, String> {
        let url = format!("{}/metrics", self.servers[server].url);
        let text = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?
            .text()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        Ok(text
            .lines()
            .filter(|l| l.split([' ', '{']).next().is_some_and(|n| n == name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// Counts a server metric's growth over a window: how often the driver's SDK did
    /// something (e.g. failed to authenticate) in that time.
    async fn do_count_metric(&mut self, a: &mut Args<'_>) -> Result<(), String> {
        let name = a.str("metric")?.ok_or("metric is required")?.to_string();
        let server = a.u64("server")?.unwrap_or(0) as usize;
        let over = a.u64("over_ms")?.ok_or("over_ms is required")?;
        let min = a.u64("min")?.unwrap_or(0) as f64;
        let max = a.u64("max")?.ok_or("max is required")? as f64;
        let before = self.metric(server, &name).await?;
        // A measurement window: the count over a fixed time is the quantity checked.
        tokio::time::sleep(Duration::from_millis(over)).await;
        let after = self.metric(server, &name).await?;
        let n = after - before;
        println!(
            "[{}] {}: {name} grew by {n} in {over} ms",
            self.sdk, self.scenario
        );
        if n < min || n > max {
            return Err(format!(
                "expected {name} to grow by {min}..={max} over {over} ms; it grew by {n}"
            ));
        }
        Ok(())
    }

    async fn do_reconnect_spread(&mut self, a: &mut Args<'_>) -> Result<(), String> {
        let gates = self.gate_names(a.req("gate")?)?;
        let since = self.mark_at(a.str("since")?.ok_or("since is required")?)?;
        let min_spread = a.u64("min_spread_ms")?.unwrap_or(0) as i64;
        let max_in_10 = a.u64("max_within_10ms")?.unwrap_or(u64::MAX) as usize;
        let mut times = Vec::new();
        for g in &gates {
            let st = self.state(g).await?;
            let t = st["connect_times"]
                .as_array()
                .and_then(|l| l.iter().filter_map(Value::as_i64).find(|t| *t >= since))
                .ok_or_else(|| {
                    format!(
                        "gate {g}: no connect time after the mark: {}",
                        st["connect_times"]
                    )
                })?;
            times.push(t);
        }
        times.sort();
        let spread = times.last().unwrap_or(&0) - times.first().unwrap_or(&0);
        let most = (0..times.len())
            .map(|i| {
                times[i..]
                    .iter()
                    .take_while(|t| **t - times[i] < 10)
                    .count()
            })
            .max()
            .unwrap_or(0);
        println!(
            "[{}] {}: {} reconnects spread over {spread} ms, at most {most} within 10 ms (first at +{} ms)",
            self.sdk,
            self.scenario,
            times.len(),
            times.first().map(|t| t - since).unwrap_or(0)
        );
        if spread < min_spread || most > max_in_10 {
            return Err(format!(
                "expected reconnects spread over at least {min_spread} ms with at most {max_in_10} within 10 ms; seen a spread of {spread} ms, {most} within 10 ms (times after the mark: {:?})",
                times.iter().map(|t| t - since).collect::<Vec<_>>()
            ));
        }
        Ok(())
    }
}

/// How long a command may take: its own duration plus a margin.
fn command_budget(cmd: &Value) -> Duration {
    let own = ["for_ms", "timeout_ms"]
        .iter()
        .filter_map(|k| cmd.get(*k).and_then(Value::as_u64))
        .max()
        .unwrap_or(0);
    Duration::from_millis(own + 15_000)
}

fn short(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > 600 {
        s.truncate(597);
        s.push_str("...");
    }
    s
}

fn set(state: SwitchState, ramp: Option<brb_api::RampSpec>) -> SetStateRequest {
    SetStateRequest {
        state,
        reason: Some("conformance".into()),
        source: None,
        expected_version: None,
        ramp,
        guards: Vec::new(),
    }
}

fn tls_or_default(tls: &Option<TlsOptions>) -> TlsOptions {
    tls.clone().unwrap_or_default()
}

fn admin_client(url: &str, tls: &Option<TlsOptions>) -> Result<Client, String> {
    Client::with_tls(&[url], Some(ADMIN.to_string()), &tls_or_default(tls))
        .map_err(|e| e.to_string())
}

// ----- values: templates and matchers -----

/// Replaces `${name}` in strings: a string that is only `${name}` takes the variable's JSON
/// value (a number stays a number). Names: `server.N.url`, `proxy.N.url`, `token.worker`,
/// `token_file.worker`, `tls.ca_file`, `tls.client_cert`, `tls.client_key`, `mark.M` (its
/// Unix ms), `mark.M.FIELD` (`version`, `acked_ms`, `ramp_started_ms`, `state`).
fn resolve(
    v: &Value,
    vars: &BTreeMap<String, Value>,
    marks: &HashMap<String, Mark>,
) -> Result<Value, String> {
    let lookup = |name: &str| -> Result<Value, String> {
        if let Some(v) = vars.get(name) {
            return Ok(v.clone());
        }
        if let Some(rest) = name.strip_prefix("mark.") {
            let (m, field) = rest.split_once('.').unwrap_or((rest, ""));
            let mark = marks.get(m).ok_or_else(|| format!("no mark {m:?}"))?;
            return if field.is_empty() {
                Ok(json!(mark.at_ms))
            } else {
                mark.values
                    .get(field)
                    .cloned()
                    .ok_or_else(|| format!("mark {m:?} has no {field:?}"))
            };
        }
        Err(format!("unknown variable ${{{name}}}"))
    };
    Ok(match v {
        Value::String(s) => {
            if let Some(name) = s.strip_prefix("${").and_then(|r| r.strip_suffix('}'))
                && !name.contains("${")
            {
                return lookup(name);
            }
            let mut out = String::new();
            let mut rest = s.as_str();
            while let Some(i) = rest.find("${") {
                out.push_str(&rest[..i]);
                let end = rest[i..]
                    .find('}')
                    .ok_or_else(|| format!("unclosed ${{ in {s:?}"))?;
                let val = lookup(&rest[i + 2..i + end])?;
                match val {
                    Value::String(t) => out.push_str(&t),
                    other => out.push_str(&other.to_string()),
                }
                rest = &rest[i + end + 1..];
            }
            out.push_str(rest);
            Value::String(out)
        }
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|x| resolve(x, vars, marks))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| Ok((k.clone(), resolve(x, vars, marks)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// Every key of `want` must match the same key of `seen`: a plain value is compared for
/// equality (numbers as numbers), an object with `min`/`max`/`ne`/`one_of`/`contains` is a
/// matcher.
fn match_object(want: &Map<String, Value>, seen: &Value) -> Result<(), String> {
    for (k, w) in want {
        let s = seen.get(k).unwrap_or(&Value::Null);
        match_value(w, s).map_err(|e| format!("{k}: expected {e}, seen {s}"))?;
    }
    Ok(())
}

fn match_value(want: &Value, seen: &Value) -> Result<(), String> {
    const OPS: &[&str] = &["min", "max", "ne", "one_of", "contains"];
    if let Value::Object(o) = want
        && !o.is_empty()
        && o.keys().all(|k| OPS.contains(&k.as_str()))
    {
        for (op, arg) in o {
            let ok = match op.as_str() {
                "min" => seen.as_f64().zip(arg.as_f64()).is_some_and(|(s, a)| s >= a),
                "max" => seen.as_f64().zip(arg.as_f64()).is_some_and(|(s, a)| s <= a),
                "ne" => !same(seen, arg),
                "one_of" => arg
                    .as_array()
                    .is_some_and(|l| l.iter().any(|x| same(seen, x))),
                "contains" => seen
                    .as_str()
                    .zip(arg.as_str())
                    .is_some_and(|(s, a)| s.to_lowercase().contains(&a.to_lowercase())),
                _ => false,
            };
            if !ok {
                return Err(format!("{op} {arg}"));
            }
        }
        return Ok(());
    }
    if same(seen, want) {
        Ok(())
    } else {
        Err(want.to_string())
    }
}

fn same(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() < 1e-9,
        _ => a == b,
    }
}

// ----- the proxy: passes HTTP, or goes down, or refuses/buffers event streams -----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProxyMode {
    /// Passes every request (one per connection: it asks the server to close after each).
    Pass,
    /// Accepts connections and closes them at once; cuts the open ones.
    Down,
    /// Answers event-stream requests with 502 and an HTML page, as some corporate proxies do.
    RefuseSse,
    /// Forwards an event stream's headers, then holds its body back (never flushes).
    BufferSse,
}

impl ProxyMode {
    fn parse(s: &str) -> Result<ProxyMode, String> {
        Ok(match s {
            "pass" => ProxyMode::Pass,
            "down" => ProxyMode::Down,
            "refuse_sse" => ProxyMode::RefuseSse,
            "buffer_sse" => ProxyMode::BufferSse,
            o => {
                return Err(format!(
                    "proxy mode {o:?} (pass | down | refuse_sse | buffer_sse)"
                ));
            }
        })
    }
}

#[derive(Debug, Clone)]
struct SeenRequest {
    target: String,
    headers: Vec<(String, String)>,
}

struct ProxyShared {
    mode: Mutex<ProxyMode>,
    /// Bumped to cut every open connection.
    generation: tokio::sync::watch::Sender<u64>,
    requests: Mutex<Vec<SeenRequest>>,
    /// Downstream bytes searched for, e.g. `event: resync`: a small rolling window per
    /// connection is enough since the patterns are short.
    response_hits: Mutex<Vec<String>>,
    patterns: Vec<&'static str>,
}

struct Proxy {
    addr: SocketAddr,
    shared: Arc<ProxyShared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.shared.generation.send_modify(|g| *g += 1);
    }
}

impl Proxy {
    async fn start(upstream: SocketAddr, mode: ProxyMode) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (generation, _) = tokio::sync::watch::channel(0u64);
        let shared = Arc::new(ProxyShared {
            mode: Mutex::new(mode),
            generation,
            requests: Mutex::new(Vec::new()),
            response_hits: Mutex::new(Vec::new()),
            patterns: vec!["event: resync", "event:resync"],
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    continue;
                };
                if *s.mode.lock().unwrap() == ProxyMode::Down {
                    drop(conn);
                    continue;
                }
                let s = s.clone();
                tokio::spawn(async move {
                    let mut cut = s.generation.subscribe();
                    tokio::select! {
                        _ = handle(conn, upstream, &s) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy { addr, shared, task }
    }

    fn set_mode(&self, mode: ProxyMode) {
        let was = std::mem::replace(&mut *self.shared.mode.lock().unwrap(), mode);
        if mode == ProxyMode::Down && was != ProxyMode::Down {
            self.shared.generation.send_modify(|g| *g += 1);
        }
    }

    fn requests(&self) -> Vec<SeenRequest> {
        self.shared.requests.lock().unwrap().clone()
    }

    fn response_seen(&self, pattern: &str) -> bool {
        self.shared
            .response_hits
            .lock()
            .unwrap()
            .iter()
            .any(|p| p == pattern || p.replace(' ', "") == pattern.replace(' ', ""))
    }
}

/// Reads up to the end of a request or response head; returns (head, bytes after it).
async fn read_head(conn: &mut TcpStream) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(i + 4);
            return Some((buf, rest));
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
    }
}

async fn handle(mut client: TcpStream, upstream: SocketAddr, s: &ProxyShared) {
    let Some((head, rest)) = read_head(&mut client).await else {
        return;
    };
    let text = String::from_utf8_lossy(&head).to_string();
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or("").to_string();
    let target = request_line.split(' ').nth(1).unwrap_or("").to_string();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mode = *s.mode.lock().unwrap();
    let is_stream = target.contains("/events");
    if mode == ProxyMode::RefuseSse && is_stream {
        let body = "<html><body>Event streams are not allowed through this proxy</body></html>";
        let res = format!(
            "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = client.write_all(res.as_bytes()).await;
        return;
    }
    s.requests.lock().unwrap().push(SeenRequest {
        target: target.clone(),
        headers: headers.clone(),
    });
    // One request per connection: the server is asked to close after answering, so the
    // proxy can read each request's head without parsing bodies.
    let mut fwd = format!("{request_line}\r\n");
    for (k, v) in &headers {
        if !k.eq_ignore_ascii_case("connection") && !k.eq_ignore_ascii_case("keep-alive") {
            fwd.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    fwd.push_str("Connection: close\r\n\r\n");
    let Ok(mut up) = TcpStream::connect(upstream).await else {
        return;
    };
    if up.write_all(fwd.as_bytes()).await.is_err() || up.write_all(&rest).await.is_err() {
        return;
    }
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = up.into_split();
    let to_server = async move {
        let _ = tokio::io::copy(&mut cr, &mut uw).await;
        let _ = uw.shutdown().await;
    };
    let buffer = mode == ProxyMode::BufferSse && is_stream;
    let patterns = s.patterns.clone();
    let to_client = async move {
        let mut window: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; 16384];
        let mut head_sent = !buffer;
        let mut held: Vec<u8> = Vec::new();
        loop {
            let n = match ur.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let data = &chunk[..n];
            if !head_sent {
                held.extend_from_slice(data);
                if let Some(i) = held.windows(4).position(|w| w == b"\r\n\r\n") {
                    if cw.write_all(&held[..i + 4]).await.is_err() {
                        break;
                    }
                    held.drain(..i + 4);
                    head_sent = true;
                }
                continue;
            }
            if buffer {
                // Held back, never flushed: what a buffering proxy does to a stream.
                held.extend_from_slice(data);
                continue;
            }
            window.extend_from_slice(data);
            let text = String::from_utf8_lossy(&window).to_string();
            for p in &patterns {
                if text.contains(p) {
                    let mut hits = s.response_hits.lock().unwrap();
                    if !hits.iter().any(|h| h == p) {
                        hits.push(p.to_string());
                    }
                }
            }
            let keep = window.len().saturating_sub(32);
            window.drain(..keep);
            if cw.write_all(data).await.is_err() {
                break;
            }
        }
        let _ = cw.shutdown().await;
    };
    tokio::join!(to_server, to_client);
}
