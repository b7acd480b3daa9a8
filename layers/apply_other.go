//go:build !linux

package layers

import (
	"context"
	"fmt"
	"io"
	"runtime"
)

func applyTar(ctx context.Context, root string, r io.Reader, opts ApplyOptions) error {
	return fmt.Errorf("applying a layer: not supported on %s", runtime.GOOS)
}
