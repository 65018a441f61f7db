package bridge_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/jetbridge/jetbridge/bridge"
	"github.com/jetbridge/jetbridge/jetstream"
	"github.com/jetbridge/jetbridge/jetstream/jstest"
	"github.com/jetbridge/jetbridge/schemas"
)

// echoAdapter is a tiny protocol for testing the pod: it echoes bytes and declares one stream.
type echoAdapter struct {
	ln     net.Listener
	wg     sync.WaitGroup
	prefix string
}

func (a *echoAdapter) Name() string { return "echo" }
func (a *echoAdapter) Listeners() []bridge.ListenerSpec {
	return []bridge.ListenerSpec{{Name: "echo", Flag: "echo-listen", Default: "127.0.0.1:0", Usage: "echo listener"}}
}
func (a *echoAdapter) Flags(fs *pflag.FlagSet) {
	fs.StringVar(&a.prefix, "echo-prefix", "", "reply prefix")
}
func (a *echoAdapter) Assets(n jetstream.Names) jetstream.Assets {
	return jetstream.Assets{
		Streams:   []jetstream.StreamSpec{{Name: "ECHO", Subjects: []string{n.Subject("echo", ">")}, Retention: jetstream.WorkQueue}},
		Consumers: []jetstream.ConsumerSpec{{Stream: "ECHO", Durable: "ECHO_WORKERS", MaxDeliver: 3}},
	}
}
func (a *echoAdapter) Start(_ context.Context, env *bridge.Env) error {
	a.ln = env.Listeners["echo"]
	if a.ln == nil {
		return nil
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		for {
			c, err := a.ln.Accept()
			if err != nil {
				return
			}
			_, _ = io.Copy(c, io.MultiReader(strings.NewReader(a.prefix), c))
			c.Close()
		}
	}()
	return nil
}
func (a *echoAdapter) Drain(context.Context) error { return nil }
func (a *echoAdapter) Stop() error {
	if a.ln != nil {
		a.ln.Close()
	}
	a.wg.Wait()
	return nil
}

func testConfig(t *testing.T, adapters []bridge.Adapter, args ...string) bridge.Config {
	t.Helper()
	var cfg bridge.Config
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	cfg.RegisterFlags(fs, adapters)
	base := []string{"--data", t.TempDir(), "--nats-listen", "127.0.0.1:0", "--nats-monitor-listen", "off",
		"--admin-listen", "127.0.0.1:0", "--drain-timeout", "2s"}
	if err := fs.Parse(append(base, args...)); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func startPod(t *testing.T, cfg bridge.Config, adapters ...bridge.Adapter) *bridge.Pod {
	t.Helper()
	p := bridge.NewPod(cfg, adapters, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := p.Start(ctx); err != nil {
		t.Fatalf("start pod: %v", err)
	}
	t.Cleanup(func() { _ = p.Shutdown(context.Background()) })
	return p
}

func get(t *testing.T, url, token string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, map[string]any{"error": err.Error()}
	}
	defer resp.Body.Close()
	var body map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, body
}

func waitReady(t *testing.T, p *bridge.Pod, want int) map[string]any {
	t.Helper()
	var body map[string]any
	jstest.Eventually(t, 30*time.Second, func() error {
		var code int
		code, body = get(t, "http://"+p.Addr("admin")+"/readyz", "")
		if code != want {
			return fmt.Errorf("readyz %d %v, want %d", code, body, want)
		}
		return nil
	})
	return body
}

func TestEmbeddedPodServesProvisionsAndKeepsDataAcrossRestart(t *testing.T) {
	adapter := &echoAdapter{}
	cfg := testConfig(t, []bridge.Adapter{adapter}, "--echo-prefix", "> ")
	p := startPod(t, cfg, adapter)
	waitReady(t, p, 200)
	if p.Addr("echo") == "" || strings.HasSuffix(p.Addr("echo"), ":0") || strings.HasSuffix(p.Addr("nats"), ":0") {
		t.Fatalf("listeners must report their real address: %+v", p.Listeners())
	}
	// The adapter got its listener and its flag.
	c, err := net.Dial("tcp", p.Addr("echo"))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = c.Write([]byte("hi"))
	buf := make([]byte, 4)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "> hi" {
		t.Fatalf("echo: %q %v", buf, err)
	}
	c.Close()
	// A plain NATS client sees the provisioned streams.
	nc := jstest.ConnectURL(t, "nats://"+p.Addr("nats"), "", 1)
	streams, err := nc.ListStreams(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ECHO", "DLQ", "ADVISORIES"} {
		if !contains(streams, want) {
			t.Fatalf("stream %s missing from %v", want, streams)
		}
	}
	if _, err := nc.Publish(context.Background(), "echo.kept", []byte("durable"), jetstream.PubOpts{}); err != nil {
		t.Fatal(err)
	}
	nc.Close()
	// Status lists listeners and assets.
	code, st := get(t, "http://"+p.Addr("admin")+"/api/v1/status", "")
	if code != 200 || st["nats"].(map[string]any)["mode"] != "embedded" || len(st["assets"].([]any)) < 4 {
		t.Fatalf("status %d %v", code, st)
	}
	if err := schemas.Validate("jetbridge/status.schema.json", st); err != nil {
		t.Fatal(err)
	}
	// Metrics are served with the jetbridge_ prefix.
	resp, err := http.Get("http://" + p.Addr("admin") + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	mb, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, m := range []string{"jetbridge_build_info", "jetbridge_nats_connected 1", "jetbridge_go_goroutines"} {
		if !strings.Contains(string(mb), m) && !strings.Contains(string(mb), strings.Replace(m, "jetbridge_go", "go", 1)) {
			t.Fatalf("metric %s missing", m)
		}
	}
	if err := p.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Restart on the same data folder: everything is still there.
	adapter2 := &echoAdapter{}
	cfg2 := testConfig(t, []bridge.Adapter{adapter2}, "--data", cfg.DataDir)
	p2 := startPod(t, cfg2, adapter2)
	waitReady(t, p2, 200)
	m, err := p2.Client().LastMsg(context.Background(), "ECHO", "echo.kept")
	if err != nil || string(m.Data) != "durable" {
		t.Fatalf("message lost across restart: %v %v", m, err)
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func TestTwoExternalPodsStartTogetherAndSurviveANATSOutage(t *testing.T) {
	dir := t.TempDir()
	srv := jstest.ServerIn(t, dir)
	addr := srv.ClientAddr()
	var pods [2]*bridge.Pod
	var wg sync.WaitGroup
	for i := range pods {
		a := &echoAdapter{}
		cfg := testConfig(t, []bridge.Adapter{a}, "--nats-url", "nats://"+addr, "--subject-prefix", "shared")
		pods[i] = bridge.NewPod(cfg, []bridge.Adapter{a}, nil)
		t.Cleanup(func() { _ = pods[i].Shutdown(context.Background()) })
	}
	errs := make([]error, 2)
	for i, p := range pods {
		wg.Add(1)
		go func(i int, p *bridge.Pod) {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			errs[i] = p.Start(ctx)
		}(i, p)
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("pod %d: %v", i, err)
		}
	}
	for _, p := range pods {
		waitReady(t, p, 200)
	}
	nc := jstest.ConnectURL(t, "nats://"+addr, "", 1)
	jstest.Eventually(t, 10*time.Second, func() error {
		streams, err := nc.ListStreams(context.Background())
		if err != nil {
			return err
		}
		if !contains(streams, "SHARED_ECHO") {
			return fmt.Errorf("prefixed stream missing: %v", streams)
		}
		return nil
	})
	srv.Shutdown()
	body := waitReady(t, pods[0], 503)
	if body["reason"] == "" || body["reason"] == nil {
		t.Fatalf("503 without a reason: %v", body)
	}
	jstest.ServerAt(t, dir, addr)
	for _, p := range pods {
		waitReady(t, p, 200)
	}
}

func TestPodWaitsForNATSAtStart(t *testing.T) {
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	a := &echoAdapter{}
	cfg := testConfig(t, []bridge.Adapter{a}, "--nats-url", "nats://"+addr)
	p := bridge.NewPod(cfg, []bridge.Adapter{a}, nil)
	t.Cleanup(func() { _ = p.Shutdown(context.Background()) })
	started := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		started <- p.Start(ctx)
	}()
	// NATS comes up later; the pod provisions and becomes ready without a restart.
	jstest.ServerAt(t, t.TempDir(), addr)
	select {
	case err := <-started:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("pod did not start after NATS came up")
	}
	waitReady(t, p, 200)
}

func TestListenerThatCannotBindStopsStartWithOneClearLine(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	a := &echoAdapter{}
	cfg := testConfig(t, []bridge.Adapter{a}, "--echo-listen", busy.Addr().String())
	p := bridge.NewPod(cfg, []bridge.Adapter{a}, nil)
	err = p.Start(context.Background())
	if err == nil {
		t.Fatal("start must fail on a busy port")
	}
	for _, want := range []string{"echo listener", busy.Addr().String(), "--echo-listen", "off"} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("error %q lacks %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "\n") {
		t.Fatalf("error must be one line: %q", err)
	}
	// The embedded NATS port too.
	cfg = testConfig(t, []bridge.Adapter{a}, "--nats-listen", busy.Addr().String())
	err = bridge.NewPod(cfg, []bridge.Adapter{a}, nil).Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), "--nats-listen") {
		t.Fatalf("want a nats-listen bind error, got %v", err)
	}
}

func TestListenerOffIsNotBound(t *testing.T) {
	a := &echoAdapter{}
	cfg := testConfig(t, []bridge.Adapter{a}, "--echo-listen", "off", "--nats-listen", "off")
	p := startPod(t, cfg, a)
	waitReady(t, p, 200)
	if p.Addr("echo") != "" || p.Addr("nats") != "" {
		t.Fatalf("off listeners bound: %+v", p.Listeners())
	}
}

func TestAdminTokenOffLoopback(t *testing.T) {
	a := &echoAdapter{}
	cfg := testConfig(t, []bridge.Adapter{a}, "--admin-listen", "0.0.0.0:0")
	err := bridge.NewPod(cfg, []bridge.Adapter{a}, nil).Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), "--admin-token") {
		t.Fatalf("want an admin-token error, got %v", err)
	}
	cfg = testConfig(t, []bridge.Adapter{a}, "--admin-listen", "0.0.0.0:0")
	cfg.AdminToken = "s3cret"
	p := startPod(t, cfg, a)
	_, port, _ := net.SplitHostPort(p.Addr("admin"))
	base := "http://127.0.0.1:" + port
	if code, _ := get(t, base+"/api/v1/status", ""); code != 401 {
		t.Fatalf("status without token: %d", code)
	}
	if code, _ := get(t, base+"/api/v1/status", "wrong"); code != 401 {
		t.Fatalf("status with a wrong token: %d", code)
	}
	if code, _ := get(t, base+"/api/v1/status", "s3cret"); code != 200 {
		t.Fatalf("status with the token: %d", code)
	}
	if code, _ := get(t, base+"/healthz", ""); code != 200 {
		t.Fatalf("healthz must stay open: %d", code)
	}
}

func TestConfigPrecedenceFlagEnvFile(t *testing.T) {
	a := &echoAdapter{}
	var cfg bridge.Config
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	cfg.RegisterFlags(fs, []bridge.Adapter{a})
	file := filepath.Join(t.TempDir(), "jetbridge.yaml")
	if err := os.WriteFile(file, []byte("replicas: 3\nsubject-prefix: fromfile\necho:\n  listen: 127.0.0.1:9\n  prefix: file\ndrain-timeout: 3s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("JETBRIDGE_SUBJECT_PREFIX", "fromenv")
	t.Setenv("JETBRIDGE_ECHO_PREFIX", "env")
	if err := fs.Parse([]string{"--echo-prefix", "flag"}); err != nil {
		t.Fatal(err)
	}
	if err := bridge.ApplyEnvAndFile(fs, file); err != nil {
		t.Fatal(err)
	}
	if cfg.Replicas != 3 || cfg.SubjectPrefix != "fromenv" || a.prefix != "flag" || *cfg.Listen["echo"] != "127.0.0.1:9" || cfg.DrainTimeout != 3*time.Second {
		t.Fatalf("precedence wrong: replicas=%d prefix=%q echo-prefix=%q echo-listen=%q drain=%v",
			cfg.Replicas, cfg.SubjectPrefix, a.prefix, *cfg.Listen["echo"], cfg.DrainTimeout)
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	_ = os.WriteFile(bad, []byte("no-such-flag: 1\n"), 0o600)
	if err := bridge.ApplyEnvAndFile(fs, bad); err == nil || !strings.Contains(err.Error(), "no-such-flag") {
		t.Fatalf("unknown key must be refused: %v", err)
	}
	t.Setenv("JETBRIDGE_REPLICAS", "many")
	fs2 := pflag.NewFlagSet("t", pflag.ContinueOnError)
	var cfg2 bridge.Config
	cfg2.RegisterFlags(fs2, nil)
	if err := bridge.ApplyEnvAndFile(fs2, ""); err == nil || !strings.Contains(err.Error(), "JETBRIDGE_REPLICAS") {
		t.Fatalf("bad env value must name the variable: %v", err)
	}
}

func TestDurabilityStrictSyncsEveryWrite(t *testing.T) {
	for _, mode := range []string{"fast", "strict"} {
		a := &echoAdapter{}
		p := startPod(t, testConfig(t, []bridge.Adapter{a}, "--durability", mode), a)
		jsc := p.Embedded().Server().JetStreamConfig()
		if jsc == nil || jsc.SyncAlways != (mode == "strict") {
			t.Fatalf("durability %s: SyncAlways=%v", mode, jsc != nil && jsc.SyncAlways)
		}
	}
	a := &echoAdapter{}
	err := bridge.NewPod(testConfig(t, []bridge.Adapter{a}, "--durability", "sometimes"), []bridge.Adapter{a}, nil).Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), "durability") {
		t.Fatalf("bad durability accepted: %v", err)
	}
}
