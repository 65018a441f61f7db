package jetstream

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

var (
	// ErrNotFound means a key, message or asset does not exist.
	ErrNotFound = errors.New("not found")
	// ErrExists means Create found the key already there.
	ErrExists = errors.New("already exists")
	// ErrConflict means a CAS update lost against a concurrent writer.
	ErrConflict = errors.New("revision conflict")
)

// KV is a key-value bucket with compare-and-set helpers.
type KV struct {
	c    *Client
	name string
	kv   jetstream.KeyValue
}

// Entry is one value of a key with its revision (the CAS token).
type Entry struct {
	Key      string
	Value    []byte
	Revision uint64
	Created  time.Time
	// Deleted is set on watch updates for deleted or purged keys.
	Deleted bool
}

// KV binds to a provisioned bucket by logical name.
func (c *Client) KV(ctx context.Context, bucket string) (*KV, error) {
	c.kvMu.Lock()
	kv, ok := c.kvs[bucket]
	c.kvMu.Unlock()
	if ok {
		return &KV{c: c, name: bucket, kv: kv}, nil
	}
	kv, err := c.js.KeyValue(ctx, c.names.Asset(bucket))
	if err != nil {
		return nil, fmt.Errorf("kv %s: %w", bucket, err)
	}
	c.kvMu.Lock()
	c.kvs[bucket] = kv
	c.kvMu.Unlock()
	return &KV{c: c, name: bucket, kv: kv}, nil
}

func entry(e jetstream.KeyValueEntry) Entry {
	return Entry{Key: e.Key(), Value: e.Value(), Revision: e.Revision(), Created: e.Created(),
		Deleted: e.Operation() != jetstream.KeyValuePut}
}

// Get reads a key; ErrNotFound when it is absent or deleted.
func (k *KV) Get(ctx context.Context, key string) (Entry, error) {
	e, err := k.kv.Get(ctx, key)
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
			return Entry{}, fmt.Errorf("kv %s get %s: %w", k.name, key, ErrNotFound)
		}
		return Entry{}, fmt.Errorf("kv %s get %s: %w", k.name, key, err)
	}
	return entry(e), nil
}

// Create stores a key only if it is absent; ErrExists otherwise. ttl > 0 expires the key (the
// bucket needs LimitMarkerTTL).
func (k *KV) Create(ctx context.Context, key string, val []byte, ttl time.Duration) (uint64, error) {
	var opts []jetstream.KVCreateOpt
	if ttl > 0 {
		opts = append(opts, jetstream.KeyTTL(ttl))
	}
	rev, err := k.kv.Create(ctx, key, val, opts...)
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			return 0, fmt.Errorf("kv %s create %s: %w", k.name, key, ErrExists)
		}
		return 0, fmt.Errorf("kv %s create %s: %w", k.name, key, err)
	}
	return rev, nil
}

// Update replaces a key's value if its revision is still rev; ErrConflict otherwise.
func (k *KV) Update(ctx context.Context, key string, val []byte, rev uint64) (uint64, error) {
	nrev, err := k.kv.Update(ctx, key, val, rev)
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return 0, fmt.Errorf("kv %s update %s: %w", k.name, key, ErrConflict)
		}
		return 0, fmt.Errorf("kv %s update %s: %w", k.name, key, err)
	}
	return nrev, nil
}

// WriteLean stores val under key in one request: rev > 0 makes the write conditional on the
// key's revision still being rev; rev == 0 on the key having no stored value at all (a key whose
// last value was deleted still has its delete marker: use Create for such keys). ttl > 0 expires
// the value ttl from now (the bucket needs LimitMarkerTTL). ErrConflict when the condition fails.
func (k *KV) WriteLean(ctx context.Context, key string, val []byte, rev uint64, ttl time.Duration) (uint64, error) {
	ack, err := k.c.PublishExpect(ctx, "$KV."+k.c.names.Asset(k.name)+"."+key, val, rev, ttl)
	if err != nil {
		return 0, fmt.Errorf("kv %s write %s: %w", k.name, key, err)
	}
	return ack.Sequence, nil
}

// Put stores a value unconditionally.
func (k *KV) Put(ctx context.Context, key string, val []byte) (uint64, error) {
	rev, err := k.kv.Put(ctx, key, val)
	if err != nil {
		return 0, fmt.Errorf("kv %s put %s: %w", k.name, key, err)
	}
	return rev, nil
}

// Delete removes a key; with rev > 0 only if its revision is still rev (ErrConflict otherwise).
// A missing key is not an error.
func (k *KV) Delete(ctx context.Context, key string, rev uint64) error {
	var opts []jetstream.KVDeleteOpt
	if rev > 0 {
		opts = append(opts, jetstream.LastRevision(rev))
	}
	if err := k.kv.Delete(ctx, key, opts...); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return fmt.Errorf("kv %s delete %s: %w", k.name, key, ErrConflict)
		}
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return nil
		}
		return fmt.Errorf("kv %s delete %s: %w", k.name, key, err)
	}
	return nil
}

// Mutate applies fn to the key's current value (exists=false when absent) and stores the result
// with CAS, retrying on conflict until it wins or ctx ends. fn must be a pure function of its
// input: it may run several times. If fn returns ErrSkip nothing is written and the current entry
// is returned.
func (k *KV) Mutate(ctx context.Context, key string, fn func(cur []byte, exists bool) ([]byte, error)) (Entry, error) {
	for {
		cur, err := k.Get(ctx, key)
		exists := err == nil
		if err != nil && !errors.Is(err, ErrNotFound) {
			return Entry{}, err
		}
		next, err := fn(cur.Value, exists)
		if errors.Is(err, ErrSkip) {
			return cur, nil
		}
		if err != nil {
			return Entry{}, err
		}
		var rev uint64
		if exists {
			rev, err = k.Update(ctx, key, next, cur.Revision)
		} else {
			rev, err = k.Create(ctx, key, next, 0)
		}
		if err == nil {
			return Entry{Key: key, Value: next, Revision: rev}, nil
		}
		if !errors.Is(err, ErrConflict) && !errors.Is(err, ErrExists) {
			return Entry{}, err
		}
		if ctx.Err() != nil {
			return Entry{}, fmt.Errorf("kv %s mutate %s: %w", k.name, key, ctx.Err())
		}
	}
}

// ErrSkip, returned by a Mutate function, leaves the key as it is.
var ErrSkip = errors.New("skip")

// Keys lists the keys matching filter (NATS wildcards; "" for all).
func (k *KV) Keys(ctx context.Context, filter string) ([]string, error) {
	if filter == "" {
		filter = ">"
	}
	l, err := k.kv.ListKeysFiltered(ctx, filter)
	if err != nil {
		return nil, fmt.Errorf("kv %s keys: %w", k.name, err)
	}
	var keys []string
	for key := range l.Keys() {
		keys = append(keys, key)
	}
	return keys, nil
}

// Watch streams updates of keys matching pattern until ctx ends. With initial set, the current
// values come first; a zero Entry with empty Key marks the end of them.
func (k *KV) Watch(ctx context.Context, pattern string, initial bool) (<-chan Entry, error) {
	var opts []jetstream.WatchOpt
	if !initial {
		opts = append(opts, jetstream.UpdatesOnly())
	}
	w, err := k.kv.Watch(ctx, pattern, opts...)
	if err != nil {
		return nil, fmt.Errorf("kv %s watch %s: %w", k.name, pattern, err)
	}
	out := make(chan Entry, 64)
	go func() {
		defer close(out)
		defer func() { _ = w.Stop() }()
		for {
			select {
			case <-ctx.Done():
				return
			case e, ok := <-w.Updates():
				if !ok {
					return
				}
				var en Entry
				if e != nil {
					en = entry(e)
				}
				select {
				case out <- en:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out, nil
}
