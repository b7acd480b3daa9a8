package layers

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// TestLockedTempDirCleanedAfterOwnerDies: a LockedTempDir in use survives
// the cleaning of a new snapshotter; once its lock is gone (its process
// died) the next one removes it.
func TestLockedTempDirCleanedAfterOwnerDies(t *testing.T) {
	ctx := context.Background()
	st, err := OpenStore(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	dir, release, err := st.LockedTempDir(ctx, "build-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := st.cleanTemp(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("a directory in use was removed: %v", err)
	}
	// A dead owner: its lock file is there but nobody holds it.
	dead, err := st.TempDir(ctx, "build-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dead, ownerLock), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := NewSnapshotter(ctx, st, SnapshotterCopy, SnapshotOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dead); !os.IsNotExist(err) {
		t.Errorf("a dead owner's directory survived: %v", err)
	}
	if err := release(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("release left %s: %v", dir, err)
	}
}
