package brb

import (
	"math"
	"time"
)

// Ramp is a gradual release in progress: the fraction of normal work admitted grows from a
// small start to 1 over DurationSecs. Every gate computes the fraction itself from the same
// data, so a fleet follows the schedule with no extra round trips.
type Ramp struct {
	StartedAt    time.Time `json:"started_at"`
	DurationSecs uint64    `json:"duration_secs"`
	// Kind is "linear" (From up to 1 in a straight line) or "steps" (each of Fractions for
	// an equal share of the duration).
	Kind      string    `json:"kind"`
	From      float64   `json:"from,omitempty"`
	Fractions []float64 `json:"fractions,omitempty"`
}

// FractionAt is the fraction of normal work admitted at t, in [0, 1]; the same function of
// the same data as the control plane's and every other SDK's.
func (r *Ramp) FractionAt(t time.Time) float64 {
	elapsed := float64(t.Sub(r.StartedAt).Milliseconds()) / 1000
	if elapsed < 0 {
		elapsed = 0
	}
	total := float64(r.DurationSecs)
	if total < 1 {
		total = 1
	}
	if elapsed >= total {
		return 1
	}
	var f float64
	switch r.Kind {
	case "linear":
		f = r.From + (1-r.From)*(elapsed/total)
	case "steps":
		n := len(r.Fractions)
		if n < 2 {
			return 1
		}
		step := total / float64(n-1)
		i := int(math.Floor(elapsed / step))
		if i > n-1 {
			i = n - 1
		}
		f = r.Fractions[i]
	default:
		// A shape this SDK does not know: admit everything rather than guess a schedule
		// (the switch itself says running).
		return 1
	}
	if math.IsNaN(f) {
		return 1
	}
	return math.Max(0, math.Min(1, f))
}
