// Package exampletest runs the runnable example worker (examples/go) as a child process
// against a real `brb server`, as the README tells a reader to run it.
package exampletest

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/big-red-button/brb/sdk/go/internal/brbtest"
)

func TestExampleWorker(t *testing.T) {
	dir, err := filepath.Abs("../../../../examples/go")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "worker")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Dir = dir
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building examples/go: %v\n%s", err, out)
	}
	srv := brbtest.Start(t)
	admin := srv.Admin()
	viewer := admin.CreateToken("example-worker", "viewer", "workers")
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(viewer+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "BRB_URL="+srv.URL, "BRB_TOKEN=", "BRB_TOKEN_FILE="+tokenFile, "BRB_SWITCH=workers")
	stdout, _ := cmd.StdoutPipe()
	var mu sync.Mutex
	var stderr strings.Builder
	cmd.Stderr = &lockedBuilder{mu: &mu, b: &stderr}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	var done sync.WaitGroup
	var jobs int64
	done.Add(1)
	go func() {
		defer done.Done()
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "job ") {
				mu.Lock()
				jobs++
				mu.Unlock()
			}
		}
	}()
	jobCount := func() int64 {
		mu.Lock()
		defer mu.Unlock()
		return jobs
	}
	log := func() string {
		mu.Lock()
		defer mu.Unlock()
		return stderr.String()
	}
	worker := func() (status string, processed uint64, ok bool) {
		for _, w := range admin.Workers("workers").Workers {
			return w.Status, w.ProcessedTotal, true
		}
		return "", 0, false
	}

	brbtest.Eventually(t, 10*time.Second, "jobs done and the worker counted running", func() bool {
		st, _, ok := worker()
		return jobCount() > 10 && ok && st == "running"
	})
	admin.SetState("workers", "paused")
	brbtest.Eventually(t, 10*time.Second, "the worker counted paused once drained", func() bool {
		st, _, ok := worker()
		return ok && st == "paused"
	})
	atPause := jobCount()
	_, reported, _ := worker()
	if reported < uint64(atPause)-4 {
		t.Fatalf("reported %d processed, printed %d", reported, atPause)
	}
	brbtest.Eventually(t, 10*time.Second, "the change in the worker's log", func() bool {
		return strings.Contains(log(), "brake: paused at version 2")
	})
	if n := jobCount(); n != atPause {
		t.Fatalf("%d jobs done while paused", n-atPause)
	}
	admin.SetState("workers", "running")
	brbtest.Eventually(t, 10*time.Second, "work resumes", func() bool { return jobCount() > atPause+10 })

	_ = cmd.Process.Signal(syscall.SIGTERM)
	exited := make(chan error, 1)
	go func() { done.Wait(); exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("the worker exited with %v:\n%s", err, log())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("the worker did not stop on SIGTERM:\n%s", log())
	}
	// A scoped viewer token is enough for everything the worker does (stream, reports,
	// samples): nothing failed.
	if !strings.Contains(log(), "stopped after") || strings.Contains(log(), viewer) || strings.Contains(log(), "failed") {
		t.Fatalf("the worker's log:\n%s", log())
	}
}

type lockedBuilder struct {
	mu *sync.Mutex
	b  *strings.Builder
}

func (l *lockedBuilder) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
