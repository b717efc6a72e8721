// Package brb is the Go worker SDK of the Big Red Button: a Gate that a background worker
// checks before taking a job.
//
// A Gate follows one switch of the control plane over a push stream (SSE with resume,
// long-poll when a proxy refuses streams, several replica URLs) and keeps what it learns in
// atomics: IsOpen is one atomic load, so a worker can ask before every job. Acquire is the
// fuller form: it waits while the switch is paused, counts the job in flight until its
// Permit is released (so the gate reports draining while jobs started before a pause
// finish), and applies a release ramp by duty cycle. The gate reports what the worker does
// (running, draining, paused, with in-flight and processed counts), which is what `brb
// pause` counts in "40/40 workers acknowledged".
//
// When the control plane cannot be reached the gate keeps the last known state
// (KeepLastKnown, the default), or fails open or closed after a grace period.
//
// Standard library only. See sdk/go/README.md for the ten-minute setup, the settings and
// what was measured.
package brb
