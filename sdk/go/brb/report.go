package brb

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"
)

// workerReport is the body of POST /api/v1/workers/report.
type workerReport struct {
	WorkerID        string `json:"worker_id"`
	Switch          string `json:"switch"`
	ObservedVersion uint64 `json:"observed_version"`
	Status          Status `json:"status"`
	InFlight        int32  `json:"in_flight"`
	ProcessedTotal  uint64 `json:"processed_total"`
}

// maxReporters bounds the reports a process sends at once (per TLS setting). A worker
// process usually holds one gate, and then this is one goroutine while a report is due and
// none otherwise; a process with a thousand gates sends their reports over a few warm
// connections instead of a thousand new ones at every change.
const maxReporters = 8

// Where a gate is in the report queue.
const (
	reportIdle = iota
	reportQueued
	reportSending
	reportAgain // sending, and something changed meanwhile: send again after
)

// reportQueue sends the reports of every gate sharing a client. A gate is in it at most
// once and is never sent twice at the same time, so its reports arrive in order.
type reportQueue struct {
	mu      sync.Mutex
	queue   []*Gate
	workers int
}

// enqueue asks for a report from g as soon as a reporter is free.
func (q *reportQueue) enqueue(g *Gate) {
	q.mu.Lock()
	defer q.mu.Unlock()
	switch g.reportState {
	case reportIdle:
		g.reportState = reportQueued
		q.queue = append(q.queue, g)
		if q.workers < maxReporters && q.workers < len(q.queue) {
			q.workers++
			go q.work()
		}
	case reportSending:
		g.reportState = reportAgain
	}
}

func (q *reportQueue) work() {
	for {
		q.mu.Lock()
		if len(q.queue) == 0 {
			q.workers--
			q.queue = nil // let a burst's backing array go
			q.mu.Unlock()
			return
		}
		g := q.queue[0]
		q.queue[0] = nil
		q.queue = q.queue[1:]
		g.reportState = reportSending
		q.mu.Unlock()

		g.sendReport()

		q.mu.Lock()
		if g.reportState == reportAgain && !g.isClosed() {
			g.reportState = reportQueued
			q.queue = append(q.queue, g)
		} else {
			g.reportState = reportIdle
		}
		q.mu.Unlock()
	}
}

// kickReport asks for a report at once (a change, a drained gate).
func (g *Gate) kickReport() {
	if g.s.DisableReports || g.known.Load() == knownNone || g.isClosed() {
		return
	}
	g.c.reports.enqueue(g)
}

// heartbeat is the ReportInterval timer's tick: the control plane calls a worker that is
// silent for 15 s stale.
func (g *Gate) heartbeat() {
	if g.isClosed() {
		return
	}
	g.kickReport()
	g.mu.Lock()
	if !g.closed {
		g.reportTimer.Reset(g.s.ReportInterval)
	}
	g.mu.Unlock()
}

// sendReport tells the control plane what this worker does now. Called by one reporter at
// a time per gate.
func (g *Gate) sendReport() {
	if g.isClosed() || time.Now().Before(g.reportNotBefore) {
		return
	}
	body, err := json.Marshal(workerReport{
		WorkerID:        g.s.WorkerID,
		Switch:          g.s.Switch,
		ObservedVersion: g.version.Load(),
		Status:          g.Status(),
		InFlight:        g.inFlight.Load(),
		ProcessedTotal:  g.processed.Load(),
	})
	if err == nil {
		ctx, done := g.opContext(&g.reportCancel, requestTimeout)
		_, err = g.call(ctx, http.MethodPost, "/workers/report", body, requestTimeout)
		done()
	}
	if g.isClosed() {
		return
	}
	var api *APIError
	if errors.As(err, &api) && api.Status == http.StatusTooManyRequests && api.RetryAfter > 0 {
		ra := api.RetryAfter
		if ra > maxRetryAfter {
			ra = maxRetryAfter
		}
		g.reportNotBefore = time.Now().Add(ra)
	}
	// One line per distinct problem, and one when it is over.
	switch {
	case err != nil && err.Error() != g.reportErr:
		g.logf("brb: switch %s: reporting failed: %v", g.s.Switch, err)
		g.reportErr = err.Error()
	case err == nil && g.reportErr != "":
		g.logf("brb: switch %s: reporting works again", g.s.Switch)
		g.reportErr = ""
	}
}

// sampleDue arms the sample timer after a job, unless a sample is already due: at most one
// sample a second, and none (no timer) while no job finishes.
func (g *Gate) sampleDue() {
	if g.s.DisableSamples {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed || g.sampleArmed {
		return
	}
	g.sampleArmed = true
	if g.sampleTimer == nil {
		g.sampleTimer = time.AfterFunc(time.Second, g.sendSample)
	} else {
		g.sampleTimer.Reset(time.Second)
	}
}

// sendSample sends the jobs finished since the last sample as one sdk_jobs_processed
// counter sample (the control plane adds them up per second across the fleet). Runs on the
// timer's goroutine; unsent jobs go with the next sample.
func (g *Gate) sendSample() {
	n := g.processed.Load() - g.samplesSent
	var err error
	if n > 0 {
		body := fmt.Sprintf(`{"samples":[{"name":"sdk_jobs_processed","value":%d,"kind":"counter"}]}`, n)
		ctx, done := g.opContext(&g.sampleCancel, requestTimeout)
		_, err = g.call(ctx, http.MethodPost, "/metrics", []byte(body), requestTimeout)
		done()
		if err == nil {
			g.samplesSent += n
		}
	}
	if g.isClosed() {
		return
	}
	switch {
	case err != nil && err.Error() != g.sampleErr:
		g.logf("brb: switch %s: sending the jobs-processed sample failed: %v", g.s.Switch, err)
		g.sampleErr = err.Error()
	case err == nil && g.sampleErr != "":
		g.sampleErr = ""
	}
	// Read under the lock that disarms: the next sender (armed by a job finishing after
	// this) runs only after it, and a job that finished before is seen here.
	g.mu.Lock()
	g.sampleArmed = false
	more := g.processed.Load() > g.samplesSent
	g.mu.Unlock()
	if more {
		g.sampleDue()
	}
}
