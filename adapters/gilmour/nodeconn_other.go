//go:build !(linux || darwin || freebsd || netbsd || openbsd)

package gilmour

import "net"

// unusable cannot look at the socket here; a connection closed while idle fails its request.
func unusable(net.Conn) bool { return false }
