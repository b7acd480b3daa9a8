package run_test

import (
	"context"
	"testing"

	"github.com/imgbuild/imgbuild/builder/run"
	"github.com/imgbuild/imgbuild/registry/registrytest"
)

// BenchmarkRun measures the sandbox's per-step overhead: `true` in a
// busybox root (namespaces, mounts, pivot_root, stubs, cleanup).
func BenchmarkRun(b *testing.B) {
	registrytest.RequireRoot(b)
	ex, err := run.New(run.Options{StateDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	root := busyboxRootfs(b)
	spec := run.Spec{Rootfs: root, Args: []string{"/bin/true"}}
	b.ResetTimer()
	for b.Loop() {
		if err := ex.Run(context.Background(), spec); err != nil {
			b.Fatal(err)
		}
	}
}
