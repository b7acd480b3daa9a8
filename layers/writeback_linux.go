//go:build linux

package layers

import (
	"os"

	"golang.org/x/sys/unix"
)

// startWriteback asks the kernel to start writing [off, off+n) of f to disk
// without waiting, so that the fsync that commits a large blob finds most
// of it written already.
func startWriteback(f *os.File, off, n int64) {
	// Best effort: on failure the final fsync does all the work.
	_ = unix.SyncFileRange(int(f.Fd()), off, n, unix.SYNC_FILE_RANGE_WRITE)
}
