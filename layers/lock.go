package layers

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// Lease protects everything written to the store from now on (blobs,
// TempDir directories) against Prune until release is called: Prune waits
// for every lease to be released. A build holds one from its first blob to
// its last tag; WriteLayer and PutImage hold one while they run. Leases are
// shared flock(2) locks on Root()/gc.lock, so the kernel drops those of a
// process that dies. A goroutine holding a lease must not call Prune.
func (s *Store) Lease(ctx context.Context) (release func(), err error) {
	release, err = lockFile(ctx, filepath.Join(s.root, gcLock), unix.LOCK_SH)
	if err != nil {
		return nil, fmt.Errorf("taking store lease: %w", err)
	}
	return release, nil
}

// lockFile takes a flock(2) lock (how is LOCK_SH or LOCK_EX) on path,
// waiting until it is granted or ctx is done. Locks are per open file, so
// goroutines of one process exclude each other as processes do.
func lockFile(ctx context.Context, path string, how int) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	fd := int(f.Fd())
	delay := time.Millisecond
	for {
		err := unix.Flock(fd, how|unix.LOCK_NB)
		if err == nil {
			return func() {
				unix.Flock(fd, unix.LOCK_UN)
				f.Close()
			}, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return nil, fmt.Errorf("flock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("waiting for %s: %w", path, ctx.Err())
		case <-time.After(delay):
		}
		if delay < 50*time.Millisecond {
			delay *= 2
		}
	}
}
