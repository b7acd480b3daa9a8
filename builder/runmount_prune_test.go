package builder_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/imgbuild/imgbuild/builder"
)

// TestPruneCacheMounts: prune --all removes the RUN cache directories no
// step uses, and keeps one whose lock a running step holds.
func TestPruneCacheMounts(t *testing.T) {
	st := rtStore(t)
	ctx := context.Background()
	for _, id := range []string{"a", "b"} {
		df := "FROM busybox\nRUN --mount=type=cache,id=" + id + ",target=/c echo data > /c/f\n"
		btBuild(t, builder.Options{ContextDir: btContext(t, map[string]string{"Dockerfile": df}), Store: st})
	}
	dir := builder.CacheMountsDir(st)
	ents, err := os.ReadDir(dir)
	if err != nil || len(ents) != 2 {
		t.Fatalf("cache mounts %v, %v; want 2", ents, err)
	}
	// A step holding cache "a" (any of its instance locks).
	locks, _ := filepath.Glob(filepath.Join(dir, ents[0].Name(), "[0-9]*.lock"))
	if len(locks) == 0 {
		t.Fatalf("no instance lock in %s", ents[0].Name())
	}
	f, err := os.OpenFile(locks[0], os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH); err != nil {
		t.Fatal(err)
	}
	n, freed, err := builder.PruneCacheMounts(ctx, st)
	if err != nil || n != 1 || freed < 5 { // the data, and the key file
		t.Fatalf("PruneCacheMounts = %d, %d, %v; want 1 cache of at least 5 bytes", n, freed, err)
	}
	if _, err := os.Stat(filepath.Join(dir, ents[0].Name())); err != nil {
		t.Errorf("the cache in use was removed: %v", err)
	}
	f.Close()
	if n, _, err := builder.PruneCacheMounts(ctx, st); err != nil || n != 1 {
		t.Errorf("second prune: %d, %v; want 1", n, err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("left: %v", ents)
	}
}
