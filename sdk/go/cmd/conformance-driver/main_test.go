package main

// The driver as the conformance orchestrator drives it: every PROTOCOL.md command, over
// pipes, against a real `brb server`. TestDriverProcessFleet runs the built binary as a
// child process for the fleet commands and the memory figure.

import (
	"bufio"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/big-red-button/brb/sdk/go/internal/brbtest"
)

// session speaks the protocol to a driver: one command per line, one answer per line.
type session struct {
	t   *testing.T
	in  io.WriteCloser
	out *bufio.Scanner
	id  int
}

func (s *session) send(cmd map[string]any) map[string]any {
	s.t.Helper()
	s.id++
	cmd["id"] = s.id
	b, _ := json.Marshal(cmd)
	if _, err := s.in.Write(append(b, '\n')); err != nil {
		s.t.Fatal(err)
	}
	if !s.out.Scan() {
		s.t.Fatalf("no answer to %s: %v", b, s.out.Err())
	}
	var a map[string]any
	if err := json.Unmarshal(s.out.Bytes(), &a); err != nil {
		s.t.Fatalf("answer %q: %v", s.out.Bytes(), err)
	}
	if a["id"] != float64(s.id) {
		s.t.Fatalf("answer %v to command %d", a, s.id)
	}
	return a
}

// ok sends a command that must succeed.
func (s *session) ok(cmd map[string]any) map[string]any {
	s.t.Helper()
	a := s.send(cmd)
	if a["ok"] != true {
		s.t.Fatalf("%v: %v", cmd, a)
	}
	return a
}

// inProcess runs run() on pipes, as main does on stdin/stdout.
func inProcess(t *testing.T) (*session, chan error) {
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := run(inR, outW)
		outW.Close()
		done <- err
	}()
	t.Cleanup(func() { inW.Close() })
	sc := bufio.NewScanner(outR)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	return &session{t: t, in: inW, out: sc}, done
}

func waitFor(t *testing.T, s *session, gate, what string, cond func(st map[string]any) bool) map[string]any {
	t.Helper()
	var st map[string]any
	brbtest.Eventually(t, 10*time.Second, what, func() bool {
		st = s.ok(map[string]any{"op": "state", "gate": gate})
		return cond(st)
	})
	return st
}

func TestDriverSpeaksTheProtocol(t *testing.T) {
	srv := brbtest.Start(t)
	admin := srv.Admin()
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(srv.Token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, done := inProcess(t)

	// Refused configurations come back as the SDK's own errors.
	for _, bad := range []map[string]any{
		{"urls": []string{srv.URL}, "switch": "workers", "max_concurrency": -1},
		{"urls": []string{srv.URL}, "switch": "workers", "max_concurrency": 0},
		{"urls": []string{"ftp://x"}, "switch": "workers"},
		{"urls": []string{srv.URL}, "switch": "workers", "policy": "sometimes"},
	} {
		if a := s.send(map[string]any{"op": "start", "gate": "bad", "config": bad}); a["ok"] != false || a["error"] == "" {
			t.Fatalf("%v accepted: %v", bad, a)
		}
	}
	if a := s.send(map[string]any{"op": "fly"}); a["ok"] != false || !strings.Contains(a["error"].(string), "unknown op") {
		t.Fatalf("unknown op: %v", a)
	}
	if a := s.send(map[string]any{"op": "state", "gate": "nope"}); a["ok"] != false {
		t.Fatalf("state of no gate: %v", a)
	}

	s.ok(map[string]any{"op": "start", "gate": "g1", "config": map[string]any{
		"urls": []string{srv.URL}, "token_file": tokenFile, "switch": "workers", "worker_id": "conf-g1",
		"policy": "keep_last_known", "grace_ms": 10000, "max_concurrency": 2, "report_interval_ms": 500,
		"transport": "auto", "backoff_base_ms": 100, "backoff_cap_ms": 1000, "idle_timeout_ms": 45000,
		"ca_file": nil, "client_cert": nil, "client_key": nil, "reports": true,
	}})
	if a := s.send(map[string]any{"op": "start", "gate": "g1", "config": map[string]any{"urls": []string{srv.URL}, "switch": "workers"}}); a["ok"] != false {
		t.Fatalf("a second g1: %v", a)
	}
	a := s.ok(map[string]any{"op": "wait_open", "gate": "g1", "timeout_ms": 10000})
	if a["opened"] != true {
		t.Fatalf("wait_open: %v", a)
	}
	st := s.ok(map[string]any{"op": "state", "gate": "g1"})
	if st["open"] != true || st["version"] != float64(1) || st["connected"] != true || st["staleness_ms"] != float64(0) ||
		st["status"] != "running" || st["admitted_fraction"] != float64(1) || st["connects"] != float64(1) ||
		len(st["connect_times"].([]any)) != 1 {
		t.Fatalf("state: %v", st)
	}
	if ct := st["connect_times"].([]any)[0].(float64); time.Since(time.UnixMilli(int64(ct))) > time.Minute {
		t.Fatalf("connect time %v is not a recent Unix ms", ct)
	}

	// work: both slots used, each job [start, end] in Unix ms, about job_ms long.
	a = s.ok(map[string]any{"op": "work", "gate": "g1", "for_ms": 300, "job_ms": 20})
	jobs := a["jobs"].([]any)
	if len(jobs) < 10 {
		t.Fatalf("%d jobs in 300 ms on two slots of 20 ms", len(jobs))
	}
	for _, j := range jobs {
		se := j.([]any)
		if d := se[1].(float64) - se[0].(float64); d < 19 || d > 1000 {
			t.Fatalf("a job of %v ms", d)
		}
	}

	// A job held across a pause: draining, then paused once it ends.
	if a := s.ok(map[string]any{"op": "begin_job", "gate": "g1", "job": "j1"}); a["admitted"] != true {
		t.Fatalf("begin_job: %v", a)
	}
	paused := admin.SetState("workers", "paused")
	st = waitFor(t, s, "g1", "the pause", func(st map[string]any) bool { return st["open"] == false })
	if st["status"] != "draining" || st["in_flight"] != float64(1) || st["version"] != float64(paused.Version) || st["admitted_fraction"] != float64(0) {
		t.Fatalf("state while draining: %v", st)
	}
	if a := s.ok(map[string]any{"op": "begin_job", "gate": "g1", "job": "j2"}); a["admitted"] != false {
		t.Fatalf("begin_job while paused: %v", a)
	}
	if a := s.ok(map[string]any{"op": "wait_open", "gate": "g1", "timeout_ms": 50}); a["opened"] != false {
		t.Fatalf("wait_open while paused: %v", a)
	}
	s.ok(map[string]any{"op": "end_job", "gate": "g1", "job": "j1"})
	if a := s.send(map[string]any{"op": "end_job", "gate": "g1", "job": "j1"}); a["ok"] != false {
		t.Fatalf("ending a job twice: %v", a)
	}
	brbtest.Eventually(t, 10*time.Second, "the control plane counts conf-g1 paused", func() bool {
		for _, w := range admin.Workers("workers").Workers {
			if w.WorkerID == "conf-g1" && w.Status == "paused" && w.InFlight == 0 {
				return true
			}
		}
		return false
	})
	a = s.ok(map[string]any{"op": "work", "gate": "g1", "for_ms": 100, "job_ms": 5})
	if n := len(a["jobs"].([]any)); n != 0 {
		t.Fatalf("%d jobs while paused", n)
	}

	// Server down: staleness grows, the state is kept; back: a second connect time.
	srv.Kill()
	st = waitFor(t, s, "g1", "staleness while down", func(st map[string]any) bool {
		ms, ok := st["staleness_ms"].(float64)
		return st["connected"] == false && ok && ms > 50
	})
	if st["open"] != false {
		t.Fatalf("open while down: %v", st)
	}
	srv.Restart()
	waitFor(t, s, "g1", "the reconnect", func(st map[string]any) bool {
		return st["connected"] == true && st["connects"] == float64(2) && len(st["connect_times"].([]any)) == 2
	})

	s.ok(map[string]any{"op": "stop", "gate": "g1"})
	if a := s.send(map[string]any{"op": "state", "gate": "g1"}); a["ok"] != false {
		t.Fatalf("state after stop: %v", a)
	}

	// The fleet commands, in process (TestDriverProcessFleet runs them in a child).
	s.ok(map[string]any{"op": "fleet_start", "count": 20, "config": map[string]any{"urls": []string{srv.URL}, "token": srv.Token, "switch": "workers", "worker_id": "fleet"}})
	if a := s.ok(map[string]any{"op": "fleet_ready", "timeout_ms": 10000}); a["ready"] != float64(20) {
		t.Fatalf("fleet_ready: %v", a)
	}
	resumed := srv.Admin().SetState("workers", "running")
	a = s.ok(map[string]any{"op": "fleet_seen", "version": resumed.Version, "timeout_ms": 10000})
	if a["missing"] != float64(0) || len(a["seen_us"].([]any)) != 20 {
		t.Fatalf("fleet_seen: %v", a)
	}
	for _, us := range a["seen_us"].([]any) {
		if d := time.Since(time.UnixMicro(int64(us.(float64)))); d < 0 || d > time.Minute {
			t.Fatalf("seen at %v µs: not a recent Unix µs", us)
		}
	}
	a = s.ok(map[string]any{"op": "fleet_seen", "version": resumed.Version + 5, "timeout_ms": 100})
	if a["missing"] != float64(20) || len(a["seen_us"].([]any)) != 0 {
		t.Fatalf("fleet_seen of a version to come: %v", a)
	}
	if a := s.ok(map[string]any{"op": "rss"}); a["rss_bytes"].(float64) < 1<<20 {
		t.Fatalf("rss: %v", a)
	}
	brbtest.Eventually(t, 10*time.Second, "the fleet's reports", func() bool {
		n := 0
		for _, w := range srv.Admin().Workers("workers").Workers {
			if strings.HasPrefix(w.WorkerID, "fleet-") && w.ObservedVersion == resumed.Version {
				n++
			}
		}
		return n == 20
	})

	s.in.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the driver did not stop when stdin closed")
	}
}

// The built driver as a child process with a fleet of gates: the memory per gate (the
// figure in sdk/go/README.md), press to seen, and exit 0 when stdin closes.
// BRB_FLEET_COUNT sets the fleet's size (default 200; the README's figure is at 1,000).
func TestDriverProcessFleet(t *testing.T) {
	count := 200
	if v := os.Getenv("BRB_FLEET_COUNT"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatal(err)
		}
		count = n
	}
	bin := filepath.Join(t.TempDir(), "conformance-driver")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	srv := brbtest.Start(t)
	admin := srv.Admin()
	cmd := exec.Command(bin)
	in, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	s := &session{t: t, in: in, out: sc}

	rss0 := s.ok(map[string]any{"op": "rss"})["rss_bytes"].(float64)
	s.ok(map[string]any{"op": "fleet_start", "count": count, "config": map[string]any{"urls": []string{srv.URL}, "token": srv.Token, "switch": "workers", "worker_id": "proc"}})
	if a := s.ok(map[string]any{"op": "fleet_ready", "timeout_ms": 60000}); a["ready"] != float64(count) {
		t.Fatalf("fleet_ready: %v", a)
	}
	t.Logf("after ready: %.1f KiB per gate", (s.ok(map[string]any{"op": "rss"})["rss_bytes"].(float64)-rss0)/float64(count)/1024)
	var lat []float64
	for i := 0; i < 6; i++ {
		pressed := time.Now()
		sw := admin.SetState("workers", []string{"paused", "running"}[i%2])
		a := s.ok(map[string]any{"op": "fleet_seen", "version": sw.Version, "timeout_ms": 30000})
		if a["missing"] != float64(0) {
			t.Fatalf("press %d: %v gates missed version %d", i, a["missing"], sw.Version)
		}
		for _, us := range a["seen_us"].([]any) {
			lat = append(lat, float64(time.UnixMicro(int64(us.(float64))).Sub(pressed).Microseconds())/1000)
		}
	}
	rss1 := s.ok(map[string]any{"op": "rss"})["rss_bytes"].(float64)
	t.Logf("%d gates: %.1f KiB per gate (RSS %.0f → %.0f KiB); press → seen p50 %.1f ms, p99 %.1f ms (including the press's own round trip)",
		count, (rss1-rss0)/float64(count)/1024, rss0/1024, rss1/1024, percentile(lat, 0.5), percentile(lat, 0.99))
	in.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("the driver exited with %v:\n%s", err, stderr.String())
	}
	if strings.Contains(stderr.String(), srv.Token) {
		t.Fatal("the token reached the driver's stderr")
	}
}

func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[int(p*float64(len(s)-1))]
}
