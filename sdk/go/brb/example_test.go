package brb_test

import (
	"context"
	"log"

	"github.com/big-red-button/brb/sdk/go/brb"
)

// A worker loop with four job slots: each job waits while the switch is paused and is
// counted when released.
func ExampleGate_Acquire() {
	gate, err := brb.NewGate(brb.Config{
		URLs:           []string{"https://brb-1.internal:7070", "https://brb-2.internal:7070"},
		Switch:         "workers",
		TokenFile:      "/etc/my-worker/brb-token",
		CAFile:         "/etc/my-worker/brb-ca.pem",
		MaxConcurrency: 4,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer gate.Close()
	ctx := context.Background()
	jobs := make(chan func())
	for i := 0; i < gate.MaxConcurrency(); i++ {
		go func() {
			for {
				permit, err := gate.Acquire(ctx)
				if err != nil {
					return
				}
				job := <-jobs
				job()
				permit.Release()
			}
		}()
	}
}
