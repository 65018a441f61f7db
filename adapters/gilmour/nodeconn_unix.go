//go:build linux || darwin || freebsd || netbsd || openbsd

package gilmour

import (
	"net"
	"syscall"
)

// unusable reports a kept-alive connection the node has closed (or written to unasked) while it
// was idle, looking at the socket without reading from it: a request is then not sent on it.
func unusable(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	bad := false
	var b [1]byte
	err = rc.Read(func(fd uintptr) bool {
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		bad = err != syscall.EAGAIN && err != syscall.EWOULDBLOCK || n > 0
		return true
	})
	return bad || err != nil
}
