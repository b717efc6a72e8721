// Package brbtest runs the real `brb server` for the Go SDK's tests: a child process on a
// free loopback port with a temporary data directory, killed and restarted at will, and a
// few helpers that talk to it as an operator would.
package brbtest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Binary is the brb binary: $BRB_BIN, else target/debug/brb of the repository the tests
// run in. The tests fail (not skip) without it: they are what proves the SDK.
func Binary(t testing.TB) string {
	t.Helper()
	if b := os.Getenv("BRB_BIN"); b != "" {
		return b
	}
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for d := dir; d != filepath.Dir(d); d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "Cargo.toml")); err == nil {
			b := filepath.Join(d, "target", "debug", "brb")
			if _, err := os.Stat(b); err != nil {
				t.Fatalf("no brb binary at %s: build it (cargo build -p brb) or set BRB_BIN", b)
			}
			return b
		}
	}
	t.Fatal("no repository root above the test's directory: set BRB_BIN to the brb binary")
	return ""
}

// Server is a running `brb server`.
type Server struct {
	t       testing.TB
	bin     string
	DataDir string
	Args    []string // extra arguments (TLS, --config)
	Env     []string
	URL     string // e.g. http://127.0.0.1:41234
	Addr    string // 127.0.0.1:41234
	Token   string // the admin token
	cmd     *exec.Cmd
	mu      sync.Mutex
	log     bytes.Buffer
}

// Start starts a server on a free port with a fresh data directory.
func Start(t testing.TB, args ...string) *Server {
	t.Helper()
	s := &Server{t: t, bin: Binary(t), DataDir: t.TempDir(), Args: args}
	s.start("127.0.0.1:0")
	t.Cleanup(s.Kill)
	return s
}

func (s *Server) start(listen string) {
	s.t.Helper()
	args := append([]string{"server", "--listen", listen, "--data-dir", s.DataDir}, s.Args...)
	cmd := exec.Command(s.bin, args...)
	cmd.Env = append(os.Environ(), "BRB_LOG=info")
	cmd.Env = append(cmd.Env, s.Env...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		s.t.Fatal(err)
	}
	cmd.Stderr = &lockedWriter{mu: &s.mu, w: &s.log}
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("starting %s: %v", s.bin, err)
	}
	s.cmd = cmd
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		sent := false
		for sc.Scan() {
			line := sc.Text()
			if i := strings.Index(line, "listening on "); i >= 0 && !sent {
				found <- strings.TrimSpace(line[i+len("listening on "):])
				sent = true
			}
		}
		if !sent {
			close(found)
		}
	}()
	select {
	case u, ok := <-found:
		if !ok {
			s.t.Fatalf("brb server exited before listening:\n%s", s.Log())
		}
		s.URL = u
		s.Addr = u[strings.Index(u, "://")+3:]
	case <-time.After(30 * time.Second):
		s.t.Fatalf("brb server did not say where it listens within 30 s:\n%s", s.Log())
	}
	if s.Token == "" {
		tok, err := os.ReadFile(filepath.Join(s.DataDir, "admin-token"))
		if err != nil {
			s.t.Fatalf("admin token: %v", err)
		}
		s.Token = strings.TrimSpace(string(tok))
	}
}

// Kill ends the server with SIGKILL (nothing graceful) and waits for it.
func (s *Server) Kill() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGKILL)
	_ = s.cmd.Wait()
	s.cmd = nil
}

// Restart starts the server again on the same address and data directory.
func (s *Server) Restart() {
	s.t.Helper()
	s.Kill()
	s.start(s.Addr)
}

// Log is what the server wrote to stderr so far.
func (s *Server) Log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.log.String()
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// Client is how the tests talk to the server as an operator (admin token unless told).
// TLS servers need HTTP set to a client that trusts their CA.
type Client struct {
	t     testing.TB
	URL   string
	Token string
	HTTP  *http.Client
}

// Admin is a client with the server's admin token.
func (s *Server) Admin() *Client {
	return &Client{t: s.t, URL: s.URL, Token: s.Token, HTTP: &http.Client{Timeout: 30 * time.Second}}
}

// Do sends a request and decodes a 2xx answer into out (when not nil); any other status
// fails the test.
func (c *Client) Do(method, path string, body, out any) {
	c.t.Helper()
	status, data := c.Raw(method, path, body)
	if status < 200 || status > 299 {
		c.t.Fatalf("%s %s: HTTP %d: %s", method, path, status, data)
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			c.t.Fatalf("%s %s: %v in %s", method, path, err, data)
		}
	}
}

// Raw sends a request and gives the status and body.
func (c *Client) Raw(method, path string, body any) (int, []byte) {
	c.t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			c.t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.URL+"/api/v1"+path, rd)
	if err != nil {
		c.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := c.HTTP.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	data, _ := io.ReadAll(res.Body)
	return res.StatusCode, data
}

// Switch is the part of a switch the tests look at.
type Switch struct {
	Name    string `json:"name"`
	State   string `json:"state"`
	Version uint64 `json:"version"`
}

// SetState pauses or resumes a switch and returns it as committed.
func (c *Client) SetState(name, state string) Switch {
	c.t.Helper()
	var sw Switch
	c.Do(http.MethodPut, "/switches/"+name+"/state", map[string]any{"state": state}, &sw)
	return sw
}

// Resume with a ramp: {"kind":"steps","fractions":[...],"duration_secs":N}.
func (c *Client) ResumeWithRamp(name string, ramp map[string]any) Switch {
	c.t.Helper()
	var sw Switch
	c.Do(http.MethodPut, "/switches/"+name+"/state", map[string]any{"state": "running", "ramp": ramp}, &sw)
	return sw
}

// Workers is the control plane's view of a switch's workers.
type Workers struct {
	Total    int `json:"total"`
	Running  int `json:"running"`
	Draining int `json:"draining"`
	Paused   int `json:"paused"`
	Workers  []struct {
		WorkerID        string `json:"worker_id"`
		Status          string `json:"status"`
		ObservedVersion uint64 `json:"observed_version"`
		InFlight        int    `json:"in_flight"`
		ProcessedTotal  uint64 `json:"processed_total"`
	} `json:"workers"`
}

// Workers reads GET /switches/{name}/workers.
func (c *Client) Workers(name string) Workers {
	c.t.Helper()
	var w Workers
	c.Do(http.MethodGet, "/switches/"+name+"/workers", nil, &w)
	return w
}

// CreateToken makes a token (e.g. viewer), scoped to switches when any are named, and
// returns its secret.
func (c *Client) CreateToken(name, role string, switches ...string) string {
	c.t.Helper()
	var out struct {
		Secret string `json:"secret"`
	}
	req := map[string]any{"name": name, "role": role}
	if len(switches) > 0 {
		req["scope"] = map[string]any{"switches": switches}
	}
	c.Do(http.MethodPost, "/tokens", req, &out)
	if out.Secret == "" {
		c.t.Fatalf("no secret in the answer to creating %s", name)
	}
	return out.Secret
}

// Eventually polls cond every 5 ms until it holds or timeout passes; it fails the test
// with what (and the last state cond described) if it never does.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for: %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Logs collects log lines (a brb.Logger) for tests that check what was said.
type Logs struct {
	mu    sync.Mutex
	lines []string
}

func (l *Logs) Printf(format string, v ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf(format, v...))
}

// Lines is every line so far.
func (l *Logs) Lines() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}

// Count is how many lines contain sub.
func (l *Logs) Count(sub string) int {
	n := 0
	for _, line := range l.Lines() {
		if strings.Contains(line, sub) {
			n++
		}
	}
	return n
}

// Has says whether a line contains sub.
func (l *Logs) Has(sub string) bool { return l.Count(sub) > 0 }

// All is the lines joined, for failure messages.
func (l *Logs) All() string { return strings.Join(l.Lines(), "\n") }

// Relay is a TCP relay in front of a server, which the tests can make refuse, hold or cut
// connections: a network between the SDK and the real server that breaks on demand.
type Relay struct {
	t        testing.TB
	ln       net.Listener
	target   string
	mode     atomic.Int32
	accepted atomic.Int64
	mu       sync.Mutex
	conns    []net.Conn
}

// Relay modes.
const (
	Forward = iota // pass bytes both ways
	Refuse         // accept, then close at once
	Hold           // accept, read, never answer
)

// NewRelay listens on a free loopback port and forwards to target (host:port).
func NewRelay(t testing.TB, target string) *Relay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &Relay{t: t, ln: ln, target: target}
	t.Cleanup(func() {
		ln.Close()
		r.CutAll()
	})
	go r.serve()
	return r
}

// URL is http://the relay's address.
func (r *Relay) URL() string { return "http://" + r.ln.Addr().String() }

// SetMode changes what new connections get.
func (r *Relay) SetMode(m int) { r.mode.Store(int32(m)) }

// Accepted is how many connections the relay accepted.
func (r *Relay) Accepted() int64 { return r.accepted.Load() }

// CutAll closes every open connection.
func (r *Relay) CutAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.conns {
		c.Close()
	}
	r.conns = nil
}

func (r *Relay) keep(c net.Conn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.conns = append(r.conns, c)
}

func (r *Relay) serve() {
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.accepted.Add(1)
		switch r.mode.Load() {
		case Refuse:
			c.Close()
			continue
		case Hold:
			r.keep(c)
			go func() { _, _ = io.Copy(io.Discard, c) }()
			continue
		}
		up, err := net.Dial("tcp", r.target)
		if err != nil {
			c.Close()
			continue
		}
		r.keep(c)
		r.keep(up)
		go func() { _, _ = io.Copy(up, c); up.Close() }()
		go func() { _, _ = io.Copy(c, up); c.Close() }()
	}
}
