package brb

import (
	crand "crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"
)

const (
	// flatAttempts failed reconnects are retried within BackoffBase before the bound
	// starts doubling: a restarting control plane is usually back well within it, and
	// doubling at once would leave the unlucky few who came too early seconds behind.
	flatAttempts = 2
	// sseFailuresBeforeFallback refused streams in a row make Auto fall back to long-poll,
	// for longPollSpell, then try SSE again.
	sseFailuresBeforeFallback = 3
	longPollSpell             = 5 * time.Minute
	// longPollWait is the wait asked of the server per long-poll (it caps it at 60 s).
	longPollWait = 25 * time.Second
	// maxRetryAfter caps how long a 429's Retry-After keeps the gate from asking again:
	// obeying an hour would leave the gate blind for an hour.
	maxRetryAfter = 5 * time.Minute
)

// The process's own random source: math/rand's global one is not seeded before Go 1.20,
// and a fleet whose jitter is the same sequence in every process is not jittered.
var (
	rngMu sync.Mutex
	rng   = rand.New(rand.NewSource(cryptoSeed()))
)

func cryptoSeed() int64 {
	var b [8]byte
	if _, err := crand.Read(b[:]); err != nil {
		return time.Now().UnixNano()
	}
	return int64(binary.LittleEndian.Uint64(b[:]))
}

func randFloat() float64 {
	rngMu.Lock()
	defer rngMu.Unlock()
	return rng.Float64()
}

func randIntn(n int) int {
	rngMu.Lock()
	defer rngMu.Unlock()
	return rng.Intn(n)
}

// Backoff is full-jitter exponential backoff: a uniformly random delay in
// [0, min(max, base·2^attempt)].
func Backoff(base, max time.Duration, attempt int) time.Duration {
	ceiling := base
	for i := 0; i < attempt && ceiling < max; i++ {
		ceiling *= 2
	}
	if ceiling > max || ceiling <= 0 {
		ceiling = max
	}
	return time.Duration(randFloat() * float64(ceiling))
}

// outcome is what one connection (or run of long-polls) came to.
type outcome struct {
	heard bool  // the control plane answered and said something
	err   error // why it ended (nil when the gate is closing)
}

// watcher is the watch loop's state between connections. It lives on the heap so that
// the loop's own stack frame, which every idle gate holds under its blocked read, stays
// small: a goroutine whose stack use stays under 2 KiB gets its stack shrunk to 4 KiB.
type watcher struct {
	g             *Gate
	attempt       int
	sseFailures   int
	longPoll      bool      // this round is a long-poll
	longPollUntil time.Time // Auto: on long-poll until then
	loggedErr     string
}

// watch follows the switch until the gate closes: connect, read until the connection
// ends, wait a jittered backoff, again.
func (g *Gate) watch() {
	defer g.wg.Done()
	w := &watcher{g: g}
	for !g.isClosed() {
		src, from, o := w.connect()
		if src != nil {
			o = g.readStream(src, from)
		}
		if !w.after(o) {
			return
		}
	}
}

// connect opens the stream, or runs the long-poll loop when that is the transport now.
func (w *watcher) connect() (source, string, outcome) {
	g := w.g
	switch g.s.Transport {
	case LongPoll:
		w.longPoll = true
	case Auto:
		w.longPoll = time.Now().Before(w.longPollUntil)
	default:
		w.longPoll = false
	}
	if w.longPoll {
		return nil, "", g.longPoll(w.longPollUntil)
	}
	src, from, err := g.connectStream()
	return src, from, outcome{err: err}
}

// after handles a connection's end: the fallback to long-poll, the log line, the backoff.
// False when the gate closed.
func (w *watcher) after(o outcome) bool {
	g := w.g
	g.setConnected(false)
	if g.isClosed() {
		return false
	}
	var api *APIError
	var tlsErr *TLSError
	var unreachable *UnreachableError
	refusal := errors.As(o.err, &api) && (api.refused() || api.Status == http.StatusTooManyRequests) ||
		errors.As(o.err, &tlsErr) || errors.Is(o.err, ErrConfig)
	// A stream the server (or a proxy) refused, did not answer in time, or answered and
	// then said nothing counts toward falling back to long-poll; a host that cannot be
	// reached or a refused token does not (long-poll would meet the same).
	if !w.longPoll {
		if o.heard {
			w.sseFailures = 0
		} else if o.err != nil && !refusal && !(errors.As(o.err, &unreachable) && !unreachable.noAnswer) {
			w.sseFailures++
		}
	}
	if g.s.Transport == Auto && w.longPollUntil.IsZero() && w.sseFailures >= sseFailuresBeforeFallback {
		g.logf("brb: switch %s: the event stream keeps failing (%v); falling back to long-poll for %s", g.s.Switch, o.err, longPollSpell)
		w.longPollUntil = time.Now().Add(longPollSpell)
		w.sseFailures = 0
	} else if !w.longPollUntil.IsZero() && !time.Now().Before(w.longPollUntil) {
		w.longPollUntil = time.Time{}
	}
	// A connection that was heard and then ended is a fresh start, unless it ended in
	// garbage: a peer that answers garbage every time must see the backoff grow.
	var proto *ProtocolError
	if o.heard && !errors.As(o.err, &proto) {
		w.attempt = 0
	} else {
		w.attempt++
	}
	delay := Backoff(g.s.BackoffBase, g.s.BackoffCap, maxInt(0, w.attempt-flatAttempts))
	switch {
	case errors.As(o.err, &api) && api.Status == http.StatusTooManyRequests:
		ra := api.RetryAfter
		if ra > maxRetryAfter {
			ra = maxRetryAfter
		}
		if ra > delay {
			delay = ra
		}
	case refusal:
		// Retrying soon cannot help (a token, a scope, a certificate, a switch name must
		// change first), and a fleet retrying every second would be a storm.
		delay = g.s.BackoffCap/2 + time.Duration(randFloat()*float64(g.s.BackoffCap/2))
		if errors.As(o.err, &api) && api.Status == http.StatusUnauthorized {
			g.rereadToken()
		}
	}
	if o.err != nil {
		g.mu.Lock()
		g.lastErr = o.err
		g.mu.Unlock()
		// One line per distinct problem, not one per attempt.
		if msg := o.err.Error(); msg != w.loggedErr {
			g.logf("brb: switch %s: %v; keeping the %s state, retrying in %s", g.s.Switch, o.err, g.stateWord(), delay.Round(time.Millisecond))
			w.loggedErr = msg
		}
	}
	if o.heard {
		w.loggedErr = ""
	}
	t := time.NewTimer(delay)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-g.done:
		return false
	}
}

func maxInt(a, b int) int {
	if a > b {
		return a
	}
	return b
}

// stateWord names what the gate acts on while it cannot hear the control plane.
func (g *Gate) stateWord() string {
	switch g.known.Load() {
	case knownRunning:
		return "last known (running)"
	case knownPaused:
		return "last known (paused)"
	}
	return "initial (closed until first contact)"
}

// rereadToken picks up a rotated token file after the control plane refused the token.
func (g *Gate) rereadToken() {
	if g.s.tokenFrom == "" {
		return
	}
	t, err := readToken(g.s.tokenFrom)
	if err != nil {
		g.logf("brb: switch %s: re-reading the token file: %v", g.s.Switch, err)
		return
	}
	g.mu.Lock()
	changed := t != g.tok
	g.tok = t
	g.mu.Unlock()
	if changed {
		g.logf("brb: switch %s: the token file %s changed; using the new token", g.s.Switch, g.s.tokenFrom)
	}
}

// connectStream opens the event stream on the first base that can be reached, starting
// with the one that last answered. An answer (even a refusal) from one base is final.
func (g *Gate) connectStream() (source, string, error) {
	lastID := ""
	if g.known.Load() != knownNone {
		lastID = strconv.FormatUint(g.version.Load(), 10)
	}
	n := len(g.s.bases)
	start := int(g.sticky.Load())
	var lastErr error
	for i := 0; i < n; i++ {
		idx := (start + i) % n
		src, err := g.openOnHelper(g.s.bases[idx], lastID)
		if g.isClosed() {
			if src != nil {
				src.Close()
			}
			return nil, "", nil
		}
		var unreachable *UnreachableError
		if errors.As(err, &unreachable) {
			lastErr = err
			continue
		}
		if err != nil {
			return nil, "", err
		}
		g.sticky.Store(int32(idx))
		return src, g.s.bases[idx].url, nil
	}
	return nil, "", lastErr
}

// streamState is what one connection's reading keeps between events.
type streamState struct {
	g             *Gate
	from          string
	p             sseParser
	resynced      bool  // a resync event came: the state that follows is current
	end           error // the stream must end (the switch was deleted)
	unknownLogged bool
	idle          *idleWatch
	o             outcome
}

// readStream applies a stream's events until it ends. A malformed or unknown event is
// logged and skipped; it never changes the gate's decision. (Kept lean: this frame and
// the ones under it are the stack every idle gate holds.)
func (g *Gate) readStream(src source, from string) outcome {
	st := &streamState{g: g, from: from, idle: newIdleWatch(src, g.s.IdleTimeout)}
	for st.more(src.next()) {
	}
	st.idle.timer.Stop()
	src.Close()
	g.holdConn(nil)
	return st.o
}

// more takes what one read gave; false when the stream is over (st.o says why).
func (st *streamState) more(b []byte, err error) bool {
	g := st.g
	if len(b) > 0 {
		st.idle.timer.Reset(g.s.IdleTimeout)
		if !st.o.heard {
			st.o.heard = true
			g.setConnected(true)
		}
		g.contact()
		if perr := st.p.feed(b, st.event); perr != nil {
			st.o.err = &ProtocolError{URL: st.from, Message: perr.Error()}
			return false
		}
		if st.end != nil {
			st.o.err = st.end
			return false
		}
	}
	if err != nil {
		st.o.err = g.streamEnded(err, st.from, st.idle.fired.Load())
		return false
	}
	return true
}

func (g *Gate) streamEnded(err error, from string, idle bool) error {
	switch {
	case g.isClosed():
		return nil
	case idle:
		return fmt.Errorf("the event stream from %s was silent for %s", from, g.s.IdleTimeout)
	case err == io.EOF:
		return fmt.Errorf("the event stream from %s ended", from)
	case errors.Is(err, errChunk):
		return &ProtocolError{URL: from, Message: "the event stream's chunked encoding is malformed"}
	}
	return &UnreachableError{Err: fmt.Errorf("the event stream from %s broke: %w", from, err)}
}

func (st *streamState) event(ev sseEvent) {
	g := st.g
	if st.end != nil {
		return
	}
	switch ev.name {
	case "switch":
		sw, err := decodeSwitch(ev.data)
		if err != nil {
			g.logf("brb: switch %s: ignoring an unreadable switch event from %s: %v", g.s.Switch, st.from, err)
			return
		}
		if err := sw.check(g.s.Switch); err != nil {
			g.logf("brb: switch %s: ignoring a switch event from %s: %v", g.s.Switch, st.from, err)
			return
		}
		g.apply(&sw, st.resynced)
		st.resynced = false
	case "resync":
		after, current, reason, err := decodeResync(ev.data)
		if err != nil {
			g.logf("brb: switch %s: unreadable resync event from %s (%v); the state that follows is current", g.s.Switch, st.from, err)
		} else {
			g.logf("brb: switch %s: the stream skipped from version %d to %d (%s); the state that follows is current", g.s.Switch, after, current, reason)
		}
		st.resynced = true
	case "deleted":
		st.end = fmt.Errorf("the switch %s was deleted on %s", g.s.Switch, st.from)
	default:
		if !st.unknownLogged {
			g.logf("brb: switch %s: ignoring an event of unknown type %q from %s", g.s.Switch, ev.name, st.from)
			st.unknownLogged = true
		}
	}
}

// check refuses a switch event that is not about our switch or has no readable state:
// garbage must not flip the gate.
func (sw *switchView) check(want string) error {
	if sw.Name != want {
		return fmt.Errorf("it is about switch %q", sw.Name)
	}
	if sw.State != "running" && sw.State != "paused" {
		return fmt.Errorf("unknown state %q", sw.State)
	}
	if sw.Version == 0 {
		return errors.New("no version")
	}
	return nil
}

// longPoll asks for the switch, then again with the version held, until a request fails
// or (Auto's fallback) until is reached and SSE is worth another try.
func (g *Gate) longPoll(until time.Time) outcome {
	var o outcome
	path := "/switches/" + url.PathEscape(g.s.Switch)
	for !g.isClosed() && (until.IsZero() || time.Now().Before(until)) {
		q := path
		timeout := requestTimeout
		if g.known.Load() != knownNone {
			q = fmt.Sprintf("%s?after_version=%d&wait=%d", path, g.version.Load(), int(longPollWait/time.Second))
			timeout = longPollWait + requestTimeout
		}
		ctx, done := g.opContext(&g.pollCancel, timeout)
		body, err := g.call(ctx, http.MethodGet, q, nil, timeout)
		done()
		if err != nil {
			if !g.isClosed() {
				o.err = err
			}
			return o
		}
		sw, err := decodeSwitch(body)
		if err != nil {
			o.err = &ProtocolError{URL: g.s.bases[g.sticky.Load()].url, Message: "unreadable switch: " + err.Error()}
			return o
		}
		if err := sw.check(g.s.Switch); err != nil {
			o.err = &ProtocolError{URL: g.s.bases[g.sticky.Load()].url, Message: "switch answer: " + err.Error()}
			return o
		}
		if !o.heard {
			o.heard = true
			g.setConnected(true)
		}
		// A long-poll answer is the current state of the replica that gave it.
		g.apply(&sw, false)
	}
	return o
}
