package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/jetstream/jstest"
)

// TestMain lets a test run this binary as jetbridge itself: with JETBRIDGE_TEST_MAIN=1 the test
// binary behaves as `jetbridge` with the arguments after "--".
func TestMain(m *testing.M) {
	if os.Getenv("JETBRIDGE_TEST_MAIN") == "1" {
		for i, a := range os.Args {
			if a == "--" {
				os.Args = append([]string{"jetbridge"}, os.Args[i+1:]...)
				break
			}
		}
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func jetbridgeCmd(t *testing.T, args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], append([]string{"-test.run=^$", "--"}, args...)...)
	cmd.Env = append(os.Environ(), "JETBRIDGE_TEST_MAIN=1")
	return cmd
}

func TestServePrintsListenersBecomesReadyAndExitsZeroOnSIGTERM(t *testing.T) {
	data := t.TempDir()
	args := []string{"--data", data, "--nats-listen", "127.0.0.1:0", "--nats-monitor-listen", "127.0.0.1:0",
		"--admin-listen", "127.0.0.1:0", "--drain-timeout", "3s"}
	for _, f := range []string{"tracker-listen", "gilmour-listen", "sink-listen", "zerotask-listen", "zerotask-pub-listen",
		"eventmq-frontend", "eventmq-backend", "eventmq-admin", "eventmq-pub-in", "eventmq-pub-out"} {
		args = append(args, "--"+f, "127.0.0.1:0")
	}
	run := func() (map[string]string, *exec.Cmd) {
		cmd := jetbridgeCmd(t, args...)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill() })
		addrs := map[string]string{}
		sc := bufio.NewScanner(out)
		lines := make(chan string)
		go func() {
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		timeout := time.After(60 * time.Second)
	read:
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatal("jetbridge exited before it was ready")
				}
				f := strings.Fields(l)
				if len(f) >= 4 && f[2] == "listening" {
					addrs[f[1]] = f[4]
				}
				if strings.Contains(l, " ready ") {
					break read
				}
			case <-timeout:
				t.Fatal("no ready line within 60s")
			}
		}
		go func() {
			for range lines {
			}
		}()
		return addrs, cmd
	}
	addrs, cmd := run()
	for _, name := range []string{"tracker", "gilmour", "sink", "zerotask", "zerotask-pub", "eventmq-frontend", "eventmq-backend",
		"eventmq-admin", "eventmq-pub-in", "eventmq-pub-out", "admin", "nats", "nats-monitor"} {
		if a := addrs[name]; a == "" || strings.HasSuffix(a, ":0") {
			t.Fatalf("listener %s printed %q (all: %v)", name, a, addrs)
		}
	}
	jstest.Eventually(t, 30*time.Second, func() error {
		resp, err := http.Get("http://" + addrs["admin"] + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("readyz %d", resp.StatusCode)
		}
		return nil
	})
	// A plain NATS client sees the provisioned streams.
	nc := jstest.ConnectURL(t, "nats://"+addrs["nats"], "", 1)
	streams, err := nc.ListStreams(context.Background())
	if err != nil || len(streams) == 0 {
		t.Fatalf("streams %v %v", streams, err)
	}
	nc.Close()
	// The CLI talks to the admin API.
	status := jetbridgeCmd(t, "status", "--admin-url", "http://"+addrs["admin"])
	out, err := status.Output()
	if err != nil || !strings.Contains(string(out), `"ready": true`) {
		t.Fatalf("status: %s %v", out, err)
	}
	start := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second+5*time.Second {
		t.Fatalf("shutdown took %v, longer than the drain timeout allows", d)
	}
	// Restart on the same data keeps the streams.
	addrs, cmd = run()
	nc = jstest.ConnectURL(t, "nats://"+addrs["nats"], "", 1)
	again, err := nc.ListStreams(context.Background())
	if err != nil || len(again) != len(streams) {
		t.Fatalf("after restart streams %v, before %v (%v)", again, streams, err)
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
}

func TestUsageErrorsExitNonZero(t *testing.T) {
	out, err := jetbridgeCmd(t, "--durability", "maybe", "--data", t.TempDir(), "--nats-listen", "off", "--admin-listen", "off").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "durability") {
		t.Fatalf("want a durability error, got %v: %s", err, out)
	}
}

func TestAdminTokenFromEnvironment(t *testing.T) {
	args := []string{"--data", t.TempDir(), "--nats-listen", "off", "--nats-monitor-listen", "off", "--admin-listen", "0.0.0.0:0"}
	for _, f := range []string{"tracker-listen", "gilmour-listen", "sink-listen", "zerotask-listen", "zerotask-pub-listen",
		"eventmq-frontend", "eventmq-backend", "eventmq-admin", "eventmq-pub-in", "eventmq-pub-out"} {
		args = append(args, "--"+f, "off")
	}
	cmd := jetbridgeCmd(t, args...)
	cmd.Env = append(cmd.Env, "JETBRIDGE_ADMIN_TOKEN=from-env")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	sc := bufio.NewScanner(out)
	admin := ""
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 5 && f[1] == "admin" {
			admin = f[4]
		}
		if strings.Contains(sc.Text(), " ready ") {
			break
		}
	}
	if admin == "" {
		t.Fatal("no admin line: the token from JETBRIDGE_ADMIN_TOKEN was not used")
	}
	go func() {
		for sc.Scan() {
		}
	}()
	_, port, _ := strings.Cut(admin, "]:")
	if port == "" {
		_, port, _ = strings.Cut(admin, ":")
	}
	for token, want := range map[string]int{"": 401, "from-env": 200} {
		req, _ := http.NewRequest("GET", "http://127.0.0.1:"+port+"/api/v1/status", nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("token %q: %d, want %d", token, resp.StatusCode, want)
		}
	}
}
