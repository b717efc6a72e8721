package brb

import (
	crand "crypto/rand"
	"encoding/binary"
	"encoding/json"
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
	ceiling := max
	if attempt < 30 && base<<attempt > 0 && base<<attempt < max {
		ceiling = base << attempt
	}
	return time.Duration(randFloat() * float64(ceiling))
}

// outcome is what one connection (or run of long-polls) came to.
type outcome struct {
	heard bool  // the control plane answered and said something
	err   error // why it ended (nil when the gate is closing)
}

func (g *Gate) watch() {
	defer g.wg.Done()
	attempt := 0
	sseFailures := 0
	var longPollUntil time.Time
	var loggedErr string
	for g.ctx.Err() == nil {
		useLongPoll := false
		switch g.s.Transport {
		case LongPoll:
			useLongPoll = true
		case Auto:
			useLongPoll = time.Now().Before(longPollUntil)
		}
		var o outcome
		if useLongPoll {
			o = g.longPoll()
		} else {
			o = g.streamOnce()
		}
		g.setConnected(false)
		if g.ctx.Err() != nil {
			return
		}
		var api *APIError
		var tlsErr *TLSError
		var unreachable *UnreachableError
		refusal := errors.As(o.err, &api) && (api.refused() || api.Status == http.StatusTooManyRequests) ||
			errors.As(o.err, &tlsErr) || errors.Is(o.err, ErrConfig)
		// A stream the server (or a proxy) refused, or that answered and then said nothing,
		// counts toward falling back to long-poll; an unreachable host or a refused token
		// does not (long-poll would meet the same).
		if !useLongPoll {
			if o.heard {
				sseFailures = 0
			} else if o.err != nil && !refusal && !errors.As(o.err, &unreachable) {
				sseFailures++
			}
		}
		if g.s.Transport == Auto && longPollUntil.IsZero() && sseFailures >= sseFailuresBeforeFallback {
			g.log.Printf("brb: switch %s: the event stream keeps failing (%v); falling back to long-poll for %s", g.s.Switch, o.err, longPollSpell)
			longPollUntil = time.Now().Add(longPollSpell)
			sseFailures = 0
		} else if !longPollUntil.IsZero() && !time.Now().Before(longPollUntil) {
			longPollUntil = time.Time{}
		}
		if o.heard {
			attempt = 0
		} else {
			attempt++
		}
		delay := Backoff(g.s.BackoffBase, g.s.BackoffCap, maxInt(0, attempt-flatAttempts))
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
			// Retrying soon cannot help (a token, a scope, a certificate, a switch name
			// must change first), and a fleet retrying every second would be a storm.
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
			if msg := o.err.Error(); msg != loggedErr {
				g.log.Printf("brb: switch %s: %v; keeping the %s state, retrying in %s", g.s.Switch, o.err, g.stateWord(), delay.Round(time.Millisecond))
				loggedErr = msg
			}
		}
		if o.heard {
			loggedErr = ""
		}
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-g.ctx.Done():
			t.Stop()
			return
		}
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
		g.log.Printf("brb: switch %s: re-reading the token file: %v", g.s.Switch, err)
		return
	}
	g.mu.Lock()
	changed := t != g.tok
	g.tok = t
	g.mu.Unlock()
	if changed {
		g.log.Printf("brb: switch %s: the token file %s changed; using the new token", g.s.Switch, g.s.tokenFrom)
	}
}

// streamOnce opens the event stream on the first base that can be reached (starting with
// the one that last answered) and reads it until it ends.
func (g *Gate) streamOnce() outcome {
	lastID := ""
	if g.known.Load() != knownNone {
		lastID = strconv.FormatUint(g.version.Load(), 10)
	}
	n := len(g.s.bases)
	start := int(g.sticky.Load())
	var lastErr error
	for i := 0; i < n; i++ {
		idx := (start + i) % n
		body, err := g.openStream(g.ctx, g.s.bases[idx], lastID)
		if g.ctx.Err() != nil {
			if body != nil {
				body.Close()
			}
			return outcome{}
		}
		var unreachable *UnreachableError
		if errors.As(err, &unreachable) {
			lastErr = err
			continue
		}
		if err != nil {
			return outcome{err: err}
		}
		g.sticky.Store(int32(idx))
		return g.readStream(body, g.s.bases[idx].url)
	}
	return outcome{err: lastErr}
}

// readStream applies a stream's events until it ends. A malformed or unknown event is
// logged and skipped; it never changes the gate's decision.
func (g *Gate) readStream(body io.ReadCloser, from string) outcome {
	idle := newIdleWatch(body, g.s.IdleTimeout)
	defer func() {
		idle.stop()
		body.Close()
		g.holdConn(nil)
	}()
	var p sseParser
	var o outcome
	buf := make([]byte, 512)
	resynced := false
	var end error
	unknownLogged := false
	handle := func(ev sseEvent) {
		if end != nil {
			return
		}
		switch ev.name {
		case "switch":
			var sw switchView
			if err := json.Unmarshal([]byte(ev.data), &sw); err != nil {
				g.log.Printf("brb: switch %s: ignoring an unreadable switch event from %s: %v", g.s.Switch, from, err)
				return
			}
			if err := sw.check(g.s.Switch); err != nil {
				g.log.Printf("brb: switch %s: ignoring a switch event from %s: %v", g.s.Switch, from, err)
				return
			}
			g.apply(&sw, resynced)
			resynced = false
		case "resync":
			var r struct {
				After   uint64 `json:"after"`
				Current uint64 `json:"current"`
				Reason  string `json:"reason"`
			}
			if err := json.Unmarshal([]byte(ev.data), &r); err != nil {
				g.log.Printf("brb: switch %s: unreadable resync event from %s (%v); the state that follows is current", g.s.Switch, from, err)
			} else {
				g.log.Printf("brb: switch %s: the stream skipped from version %d to %d (%s); the state that follows is current", g.s.Switch, r.After, r.Current, r.Reason)
			}
			resynced = true
		case "deleted":
			end = fmt.Errorf("the switch %s was deleted on %s", g.s.Switch, from)
		default:
			if !unknownLogged {
				g.log.Printf("brb: switch %s: ignoring an event of unknown type %q from %s", g.s.Switch, ev.name, from)
				unknownLogged = true
			}
		}
	}
	for {
		n, err := idle.Read(buf)
		if n > 0 {
			if !o.heard {
				o.heard = true
				g.setConnected(true)
			}
			g.contact()
			if perr := p.feed(buf[:n], handle); perr != nil {
				o.err = &ProtocolError{URL: from, Message: perr.Error()}
				return o
			}
			if end != nil {
				o.err = end
				return o
			}
		}
		if err != nil {
			switch {
			case g.ctx.Err() != nil:
			case idle.fired.Load():
				o.err = fmt.Errorf("the event stream from %s was silent for %s", from, g.s.IdleTimeout)
			case err == io.EOF:
				o.err = fmt.Errorf("the event stream from %s ended", from)
			default:
				o.err = &UnreachableError{Err: fmt.Errorf("the event stream from %s broke: %w", from, err)}
			}
			return o
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

// longPoll asks for the switch, then again with the version held, until a request fails.
func (g *Gate) longPoll() outcome {
	var o outcome
	path := "/switches/" + url.PathEscape(g.s.Switch)
	for g.ctx.Err() == nil {
		q := path
		timeout := requestTimeout
		if g.known.Load() != knownNone {
			q = fmt.Sprintf("%s?after_version=%d&wait=%d", path, g.version.Load(), int(longPollWait/time.Second))
			timeout = longPollWait + requestTimeout
		}
		body, err := g.call(g.ctx, http.MethodGet, q, nil, timeout)
		if err != nil {
			if g.ctx.Err() == nil {
				o.err = err
			}
			return o
		}
		var sw switchView
		if err := json.Unmarshal(body, &sw); err != nil {
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
