package builder

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
)

// TestCacheDirSharing: shared users get the same instance together, a
// locked user waits for every other user, a private user gets an instance
// no one else holds; each instance is seeded once.
func TestCacheDirSharing(t *testing.T) {
	base := filepath.Join(t.TempDir(), cacheMountsDir)
	seeds := 0
	seed := func(_ context.Context, dir string) error {
		seeds++
		return os.WriteFile(filepath.Join(dir, "seed"), []byte("s"), 0o644)
	}
	get := func(ctx context.Context, sharing instructions.ShareMode) (*stepMounts, string, error) {
		sm := &stepMounts{}
		dir, err := sm.cacheDir(ctx, base, "id=k", sharing, seed)
		return sm, dir, err
	}
	short := func() context.Context {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		t.Cleanup(cancel)
		return ctx
	}
	ctx := context.Background()

	a, dirA, err := get(ctx, instructions.MountSharingShared)
	if err != nil {
		t.Fatal(err)
	}
	b, dirB, err := get(ctx, "")
	if err != nil || dirB != dirA {
		t.Fatalf("second shared user: %q, %v; want %q", dirB, err, dirA)
	}
	if _, _, err := get(short(), instructions.MountSharingLocked); err == nil || !strings.Contains(err.Error(), "deadline") {
		t.Errorf("locked user while shared ones hold the cache: %v, want a wait cut by the deadline", err)
	}
	p, dirP, err := get(ctx, instructions.MountSharingPrivate)
	if err != nil || dirP == dirA || filepath.Base(dirP) != "1" {
		t.Errorf("private user while shared ones hold the cache: %q, %v; want a new instance 1", dirP, err)
	}
	a.release()
	b.release()
	l, dirL, err := get(short(), instructions.MountSharingLocked)
	if err != nil || dirL != dirA {
		t.Fatalf("locked user once the cache is free: %q, %v", dirL, err)
	}
	if _, _, err := get(short(), instructions.MountSharingShared); err == nil {
		t.Error("shared user got the cache while a locked one holds it")
	}
	p2, dirP2, err := get(ctx, instructions.MountSharingPrivate)
	if err != nil || filepath.Base(dirP2) != "2" {
		t.Errorf("private user while instances 0 and 1 are held: %q, %v; want instance 2", dirP2, err)
	}
	for _, sm := range []*stepMounts{l, p, p2} {
		sm.release()
	}
	if _, dir, err := get(ctx, instructions.MountSharingPrivate); err != nil || dir != dirA {
		t.Errorf("private user of a free cache: %q, %v; want instance 0", dir, err)
	}
	if seeds != 3 {
		t.Errorf("seeded %d instances, want 3", seeds)
	}
	if b, err := os.ReadFile(filepath.Join(filepath.Dir(dirA), "key")); err != nil || string(b) != "id=k\n" {
		t.Errorf("key file %q, %v", b, err)
	}
	if fi, err := os.Stat(base); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("%s: %v, %v; want mode 0700", base, fi, err)
	}
}

// TestCacheDirSeedFailure: a failed seed leaves no instance behind, and
// the next user seeds again.
func TestCacheDirSeedFailure(t *testing.T) {
	base := filepath.Join(t.TempDir(), cacheMountsDir)
	sm := &stepMounts{}
	_, err := sm.cacheDir(context.Background(), base, "id=k", "", func(_ context.Context, dir string) error {
		os.WriteFile(filepath.Join(dir, "partial"), nil, 0o644)
		return os.ErrPermission
	})
	if err == nil {
		t.Fatal("no error from a failed seed")
	}
	sm.release()
	dir, err := sm.cacheDir(context.Background(), base, "id=k", "", func(context.Context, string) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	defer sm.release()
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("instance holds %v after a failed seed", ents)
	}
	ents, _ := os.ReadDir(filepath.Dir(dir))
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".new-") {
			t.Errorf("leftover %s", e.Name())
		}
	}
}
