package brb_test

// End to end against the real `brb server` (a child process on a loopback port, see
// internal/brbtest): what a worker sees and what the control plane counts.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/big-red-button/brb/sdk/go/brb"
	"github.com/big-red-button/brb/sdk/go/internal/brbtest"
)

const wait = 10 * time.Second

// start makes a gate with the test's logger; it is closed at the end of the test, and the
// logs must never contain the tokens given.
func start(t *testing.T, cfg brb.Config, secrets ...string) (*brb.Gate, *brbtest.Logs) {
	t.Helper()
	logs := &brbtest.Logs{}
	cfg.Logger = logs
	if cfg.Switch == "" {
		cfg.Switch = "workers"
	}
	g, err := brb.NewGate(cfg)
	if err != nil {
		t.Fatalf("NewGate: %v", err)
	}
	t.Cleanup(func() {
		g.Close()
		if t.Failed() {
			t.Logf("the gate's log:\n%s", logs.All())
		}
		for _, s := range append(secrets, cfg.Token) {
			if s != "" && strings.Contains(logs.All()+fmt.Sprintf("%v %+v %#v %s", cfg, cfg, cfg, g), s) {
				t.Errorf("a token appeared in the logs or a printed config:\n%s", logs.All())
			}
		}
	})
	return g, logs
}

func ready(t *testing.T, g *brb.Gate) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := g.WaitReady(ctx); err != nil {
		t.Fatalf("the gate never heard the control plane: %v (last error: %v)", err, g.LastError())
	}
}

func worker(t *testing.T, c *brbtest.Client, id string) (status string, version uint64, inFlight int, processed uint64, ok bool) {
	t.Helper()
	for _, w := range c.Workers("workers").Workers {
		if w.WorkerID == id {
			return w.Status, w.ObservedVersion, w.InFlight, w.ProcessedTotal, true
		}
	}
	return "", 0, 0, 0, false
}

// A pause and a resume reach the gate, and the control plane counts the worker as paused,
// then running, at the version it acts on.
func TestGateFollowsPauseAndResumeAndReports(t *testing.T) {
	srv := brbtest.Start(t)
	admin := srv.Admin()
	g, logs := start(t, brb.Config{URLs: []string{srv.URL}, Token: srv.Token, WorkerID: "w-follow"})
	ready(t, g)
	if !g.IsOpen() || g.Version() != 1 || g.Status() != brb.StatusRunning {
		t.Fatalf("initial: open=%v version=%d status=%s", g.IsOpen(), g.Version(), g.Status())
	}
	if d, ok := g.Staleness(); !ok || d != 0 || !g.Connected() || g.Connects() != 1 {
		t.Fatalf("connected: staleness %s %v, connected %v, connects %d", d, ok, g.Connected(), g.Connects())
	}
	paused := admin.SetState("workers", "paused")
	brbtest.Eventually(t, wait, "the gate closes", func() bool { return !g.IsOpen() })
	if v, at, ok := g.LastChange(); !ok || v != paused.Version || time.Since(at) > wait {
		t.Fatalf("last change: %d %s %v, want version %d", v, at, ok, paused.Version)
	}
	brbtest.Eventually(t, wait, "the control plane counts the worker paused", func() bool {
		st, v, _, _, ok := worker(t, admin, "w-follow")
		return ok && st == "paused" && v == paused.Version
	})
	if !logs.Has("is now paused (version 2, by admin via api)") {
		t.Fatalf("no log line for the change:\n%s", logs.All())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := g.WaitOpen(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitOpen while paused: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- g.WaitOpen(context.Background()) }()
	resumed := admin.SetState("workers", "running")
	select {
	case err := <-done:
		if err != nil || !g.IsOpen() || g.Version() != resumed.Version {
			t.Fatalf("after resume: %v open=%v version=%d", err, g.IsOpen(), g.Version())
		}
	case <-time.After(wait):
		t.Fatal("WaitOpen did not return after the resume")
	}
	brbtest.Eventually(t, wait, "the control plane counts the worker running", func() bool {
		st, v, _, _, ok := worker(t, admin, "w-follow")
		return ok && st == "running" && v == resumed.Version
	})
}

// Finished jobs become the fleet's jobs-per-second series: sdk_jobs_processed counter
// samples, at most one a second, adding up to what the gate processed.
func TestJobsProcessedSamples(t *testing.T) {
	srv := brbtest.Start(t)
	admin := srv.Admin()
	g, _ := start(t, brb.Config{URLs: []string{srv.URL}, Token: srv.Token})
	ready(t, g)
	for i := 0; i < 7; i++ {
		p, err := g.Acquire(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		p.Release()
	}
	sum := func() float64 {
		var out struct {
			Series []struct {
				Points [][2]float64 `json:"points"`
			} `json:"series"`
		}
		admin.Do(http.MethodGet, "/metrics/series?name=sdk_jobs_processed", nil, &out)
		total := 0.0
		for _, s := range out.Series {
			for _, p := range s.Points {
				total += p[1]
			}
		}
		return total
	}
	brbtest.Eventually(t, wait, "seven jobs in the series", func() bool { return sum() == 7 })
	p, _ := g.Acquire(context.Background())
	p.Release()
	brbtest.Eventually(t, wait, "the eighth", func() bool { return sum() == 8 })
}

// A job started before a pause finishes: the gate reports draining with it in flight, then
// paused once it is released; Acquire waits while paused and returns on resume.
func TestPermitsDrainThenPause(t *testing.T) {
	srv := brbtest.Start(t)
	admin := srv.Admin()
	g, _ := start(t, brb.Config{URLs: []string{srv.URL}, Token: srv.Token, WorkerID: "w-drain", MaxConcurrency: 2})
	ready(t, g)
	p, err := g.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	admin.SetState("workers", "paused")
	brbtest.Eventually(t, wait, "the gate closes", func() bool { return !g.IsOpen() })
	if g.Status() != brb.StatusDraining || g.InFlight() != 1 {
		t.Fatalf("status %s in flight %d", g.Status(), g.InFlight())
	}
	if _, ok := g.TryAcquire(); ok {
		t.Fatal("TryAcquire admitted a job while paused")
	}
	brbtest.Eventually(t, wait, "the control plane sees the worker draining", func() bool {
		st, _, inFlight, _, ok := worker(t, admin, "w-drain")
		return ok && st == "draining" && inFlight == 1
	})
	p.Release()
	p.Release() // twice is once
	if g.Processed() != 1 || g.InFlight() != 0 || g.Status() != brb.StatusPaused {
		t.Fatalf("after release: processed %d in flight %d status %s", g.Processed(), g.InFlight(), g.Status())
	}
	brbtest.Eventually(t, wait, "the control plane sees the worker drained", func() bool {
		st, _, inFlight, processed, ok := worker(t, admin, "w-drain")
		return ok && st == "paused" && inFlight == 0 && processed == 1
	})
	got := make(chan *brb.Permit, 1)
	go func() {
		p, err := g.Acquire(context.Background())
		if err != nil {
			t.Error(err)
		}
		got <- p
	}()
	select {
	case <-got:
		t.Fatal("Acquire returned while paused")
	case <-time.After(100 * time.Millisecond): // what must not happen, given time to happen
	}
	admin.SetState("workers", "running")
	select {
	case p := <-got:
		p.Abandon()
		if g.Processed() != 1 {
			t.Fatalf("an abandoned permit counted: processed %d", g.Processed())
		}
	case <-time.After(wait):
		t.Fatal("Acquire did not return after the resume")
	}
}

// During a ramp the gate admits the ramp's fraction: a slot rests job·(1−f)/f after each
// job, so at f = 0.2 it rests four times as long as the job took.
func TestRampDutyCycle(t *testing.T) {
	srv := brbtest.Start(t)
	admin := srv.Admin()
	g, _ := start(t, brb.Config{URLs: []string{srv.URL}, Token: srv.Token})
	ready(t, g)
	admin.SetState("workers", "paused")
	sw := admin.ResumeWithRamp("workers", map[string]any{"kind": "steps", "fractions": []float64{0.2, 1.0}, "duration_secs": 3600})
	brbtest.Eventually(t, wait, "the gate applies the ramp", func() bool { return g.Version() == sw.Version })
	if f := g.AdmittedFraction(); f != 0.2 {
		t.Fatalf("admitted fraction %v, want 0.2", f)
	}
	p, ok := g.TryAcquire()
	if !ok {
		t.Fatal("a rested slot was refused")
	}
	held := time.Now()
	for time.Since(held) < 50*time.Millisecond {
		time.Sleep(5 * time.Millisecond) // the job
	}
	took := time.Since(held)
	p.Release()
	released := time.Now()
	if _, ok := g.TryAcquire(); ok {
		t.Fatal("the slot did not rest after the job")
	}
	p2, err := g.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer p2.Abandon()
	if rested := time.Since(released); rested < 4*took-10*time.Millisecond {
		t.Fatalf("the slot rested %s after a %s job; want about %s", rested, took, 4*took)
	}
	// Resuming without a ramp ends it: everything is admitted again.
	admin.SetState("workers", "paused")
	admin.SetState("workers", "running")
	brbtest.Eventually(t, wait, "the ramp ends", func() bool { return g.AdmittedFraction() == 1 })
}

// The control plane killed and restarted: the gate keeps the last known state, says how
// stale it is, reconnects and resumes from its version.
func TestServerRestartKeepsLastKnownAndResumes(t *testing.T) {
	srv := brbtest.Start(t)
	admin := srv.Admin()
	g, logs := start(t, brb.Config{URLs: []string{srv.URL}, Token: srv.Token, BackoffBase: 50 * time.Millisecond})
	ready(t, g)
	paused := admin.SetState("workers", "paused")
	brbtest.Eventually(t, wait, "the gate closes", func() bool { return !g.IsOpen() })
	srv.Kill()
	brbtest.Eventually(t, wait, "the gate sees the connection lost", func() bool { return !g.Connected() })
	brbtest.Eventually(t, wait, "the staleness grows", func() bool {
		d, ok := g.Staleness()
		return ok && d > 100*time.Millisecond
	})
	if g.IsOpen() || g.Version() != paused.Version {
		t.Fatalf("while down: open=%v version=%d", g.IsOpen(), g.Version())
	}
	srv.Restart()
	brbtest.Eventually(t, wait, "the gate reconnects", func() bool { return g.Connected() && g.Connects() == 2 })
	if len(g.ConnectTimes()) != 2 || g.IsOpen() {
		t.Fatalf("connect times %v, open %v", g.ConnectTimes(), g.IsOpen())
	}
	if !logs.Has("connected to the control plane again") || !logs.Has("keeping the last known (paused) state") {
		t.Fatalf("log lines missing:\n%s", logs.All())
	}
	resumed := srv.Admin().SetState("workers", "running")
	brbtest.Eventually(t, wait, "the resume arrives", func() bool { return g.IsOpen() && g.Version() == resumed.Version })
}

// A gate far behind (more changes than the server replays) gets a resync event and the
// current state, and says so.
func TestResumeFarBehindResyncs(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "brb.toml")
	if err := os.WriteFile(conf, []byte("[abuse]\nchanges_per_sec = 100000.0\nchanges_burst = 100000.0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := brbtest.Start(t, "--config", conf)
	admin := srv.Admin()
	relay := brbtest.NewRelay(t, srv.Addr)
	g, logs := start(t, brb.Config{URLs: []string{relay.URL()}, Token: srv.Token, BackoffBase: 20 * time.Millisecond, BackoffCap: 200 * time.Millisecond})
	ready(t, g)
	relay.SetMode(brbtest.Refuse)
	relay.CutAll()
	brbtest.Eventually(t, wait, "the gate is cut off", func() bool { return !g.Connected() })
	var last brbtest.Switch
	for i := 0; i < 1003; i++ {
		last = admin.SetState("workers", []string{"paused", "running"}[i%2])
	}
	if g.Version() != 1 || !g.IsOpen() {
		t.Fatalf("the gate changed while cut off: version %d", g.Version())
	}
	relay.SetMode(brbtest.Forward)
	brbtest.Eventually(t, 3*wait, "the gate catches up", func() bool { return g.Version() == last.Version })
	if g.IsOpen() != (last.State == "running") {
		t.Fatalf("state %s but open=%v", last.State, g.IsOpen())
	}
	want := fmt.Sprintf("the stream skipped from version 1 to %d (too_far_behind); the state that follows is current", last.Version)
	brbtest.Eventually(t, wait, "the resync is logged", func() bool { return logs.Has(want) })
}

// With several replica URLs the gate moves to the next when the one it uses goes away
// (two relays in front of one server stand for two replicas).
func TestReplicaFailover(t *testing.T) {
	srv := brbtest.Start(t)
	admin := srv.Admin()
	a, b := brbtest.NewRelay(t, srv.Addr), brbtest.NewRelay(t, srv.Addr)
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadURL := "http://" + dead.Addr().String()
	dead.Close()
	g, _ := start(t, brb.Config{URLs: []string{deadURL, a.URL(), b.URL()}, Token: srv.Token, BackoffBase: 20 * time.Millisecond})
	ready(t, g)
	using, other := a, b
	if b.Accepted() > 0 {
		using, other = b, a
	}
	before := other.Accepted()
	using.SetMode(brbtest.Refuse)
	using.CutAll()
	brbtest.Eventually(t, wait, "the gate moves to the other replica", func() bool {
		return other.Accepted() > before && g.Connected()
	})
	admin.SetState("workers", "paused")
	brbtest.Eventually(t, wait, "the pause arrives through the other replica", func() bool { return !g.IsOpen() })
}

// Long-poll alone works against the real server: changes arrive, reports count.
func TestLongPollTransport(t *testing.T) {
	srv := brbtest.Start(t)
	admin := srv.Admin()
	g, _ := start(t, brb.Config{URLs: []string{srv.URL}, Token: srv.Token, Transport: brb.LongPoll, WorkerID: "w-lp"})
	ready(t, g)
	paused := admin.SetState("workers", "paused")
	brbtest.Eventually(t, wait, "the pause arrives by long-poll", func() bool { return !g.IsOpen() && g.Version() == paused.Version })
	brbtest.Eventually(t, wait, "the control plane counts the worker", func() bool {
		st, v, _, _, ok := worker(t, admin, "w-lp")
		return ok && st == "paused" && v == paused.Version
	})
	if !g.Connected() || g.Connects() != 1 {
		t.Fatalf("connected %v connects %d", g.Connected(), g.Connects())
	}
}

// A proxy that refuses event streams: Auto falls back to long-poll through the same proxy
// and still follows the switch.
func TestAutoFallsBackToLongPollWhenSSEIsRefused(t *testing.T) {
	srv := brbtest.Start(t)
	admin := srv.Admin()
	target, _ := url.Parse(srv.URL)
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.ErrorLog = log.New(io.Discard, "", 0) // the gate cancels its long-polls when closed
	proxy := httptestServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/events") {
			http.Error(w, "streaming responses are not allowed here", http.StatusForbidden)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	g, logs := start(t, brb.Config{URLs: []string{proxy}, Token: srv.Token, BackoffBase: 10 * time.Millisecond, BackoffCap: 100 * time.Millisecond})
	ready(t, g)
	if !logs.Has("falling back to long-poll") {
		t.Fatalf("no fallback line:\n%s", logs.All())
	}
	admin.SetState("workers", "paused")
	brbtest.Eventually(t, wait, "the pause arrives by long-poll", func() bool { return !g.IsOpen() })
}

// Fail closed or open once the control plane has been unreachable for the grace period;
// keep the last known state forever by default.
func TestFailPolicies(t *testing.T) {
	grace := 300 * time.Millisecond
	for _, c := range []struct {
		policy    brb.FailPolicy
		state     string // before the outage
		wantOpen  bool   // after the grace
		logAtFail string
	}{
		{brb.FailClosed, "running", false, "failing closed (policy closed)"},
		{brb.FailOpen, "paused", true, "failing open (policy open)"},
		{brb.KeepLastKnown, "paused", false, ""},
		{brb.KeepLastKnown, "running", true, ""},
	} {
		c := c
		t.Run(c.policy.String()+"-"+c.state, func(t *testing.T) {
			srv := brbtest.Start(t)
			if c.state == "paused" {
				srv.Admin().SetState("workers", "paused")
			}
			g, logs := start(t, brb.Config{URLs: []string{srv.URL}, Token: srv.Token, Policy: c.policy, Grace: grace, BackoffBase: 20 * time.Millisecond})
			ready(t, g)
			if g.IsOpen() != (c.state == "running") {
				t.Fatalf("before the outage: open=%v", g.IsOpen())
			}
			srv.Kill()
			brbtest.Eventually(t, wait, "the connection is lost", func() bool { return !g.Connected() })
			lost := time.Now()
			if c.logAtFail != "" {
				brbtest.Eventually(t, wait, "the policy applies", func() bool { return g.IsOpen() == c.wantOpen })
				if since := time.Since(lost); g.IsOpen() == (c.state == "running") || since < grace-50*time.Millisecond {
					t.Fatalf("applied after %s, grace %s", since, grace)
				}
				brbtest.Eventually(t, wait, "the log says so", func() bool { return logs.Has(c.logAtFail) })
			} else {
				brbtest.Eventually(t, wait, "well past the grace", func() bool {
					d, ok := g.Staleness()
					return ok && d > 3*grace
				})
				if g.IsOpen() != c.wantOpen {
					t.Fatalf("keep last known changed the decision: open=%v", g.IsOpen())
				}
			}
			// Back: the control plane's word applies again.
			srv.Restart()
			brbtest.Eventually(t, wait, "the gate follows the server again", func() bool {
				return g.Connected() && g.IsOpen() == (c.state == "running")
			})
		})
	}
}

// A bad token: a clear error, said once, and retries at the longest backoff (not a storm).
func TestBadTokenIsClearAndDoesNotStorm(t *testing.T) {
	srv := brbtest.Start(t)
	relay := brbtest.NewRelay(t, srv.Addr)
	bad := "brb_0123456789_" + strings.Repeat("ab", 32)
	capd := 400 * time.Millisecond
	g, logs := start(t, brb.Config{URLs: []string{relay.URL()}, Token: bad, BackoffBase: 5 * time.Millisecond, BackoffCap: capd}, bad)
	brbtest.Eventually(t, wait, "the refusal is logged", func() bool { return logs.Has("HTTP 401") })
	t0, n0 := time.Now(), relay.Accepted()
	brbtest.Eventually(t, wait, "three more attempts", func() bool { return relay.Accepted() >= n0+3 })
	// Each retry waits at least half the cap: three take at least 1.5 × cap (with a
	// 5 ms base and no such rule, they would all be done within a few tens of ms).
	if el := time.Since(t0); el < 3*capd/2-50*time.Millisecond {
		t.Fatalf("three retries within %s: a retry storm", el)
	}
	var api *brb.APIError
	if err := g.LastError(); !errors.As(err, &api) || api.Status != 401 || !strings.Contains(err.Error(), "check BRB_TOKEN") {
		t.Fatalf("last error %v", err)
	}
	if n := logs.Count("HTTP 401"); n != 1 {
		t.Fatalf("the same refusal logged %d times:\n%s", n, logs.All())
	}
	if g.IsOpen() || g.Version() != 0 {
		t.Fatal("a refused gate opened")
	}
}

// The token from BRB_TOKEN_FILE, re-read after a 401 when the file is rotated.
func TestTokenFileIsRereadAfterRefusal(t *testing.T) {
	srv := brbtest.Start(t)
	file := filepath.Join(t.TempDir(), "token")
	bad := "brb_0123456789_" + strings.Repeat("cd", 32)
	if err := os.WriteFile(file, []byte(bad+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("BRB_TOKEN", "")
	t.Setenv("BRB_TOKEN_FILE", file)
	g, logs := start(t, brb.Config{URLs: []string{srv.URL}, BackoffBase: 5 * time.Millisecond, BackoffCap: 200 * time.Millisecond}, bad, srv.Token)
	brbtest.Eventually(t, wait, "the refusal", func() bool { return logs.Has("HTTP 401") })
	if err := os.WriteFile(file, []byte(srv.Token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ready(t, g)
	if !logs.Has("the token file " + file + " changed; using the new token") {
		t.Fatalf("no line about the new token:\n%s", logs.All())
	}
}

func TestConfigIsCheckedAndNeverPrintsTheToken(t *testing.T) {
	secret := "brb_0123456789_" + strings.Repeat("ef", 32)
	cfg := brb.Config{URLs: []string{"http://127.0.0.1:1"}, Switch: "workers", Token: secret}
	for _, s := range []string{fmt.Sprint(cfg), fmt.Sprintf("%+v", cfg), fmt.Sprintf("%#v", cfg), fmt.Sprintf("%v", &cfg), cfg.String()} {
		if strings.Contains(s, secret) || !strings.Contains(s, "<redacted>") {
			t.Fatalf("printed config: %s", s)
		}
	}
	for _, c := range []struct {
		cfg  brb.Config
		want string
	}{
		{brb.Config{URLs: []string{"ftp://x"}, Switch: "workers"}, "not an http:// or https:// URL"},
		{brb.Config{URLs: []string{"http://10.1.2.3:7070"}, Switch: "workers"}, "refusing plain HTTP"},
		{brb.Config{URLs: []string{"http://127.0.0.1:1"}, Switch: "workers", MaxConcurrency: -1}, "MaxConcurrency"},
		{brb.Config{URLs: []string{"http://127.0.0.1:1"}, Switch: "workers", Grace: -time.Second}, "Grace must not be negative"},
		{brb.Config{URLs: []string{"http://127.0.0.1:1"}, Switch: "workers", ClientCert: "c.pem"}, "both ClientCert and ClientKey"},
		{brb.Config{URLs: []string{"http://127.0.0.1:1"}, Switch: "workers", CAFile: "/nonexistent/ca.pem"}, "CA file"},
		{brb.Config{URLs: []string{"http://127.0.0.1:1"}, Switch: "workers", Token: "two words"}, "the token contains"},
		{brb.Config{URLs: []string{"http://127.0.0.1:1"}, Switch: "workers", TokenFile: "/nonexistent/token"}, "token file"},
	} {
		_, err := brb.NewGate(c.cfg)
		if !errors.Is(err, brb.ErrConfig) || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("%v: got %v, want an ErrConfig about %q", c.cfg, err, c.want)
		}
	}
	// Defaults from the environment, as the CLI takes them.
	t.Setenv("BRB_URL", " , ")
	if _, err := brb.NewGate(brb.Config{}); err == nil || !strings.Contains(err.Error(), "BRB_URL names no control-plane URL") {
		t.Fatalf("an empty BRB_URL: %v", err)
	}
	t.Setenv("BRB_URL", "http://127.0.0.1:1, http://10.9.9.9:7070")
	if _, err := brb.NewGate(brb.Config{}); err == nil || !strings.Contains(err.Error(), `"http://10.9.9.9:7070": refusing plain HTTP`) {
		t.Fatalf("BRB_URL's second replica was not checked: %v", err)
	}
	t.Setenv("BRB_URL", "")
	t.Setenv("BRB_CA_FILE", "/nonexistent/from-env.pem")
	if _, err := brb.NewGate(brb.Config{}); err == nil || !strings.Contains(err.Error(), "/nonexistent/from-env.pem") {
		t.Fatalf("BRB_CA_FILE was not used: %v", err)
	}
	t.Setenv("BRB_CA_FILE", "")
	// Plain HTTP beyond loopback when a TLS proxy is in front, said explicitly.
	g, err := brb.NewGate(brb.Config{URLs: []string{"http://10.1.2.3:7070"}, Switch: "workers", AllowInsecureHTTP: true, Logger: &brbtest.Logs{}})
	if err != nil {
		t.Fatal(err)
	}
	g.Close()
}

func httptestServer(t *testing.T, h http.Handler) string {
	t.Helper()
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	return s.URL
}

// Through a forward proxy (HTTPS_PROXY-style, here given as Config.Proxy) the stream goes
// through net/http instead of the gate's own connection, and behaves the same.
func TestThroughAForwardProxy(t *testing.T) {
	srv := brbtest.Start(t)
	admin := srv.Admin()
	var mu sync.Mutex
	seen := map[string]int{}
	fwd := &httputil.ReverseProxy{
		Director:      func(r *http.Request) {}, // the request line is already absolute
		FlushInterval: -1,
		ErrorLog:      log.New(io.Discard, "", 0),
	}
	proxy := httptestServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen[r.URL.Path]++
		mu.Unlock()
		fwd.ServeHTTP(w, r)
	}))
	proxyURL, _ := url.Parse(proxy)
	g, _ := start(t, brb.Config{URLs: []string{srv.URL}, Token: srv.Token, WorkerID: "w-proxied", Proxy: http.ProxyURL(proxyURL)})
	ready(t, g)
	paused := admin.SetState("workers", "paused")
	brbtest.Eventually(t, wait, "the pause arrives through the proxy", func() bool { return !g.IsOpen() && g.Version() == paused.Version })
	brbtest.Eventually(t, wait, "the report went through the proxy", func() bool {
		st, _, _, _, ok := worker(t, admin, "w-proxied")
		mu.Lock()
		defer mu.Unlock()
		return ok && st == "paused" && seen["/api/v1/workers/report"] > 0
	})
	mu.Lock()
	defer mu.Unlock()
	if seen["/api/v1/switches/workers/events"] != 1 {
		t.Fatalf("requests through the proxy: %v", seen)
	}
}
