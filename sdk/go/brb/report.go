package brb

import (
	"encoding/json"
	"errors"
	"net/http"
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

// reporter tells the control plane what this worker does, at once on every change (so
// `brb pause` can count it within milliseconds) and every ReportInterval otherwise (so it
// is not called stale).
func (g *Gate) reporter() {
	defer g.wg.Done()
	t := time.NewTimer(g.s.ReportInterval)
	defer t.Stop()
	var notBefore time.Time // a 429's Retry-After
	var loggedErr string
	for {
		select {
		case <-g.ctx.Done():
			return
		case <-g.reportNow:
		case <-t.C:
		}
		if !t.Stop() {
			select {
			case <-t.C:
			default:
			}
		}
		t.Reset(g.s.ReportInterval)
		// Nothing to report before the gate knows the state, nor while told to wait.
		if g.known.Load() == knownNone || time.Now().Before(notBefore) {
			continue
		}
		err := g.report()
		if g.ctx.Err() != nil {
			return
		}
		var api *APIError
		if errors.As(err, &api) && api.Status == http.StatusTooManyRequests && api.RetryAfter > 0 {
			ra := api.RetryAfter
			if ra > maxRetryAfter {
				ra = maxRetryAfter
			}
			notBefore = time.Now().Add(ra)
		}
		switch {
		case err != nil && err.Error() != loggedErr:
			g.log.Printf("brb: switch %s: reporting failed: %v", g.s.Switch, err)
			loggedErr = err.Error()
		case err == nil && loggedErr != "":
			g.log.Printf("brb: switch %s: reporting works again", g.s.Switch)
			loggedErr = ""
		}
	}
}

func (g *Gate) report() error {
	body, err := json.Marshal(workerReport{
		WorkerID:        g.s.WorkerID,
		Switch:          g.s.Switch,
		ObservedVersion: g.version.Load(),
		Status:          g.Status(),
		InFlight:        g.inFlight.Load(),
		ProcessedTotal:  g.processed.Load(),
	})
	if err != nil {
		return err
	}
	_, err = g.call(g.ctx, http.MethodPost, "/workers/report", body, requestTimeout)
	return err
}
