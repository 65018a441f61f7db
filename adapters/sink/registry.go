package sink

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jetbridge/jetbridge/jetstream"
)

// Logical asset names.
const (
	StreamIn      = "SINK_IN"      // device → cloud events, subjects sink.in.<client>.<event_type_id>
	StreamOut     = "SINK_OUT"     // cloud → device events, subjects sink.out.<client> (work queue)
	BucketClients = "SINK_CLIENTS" // registry: client.<id>, cert.<fingerprint>, server.instance_id, policy
	BucketState   = "SINK_STATE"   // conn.<id>, fresh.<id>.<type>, offset.<id>.<type>.<key>
)

// NATS headers carrying the Sink event fields (payload = event_data, raw bytes).
const (
	HdrClient        = "Sink-Client"
	HdrEventType     = "Sink-Event-Type"
	HdrSchemaVersion = "Sink-Schema-Version"
	HdrKey           = "Sink-Key" // standard base64 of the key bytes
	HdrOffset        = "Sink-Offset"
	HdrTimestamp     = "Sink-Timestamp"
	HdrNackMachine   = "Sink-Nack-Machine"
	HdrNackHuman     = "Sink-Nack-Human"
)

var clientIDRe = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// ValidClientID reports whether id can be a client id (it is used as a subject token, a KV key
// part and in a consumer name).
func ValidClientID(id string) bool { return clientIDRe.MatchString(id) }

// Quarantine is a client's quarantine entry (answered with code 13 at the handshake).
type Quarantine struct {
	Machine string    `json:"machine"`
	Human   string    `json:"human"`
	Since   time.Time `json:"since"`
}

// ClientRecord is a registered client (KV SINK_CLIENTS key client.<id>).
type ClientRecord struct {
	ID          string `json:"id"`
	Fingerprint string `json:"fingerprint,omitempty"`
	CN          string `json:"cn,omitempty"`
	// InstanceID is the client's instance id, learnt at its first successful handshake.
	InstanceID *uint32     `json:"client_instance_id,omitempty"`
	Quarantine *Quarantine `json:"quarantine,omitempty"`
	Created    time.Time   `json:"created"`
}

// Policy is the deployment-wide handshake policy (KV SINK_CLIENTS key policy).
type Policy struct {
	MinApplicationVersion string `json:"min_application_version"`
}

// Owner says which connection currently holds a client (KV SINK_STATE key conn.<id>).
type Owner struct {
	Pod    string    `json:"pod"`
	Conn   string    `json:"conn"`
	Remote string    `json:"remote,omitempty"`
	Since  time.Time `json:"since"`
}

// registry wraps the two KV buckets.
type registry struct {
	clients *jetstream.KV
	state   *jetstream.KV
}

var errUnknownClient = errors.New("unknown client")

func clientKey(id string) string { return "client." + id }
func certKey(fp string) string   { return "cert." + fp }
func ownerKey(id string) string  { return "conn." + id }
func freshKey(id string, typ uint64) string {
	return "fresh." + id + "." + strconv.FormatUint(typ, 10)
}

// keyID is a subject/KV-safe, injective form of an event key: hex, or a hash for long keys.
func keyID(key []byte) string { return string(appendKeyID(nil, key)) }

// appendKeyID appends keyID(key) to dst (the hot path builds its ids without intermediate strings).
func appendKeyID(dst, key []byte) []byte {
	if len(key) <= 32 {
		if len(key) == 0 {
			return append(dst, '_')
		}
		return hex.AppendEncode(dst, key)
	}
	s := sha256.Sum256(key)
	return hex.AppendEncode(append(dst, 'h'), s[:])
}

func offsetKey(id string, typ uint64, key []byte) string {
	return "offset." + id + "." + strconv.FormatUint(typ, 10) + "." + keyID(key)
}

func (r *registry) client(ctx context.Context, id string) (ClientRecord, uint64, error) {
	e, err := r.clients.Get(ctx, clientKey(id))
	if err != nil {
		if errors.Is(err, jetstream.ErrNotFound) {
			return ClientRecord{}, 0, fmt.Errorf("client %s: %w", id, errUnknownClient)
		}
		return ClientRecord{}, 0, err
	}
	var rec ClientRecord
	if err := json.Unmarshal(e.Value, &rec); err != nil {
		return ClientRecord{}, 0, fmt.Errorf("client %s record: %w", id, err)
	}
	return rec, e.Revision, nil
}

// byFingerprint resolves a certificate fingerprint to a client id.
func (r *registry) byFingerprint(ctx context.Context, fp string) (string, error) {
	e, err := r.clients.Get(ctx, certKey(fp))
	if err != nil {
		if errors.Is(err, jetstream.ErrNotFound) {
			return "", fmt.Errorf("certificate %s: %w", fp, errUnknownClient)
		}
		return "", err
	}
	var v struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(e.Value, &v); err != nil || v.ID == "" {
		return "", fmt.Errorf("certificate %s record: bad value", fp)
	}
	return v.ID, nil
}

// addClient registers a certificate fingerprint as client id.
func (r *registry) addClient(ctx context.Context, rec ClientRecord) error {
	rec.Created = time.Now().UTC()
	b, _ := json.Marshal(rec)
	if _, err := r.clients.Create(ctx, clientKey(rec.ID), b, 0); err != nil {
		return err
	}
	if rec.Fingerprint == "" {
		return nil
	}
	cb, _ := json.Marshal(map[string]string{"id": rec.ID})
	if _, err := r.clients.Create(ctx, certKey(rec.Fingerprint), cb, 0); err != nil {
		_ = r.clients.Delete(ctx, clientKey(rec.ID), 0)
		return err
	}
	return nil
}

// ensureCNClient creates the record of a client identified by its CN when it does not exist yet.
func (r *registry) ensureCNClient(ctx context.Context, id, cn string) error {
	_, err := r.clients.Mutate(ctx, clientKey(id), func(cur []byte, exists bool) ([]byte, error) {
		if exists {
			return nil, jetstream.ErrSkip
		}
		b, _ := json.Marshal(ClientRecord{ID: id, CN: cn, Created: time.Now().UTC()})
		return b, nil
	})
	return err
}

// mutateClient applies fn to an existing client record with CAS.
func (r *registry) mutateClient(ctx context.Context, id string, fn func(*ClientRecord) error) (ClientRecord, error) {
	var out ClientRecord
	_, err := r.clients.Mutate(ctx, clientKey(id), func(cur []byte, exists bool) ([]byte, error) {
		if !exists {
			return nil, fmt.Errorf("client %s: %w", id, errUnknownClient)
		}
		var rec ClientRecord
		if err := json.Unmarshal(cur, &rec); err != nil {
			return nil, fmt.Errorf("client %s record: %w", id, err)
		}
		if err := fn(&rec); err != nil {
			return nil, err
		}
		out = rec
		return json.Marshal(rec)
	})
	if errors.Is(err, jetstream.ErrSkip) {
		err = nil
	}
	return out, err
}

func (r *registry) policy(ctx context.Context) (Policy, error) {
	e, err := r.clients.Get(ctx, "policy")
	if err != nil {
		if errors.Is(err, jetstream.ErrNotFound) {
			return Policy{}, nil
		}
		return Policy{}, err
	}
	var p Policy
	if err := json.Unmarshal(e.Value, &p); err != nil {
		return Policy{}, fmt.Errorf("policy: %w", err)
	}
	return p, nil
}

func (r *registry) setPolicy(ctx context.Context, p Policy) error {
	b, _ := json.Marshal(p)
	_, err := r.clients.Put(ctx, "policy", b)
	return err
}

// serverInstanceID returns the deployment's server instance id, creating it once.
func (r *registry) serverInstanceID(ctx context.Context) (uint32, error) {
	for {
		e, err := r.clients.Get(ctx, "server.instance_id")
		if err == nil {
			v, perr := strconv.ParseUint(string(e.Value), 10, 32)
			if perr != nil {
				return 0, fmt.Errorf("server instance id %q: %w", e.Value, perr)
			}
			return uint32(v), nil
		}
		if !errors.Is(err, jetstream.ErrNotFound) {
			return 0, err
		}
		var b [4]byte
		if _, err := rand.Read(b[:]); err != nil {
			return 0, err
		}
		id := binary.BigEndian.Uint32(b[:])
		if id == 0 {
			id = 1
		}
		if _, err := r.clients.Create(ctx, "server.instance_id", []byte(strconv.FormatUint(uint64(id), 10)), 0); err != nil && !errors.Is(err, jetstream.ErrExists) {
			return 0, err
		}
	}
}

// owner reads the current connection owner of a client.
func (r *registry) owner(ctx context.Context, id string) (Owner, bool) {
	e, err := r.state.Get(ctx, ownerKey(id))
	if err != nil {
		return Owner{}, false
	}
	var o Owner
	if json.Unmarshal(e.Value, &o) != nil {
		return Owner{}, false
	}
	return o, true
}

// freshness returns the latest event timestamp per event type of a client.
func (r *registry) freshness(ctx context.Context, id string) (map[string]uint64, error) {
	keys, err := r.state.Keys(ctx, "fresh."+id+".*")
	if err != nil {
		return nil, err
	}
	out := map[string]uint64{}
	for _, k := range keys {
		e, err := r.state.Get(ctx, k)
		if err != nil {
			continue
		}
		v, err := strconv.ParseUint(string(e.Value), 10, 64)
		if err != nil {
			continue
		}
		out[k[strings.LastIndexByte(k, '.')+1:]] = v
	}
	return out, nil
}

// raiseFreshness stores ts for (client, type) unless a later one is stored.
func (r *registry) raiseFreshness(ctx context.Context, id string, typ, ts uint64) error {
	_, err := r.state.Mutate(ctx, freshKey(id, typ), func(cur []byte, exists bool) ([]byte, error) {
		if exists {
			if v, err := strconv.ParseUint(string(cur), 10, 64); err == nil && v >= ts {
				return nil, jetstream.ErrSkip
			}
		}
		return []byte(strconv.FormatUint(ts, 10)), nil
	})
	return err
}

type offsetCounter struct {
	Offset uint64 `json:"offset"`
	Seq    uint64 `json:"seq,omitempty"` // stream sequence the offset was assigned to at delivery
}

// nextOffset assigns the next offset of (client, type, key). With seq > 0 (assignment at delivery)
// a message that already got the last offset gets the same one again.
func (r *registry) nextOffset(ctx context.Context, id string, typ uint64, key []byte, seq uint64) (uint64, error) {
	var got uint64
	_, err := r.state.Mutate(ctx, offsetKey(id, typ, key), func(cur []byte, exists bool) ([]byte, error) {
		var c offsetCounter
		if exists {
			if err := json.Unmarshal(cur, &c); err != nil {
				return nil, fmt.Errorf("offset counter: %w", err)
			}
		}
		if seq > 0 && c.Seq == seq {
			got = c.Offset
			return nil, jetstream.ErrSkip
		}
		c.Offset++
		c.Seq = seq
		got = c.Offset
		return json.Marshal(c)
	})
	return got, err
}

// raiseOffset records an explicitly given offset so that later assigned ones follow it.
func (r *registry) raiseOffset(ctx context.Context, id string, typ uint64, key []byte, off uint64) error {
	_, err := r.state.Mutate(ctx, offsetKey(id, typ, key), func(cur []byte, exists bool) ([]byte, error) {
		var c offsetCounter
		if exists {
			if err := json.Unmarshal(cur, &c); err != nil {
				return nil, fmt.Errorf("offset counter: %w", err)
			}
		}
		if c.Offset >= off {
			return nil, jetstream.ErrSkip
		}
		c.Offset, c.Seq = off, 0
		return json.Marshal(c)
	})
	return err
}

// versionLess compares dotted application versions ("1.2.0", "1.10", "2.0.0-rc1"): numeric parts
// compare as numbers, a missing part counts as 0, and a pre-release suffix sorts before the
// release. ok is false when either version has a non-numeric part.
func versionLess(a, b string) (less, ok bool) {
	pa, prea, oka := parseVersion(a)
	pb, preb, okb := parseVersion(b)
	if !oka || !okb {
		return false, false
	}
	for i := 0; i < max(len(pa), len(pb)); i++ {
		var x, y uint64
		if i < len(pa) {
			x = pa[i]
		}
		if i < len(pb) {
			y = pb[i]
		}
		if x != y {
			return x < y, true
		}
	}
	switch {
	case prea != "" && preb == "":
		return true, true
	case prea == "" || preb == "":
		return false, true
	}
	return prea < preb, true
}

func parseVersion(v string) ([]uint64, string, bool) {
	v = strings.TrimPrefix(strings.TrimSpace(v), "v")
	if i := strings.IndexByte(v, '+'); i >= 0 {
		v = v[:i]
	}
	pre := ""
	if i := strings.IndexByte(v, '-'); i >= 0 {
		v, pre = v[:i], v[i+1:]
	}
	if v == "" {
		return nil, "", false
	}
	var parts []uint64
	for _, p := range strings.Split(v, ".") {
		n, err := strconv.ParseUint(p, 10, 64)
		if err != nil {
			return nil, "", false
		}
		parts = append(parts, n)
	}
	return parts, pre, true
}
