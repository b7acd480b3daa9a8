//go:build !linux

package layers

import (
	"context"
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

func (t *TarWriter) writeEntry(ctx context.Context, rel string) (*unix.Stat_t, error) {
	return nil, fmt.Errorf("writing layer tars: not supported on %s", runtime.GOOS)
}
