//! A private network for the chaos test: one network namespace per node (PostgreSQL, each
//! replica, the clients), joined through veth links to a bridge in a hub namespace, where
//! nftables rules cut links (partitions). Nothing is created in the root namespace.
//!
//! Names carry the test's pid (`brb<pid>-…`), so parallel runs never collide, and a run that
//! was killed outright leaves namespaces whose pid is dead: [`Topology::new`] sweeps those first.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};

/// The segment's addresses: PostgreSQL, replica `i`, the clients.
pub const PG_ADDR: &str = "10.88.0.10";
pub const CLIENT_ADDR: &str = "10.88.0.100";
pub fn replica_addr(i: u8) -> String {
    format!("10.88.0.{}", 11 + u32::from(i))
}

/// Whether this machine lets the test make namespaces (root, `ip`, `nft`).
pub fn available() -> Result<(), String> {
    for (bin, arg) in [("ip", "-V"), ("nft", "--version")] {
        let ok = Command::new(bin)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            return Err(format!(
                "`{bin}` is missing: run `scripts/ensure-packages.sh test` (nftables, iproute2)"
            ));
        }
    }
    let probe = format!("brb{}-probe", std::process::id());
    run(&["ip", "netns", "add", &probe]).map_err(|e| format!("cannot make a namespace: {e}"))?;
    let _ = run(&["ip", "netns", "del", &probe]);
    Ok(())
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(args: &[&str]) {
    if let Err(e) = run(args) {
        panic!("{e}");
    }
}

fn nft(ns: &str, script: &str) -> Result<(), String> {
    use std::io::Write as _;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("nft: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| format!("nft stdin: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft: {}\n{script}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Removes namespaces of earlier runs whose process is gone (killed runs leave them).
pub fn sweep() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(pid) = name
            .strip_prefix("brb")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        kill_all_in(name);
        let _ = run(&["ip", "netns", "del", name]);
        println!("chaos: removed the namespace {name} of a run that is gone (pid {pid})");
    }
}

/// SIGCONT then SIGKILL every process in a namespace.
fn kill_all_in(ns: &str) {
    let me = std::process::id() as i32;
    for pid in pids(ns).into_iter().filter(|&p| p != me) {
        crate::signal(pid, libc::SIGCONT);
        crate::signal(pid, libc::SIGKILL);
    }
}

/// The processes in namespace `ns`.
pub fn pids(ns: &str) -> Vec<i32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The namespaces of one run and the links cut between them.
pub struct Topology {
    prefix: String,
    nodes: Vec<String>,
    cuts: BTreeSet<(String, String)>,
}

impl Topology {
    /// `pg`, `r0..r{replicas}` and `cl` on one bridge.
    pub fn new(replicas: u8) -> Topology {
        sweep();
        let prefix = format!("brb{}", std::process::id());
        let hub = format!("{prefix}-hub");
        let mut t = Topology {
            prefix: prefix.clone(),
            nodes: Vec::new(),
            cuts: BTreeSet::new(),
        };
        must(&["ip", "netns", "add", &hub]);
        t.nodes.push("hub".into());
        must(&["ip", "-n", &hub, "link", "set", "lo", "up"]);
        must(&[
            "ip", "-n", &hub, "link", "add", "name", "br0", "type", "bridge",
        ]);
        must(&["ip", "-n", &hub, "link", "set", "br0", "up"]);
        let mut nodes: Vec<(String, String)> = vec![("pg".into(), PG_ADDR.into())];
        for i in 0..replicas {
            nodes.push((format!("r{i}"), replica_addr(i)));
        }
        nodes.push(("cl".into(), CLIENT_ADDR.into()));
        for (n, addr) in &nodes {
            let ns = format!("{prefix}-{n}");
            must(&["ip", "netns", "add", &ns]);
            t.nodes.push(n.clone());
            must(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            // `name` spelled out: `ip link add a type veth` reads `a` as `address`.
            must(&[
                "ip", "link", "add", "name", "eth0", "netns", &ns, "type", "veth", "peer", "name",
                n, "netns", &hub,
            ]);
            must(&["ip", "-n", &hub, "link", "set", n, "master", "br0"]);
            must(&["ip", "-n", &hub, "link", "set", n, "up"]);
            must(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ]);
            must(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        }
        if let Err(e) = nft(
            &hub,
            "add table bridge chaos\n\
             add chain bridge chaos cut { type filter hook forward priority 0 ; policy accept ; }\n",
        ) {
            panic!("{e}");
        }
        t
    }

    /// The namespace of node `n` (`pg`, `r0`, `cl`…).
    pub fn ns(&self, n: &str) -> String {
        format!("{}-{n}", self.prefix)
    }

    /// `ip netns exec NS` as a command prefix.
    pub fn wrap(&self, n: &str) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), self.ns(n)]
    }

    /// Moves the calling thread into node `n`'s namespace. Threads it starts afterwards (a tokio
    /// runtime's workers) and processes it spawns inherit it.
    pub fn enter(&self, n: &str) -> Result<(), String> {
        let path = format!("/run/netns/{}", self.ns(n));
        let f = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
        crate::setns_net(&f)
    }

    /// Drops all traffic between the addresses `a` and `b` (both ways).
    pub fn cut(&mut self, a: &str, b: &str) -> Result<(), String> {
        self.cuts.insert((a.to_string(), b.to_string()));
        self.apply()
    }

    /// Lets traffic between `a` and `b` through again.
    pub fn heal(&mut self, a: &str, b: &str) -> Result<(), String> {
        self.cuts.remove(&(a.to_string(), b.to_string()));
        self.apply()
    }

    pub fn heal_all(&mut self) -> Result<(), String> {
        self.cuts.clear();
        self.apply()
    }

    /// Rewrites the chain in one nft transaction, so that a partition and a heal of another
    /// link never interleave.
    fn apply(&self) -> Result<(), String> {
        let mut script = String::from("flush chain bridge chaos cut\n");
        for (a, b) in &self.cuts {
            script.push_str(&format!(
                "add rule bridge chaos cut ip saddr {a} ip daddr {b} drop\n\
                 add rule bridge chaos cut ip saddr {b} ip daddr {a} drop\n"
            ));
        }
        nft(&self.ns("hub"), &script)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Processes first (a namespace with processes in it stays alive after `del`), then
        // the namespaces; the veths and the nft table go with them.
        for n in self.nodes.iter().rev() {
            let ns = format!("{}-{n}", self.prefix);
            kill_all_in(&ns);
            let _ = run(&["ip", "netns", "del", &ns]);
        }
    }
}
