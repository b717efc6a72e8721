package brb

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// Status is what a worker reports: whether it takes jobs, finishes the ones it started
// before a pause, or is idle because of one.
type Status string

const (
	StatusRunning  Status = "running"
	StatusDraining Status = "draining" // paused, jobs still in flight
	StatusPaused   Status = "paused"   // paused, nothing in flight
)

// ErrClosed is returned by WaitOpen, Acquire and WaitReady once the gate is closed.
var ErrClosed = errors.New("brb: gate closed")

const (
	knownNone int32 = iota
	knownRunning
	knownPaused
)

// maxConnectLog bounds the reconnect instants a gate keeps (ConnectTimes).
const maxConnectLog = 64

// Gate follows one switch for a worker. Its goroutines hold an event stream to the control
// plane (SSE, or long-poll when SSE cannot be held) and write what they learn into atomics;
// IsOpen is one atomic load, so a worker can ask before every job at no cost. Acquire is
// the fuller form: it waits while the switch is paused, counts the job in flight until the
// Permit is released (so the gate can report draining while jobs started before a pause
// finish), and applies a release ramp by duty cycle.
//
// A Gate is safe for concurrent use. Close it when the worker stops.
type Gate struct {
	s   *settings
	c   *client
	log Logger

	open        atomic.Bool
	known       atomic.Int32
	version     atomic.Uint64
	connected   atomic.Bool
	lastContact atomic.Int64 // Unix ns of the last sign of life from the control plane (0: never)
	lostAt      atomic.Int64 // Unix ns when the connection was lost (0: connected or never lost)
	inFlight    atomic.Int32
	processed   atomic.Uint64
	connects    atomic.Uint64
	sticky      atomic.Int32 // the base URL that last answered

	mu           sync.Mutex
	tok          string
	ramp         *Ramp
	slots        []time.Time // when each job slot is free again
	changed      chan struct{}
	connectLog   []time.Time
	lastChangeV  uint64
	lastChangeAt time.Time
	conn         io.Closer // the stream's connection, closed by Close to end a blocked read
	closed       bool
	policyTimer  *time.Timer
	lastErr      error
	// Cancel a dial or a report in flight at Close. (Their contexts are not children of
	// ctx: each child leaves a map in its parent for the parent's life.)
	dialCancel   context.CancelFunc
	reportCancel context.CancelFunc
	sampleCancel context.CancelFunc
	pollCancel   context.CancelFunc
	sampleTimer  *time.Timer // armed while a sample is due

	reportTimer *time.Timer // the heartbeat
	// Reports: reportState is guarded by the client's report queue; the rest is touched by
	// the one reporter sending this gate's report.
	reportState     int
	reportNotBefore time.Time // a 429's Retry-After
	reportErr       string    // the last failure logged
	// Samples: sampleArmed is guarded by mu; the rest is touched by the one sender.
	sampleArmed bool
	samplesSent uint64
	sampleErr   string

	// done is closed by Close. (A channel, not a context: a gate's context would cost more
	// than the channel, and every context derived from it would leave a map in it.)
	done chan struct{}
	wg   sync.WaitGroup
}

// NewGate checks the configuration and starts following the switch in the background. It
// returns before the control plane is reached: until then the gate is closed (with
// KeepLastKnown). Use WaitReady to wait for first contact.
func NewGate(cfg Config) (*Gate, error) {
	s, err := resolve(cfg)
	if err != nil {
		return nil, err
	}
	c, err := newClient(s, cfg.Proxy != nil)
	if err != nil {
		return nil, err
	}
	g := &Gate{
		s:       s,
		c:       c,
		log:     s.Logger,
		tok:     s.Token,
		slots:   make([]time.Time, s.MaxConcurrency),
		changed: make(chan struct{}),
		done:    make(chan struct{}),
	}
	// Each gate starts at a random replica, which spreads a fleet over them.
	g.sticky.Store(int32(randIntn(len(s.bases))))
	if !s.DisableReports {
		g.reportTimer = time.AfterFunc(s.ReportInterval, g.heartbeat)
	}
	g.wg.Add(1)
	go g.watch()
	return g, nil
}

// Close stops the gate's goroutines and closes its connections; it waits for them. Calls
// waiting in WaitOpen or Acquire return ErrClosed. IsOpen keeps answering the last
// decision.
func (g *Gate) Close() error {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return nil
	}
	g.closed = true
	conn := g.conn
	g.conn = nil
	if g.policyTimer != nil {
		g.policyTimer.Stop()
	}
	if g.reportTimer != nil {
		g.reportTimer.Stop()
	}
	if g.sampleTimer != nil {
		g.sampleTimer.Stop()
	}
	close(g.done) // first: whoever sees a cancelled operation then sees the gate closed
	for _, c := range []context.CancelFunc{g.dialCancel, g.reportCancel, g.sampleCancel, g.pollCancel} {
		if c != nil {
			c()
		}
	}
	g.mu.Unlock()
	if conn != nil {
		conn.Close()
	}
	g.wg.Wait()
	return nil
}

// String describes the gate (never its token).
func (g *Gate) String() string {
	return fmt.Sprintf("brb.Gate{switch=%s worker=%s open=%t version=%d connected=%t}",
		g.s.Switch, g.s.WorkerID, g.IsOpen(), g.Version(), g.Connected())
}

// IsOpen says whether the switch lets work through now. One atomic load, no I/O: call it
// before every job.
func (g *Gate) IsOpen() bool { return g.open.Load() }

// WaitOpen blocks until the switch lets work through, ctx ends (its error is returned) or
// the gate is closed (ErrClosed).
func (g *Gate) WaitOpen(ctx context.Context) error {
	for {
		ch := g.changedCh()
		if g.IsOpen() {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-g.done:
			return ErrClosed
		}
	}
}

// WaitReady blocks until the gate has heard the control plane once (it then knows the
// switch's state), ctx ends or the gate is closed.
func (g *Gate) WaitReady(ctx context.Context) error {
	for {
		ch := g.changedCh()
		if g.known.Load() != knownNone {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-g.done:
			return ErrClosed
		}
	}
}

// isClosed says whether Close was called.
func (g *Gate) isClosed() bool {
	select {
	case <-g.done:
		return true
	default:
		return false
	}
}

// Permit is a job slot taken by Acquire or TryAcquire. Release it when the job is done.
type Permit struct {
	g       *Gate
	slot    int
	started time.Time
	done    atomic.Bool
}

// Release ends the job: it is counted as processed, and during a ramp its slot rests in
// proportion to the job's duration. Calling it again does nothing.
func (p *Permit) Release() { p.finish(true) }

// Abandon gives the slot back without counting a job (the worker found nothing to do).
func (p *Permit) Abandon() { p.finish(false) }

func (p *Permit) finish(counted bool) {
	if p == nil || !p.done.CompareAndSwap(false, true) {
		return
	}
	g := p.g
	now := time.Now()
	free := now
	if counted {
		// Duty cycle: at fraction f the slot rests took·(1−f)/f, so it works f of the time,
		// whatever the job's length.
		if f := g.fraction(now); f > 0 && f < 1 {
			free = now.Add(time.Duration(float64(now.Sub(p.started)) * (1 - f) / f))
		}
		g.processed.Add(1)
		g.sampleDue()
	}
	g.mu.Lock()
	g.slots[p.slot] = free
	g.mu.Unlock()
	left := g.inFlight.Add(-1)
	if counted && left == 0 && !g.IsOpen() {
		g.kickReport() // drained: say so at once
	}
	g.broadcast()
}

// farFuture marks a slot busy until its permit is released.
var farFuture = time.Unix(1<<40, 0)

// TryAcquire takes a job slot without waiting. It fails while the switch is closed, when
// every slot is busy, or while the ramp's duty cycle has the free slots resting.
func (g *Gate) TryAcquire() (*Permit, bool) {
	if !g.IsOpen() {
		return nil, false
	}
	now := time.Now()
	g.mu.Lock()
	slot := -1
	if !g.closed {
		for i, t := range g.slots {
			if !t.After(now) {
				slot = i
				g.slots[i] = farFuture
				break
			}
		}
	}
	g.mu.Unlock()
	if slot < 0 {
		return nil, false
	}
	g.inFlight.Add(1)
	return &Permit{g: g, slot: slot, started: now}, true
}

// Acquire waits until the switch is open and a job slot is free (and rested, during a
// ramp), then takes it. It returns ctx's error when ctx ends first, ErrClosed when the gate
// is closed.
func (g *Gate) Acquire(ctx context.Context) (*Permit, error) {
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if g.isClosed() {
			return nil, ErrClosed
		}
		ch := g.changedCh()
		if p, ok := g.TryAcquire(); ok {
			return p, nil
		}
		if !g.IsOpen() {
			select {
			case <-ch:
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-g.done:
				return nil, ErrClosed
			}
			continue
		}
		// Open, but no slot yet: wait for a release or for the next slot to rest.
		g.mu.Lock()
		next := farFuture
		for _, t := range g.slots {
			if t.Before(next) {
				next = t
			}
		}
		g.mu.Unlock()
		wait := time.Until(next)
		if wait < time.Millisecond {
			wait = time.Millisecond
		} else if wait > 250*time.Millisecond {
			wait = 250 * time.Millisecond
		}
		t := time.NewTimer(wait)
		select {
		case <-ch:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-g.done:
			t.Stop()
			return nil, ErrClosed
		}
		t.Stop()
	}
}

// AdmittedFraction is the fraction of normal work admitted now: 0 when closed, the ramp's
// fraction while one runs, else 1.
func (g *Gate) AdmittedFraction() float64 { return g.fraction(time.Now()) }

func (g *Gate) fraction(now time.Time) float64 {
	if !g.open.Load() {
		return 0
	}
	g.mu.Lock()
	r := g.ramp
	g.mu.Unlock()
	if r != nil && g.known.Load() == knownRunning {
		return r.FractionAt(now)
	}
	return 1
}

// Version is the switch version the gate acts on (0 before first contact).
func (g *Gate) Version() uint64 { return g.version.Load() }

// Connected says whether the gate holds a working connection to the control plane now.
func (g *Gate) Connected() bool { return g.connected.Load() }

// Staleness says how old the gate's knowledge may be: zero while connected (every change is
// pushed at once), else the time since the control plane was last heard. ok is false when
// it never was.
func (g *Gate) Staleness() (d time.Duration, ok bool) {
	if g.connected.Load() {
		return 0, true
	}
	last := g.lastContact.Load()
	if last == 0 {
		return 0, false
	}
	d = time.Duration(time.Now().UnixNano() - last)
	if d < 0 {
		d = 0
	}
	return d, true
}

// Status is what the gate reports: running, draining or paused.
func (g *Gate) Status() Status {
	switch {
	case g.open.Load():
		return StatusRunning
	case g.inFlight.Load() > 0:
		return StatusDraining
	default:
		return StatusPaused
	}
}

// InFlight is how many permits are held now.
func (g *Gate) InFlight() int { return int(g.inFlight.Load()) }

// Processed is how many jobs were released (counted) since the gate started.
func (g *Gate) Processed() uint64 { return g.processed.Load() }

// WorkerID is the id the gate reports under.
func (g *Gate) WorkerID() string { return g.s.WorkerID }

// Connects is how many times the gate's stream (or long-poll) has connected.
func (g *Gate) Connects() uint64 { return g.connects.Load() }

// ConnectTimes are the instants the stream connected (the last 64), for observing how a
// fleet's reconnects spread.
func (g *Gate) ConnectTimes() []time.Time {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]time.Time(nil), g.connectLog...)
}

// LastChange is the last version the gate applied and the instant IsOpen began answering
// by it; ok is false before first contact.
func (g *Gate) LastChange() (version uint64, at time.Time, ok bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.lastChangeV, g.lastChangeAt, !g.lastChangeAt.IsZero()
}

// LastError is why the gate is not connected (nil while it is, or before any attempt
// failed): a refused token, an unreachable control plane...
func (g *Gate) LastError() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.lastErr
}

// Changed returns a channel that is closed at the gate's next change: the decision, the
// version, the ramp, a released permit. Take a new one after each wake-up.
func (g *Gate) Changed() <-chan struct{} { return g.changedCh() }

// MaxConcurrency is how many jobs the gate admits at once.
func (g *Gate) MaxConcurrency() int { return g.s.MaxConcurrency }

func (g *Gate) changedCh() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.changed
}

// broadcast wakes everything waiting on a change (WaitOpen, Acquire).
func (g *Gate) broadcast() {
	g.mu.Lock()
	close(g.changed)
	g.changed = make(chan struct{})
	g.mu.Unlock()
}

func (g *Gate) token() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.tok
}

// opContext is a context for one dial, report or sample that Close cancels, held in *slot.
func (g *Gate) opContext(slot *context.CancelFunc, timeout time.Duration) (context.Context, func()) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	g.mu.Lock()
	if g.closed {
		cancel()
	}
	*slot = cancel
	g.mu.Unlock()
	return ctx, func() {
		g.mu.Lock()
		*slot = nil
		g.mu.Unlock()
		cancel()
	}
}

// holdConn records the stream's connection so that Close can end a blocked read; false
// when the gate is already closed.
func (g *Gate) holdConn(c io.Closer) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	g.conn = c
	return true
}

// recompute derives the decision from what is known and how long the control plane has
// been silent. True when it changed (waiters and the reporter were woken).
func (g *Gate) recompute() bool {
	known := g.known.Load()
	lost := g.lostAt.Load()
	beyond := lost != 0 && time.Now().UnixNano()-lost >= int64(g.s.Grace)
	var open bool
	switch {
	case g.s.Policy == FailOpen && beyond:
		open = true
	case g.s.Policy == FailClosed && beyond:
		open = false
	default:
		open = known == knownRunning
	}
	if g.open.Swap(open) == open {
		return false
	}
	g.broadcast()
	g.kickReport()
	return true
}

// switchView is what a gate needs of a switch event (decodeSwitch fills it; the tags are
// what encoding/json reads in the scanner's tests).
type switchView struct {
	Name      string `json:"name"`
	State     string `json:"state"`
	Version   uint64 `json:"version"`
	ChangedBy string `json:"changed_by"`
	Source    string `json:"source"`
	Ramp      *Ramp  `json:"ramp"`
}

// apply takes a state the control plane sent. An older version than the one held is
// ignored (a lagging replica) unless the stream just said it resynchronized.
func (g *Gate) apply(sw *switchView, current bool) {
	prev := g.known.Load()
	if !current && prev != knownNone && sw.Version < g.version.Load() {
		return
	}
	k := knownPaused
	if sw.State == "running" {
		k = knownRunning
	}
	g.mu.Lock()
	g.ramp = sw.Ramp
	// Recorded before the version is published, so that whoever sees the version also
	// sees its instant (IsOpen answers by it a few instructions later).
	if prev == knownNone || sw.Version != g.version.Load() {
		g.lastChangeV, g.lastChangeAt = sw.Version, time.Now()
	}
	g.mu.Unlock()
	g.version.Store(sw.Version)
	g.known.Store(k)
	g.contact()
	notified := g.recompute()
	if prev != knownNone && prev != k {
		g.logf("brb: switch %s is now %s (version %d, by %s via %s)", sw.Name, sw.State, sw.Version, sw.ChangedBy, sw.Source)
	}
	// Waiters (WaitReady too) and the reporter also learn of a new version or ramp with the
	// same decision.
	if !notified {
		g.broadcast()
		g.kickReport()
	}
}

func (g *Gate) contact() { g.lastContact.Store(time.Now().UnixNano()) }

func (g *Gate) setConnected(yes bool) {
	was := g.connected.Swap(yes)
	if yes {
		g.lostAt.Store(0)
		if !was {
			g.connects.Add(1)
			now := time.Now()
			g.mu.Lock()
			if len(g.connectLog) == maxConnectLog {
				copy(g.connectLog, g.connectLog[1:])
				g.connectLog = g.connectLog[:maxConnectLog-1]
			}
			g.connectLog = append(g.connectLog, now)
			if g.lastErr != nil {
				g.logf("brb: switch %s: connected to the control plane again", g.s.Switch)
			}
			g.lastErr = nil
			if g.policyTimer != nil {
				g.policyTimer.Stop()
			}
			g.mu.Unlock()
		}
	} else if was || g.lostAt.Load() == 0 {
		g.lostAt.Store(time.Now().UnixNano())
		if g.s.Policy != KeepLastKnown {
			// The grace period runs out by itself: no clock ticks while connected.
			g.mu.Lock()
			if !g.closed {
				if g.policyTimer == nil {
					g.policyTimer = time.AfterFunc(g.s.Grace, g.graceOver)
				} else {
					g.policyTimer.Reset(g.s.Grace)
				}
			}
			g.mu.Unlock()
		}
	}
	g.recompute()
}

func (g *Gate) graceOver() {
	if g.connected.Load() || g.isClosed() {
		return
	}
	if g.recompute() {
		g.logf("brb: switch %s: no word from the control plane for %s; failing %s (policy %s)",
			g.s.Switch, g.s.Grace, map[bool]string{true: "open", false: "closed"}[g.IsOpen()], g.s.Policy)
	} else if g.lostAt.Load() != 0 && time.Now().UnixNano()-g.lostAt.Load() < int64(g.s.Grace) {
		// Woken a little early (the loss was re-dated): look again when it is due.
		g.mu.Lock()
		if !g.closed && g.policyTimer != nil {
			g.policyTimer.Reset(time.Duration(int64(g.s.Grace) - (time.Now().UnixNano() - g.lostAt.Load())))
		}
		g.mu.Unlock()
	}
}
