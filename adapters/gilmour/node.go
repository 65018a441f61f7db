package gilmour

// node.go: the node registry in KV (records changed only with CAS) and the health-check lease.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/jetbridge/jetbridge/jetstream"
)

// errNodeNotFound answers 404 {"status":"node not found"}.
var errNodeNotFound = errors.New("node not found")

// nodeRecord is a registered node as stored under "node.<id>".
type nodeRecord struct {
	ID          string    `json:"id"`
	Host        string    `json:"host"`
	Port        int       `json:"port"`
	HealthCheck string    `json:"health_check"`
	Slots       []Sub     `json:"slots"`
	Services    []Sub     `json:"services"`
	Status      string    `json:"status"`
	Created     time.Time `json:"created"`
	Changed     time.Time `json:"changed"`
}

func (r nodeRecord) baseURL() string {
	return "http://" + net.JoinHostPort(r.Host, strconv.Itoa(r.Port))
}

func (r nodeRecord) detail() NodeDetail {
	d := NodeDetail{ID: r.ID, Host: r.Host, Port: r.Port, HealthCheck: r.HealthCheck, Slots: r.Slots,
		Services: r.Services, Status: r.Status}
	if d.Slots == nil {
		d.Slots = []Sub{}
	}
	if d.Services == nil {
		d.Services = []Sub{}
	}
	return d
}

// leaseRecord is "lease.<id>": which pod health-checks the node until when, and the last result.
type leaseRecord struct {
	Pod              string    `json:"pod"`
	Until            time.Time `json:"until"`
	LastCheck        time.Time `json:"last_check"`
	LastResult       string    `json:"last_result"`
	UnreachableSince time.Time `json:"unreachable_since,omitzero"`
}

type registry struct {
	kv *jetstream.KV
}

func nodeKey(id string) string  { return "node." + id }
func leaseKey(id string) string { return "lease." + id }

func (g registry) get(ctx context.Context, id string) (nodeRecord, error) {
	if !validID(id) {
		return nodeRecord{}, errNodeNotFound
	}
	e, err := g.kv.Get(ctx, nodeKey(id))
	if errors.Is(err, jetstream.ErrNotFound) {
		return nodeRecord{}, errNodeNotFound
	}
	if err != nil {
		return nodeRecord{}, err
	}
	var r nodeRecord
	if err := json.Unmarshal(e.Value, &r); err != nil {
		return nodeRecord{}, fmt.Errorf("node %s: bad record: %w", id, err)
	}
	return r, nil
}

func (g registry) create(ctx context.Context, r nodeRecord) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	_, err = g.kv.Create(ctx, nodeKey(r.ID), b, 0)
	return err
}

// mutate changes an existing node with CAS; fn may run several times. errNodeNotFound when the
// node does not exist (anymore).
func (g registry) mutate(ctx context.Context, id string, fn func(*nodeRecord) error) (nodeRecord, error) {
	if !validID(id) {
		return nodeRecord{}, errNodeNotFound
	}
	var out nodeRecord
	_, err := g.kv.Mutate(ctx, nodeKey(id), func(cur []byte, exists bool) ([]byte, error) {
		if !exists {
			return nil, errNodeNotFound
		}
		var r nodeRecord
		if err := json.Unmarshal(cur, &r); err != nil {
			return nil, fmt.Errorf("node %s: bad record: %w", id, err)
		}
		if err := fn(&r); err != nil {
			return nil, err
		}
		r.Changed = time.Now().UTC()
		out = r
		return json.Marshal(r)
	})
	if err != nil {
		return nodeRecord{}, err
	}
	return out, nil
}

func (g registry) remove(ctx context.Context, id string) error {
	if !validID(id) {
		return errNodeNotFound
	}
	if _, err := g.get(ctx, id); err != nil {
		return err
	}
	if err := g.kv.Delete(ctx, nodeKey(id), 0); err != nil {
		return err
	}
	return g.kv.Delete(ctx, leaseKey(id), 0)
}

func (g registry) list(ctx context.Context) ([]nodeRecord, error) {
	keys, err := g.kv.Keys(ctx, "node.>")
	if err != nil {
		return nil, err
	}
	var out []nodeRecord
	for _, k := range keys {
		r, err := g.get(ctx, strings.TrimPrefix(k, "node."))
		if errors.Is(err, errNodeNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

func (g registry) lease(ctx context.Context, id string) (leaseRecord, uint64, error) {
	e, err := g.kv.Get(ctx, leaseKey(id))
	if err != nil {
		return leaseRecord{}, 0, err
	}
	var l leaseRecord
	if err := json.Unmarshal(e.Value, &l); err != nil {
		return leaseRecord{}, e.Revision, nil // a broken lease is taken over
	}
	return l, e.Revision, nil
}

// claimLease makes pod the node's health checker until now+hold, if nobody else holds it.
// It returns the lease as stored and its revision; ok=false when another pod holds it.
func (g registry) claimLease(ctx context.Context, id, pod string, now time.Time, hold time.Duration) (leaseRecord, uint64, bool, error) {
	l, rev, err := g.lease(ctx, id)
	switch {
	case errors.Is(err, jetstream.ErrNotFound):
		l = leaseRecord{}
		rev = 0
	case err != nil:
		return l, 0, false, err
	case l.Pod != pod && now.Before(l.Until):
		return l, rev, false, nil
	}
	l.Pod, l.Until = pod, now.Add(hold)
	b, _ := json.Marshal(l)
	var nrev uint64
	if rev == 0 {
		nrev, err = g.kv.Create(ctx, leaseKey(id), b, 0)
	} else {
		nrev, err = g.kv.Update(ctx, leaseKey(id), b, rev)
	}
	if errors.Is(err, jetstream.ErrConflict) || errors.Is(err, jetstream.ErrExists) {
		return l, 0, false, nil
	}
	if err != nil {
		return l, 0, false, err
	}
	return l, nrev, true, nil
}

func (g registry) storeLease(ctx context.Context, id string, l leaseRecord, rev uint64) error {
	b, _ := json.Marshal(l)
	_, err := g.kv.Update(ctx, leaseKey(id), b, rev)
	return err
}

// addSubs adds subscriptions to a node record; one with the same topic, group and path is
// replaced.
func addSubs(list []Sub, add []Sub) []Sub {
	for _, s := range add {
		replaced := false
		for i, o := range list {
			if o.Topic == s.Topic && o.Group == s.Group && o.Path == s.Path {
				list[i] = s
				replaced = true
				break
			}
		}
		if !replaced {
			list = append(list, s)
		}
	}
	return list
}

// removeSubs drops the subscriptions on topic (and path, when given) and returns the rest and
// the removed ones.
func removeSubs(list []Sub, topic, path string) (kept, removed []Sub) {
	if path != "" {
		path, _ = normPath(path, "")
	}
	for _, s := range list {
		if s.Topic == topic && (path == "" || s.Path == path) {
			removed = append(removed, s)
			continue
		}
		kept = append(kept, s)
	}
	return kept, removed
}

func decodeRecord(b []byte) (nodeRecord, error) {
	var r nodeRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return r, err
	}
	return r, nil
}
