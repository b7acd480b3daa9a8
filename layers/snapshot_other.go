//go:build !linux

package layers

import (
	"context"
	"fmt"
	"runtime"
)

func newOverlaySnapshotter(context.Context, *Store, SnapshotOptions) (Snapshotter, error) {
	return nil, fmt.Errorf("overlay snapshotter: not supported on %s", runtime.GOOS)
}

func newCopySnapshotter(*Store, SnapshotOptions) (Snapshotter, error) {
	return nil, fmt.Errorf("copy snapshotter: not supported on %s", runtime.GOOS)
}

func unmount(string) error      { return nil }
func unmountBelow(string) error { return nil }
func syncTree(string) error     { return nil }
