package sink

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/jetbridge/jetbridge/jetstream"
)

// AddClientRequest is the body of POST /api/v1/sink/clients.
type AddClientRequest struct {
	ID      string `json:"id"`
	CertPEM string `json:"cert_pem"`
}

// QuarantineRequest is the body of POST /api/v1/sink/clients/{id}/quarantine.
type QuarantineRequest struct {
	Machine string `json:"machine"`
	Human   string `json:"human"`
}

// EventRequest is the body of POST /api/v1/sink/clients/{id}/events. Key and Data are standard
// base64; a missing offset is assigned (next for client, type and key), a missing timestamp is now.
type EventRequest struct {
	EventTypeID   *uint64 `json:"event_type_id"`
	SchemaVersion *uint64 `json:"schema_version"`
	Key           string  `json:"key"`
	Offset        *uint64 `json:"offset"`
	Timestamp     *uint64 `json:"timestamp"`
	Data          string  `json:"data"`
}

// EventResponse answers an accepted outbound event.
type EventResponse struct {
	Subject   string `json:"subject"`
	Seq       uint64 `json:"seq"`
	Offset    uint64 `json:"offset"`
	Duplicate bool   `json:"duplicate"`
}

// ClientInfo is one client in GET /api/v1/sink/clients.
type ClientInfo struct {
	ClientRecord
	Connected *Owner            `json:"connected"`
	Freshness map[string]uint64 `json:"freshness"`
	// OutboundWaiting counts events not yet sent to the device, OutboundInflight those held by a
	// pod (sent or queued behind their key) and not yet ACKed.
	OutboundWaiting  uint64 `json:"outbound_waiting"`
	OutboundInflight int    `json:"outbound_inflight"`
}

// ClientList is the answer of GET /api/v1/sink/clients.
type ClientList struct {
	ServerInstanceID uint32       `json:"server_instance_id"`
	Clients          []ClientInfo `json:"clients"`
}

func httpErr(code int, format string, args ...any) error {
	return echo.NewHTTPError(code, fmt.Sprintf(format, args...))
}

func (a *Adapter) registerAdmin(g *echo.Group) {
	if g == nil {
		return
	}
	g.POST("/sink/clients", a.apiAddClient)
	g.GET("/sink/clients", a.apiListClients)
	g.GET("/sink/clients/:id", a.apiGetClient)
	g.DELETE("/sink/clients/:id", a.apiDeleteClient)
	g.POST("/sink/clients/:id/quarantine", a.apiQuarantine)
	g.DELETE("/sink/clients/:id/quarantine", a.apiUnquarantine)
	g.DELETE("/sink/clients/:id/instance-id", a.apiResetInstance)
	g.POST("/sink/clients/:id/events", a.apiPublish)
	g.GET("/sink/policy", a.apiGetPolicy)
	g.PUT("/sink/policy", a.apiPutPolicy)
}

func reqCtx(c echo.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(c.Request().Context(), 15*time.Second)
}

func (a *Adapter) apiAddClient(c echo.Context) error {
	var req AddClientRequest
	if err := c.Bind(&req); err != nil {
		return httpErr(http.StatusBadRequest, "bad body: %v", err)
	}
	if !ValidClientID(req.ID) {
		return httpErr(http.StatusBadRequest, "id %q: 1 to 64 characters of A-Z a-z 0-9 _ -", req.ID)
	}
	fp, cn, err := FingerprintPEM([]byte(req.CertPEM))
	if err != nil {
		return httpErr(http.StatusBadRequest, "cert_pem: %v", err)
	}
	ctx, cancel := reqCtx(c)
	defer cancel()
	if other, err := a.reg.byFingerprint(ctx, fp); err == nil {
		return httpErr(http.StatusConflict, "certificate already registered as %s", other)
	}
	rec := ClientRecord{ID: req.ID, Fingerprint: fp, CN: cn}
	if err := a.reg.addClient(ctx, rec); err != nil {
		if errors.Is(err, jetstream.ErrExists) {
			return httpErr(http.StatusConflict, "client %s or its certificate already registered", req.ID)
		}
		return httpErr(http.StatusServiceUnavailable, "register: %v", err)
	}
	rec, _, _ = a.reg.client(ctx, req.ID)
	return c.JSON(http.StatusCreated, rec)
}

func (a *Adapter) clientInfo(ctx context.Context, rec ClientRecord) ClientInfo {
	ci := ClientInfo{ClientRecord: rec, Freshness: map[string]uint64{}}
	if o, ok := a.reg.owner(ctx, rec.ID); ok {
		ci.Connected = &o
	}
	if f, err := a.reg.freshness(ctx, rec.ID); err == nil {
		ci.Freshness = f
	}
	if cons, err := a.env.JS.Consumer(ctx, StreamOut, ConsumerName(rec.ID)); err == nil {
		ci.OutboundWaiting, ci.OutboundInflight, _ = cons.Pending(ctx)
	} else if counts, err := a.env.JS.SubjectCounts(ctx, StreamOut, a.env.JS.Subject("sink", "out", rec.ID)); err == nil {
		for _, n := range counts {
			ci.OutboundWaiting += n
		}
	}
	return ci
}

func (a *Adapter) apiListClients(c echo.Context) error {
	ctx, cancel := reqCtx(c)
	defer cancel()
	keys, err := a.reg.clients.Keys(ctx, "client.*")
	if err != nil && !strings.Contains(err.Error(), "no keys") {
		return httpErr(http.StatusServiceUnavailable, "list: %v", err)
	}
	sort.Strings(keys)
	out := ClientList{ServerInstanceID: a.serverID, Clients: []ClientInfo{}}
	for _, k := range keys {
		rec, _, err := a.reg.client(ctx, strings.TrimPrefix(k, "client."))
		if err != nil {
			continue
		}
		out.Clients = append(out.Clients, a.clientInfo(ctx, rec))
	}
	return c.JSON(http.StatusOK, out)
}

func (a *Adapter) apiGetClient(c echo.Context) error {
	ctx, cancel := reqCtx(c)
	defer cancel()
	rec, _, err := a.reg.client(ctx, c.Param("id"))
	if err != nil {
		return a.clientErr(err)
	}
	return c.JSON(http.StatusOK, a.clientInfo(ctx, rec))
}

func (a *Adapter) clientErr(err error) error {
	if errors.Is(err, errUnknownClient) {
		return httpErr(http.StatusNotFound, "%v", err)
	}
	return httpErr(http.StatusServiceUnavailable, "%v", err)
}

func (a *Adapter) apiDeleteClient(c echo.Context) error {
	ctx, cancel := reqCtx(c)
	defer cancel()
	id := c.Param("id")
	rec, _, err := a.reg.client(ctx, id)
	if err != nil {
		return a.clientErr(err)
	}
	if rec.Fingerprint != "" {
		if err := a.reg.clients.Delete(ctx, certKey(rec.Fingerprint), 0); err != nil {
			return httpErr(http.StatusServiceUnavailable, "%v", err)
		}
	}
	if err := a.reg.clients.Delete(ctx, clientKey(id), 0); err != nil {
		return httpErr(http.StatusServiceUnavailable, "%v", err)
	}
	a.kick(ctx, id, "deleted")
	return c.NoContent(http.StatusNoContent)
}

// kick closes the client's live connection wherever it is (a newer owner record makes the
// holding pod close it).
func (a *Adapter) kick(ctx context.Context, id, why string) {
	a.mu.Lock()
	local := a.byClient[id]
	a.mu.Unlock()
	if local != nil {
		local.closeGraceful(why)
	}
	b, _ := jsonMarshal(Owner{Pod: "admin", Conn: "admin-" + why, Since: time.Now().UTC()})
	rev, err := a.reg.state.Put(ctx, ownerKey(id), b)
	if err != nil {
		a.log.Warn("sink: kick", "client", id, "err", err)
		return
	}
	_ = a.reg.state.Delete(ctx, ownerKey(id), rev)
}

func (a *Adapter) apiQuarantine(c echo.Context) error {
	var req QuarantineRequest
	if err := c.Bind(&req); err != nil {
		return httpErr(http.StatusBadRequest, "bad body: %v", err)
	}
	if req.Machine == "" && req.Human == "" {
		return httpErr(http.StatusBadRequest, "machine or human message required")
	}
	if len(req.Machine)+len(req.Human) > 60000 {
		return httpErr(http.StatusBadRequest, "quarantine messages too long for a frame")
	}
	ctx, cancel := reqCtx(c)
	defer cancel()
	rec, err := a.reg.mutateClient(ctx, c.Param("id"), func(r *ClientRecord) error {
		r.Quarantine = &Quarantine{Machine: req.Machine, Human: req.Human, Since: time.Now().UTC()}
		return nil
	})
	if err != nil {
		return a.clientErr(err)
	}
	a.kick(ctx, rec.ID, "quarantined")
	return c.JSON(http.StatusOK, rec)
}

func (a *Adapter) apiUnquarantine(c echo.Context) error {
	ctx, cancel := reqCtx(c)
	defer cancel()
	rec, err := a.reg.mutateClient(ctx, c.Param("id"), func(r *ClientRecord) error {
		if r.Quarantine == nil {
			return jetstream.ErrSkip
		}
		r.Quarantine = nil
		return nil
	})
	if err != nil {
		return a.clientErr(err)
	}
	rec, _, _ = a.reg.client(ctx, c.Param("id"))
	return c.JSON(http.StatusOK, rec)
}

func (a *Adapter) apiResetInstance(c echo.Context) error {
	ctx, cancel := reqCtx(c)
	defer cancel()
	_, err := a.reg.mutateClient(ctx, c.Param("id"), func(r *ClientRecord) error {
		r.InstanceID = nil
		return nil
	})
	if err != nil {
		return a.clientErr(err)
	}
	rec, _, _ := a.reg.client(ctx, c.Param("id"))
	return c.JSON(http.StatusOK, rec)
}

func (a *Adapter) apiGetPolicy(c echo.Context) error {
	ctx, cancel := reqCtx(c)
	defer cancel()
	p, err := a.reg.policy(ctx)
	if err != nil {
		return httpErr(http.StatusServiceUnavailable, "%v", err)
	}
	return c.JSON(http.StatusOK, p)
}

func (a *Adapter) apiPutPolicy(c echo.Context) error {
	var p Policy
	if err := c.Bind(&p); err != nil {
		return httpErr(http.StatusBadRequest, "bad body: %v", err)
	}
	if p.MinApplicationVersion != "" {
		if _, _, ok := parseVersion(p.MinApplicationVersion); !ok {
			return httpErr(http.StatusBadRequest, "min_application_version %q is not a dotted numeric version", p.MinApplicationVersion)
		}
	}
	ctx, cancel := reqCtx(c)
	defer cancel()
	if err := a.reg.setPolicy(ctx, p); err != nil {
		return httpErr(http.StatusServiceUnavailable, "%v", err)
	}
	return c.JSON(http.StatusOK, p)
}

// OutboundMsgID is the de-duplication id (Nats-Msg-Id) of an outbound event: the admin API sets
// it, and a NATS client publishing to sink.out.<client> sets the same to have its retries (and
// re-posts through the API) stored once.
func OutboundMsgID(client string, typ uint64, key []byte, offset uint64) string {
	return "sinkout:" + client + ":" + strconv.FormatUint(typ, 10) + ":" + keyID(key) + ":" + strconv.FormatUint(offset, 10)
}

func (a *Adapter) apiPublish(c echo.Context) error {
	var req EventRequest
	if err := c.Bind(&req); err != nil {
		return httpErr(http.StatusBadRequest, "bad body: %v", err)
	}
	id := c.Param("id")
	if req.EventTypeID == nil {
		return httpErr(http.StatusBadRequest, "event_type_id required")
	}
	ev := Event{TypeID: *req.EventTypeID, SchemaVersion: 1, Timestamp: uint64(time.Now().Unix())}
	if req.SchemaVersion != nil {
		ev.SchemaVersion = *req.SchemaVersion
	}
	if req.Timestamp != nil {
		ev.Timestamp = *req.Timestamp
	}
	var err error
	if ev.Key, err = base64.StdEncoding.DecodeString(req.Key); err != nil {
		return httpErr(http.StatusBadRequest, "key: not base64: %v", err)
	}
	if ev.Data, err = base64.StdEncoding.DecodeString(req.Data); err != nil {
		return httpErr(http.StatusBadRequest, "data: not base64: %v", err)
	}
	if req.Offset != nil && *req.Offset == 0 {
		return httpErr(http.StatusBadRequest, "offset starts at 1")
	}
	ev.Offset = 1 << 62 // worst-case varint size for the frame check
	if _, err := AppendPublish(nil, 0, ev); err != nil {
		return httpErr(http.StatusRequestEntityTooLarge, "event does not fit a Sink frame: %v", err)
	}
	ctx, cancel := reqCtx(c)
	defer cancel()
	if _, _, err := a.reg.client(ctx, id); err != nil {
		return a.clientErr(err)
	}
	if req.Offset == nil {
		if ev.Offset, err = a.reg.nextOffset(ctx, id, ev.TypeID, ev.Key, 0); err != nil {
			return httpErr(http.StatusServiceUnavailable, "assign offset: %v", err)
		}
	} else {
		ev.Offset = *req.Offset
		if err := a.reg.raiseOffset(ctx, id, ev.TypeID, ev.Key, ev.Offset); err != nil {
			return httpErr(http.StatusServiceUnavailable, "offset counter: %v", err)
		}
	}
	subj := a.env.JS.Subject("sink", "out", id)
	h := jetstream.Header{}
	h.Set(HdrEventType, strconv.FormatUint(ev.TypeID, 10))
	h.Set(HdrSchemaVersion, strconv.FormatUint(ev.SchemaVersion, 10))
	h.Set(HdrKey, base64.StdEncoding.EncodeToString(ev.Key))
	h.Set(HdrOffset, strconv.FormatUint(ev.Offset, 10))
	h.Set(HdrTimestamp, strconv.FormatUint(ev.Timestamp, 10))
	msgID := OutboundMsgID(id, ev.TypeID, ev.Key, ev.Offset)
	ack, err := a.env.JS.Publish(ctx, subj, ev.Data, jetstream.PubOpts{MsgID: msgID, Header: h})
	if err != nil {
		return httpErr(http.StatusServiceUnavailable, "store: %v", err)
	}
	if ack.Duplicate && ack.Sequence > 0 {
		// A retry must repeat the event: the same offset with other data is refused (as inbound,
		// Decision 5). Once delivered (work queue: deleted) there is nothing left to compare with.
		stored, err := a.env.JS.GetMsg(ctx, StreamOut, ack.Sequence)
		switch {
		case err == nil && !bytes.Equal(stored.Data, ev.Data):
			return httpErr(http.StatusConflict, "data mismatch: offset %d of this key was posted with other data", ev.Offset)
		case err != nil && !errors.Is(err, jetstream.ErrNotFound):
			return httpErr(http.StatusServiceUnavailable, "duplicate check: %v", err)
		}
	}
	return c.JSON(http.StatusCreated, EventResponse{Subject: subj, Seq: ack.Sequence, Offset: ev.Offset, Duplicate: ack.Duplicate})
}
