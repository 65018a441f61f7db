package gilmour

// health.go: node health checks. Each node has a lease key in KV; the pod holding it (renewed
// with CAS at every check, taken over when it lapses for 3 intervals) is the only one checking
// that node. ok → unavailable → ok follows the ping; a port that cannot be reached for
// --gilmour-dirty-after makes the node dirty (its activity stops until it is deleted).

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/jetbridge/jetbridge/jetstream"
)

func (a *Adapter) healthLoop() {
	t := time.NewTicker(a.cfg.HealthInterval)
	defer t.Stop()
	for {
		select {
		case <-a.ctx.Done():
			return
		case <-t.C:
		}
		a.reconcile() // retries subscriptions that failed; cheap when nothing changed
		a.checkAll()
		a.node.pool.sweep() // connections to nodes that went quiet or away
	}
}

// checkAll checks (concurrently, at most 32 at a time) every node whose lease this pod holds or
// can take.
func (a *Adapter) checkAll() {
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	for _, n := range a.snapshot() {
		if n.Status == StatusDirty {
			continue
		}
		select {
		case sem <- struct{}{}:
		case <-a.ctx.Done():
			wg.Wait()
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := a.checkNode(n.ID); err != nil && a.ctx.Err() == nil {
				a.log.Warn("gilmour: health check", "node", n.ID, "err", err)
			}
		}()
	}
	wg.Wait()
}

func (a *Adapter) checkNode(id string) error {
	ctx, cancel := context.WithTimeout(a.ctx, 10*time.Second+a.cfg.HealthInterval)
	defer cancel()
	rec, err := a.reg.get(ctx, id)
	if errors.Is(err, errNodeNotFound) {
		return nil
	}
	if err != nil || rec.Status == StatusDirty {
		return err
	}
	now := time.Now()
	probe := min(max(a.cfg.HealthInterval, time.Second), 5*time.Second)
	// held for 3 intervals plus one probe, so that a slow probe never overlaps another pod's
	lease, rev, mine, err := a.reg.claimLease(ctx, id, a.env.PodID, now, 3*a.cfg.HealthInterval+probe)
	if err != nil || !mine {
		return err
	}
	if _, err := a.reg.get(ctx, id); errors.Is(err, errNodeNotFound) {
		return a.reg.kv.Delete(ctx, leaseKey(id), 0) // deleted meanwhile: no lease left behind
	}
	pctx, pcancel := context.WithTimeout(ctx, probe)
	result, perr := a.node.ping(pctx, rec)
	pcancel()
	if a.ctx.Err() != nil {
		return nil
	}
	now = time.Now()
	lease.LastCheck, lease.LastResult = now.UTC(), result
	if perr != nil {
		lease.LastResult = result + ": " + perr.Error()
	}
	status := StatusOK
	switch result {
	case healthOK:
		lease.UnreachableSince = time.Time{}
	case healthFailed:
		lease.UnreachableSince = time.Time{}
		status = StatusUnavailable
	case healthUnreachable:
		if lease.UnreachableSince.IsZero() {
			lease.UnreachableSince = now.UTC()
		}
		status = StatusUnavailable
		if now.Sub(lease.UnreachableSince) >= a.cfg.DirtyAfter {
			status = StatusDirty
		}
	}
	if err := a.reg.storeLease(ctx, id, lease, rev); err != nil && !errors.Is(err, jetstream.ErrConflict) {
		return err
	}
	if status == rec.Status {
		return nil
	}
	changed := false
	_, err = a.reg.mutate(ctx, id, func(r *nodeRecord) error {
		changed = false
		if r.Status == status || r.Status == StatusDirty {
			return jetstream.ErrSkip
		}
		r.Status = status
		changed = true
		return nil
	})
	if errors.Is(err, errNodeNotFound) {
		return a.reg.kv.Delete(ctx, leaseKey(id), 0)
	}
	if err == nil && changed {
		a.log.Info("gilmour: node status", "node", id, "status", status)
	}
	return err
}
