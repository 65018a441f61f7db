//go:build !unix

package main

import "time"

// processCPU is not measured on this platform (CPU per op is then reported as 0).
func processCPU() time.Duration { return 0 }
