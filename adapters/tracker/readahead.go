package tracker

// readahead.go: while several claims of this pod take from one ready subject at once, the pod
// fetches that subject's next tokens in advance (up to readAheadMax), so that a claim under load
// takes a token without a fetch round trip: the fetch that replaces it runs beside the claim.
// A lone claimer reads ahead nothing (its claims behave as without read-ahead). Fetched tokens
// are ack-pending on this pod like any fetched token: a claim still checks each against the item
// record with CAS, tokens nobody took within readAheadHold are handed back (Nak) for any pod to
// take, and those of a pod that dies come back after the consumer's AckWait.

import (
	"context"
	"sync"
	"time"

	"github.com/jetbridge/jetbridge/jetstream"
)

const (
	readAheadMax  = 8                     // tokens fetched in advance per subject and pod
	readAheadHold = 20 * time.Millisecond // a token not taken by then is handed back
)

// readAhead is one ready subject's tokens fetched in advance.
type readAhead struct {
	mu       sync.Mutex
	stock    []stocked // oldest first
	inflight int       // fetches under way
	claiming int       // claims of this pod taking from the subject now
}

type stocked struct {
	job *jetstream.Job
	at  time.Time
}

// readAheadFor returns the read-ahead state of a ready subject.
func (q *Queue) readAheadFor(subject string) *readAhead {
	q.raMu.Lock()
	defer q.raMu.Unlock()
	ra := q.ra[subject]
	if ra == nil {
		ra = &readAhead{}
		q.ra[subject] = ra
	}
	return ra
}

func (ra *readAhead) enter() {
	ra.mu.Lock()
	ra.claiming++
	ra.mu.Unlock()
}

func (ra *readAhead) leave() {
	ra.mu.Lock()
	ra.claiming--
	ra.mu.Unlock()
}

// pop takes the oldest token fetched in advance (nil when there is none).
func (ra *readAhead) pop() *jetstream.Job {
	ra.mu.Lock()
	defer ra.mu.Unlock()
	if len(ra.stock) == 0 {
		return nil
	}
	j := ra.stock[0].job
	ra.stock[0] = stocked{}
	ra.stock = ra.stock[1:]
	return j
}

// refill fetches one more token of the subject in advance when other claims take from it at
// the same time and the stock (with the fetches under way) is below readAheadMax.
func (q *Queue) refill(ra *readAhead, cons *jetstream.Taker) {
	ra.mu.Lock()
	if ra.claiming < 2 || len(ra.stock)+ra.inflight >= readAheadMax {
		ra.mu.Unlock()
		return
	}
	ra.inflight++
	ra.mu.Unlock()
	started := q.background(func(ctx context.Context) {
		fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		job, err := cons.Next(fctx, 0)
		cancel()
		ra.mu.Lock()
		ra.inflight--
		if err != nil || job == nil {
			ra.mu.Unlock()
			return
		}
		if ctx.Err() != nil {
			ra.mu.Unlock()
			_ = job.Retry(0) // closing: hand it back
			return
		}
		ra.stock = append(ra.stock, stocked{job: job, at: time.Now()})
		ra.mu.Unlock()
		q.watchStock()
	})
	if !started {
		ra.mu.Lock()
		ra.inflight--
		ra.mu.Unlock()
	}
}

// watchStock makes sure the stock keeper runs while any token is in stock.
func (q *Queue) watchStock() {
	q.raMu.Lock()
	if q.raKeeper {
		q.raMu.Unlock()
		return
	}
	q.raKeeper = q.background(q.stockKeeper)
	started := q.raKeeper
	q.raMu.Unlock()
	if !started {
		q.releaseStock(time.Time{}) // closed: hand everything back
	}
}

// stockKeeper hands back tokens that stayed in stock longer than readAheadHold, until the stocks
// are empty (or, when the queue closes, all of them).
func (q *Queue) stockKeeper(ctx context.Context) {
	t := time.NewTicker(readAheadHold / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			q.releaseStock(time.Time{})
			return
		case <-t.C:
		}
		q.raMu.Lock()
		if q.releaseStockLocked(time.Now().Add(-readAheadHold)) == 0 {
			q.raKeeper = false
			q.raMu.Unlock()
			return
		}
		q.raMu.Unlock()
	}
}

// releaseStock hands back the tokens fetched before cut (zero: all of them).
func (q *Queue) releaseStock(cut time.Time) {
	q.raMu.Lock()
	defer q.raMu.Unlock()
	q.releaseStockLocked(cut)
}

// releaseStockLocked is releaseStock with q.raMu held; it returns how many tokens stay in stock.
func (q *Queue) releaseStockLocked(cut time.Time) int {
	left := 0
	var back []*jetstream.Job
	for _, ra := range q.ra {
		ra.mu.Lock()
		n := 0
		for _, s := range ra.stock {
			if cut.IsZero() || s.at.Before(cut) {
				back = append(back, s.job)
			} else {
				ra.stock[n] = s
				n++
			}
		}
		clear(ra.stock[n:])
		ra.stock = ra.stock[:n]
		left += n
		ra.mu.Unlock()
	}
	for _, j := range back {
		_ = j.Retry(0)
	}
	return left
}
