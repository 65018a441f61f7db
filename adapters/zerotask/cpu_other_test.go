//go:build !unix

package zerotask

import "time"

func processCPU() time.Duration { return 0 }
