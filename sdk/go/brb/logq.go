package brb

import (
	"sync"
	"sync/atomic"
)

// Log lines are handed to one goroutine per process that writes them in order. A gate's
// own goroutine never formats (fmt runs deep, and a thousand gates' stacks would each grow
// at every press) nor waits on a slow log destination.
type logLine struct {
	to     Logger
	format string
	args   []any
}

const logQueueLen = 1024

var (
	logOnce    sync.Once
	logQueue   chan logLine
	logDropped atomic.Int64
)

func (g *Gate) logf(format string, args ...any) {
	logOnce.Do(func() {
		logQueue = make(chan logLine, logQueueLen)
		go writeLogs()
	})
	select {
	case logQueue <- logLine{to: g.log, format: format, args: args}:
	default:
		logDropped.Add(1) // never block a gate on its log
	}
}

func writeLogs() {
	for l := range logQueue {
		l.to.Printf(l.format, l.args...)
		if n := logDropped.Swap(0); n > 0 {
			l.to.Printf("brb: %d log lines dropped (the log destination is too slow)", n)
		}
	}
}
