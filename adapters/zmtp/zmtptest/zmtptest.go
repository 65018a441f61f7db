// Package zmtptest holds what the libzmq interop tests of every ZeroMQ protocol share: the Python
// with Debian's python3-zmq, and the rule that tests skip loudly without it, except in CI ($CI set)
// where they fail.
package zmtptest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"testing"
)

// Python is the interpreter whose zmq module is Debian's python3-zmq (libzmq underneath).
const Python = "/usr/bin/python3"

var (
	once     sync.Once
	pyzmqErr error
)

// RequirePyzmq skips the test (or fails it when $CI is set) if Python cannot import zmq with
// libzmq ≥ 4.2. what names the suite in the message ("EventMQ libzmq interop").
func RequirePyzmq(t testing.TB, what string) {
	t.Helper()
	once.Do(func() {
		out, err := exec.Command(Python, "-c", "import zmq; assert zmq.zmq_version_info() >= (4, 2)").CombinedOutput()
		if err != nil {
			pyzmqErr = fmt.Errorf("%s -c 'import zmq': %v: %s", Python, err, bytes.TrimSpace(out))
		}
	})
	if pyzmqErr != nil {
		msg := fmt.Sprintf("!!! %s NOT TESTED: %v (install Debian's python3-zmq) !!!", what, pyzmqErr)
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
}
