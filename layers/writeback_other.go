//go:build !linux

package layers

import "os"

func startWriteback(f *os.File, off, n int64) {}
