package tracker

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/argon2"

	"github.com/jetbridge/jetbridge/jetstream"
)

// Pipeline is a registered pipeline (KV TRACKER_PIPELINES, key = name).
type Pipeline struct {
	Name    string  `json:"name"`
	Hash    string  `json:"hash"`
	Created float64 `json:"created"`
	// Budget caps the pipeline's open claims (0 = no cap).
	Budget int `json:"budget"`
	// ClaimsPerMinute caps the pipeline's claim rate on each pod (0 = no cap).
	ClaimsPerMinute int `json:"claims_per_minute"`
}

// argon2id parameters (OWASP's minimum recommendation: 19 MiB, 2 passes). The memory cost is
// a flag (tests lower it); the parameters are stored in each hash.
const (
	argonTime    = 2
	argonThreads = 1
	argonKeyLen  = 32
)

func hashSecret(secret string, memoryKiB uint32) string {
	salt := make([]byte, 16)
	_, _ = rand.Read(salt)
	key := argon2.IDKey([]byte(secret), salt, argonTime, memoryKiB, argonThreads, argonKeyLen)
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, memoryKiB, argonTime, argonThreads,
		base64.RawStdEncoding.EncodeToString(salt), base64.RawStdEncoding.EncodeToString(key))
}

func verifySecret(encoded, secret string) bool {
	parts := strings.Split(encoded, "$")
	if len(parts) != 6 || parts[1] != "argon2id" {
		return false
	}
	var m, t uint32
	var p uint8
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &m, &t, &p); err != nil || m < 8 || t == 0 || p == 0 || m > 1<<20 || t > 16 {
		return false
	}
	salt, err1 := base64.RawStdEncoding.DecodeString(parts[4])
	key, err2 := base64.RawStdEncoding.DecodeString(parts[5])
	if err1 != nil || err2 != nil || len(key) == 0 || len(key) > 128 {
		return false
	}
	got := argon2.IDKey([]byte(secret), salt, t, m, p, uint32(len(key)))
	return subtle.ConstantTimeCompare(got, key) == 1
}

func newSecret() string {
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// authenticator checks Basic credentials against the pipelines bucket; verified secrets are
// remembered (as a SHA-256 of name and secret, never the secret) for a short time so that
// argon2 stays off the hot path.
type authenticator struct {
	kv  *jetstream.KV
	ttl time.Duration

	mu    sync.Mutex
	cache map[[32]byte]cachedAuth
}

type cachedAuth struct {
	p  Pipeline
	at time.Time
}

func newAuthenticator(kv *jetstream.KV, ttl time.Duration) *authenticator {
	return &authenticator{kv: kv, ttl: ttl, cache: map[[32]byte]cachedAuth{}}
}

var errBadCredentials = errors.New("bad credentials")

func (a *authenticator) check(ctx context.Context, name, secret string) (Pipeline, error) {
	k := sha256.Sum256([]byte(name + "\x00" + secret))
	a.mu.Lock()
	c, ok := a.cache[k]
	a.mu.Unlock()
	if ok && time.Since(c.at) < a.ttl {
		return c.p, nil
	}
	if !reName.MatchString(name) {
		return Pipeline{}, errBadCredentials
	}
	e, err := a.kv.Get(ctx, name)
	if err != nil {
		if errors.Is(err, jetstream.ErrNotFound) {
			return Pipeline{}, errBadCredentials
		}
		return Pipeline{}, err
	}
	var p Pipeline
	if err := json.Unmarshal(e.Value, &p); err != nil {
		return Pipeline{}, fmt.Errorf("pipeline %s: %w", name, err)
	}
	if !verifySecret(p.Hash, secret) {
		return Pipeline{}, errBadCredentials
	}
	a.mu.Lock()
	if len(a.cache) > 10000 {
		clear(a.cache)
	}
	a.cache[k] = cachedAuth{p: p, at: time.Now()}
	a.mu.Unlock()
	return p, nil
}

// forget drops cached credentials of a pipeline (after delete or change).
func (a *authenticator) forget(name string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for k, c := range a.cache {
		if c.p.Name == name {
			delete(a.cache, k)
		}
	}
}

// rateLimiter is a per-pipeline token bucket (claims per minute, per pod).
type rateLimiter struct {
	mu sync.Mutex
	b  map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func (r *rateLimiter) allow(name string, perMinute int, now time.Time) bool {
	if perMinute <= 0 {
		return true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.b == nil {
		r.b = map[string]*bucket{}
	}
	b, ok := r.b[name]
	capacity := float64(perMinute)
	if !ok {
		b = &bucket{tokens: capacity, last: now}
		r.b[name] = b
	}
	b.tokens = min(capacity, b.tokens+now.Sub(b.last).Minutes()*capacity)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
