// Command conformance-driver drives the Go SDK's gates for the conformance suite: it reads
// one JSON command per line on stdin and answers one JSON object per line on stdout, as
// sdk/conformance/PROTOCOL.md says. It holds no scenario logic and never talks to the
// control plane itself: every answer is what the SDK's public API says. Log lines (the
// SDK's included) go to stderr.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/big-red-button/brb/sdk/go/brb"
)

func main() {
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	log.SetOutput(os.Stderr)
	if err := run(os.Stdin, os.Stdout); err != nil {
		log.Printf("conformance-driver: %v", err)
		os.Exit(1)
	}
}

// gateConfig is the protocol's "config" object; a missing field leaves the SDK's default.
type gateConfig struct {
	URLs             []string        `json:"urls"`
	Token            *string         `json:"token"`
	TokenFile        *string         `json:"token_file"`
	Switch           string          `json:"switch"`
	WorkerID         *string         `json:"worker_id"`
	Policy           *brb.FailPolicy `json:"policy"`
	GraceMs          *int64          `json:"grace_ms"`
	MaxConcurrency   *int            `json:"max_concurrency"`
	ReportIntervalMs *int64          `json:"report_interval_ms"`
	Transport        *brb.Transport  `json:"transport"`
	BackoffBaseMs    *int64          `json:"backoff_base_ms"`
	BackoffCapMs     *int64          `json:"backoff_cap_ms"`
	IdleTimeoutMs    *int64          `json:"idle_timeout_ms"`
	CAFile           *string         `json:"ca_file"`
	ClientCert       *string         `json:"client_cert"`
	ClientKey        *string         `json:"client_key"`
	Reports          *bool           `json:"reports"`
}

func ms(v *int64) time.Duration {
	if v == nil {
		return 0
	}
	return time.Duration(*v) * time.Millisecond
}

func str(v *string) string {
	if v == nil {
		return ""
	}
	return *v
}

func (c *gateConfig) sdk() brb.Config {
	cfg := brb.Config{
		URLs:           c.URLs,
		Switch:         c.Switch,
		Token:          str(c.Token),
		TokenFile:      str(c.TokenFile),
		WorkerID:       str(c.WorkerID),
		Grace:          ms(c.GraceMs),
		ReportInterval: ms(c.ReportIntervalMs),
		BackoffBase:    ms(c.BackoffBaseMs),
		BackoffCap:     ms(c.BackoffCapMs),
		IdleTimeout:    ms(c.IdleTimeoutMs),
		CAFile:         str(c.CAFile),
		ClientCert:     str(c.ClientCert),
		ClientKey:      str(c.ClientKey),
	}
	if c.Policy != nil {
		cfg.Policy = *c.Policy
	}
	if c.GraceMs != nil && *c.GraceMs == 0 {
		// The protocol's 0 is "no grace"; the Go SDK reads a zero Duration as "the default".
		cfg.Grace = time.Nanosecond
	}
	if c.MaxConcurrency != nil {
		cfg.MaxConcurrency = *c.MaxConcurrency
	}
	if c.Transport != nil {
		cfg.Transport = *c.Transport
	}
	if c.Reports != nil {
		cfg.DisableReports = !*c.Reports
	}
	return cfg
}

type command struct {
	ID        json.RawMessage `json:"id"`
	Op        string          `json:"op"`
	Gate      string          `json:"gate"`
	Config    *gateConfig     `json:"config"`
	TimeoutMs int64           `json:"timeout_ms"`
	ForMs     int64           `json:"for_ms"`
	JobMs     int64           `json:"job_ms"`
	Job       string          `json:"job"`
	Count     int             `json:"count"`
	Version   uint64          `json:"version"`
}

type gateEntry struct {
	g    *brb.Gate
	jobs map[string]*brb.Permit
}

type driver struct {
	gates map[string]*gateEntry
	fleet []*brb.Gate
}

type answer map[string]any

func run(in io.Reader, out io.Writer) error {
	d := &driver{gates: map[string]*gateEntry{}}
	defer d.closeAll()
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	enc := json.NewEncoder(out)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var cmd command
		var a answer
		// The id first, so that a command with a bad field is still answered by its id.
		var head struct {
			ID json.RawMessage `json:"id"`
		}
		if err := json.Unmarshal(line, &head); err != nil {
			a = answer{"ok": false, "error": "unreadable command: " + err.Error()}
		} else if err := json.Unmarshal(line, &cmd); err != nil {
			cmd.ID = head.ID
			a = answer{"ok": false, "error": "bad command: " + err.Error()}
		} else {
			a = d.do(&cmd)
		}
		if cmd.ID != nil {
			a["id"] = cmd.ID
		} else {
			a["id"] = nil
		}
		if _, ok := a["ok"]; !ok {
			a["ok"] = true
		}
		if err := enc.Encode(a); err != nil {
			return fmt.Errorf("writing an answer: %w", err)
		}
	}
	return sc.Err()
}

func fail(format string, v ...any) answer {
	return answer{"ok": false, "error": fmt.Sprintf(format, v...)}
}

func (d *driver) do(c *command) answer {
	switch c.Op {
	case "start":
		return d.start(c)
	case "state":
		e, a := d.gate(c)
		if e == nil {
			return a
		}
		return state(e.g)
	case "wait_open":
		e, a := d.gate(c)
		if e == nil {
			return a
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(c.TimeoutMs)*time.Millisecond)
		defer cancel()
		t0 := time.Now()
		err := e.g.WaitOpen(ctx)
		waited := time.Since(t0).Milliseconds()
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			return fail("wait_open: %v", err)
		}
		return answer{"opened": err == nil, "waited_ms": waited}
	case "work":
		e, a := d.gate(c)
		if e == nil {
			return a
		}
		return work(e.g, time.Duration(c.ForMs)*time.Millisecond, time.Duration(c.JobMs)*time.Millisecond)
	case "begin_job":
		e, a := d.gate(c)
		if e == nil {
			return a
		}
		if _, busy := e.jobs[c.Job]; busy {
			return fail("job %q is already in flight", c.Job)
		}
		p, ok := e.g.TryAcquire()
		if ok {
			e.jobs[c.Job] = p
		}
		return answer{"admitted": ok}
	case "end_job":
		e, a := d.gate(c)
		if e == nil {
			return a
		}
		p, ok := e.jobs[c.Job]
		if !ok {
			return fail("no job %q in flight", c.Job)
		}
		delete(e.jobs, c.Job)
		p.Release()
		return answer{}
	case "stop":
		e, a := d.gate(c)
		if e == nil {
			return a
		}
		delete(d.gates, c.Gate)
		for _, p := range e.jobs {
			p.Abandon()
		}
		e.g.Close()
		return answer{}
	case "fleet_start":
		return d.fleetStart(c)
	case "fleet_ready":
		return d.fleetReady(time.Duration(c.TimeoutMs) * time.Millisecond)
	case "fleet_seen":
		return d.fleetSeen(c.Version, time.Duration(c.TimeoutMs)*time.Millisecond)
	case "rss":
		rss, err := rssBytes()
		if err != nil {
			return fail("rss: %v", err)
		}
		return answer{"rss_bytes": rss}
	}
	return fail("unknown op %q", c.Op)
}

func (d *driver) gate(c *command) (*gateEntry, answer) {
	e, ok := d.gates[c.Gate]
	if !ok {
		return nil, fail("no gate %q", c.Gate)
	}
	return e, nil
}

func (d *driver) start(c *command) answer {
	if c.Gate == "" {
		return fail("start: no gate name")
	}
	if _, ok := d.gates[c.Gate]; ok {
		return fail("gate %q exists", c.Gate)
	}
	if c.Config == nil {
		return fail("start: no config")
	}
	if m := c.Config.MaxConcurrency; m != nil && *m == 0 {
		// The protocol's 0 is "no job slot", which the Go SDK cannot be asked for: its
		// zero value is "the default" (one slot), as Go configuration structs go. Running
		// one slot would not be what was asked, so the config is refused here.
		return fail("max_concurrency 0 would never admit a job (in brb.Config a zero MaxConcurrency means the default, 1)")
	}
	g, err := brb.NewGate(c.Config.sdk())
	if err != nil {
		return fail("%v", err)
	}
	d.gates[c.Gate] = &gateEntry{g: g, jobs: map[string]*brb.Permit{}}
	return answer{}
}

func state(g *brb.Gate) answer {
	var staleness any
	if d, ok := g.Staleness(); ok {
		staleness = d.Milliseconds()
	}
	times := []int64{}
	for _, t := range g.ConnectTimes() {
		times = append(times, t.UnixMilli())
	}
	return answer{
		"open":              g.IsOpen(),
		"version":           g.Version(),
		"connected":         g.Connected(),
		"staleness_ms":      staleness,
		"status":            g.Status(),
		"in_flight":         g.InFlight(),
		"processed":         g.Processed(),
		"admitted_fraction": g.AdmittedFraction(),
		"connects":          g.Connects(),
		"connect_times":     times,
	}
}

// work takes jobs through Acquire on every slot for forDur, each held jobDur.
func work(g *brb.Gate, forDur, jobDur time.Duration) answer {
	ctx, cancel := context.WithTimeout(context.Background(), forDur)
	defer cancel()
	var mu sync.Mutex
	jobs := [][2]int64{}
	var wg sync.WaitGroup
	var firstErr error
	for i := 0; i < g.MaxConcurrency(); i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				p, err := g.Acquire(ctx)
				if err != nil {
					if !errors.Is(err, context.DeadlineExceeded) {
						mu.Lock()
						firstErr = err
						mu.Unlock()
					}
					return
				}
				start := time.Now()
				time.Sleep(jobDur)
				end := time.Now()
				p.Release()
				mu.Lock()
				jobs = append(jobs, [2]int64{start.UnixMilli(), end.UnixMilli()})
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return fail("work: %v", firstErr)
	}
	return answer{"jobs": jobs}
}

func (d *driver) fleetStart(c *command) answer {
	if len(d.fleet) > 0 {
		return fail("a fleet is running")
	}
	if c.Config == nil || c.Count <= 0 {
		return fail("fleet_start: want a config and a positive count")
	}
	base := c.Config.sdk()
	prefix := base.WorkerID
	if prefix == "" {
		prefix = brb.DefaultWorkerID()
	}
	for i := 0; i < c.Count; i++ {
		cfg := base
		cfg.WorkerID = prefix + "-" + strconv.Itoa(i)
		g, err := brb.NewGate(cfg)
		if err != nil {
			d.closeFleet()
			return fail("gate %d: %v", i, err)
		}
		d.fleet = append(d.fleet, g)
	}
	return answer{}
}

func (d *driver) fleetReady(timeout time.Duration) answer {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	ready := 0
	for _, g := range d.fleet {
		if g.WaitReady(ctx) == nil {
			ready++
		}
	}
	return answer{"ready": ready}
}

func (d *driver) fleetSeen(version uint64, timeout time.Duration) answer {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	seen := []int64{}
	missing := 0
	expired := false
	for _, g := range d.fleet {
		for {
			ch := g.Changed()
			v, at, ok := g.LastChange()
			if ok && v >= version {
				seen = append(seen, at.UnixMicro())
				break
			}
			if expired {
				missing++
				break
			}
			select {
			case <-ch:
			case <-deadline.C:
				expired = true
			}
		}
	}
	return answer{"seen_us": seen, "missing": missing}
}

func (d *driver) closeFleet() {
	var wg sync.WaitGroup
	for _, g := range d.fleet {
		wg.Add(1)
		go func(g *brb.Gate) {
			defer wg.Done()
			g.Close()
		}(g)
	}
	wg.Wait()
	d.fleet = nil
}

func (d *driver) closeAll() {
	for name, e := range d.gates {
		for _, p := range e.jobs {
			p.Abandon()
		}
		e.g.Close()
		delete(d.gates, name)
	}
	d.closeFleet()
}

// rssBytes is this process's resident memory (VmRSS).
func rssBytes() (int64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			f := strings.Fields(strings.TrimPrefix(line, "VmRSS:"))
			if len(f) == 2 && f[1] == "kB" {
				kb, err := strconv.ParseInt(f[0], 10, 64)
				return kb * 1024, err
			}
		}
	}
	return 0, errors.New("no VmRSS line in /proc/self/status")
}
