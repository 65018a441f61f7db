package gilmour

import (
	"context"
	"sync"
	"testing"
	"time"
)

// TestWorkersReusedAndStopped: calls run concurrently on workers that are reused, at most
// maxIdleWorkers wait idle, and they all end with the adapter's context.
func TestWorkersReusedAndStopped(t *testing.T) {
	a := &Adapter{jobs: make(chan func())}
	a.ctx, a.cancel = context.WithCancel(context.Background())
	const n = 2 * maxIdleWorkers
	var wg sync.WaitGroup
	release := make(chan struct{})
	for range n { // n calls at once: n workers
		wg.Add(1)
		a.dispatch(func() { defer wg.Done(); <-release })
	}
	close(release)
	wg.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for a.idle.Load() != maxIdleWorkers {
		if time.Now().After(deadline) {
			t.Fatalf("%d idle workers, want %d", a.idle.Load(), maxIdleWorkers)
		}
		time.Sleep(time.Millisecond)
	}
	// idle workers take the next calls
	for range 10 {
		done := make(chan struct{})
		a.dispatch(func() { close(done) })
		<-done
	}
	a.cancel()
	stopped := make(chan struct{})
	go func() { a.workers.Wait(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("workers did not stop with the context")
	}
	if a.idle.Load() != 0 {
		t.Fatalf("%d idle after stop", a.idle.Load())
	}
}
