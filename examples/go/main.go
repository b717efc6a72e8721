// Command worker is a background worker wired to the Big Red Button: four job slots that
// take jobs only while the switch lets work through, finish what they started when it is
// pressed, come back gradually after a release, and stop cleanly on SIGTERM.
//
// From the repository's root:
//
//	cd examples/go && BRB_TOKEN_FILE=~/.local/share/big-red-button/admin-token go run .
//
// BRB_URL (comma-separated replicas), BRB_TOKEN or BRB_TOKEN_FILE, BRB_CA_FILE and
// BRB_SWITCH (default "workers") say where and what to follow.
package main

import (
	"context"
	"fmt"
	"log"
	"math/rand"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/big-red-button/brb/sdk/go/brb"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context) error {
	// URLs, token and CA come from BRB_URL, BRB_TOKEN / BRB_TOKEN_FILE and BRB_CA_FILE.
	gate, err := brb.NewGate(brb.Config{
		Switch:         os.Getenv("BRB_SWITCH"), // "" is "workers"
		MaxConcurrency: 4,
	})
	if err != nil {
		return err // a misconfigured worker stops here instead of running unbraked
	}
	defer gate.Close()
	log.Printf("worker %s following %s", gate.WorkerID(), gate)

	go announce(ctx, gate)

	// Stands for the real queue (Redis, SQS, a database table...).
	jobs := make(chan int)
	go func() {
		for n := 1; ctx.Err() == nil; n++ {
			select {
			case jobs <- n:
			case <-ctx.Done():
			}
		}
	}()

	var wg sync.WaitGroup
	for slot := 0; slot < gate.MaxConcurrency(); slot++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				// Waits while the switch is paused, and rests the slot during a ramp.
				permit, err := gate.Acquire(ctx)
				if err != nil {
					return // shutting down
				}
				select {
				case job := <-jobs:
					process(job)
					permit.Release() // counted, and reported when it was the last in flight
				case <-ctx.Done():
					permit.Abandon()
					return
				}
			}
		}()
	}
	wg.Wait()
	log.Printf("stopped after %d jobs", gate.Processed())
	return nil
}

// process is the job itself.
func process(job int) {
	time.Sleep(time.Duration(20+rand.Intn(30)) * time.Millisecond)
	fmt.Printf("job %d done\n", job)
}

// announce says what the gate acts on each time it changes.
func announce(ctx context.Context, gate *brb.Gate) {
	last := ""
	for {
		changed := gate.Changed()
		now := fmt.Sprintf("%s at version %d, admitting %.0f%%", gate.Status(), gate.Version(), 100*gate.AdmittedFraction())
		if now != last && gate.Version() > 0 {
			log.Printf("brake: %s", now)
			last = now
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return
		}
	}
}
