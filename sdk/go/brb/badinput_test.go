package brb

// Bad input from servers of the test's own (net/http/httptest, or raw TCP where HTTP itself
// must be broken): no panic, no state flip from garbage, a clear log line, bounded retries.

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/big-red-button/brb/sdk/go/internal/brbtest"
)

const patience = 10 * time.Second

func switchJSON(state string, version int) string {
	return fmt.Sprintf(`{"name":"workers","description":"","primary":true,"state":%q,"version":%d,"changed_at":"2026-11-30T15:37:47Z","changed_by":"alice","source":"api","reason":null,"ramp":null}`, state, version)
}

func switchEvent(state string, version int) string {
	return fmt.Sprintf("event: switch\nid: %d\ndata: %s\n\n", version, switchJSON(state, version))
}

// script is a fake control plane: each stream connection gets the next step's function,
// which writes what it wants and returns when the connection should end (or blocks).
type script struct {
	t        *testing.T
	mu       sync.Mutex
	streams  int
	polls    atomic.Int64
	reports  atomic.Int64
	lastIDs  []string
	times    []time.Time
	onStream func(n int, w io.Writer, flush func(), r *http.Request)
	onPoll   func(w http.ResponseWriter, r *http.Request)
	url      string
	done     chan struct{}
}

func newScript(t *testing.T, onStream func(n int, w io.Writer, flush func(), r *http.Request)) *script {
	s := &script{t: t, onStream: onStream, done: make(chan struct{})}
	srv := httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(func() {
		close(s.done)
		srv.CloseClientConnections()
		srv.Close()
	})
	s.url = srv.URL
	return s
}

func (s *script) serve(w http.ResponseWriter, r *http.Request) {
	switch {
	case strings.HasSuffix(r.URL.Path, "/events"):
		s.mu.Lock()
		s.streams++
		n := s.streams
		s.lastIDs = append(s.lastIDs, r.Header.Get("Last-Event-ID"))
		s.times = append(s.times, time.Now())
		s.mu.Unlock()
		s.onStream(n, w, func() { w.(http.Flusher).Flush() }, r)
	case r.URL.Path == "/api/v1/workers/report":
		s.reports.Add(1)
		_, _ = io.WriteString(w, switchJSON("running", 1))
	default:
		s.polls.Add(1)
		if s.onPoll != nil {
			s.onPoll(w, r)
			return
		}
		http.Error(w, "no", http.StatusTeapot)
	}
}

// hold blocks until ch closes, the client goes away or the test ends; false unless ch
// closed.
func (s *script) hold(r *http.Request, ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	case <-r.Context().Done():
	case <-s.done:
	case <-time.After(patience):
	}
	return false
}

func (s *script) streamCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.streams
}

func sseHead(w io.Writer) {
	w.(http.ResponseWriter).Header().Set("Content-Type", "text/event-stream")
	_, _ = io.WriteString(w, "retry: 1000\n\n")
}

func testGate(t *testing.T, cfg Config) (*Gate, *brbtest.Logs) {
	t.Helper()
	logs := &brbtest.Logs{}
	cfg.Logger = logs
	if cfg.Switch == "" {
		cfg.Switch = "workers"
	}
	if cfg.Token == "" {
		cfg.Token = "brb_0123456789_" + strings.Repeat("0f", 32)
	}
	g, err := NewGate(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		g.Close()
		if t.Failed() {
			t.Logf("the gate's log:\n%s", logs.All())
		}
		if strings.Contains(logs.All(), cfg.Token) {
			t.Errorf("the token was logged")
		}
	})
	return g, logs
}

func waitLog(t *testing.T, logs *brbtest.Logs, sub string) {
	t.Helper()
	brbtest.Eventually(t, patience, "a log line with "+sub, func() bool { return logs.Has(sub) })
}

// Malformed, foreign and unknown events are logged and skipped; the state the gate acts on
// only changes with a well-formed switch event, which still works after them.
func TestGarbageEventsDoNotFlipTheGate(t *testing.T) {
	release := make(chan struct{})
	var s *script
	s = newScript(t, func(n int, w io.Writer, flush func(), r *http.Request) {
		sseHead(w)
		if n > 1 {
			s.hold(r, release)
			return
		}
		_, _ = io.WriteString(w, switchEvent("running", 1))
		for _, garbage := range []string{
			"event: switch\ndata: {not json}\n\n",
			"event: switch\ndata: " + strings.Replace(switchJSON("paused", 2), `"paused"`, `"exploded"`, 1) + "\n\n",
			"event: switch\ndata: " + strings.Replace(switchJSON("paused", 3), `"workers"`, `"other"`, 1) + "\n\n",
			"event: switch\ndata: " + strings.Replace(switchJSON("paused", 4), `"version":4`, `"version":"4"`, 1) + "\n\n",
			"event: switch\ndata: {\"name\":\"workers\",\"state\":\"paused\"}\n\n",
			"id: 10\n\n",
			"event: switch\n\n",
			"data: {\"name\":\"workers\",\"state\":\"paused\",\"version\":9}\n\n",
			"event: surprise\ndata: {\"state\":\"paused\"}\n\n",
			"event: surprise\ndata: again\n\n",
		} {
			_, _ = io.WriteString(w, garbage)
		}
		flush()
		if !s.hold(r, release) {
			return
		}
		_, _ = io.WriteString(w, switchEvent("paused", 11))
		flush()
		s.hold(r, nil)
	})
	g, logs := testGate(t, Config{URLs: []string{s.url}})
	waitLog(t, logs, "ignoring an event of unknown type \"message\"")
	if !g.IsOpen() || g.Version() != 1 {
		t.Fatalf("garbage changed the gate: open=%v version=%d", g.IsOpen(), g.Version())
	}
	for _, want := range []string{
		"ignoring an unreadable switch event from " + s.url + ": malformed JSON",
		"ignoring a switch event from " + s.url + `: unknown state "exploded"`,
		`ignoring a switch event from ` + s.url + `: it is about switch "other"`,
		"malformed JSON at byte 77: want a number",
		"no version",
	} {
		if !logs.Has(want) {
			t.Fatalf("no line with %q", want)
		}
	}
	close(release)
	brbtest.Eventually(t, patience, "the good event after the garbage applies", func() bool { return !g.IsOpen() && g.Version() == 11 })
	if n := logs.Count("unknown type"); n != 1 {
		t.Fatalf("unknown events logged %d times on one connection, want once", n)
	}
}

// A stream cut in the middle of an event: that event is not applied; the gate reconnects
// and resumes from the version it had.
func TestTruncatedEventIsNotApplied(t *testing.T) {
	var s *script
	s = newScript(t, func(n int, w io.Writer, flush func(), r *http.Request) {
		sseHead(w)
		if n == 1 {
			_, _ = io.WriteString(w, switchEvent("running", 1))
			ev := switchEvent("paused", 2)
			_, _ = io.WriteString(w, ev[:len(ev)-10])
			flush()
			return // the handler ends: the chunked body ends mid-event
		}
		flush()
		s.hold(r, nil)
	})
	g, logs := testGate(t, Config{URLs: []string{s.url}, BackoffBase: 10 * time.Millisecond})
	brbtest.Eventually(t, patience, "the gate reconnects", func() bool { return s.streamCount() >= 2 && g.Connected() })
	if !g.IsOpen() || g.Version() != 1 {
		t.Fatalf("half an event was applied: open=%v version=%d", g.IsOpen(), g.Version())
	}
	if s.lastIDs[1] != "1" {
		t.Fatalf("resumed with Last-Event-ID %q, want 1", s.lastIDs[1])
	}
	waitLog(t, logs, "the event stream from "+s.url+" ended")
}

// 401 and 403 from the control plane: a clear line once, retries at the longest backoff.
func TestRefusalsBackOffLong(t *testing.T) {
	for _, c := range []struct {
		status int
		code   string
		says   string
	}{
		{401, "unauthorized", "check BRB_TOKEN"},
		{403, "out_of_scope", "check its role and scope"},
		{404, "not_found", "HTTP 404 not_found"},
	} {
		c := c
		t.Run(c.code, func(t *testing.T) {
			var s *script
			s = newScript(t, func(n int, w io.Writer, flush func(), r *http.Request) {
				rw := w.(http.ResponseWriter)
				rw.Header().Set("Content-Type", "application/json")
				rw.WriteHeader(c.status)
				fmt.Fprintf(w, `{"error":{"code":%q,"message":"no"}}`, c.code)
			})
			capd := 300 * time.Millisecond
			g, logs := testGate(t, Config{URLs: []string{s.url}, BackoffBase: time.Millisecond, BackoffCap: capd})
			brbtest.Eventually(t, patience, "four attempts", func() bool { return s.streamCount() >= 4 })
			s.mu.Lock()
			times := append([]time.Time(nil), s.times...)
			s.mu.Unlock()
			for i := 1; i < 4; i++ {
				if gap := times[i].Sub(times[i-1]); gap < capd/2-20*time.Millisecond {
					t.Fatalf("attempt %d came %s after the previous; a refusal waits at least %s", i+1, gap, capd/2)
				}
			}
			if n := logs.Count(c.says); n != 1 {
				t.Fatalf("%d lines with %q, want 1", n, c.says)
			}
			var api *APIError
			if !errors.As(g.LastError(), &api) || api.Status != c.status || api.Code != c.code {
				t.Fatalf("last error %v", g.LastError())
			}
			if s.polls.Load() != 0 {
				t.Fatal("a refusal made the gate fall back to long-poll")
			}
		})
	}
}

// 429 with Retry-After: the gate waits that long before asking again.
func TestTooManyRequestsRespectsRetryAfter(t *testing.T) {
	var s *script
	s = newScript(t, func(n int, w io.Writer, flush func(), r *http.Request) {
		rw := w.(http.ResponseWriter)
		if n == 1 {
			rw.Header().Set("Retry-After", "1")
			rw.Header().Set("Content-Type", "application/json")
			rw.WriteHeader(http.StatusTooManyRequests)
			_, _ = io.WriteString(w, `{"error":{"code":"too_many_streams","message":"slow down"}}`)
			return
		}
		sseHead(w)
		_, _ = io.WriteString(w, switchEvent("paused", 5))
		flush()
		s.hold(r, nil)
	})
	g, logs := testGate(t, Config{URLs: []string{s.url}, BackoffBase: time.Millisecond, BackoffCap: 20 * time.Millisecond})
	brbtest.Eventually(t, patience, "the gate gets in", func() bool { return g.Version() == 5 })
	s.mu.Lock()
	gap := s.times[1].Sub(s.times[0])
	s.mu.Unlock()
	if gap < 950*time.Millisecond {
		t.Fatalf("asked again %s after a 429 with Retry-After: 1", gap)
	}
	waitLog(t, logs, "HTTP 429 too_many_streams: slow down (retry after 1s)")
}

// rawServer accepts TCP connections and hands each to serve (HTTP broken at its roots).
func rawServer(t *testing.T, serve func(n int, c net.Conn)) (string, *atomic.Int64) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var count atomic.Int64
	var conns sync.WaitGroup
	stop := make(chan struct{})
	t.Cleanup(func() {
		close(stop)
		ln.Close()
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n := int(count.Add(1))
			conns.Add(1)
			go func() {
				defer conns.Done()
				defer c.Close()
				serve(n, c)
				select { // hold the connection until the test ends, unless serve closed it
				case <-stop:
				case <-time.After(patience):
				}
			}()
		}
	}()
	return "http://" + ln.Addr().String(), &count
}

// A server that accepts and never answers: the stream gives up after the answer timeout,
// says so, and retries within bounds.
func TestServerThatNeverAnswers(t *testing.T) {
	old := answerTimeout
	answerTimeout = 200 * time.Millisecond
	t.Cleanup(func() { answerTimeout = old })
	url, count := rawServer(t, func(n int, c net.Conn) { _, _ = io.Copy(io.Discard, c) })
	g, logs := testGate(t, Config{URLs: []string{url}, Transport: SSE, BackoffBase: 10 * time.Millisecond, BackoffCap: 100 * time.Millisecond})
	waitLog(t, logs, "no answer to the event-stream request within 200ms")
	brbtest.Eventually(t, patience, "a retry", func() bool { return count.Load() >= 2 })
	if g.IsOpen() || g.Connected() {
		t.Fatal("a mute server opened the gate")
	}
	var u *UnreachableError
	if !errors.As(g.LastError(), &u) {
		t.Fatalf("last error %v", g.LastError())
	}
}

// A stream that answers and then falls silent (a dead peer, a broken middlebox) is ended
// after the idle timeout and opened again; the state held is kept meanwhile.
func TestSilentStreamIsEndedAfterIdleTimeout(t *testing.T) {
	var s *script
	s = newScript(t, func(n int, w io.Writer, flush func(), r *http.Request) {
		sseHead(w)
		_, _ = io.WriteString(w, switchEvent("paused", 3))
		flush()
		s.hold(r, nil)
	})
	g, logs := testGate(t, Config{URLs: []string{s.url}, IdleTimeout: 300 * time.Millisecond, BackoffBase: 10 * time.Millisecond})
	waitLog(t, logs, "the event stream from "+s.url+" was silent for 300ms")
	brbtest.Eventually(t, patience, "a new stream", func() bool { return s.streamCount() >= 2 })
	if g.IsOpen() || g.Version() != 3 {
		t.Fatalf("open=%v version=%d", g.IsOpen(), g.Version())
	}
}

// A redirect is never followed (it would take the token to another host): not by the
// stream, not by the long-poll the gate falls back to.
func TestRedirectIsNotFollowed(t *testing.T) {
	var elsewhere atomic.Int64
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		elsewhere.Add(1)
	}))
	t.Cleanup(other.Close)
	redirect := func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL+r.URL.Path, http.StatusTemporaryRedirect)
	}
	var s *script
	s = newScript(t, func(n int, w io.Writer, flush func(), r *http.Request) { redirect(w.(http.ResponseWriter), r) })
	s.onPoll = redirect
	g, logs := testGate(t, Config{URLs: []string{s.url}, BackoffBase: 5 * time.Millisecond, BackoffCap: 20 * time.Millisecond})
	brbtest.Eventually(t, patience, "the stream tried, then long-poll", func() bool { return s.streamCount() >= 3 && s.polls.Load() >= 2 })
	if elsewhere.Load() != 0 {
		t.Fatalf("%d requests reached the redirect's target", elsewhere.Load())
	}
	waitLog(t, logs, "(a redirect to "+other.URL+"/api/v1/switches/workers/events, not followed)")
	if g.IsOpen() {
		t.Fatal("the gate opened")
	}
}

// Answers that are not the control plane's: HTML from a proxy, broken chunking, an endless
// line, not HTTP at all. Each ends the connection with a clear line; none panics or opens.
func TestAnswersThatAreNotTheAPI(t *testing.T) {
	cases := []struct {
		name  string
		raw   string // written on the connection, which then stays open
		wants string
	}{
		{"html", "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 5\r\n\r\nhello", `answered with Content-Type "text/html", not text/event-stream`},
		{"bad chunking", "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nretry: 1000\n\n", "chunked encoding is malformed"},
		{"endless line", "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: " + strings.Repeat("x", maxLine+10), "longer than 64 KiB"},
		{"not http", "SSH-2.0-OpenSSH_9.2\r\n", "malformed HTTP"},
		{"error page", "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\nContent-Length: 11\r\n\r\nbad gateway", "answered HTTP 502: Bad Gateway"},
	}
	for _, c := range cases {
		c := c
		t.Run(c.name, func(t *testing.T) {
			url, count := rawServer(t, func(n int, conn net.Conn) {
				buf := make([]byte, 4096)
				_, _ = conn.Read(buf) // the request
				_, _ = io.WriteString(conn, c.raw)
				if c.name == "html" || c.name == "error page" || c.name == "not http" {
					return
				}
				_, _ = io.Copy(io.Discard, conn)
			})
			g, logs := testGate(t, Config{URLs: []string{url}, Transport: SSE, BackoffBase: 10 * time.Millisecond, BackoffCap: 100 * time.Millisecond})
			waitLog(t, logs, c.wants)
			brbtest.Eventually(t, patience, "a retry", func() bool { return count.Load() >= 2 })
			if g.IsOpen() || g.Version() != 0 {
				t.Fatal("garbage opened the gate")
			}
		})
	}
}

// A deleted switch ends the stream; the gate keeps its state and says why.
func TestDeletedSwitchKeepsTheLastState(t *testing.T) {
	var s *script
	s = newScript(t, func(n int, w io.Writer, flush func(), r *http.Request) {
		if n > 1 {
			rw := w.(http.ResponseWriter)
			rw.Header().Set("Content-Type", "application/json")
			rw.WriteHeader(http.StatusNotFound)
			_, _ = io.WriteString(w, `{"error":{"code":"not_found","message":"no switch workers"}}`)
			return
		}
		sseHead(w)
		_, _ = io.WriteString(w, switchEvent("paused", 4)+"event: deleted\ndata: {\"name\":\"workers\",\"version\":5}\n\n")
		flush()
		s.hold(r, nil)
	})
	g, logs := testGate(t, Config{URLs: []string{s.url}, BackoffBase: 5 * time.Millisecond})
	waitLog(t, logs, "the switch workers was deleted on "+s.url)
	waitLog(t, logs, "no switch workers")
	if g.IsOpen() || g.Version() != 4 {
		t.Fatalf("open=%v version=%d", g.IsOpen(), g.Version())
	}
}

// An older version (a lagging replica) is ignored; after a resync the state that follows
// is current whatever its version.
func TestOlderVersionsAndResync(t *testing.T) {
	step := make(chan struct{})
	var s *script
	s = newScript(t, func(n int, w io.Writer, flush func(), r *http.Request) {
		sseHead(w)
		if n > 1 {
			s.hold(r, step)
			return
		}
		_, _ = io.WriteString(w, switchEvent("paused", 10)+switchEvent("running", 9)+"event: marker\ndata: x\n\n")
		flush()
		if !s.hold(r, step) {
			return
		}
		_, _ = io.WriteString(w, "event: resync\ndata: {\"after\":10,\"current\":7,\"reason\":\"lagged\"}\n\n"+switchEvent("running", 7))
		flush()
		s.hold(r, nil)
	})
	g, logs := testGate(t, Config{URLs: []string{s.url}})
	brbtest.Eventually(t, patience, "the first state", func() bool { return g.Version() == 10 })
	// Events apply in order: once the marker after version 9 is read, 9 was handled.
	waitLog(t, logs, `ignoring an event of unknown type "marker"`)
	if g.IsOpen() || g.Version() != 10 {
		t.Fatalf("an older version applied: open=%v version=%d", g.IsOpen(), g.Version())
	}
	close(step)
	brbtest.Eventually(t, patience, "the resynchronized state", func() bool { return g.IsOpen() && g.Version() == 7 })
	waitLog(t, logs, "the stream skipped from version 10 to 7 (lagged); the state that follows is current")
}

// A peer that answers every stream and then sends garbage: each ending counts as a failed
// attempt, so the backoff grows instead of restarting at the base every time.
func TestGarbageStreamsBackOff(t *testing.T) {
	var s *script
	s = newScript(t, func(n int, w io.Writer, flush func(), r *http.Request) {
		sseHead(w)
		_, _ = io.WriteString(w, "data: "+strings.Repeat("x", maxLine+1))
		flush()
		s.hold(r, nil)
	})
	t0 := time.Now()
	g, logs := testGate(t, Config{URLs: []string{s.url}, Transport: SSE, BackoffBase: 20 * time.Millisecond, BackoffCap: time.Second})
	brbtest.Eventually(t, patience, "twelve connections", func() bool { return s.streamCount() >= 12 })
	// Restarting at the base, eleven retries take at most 11 × 20 ms; growing (20, 20, 20,
	// 40 ... 640, 1000 ms bounds, full jitter) they take more than 300 ms but for odds
	// below one in a thousand.
	if el := time.Since(t0); el < 300*time.Millisecond {
		t.Fatalf("twelve connections within %s: the backoff did not grow", el)
	}
	waitLog(t, logs, "longer than 64 KiB")
	if g.IsOpen() {
		t.Fatal("garbage opened the gate")
	}
}
