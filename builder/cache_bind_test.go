package builder_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imgbuild/imgbuild/builder"
)

// TestCacheBindMount: a RUN that bind-mounts the build context is keyed by
// the content of the mounted source (as BuildKit's content checksum of
// the mounted path): unchanged, or changed only outside the source, below
// .dockerignore or in mtimes, it hits; a change below the source misses.
// The steps run one after another on the same store, each change on top of
// the previous ones.
func TestCacheBindMount(t *testing.T) {
	const (
		runSrc  = "RUN --mount=type=bind,source=src,target=/m cat /m/a /m/sub/b > /out && readlink /m/l >> /out"
		runRoot = "RUN --mount=type=bind,target=/ctx,rw cat /ctx/other > /o2 && echo x > /ctx/written"
	)
	f := newCacheFixture(t, map[string]string{
		"Dockerfile":    "FROM busybox\n" + runSrc + "\n" + runRoot + "\n",
		".dockerignore": "src/ignored\n",
		"src/a":         "a", "src/sub/b": "b", "src/ignored": "i", "other": "o",
	})
	at := func(p string) string { return filepath.Join(f.dir, filepath.FromSlash(p)) }
	write := func(p, s string) func() error { return func() error { return os.WriteFile(at(p), []byte(s), 0o644) } }
	if err := os.Symlink("target-1", at("src/l")); err != nil {
		t.Fatal(err)
	}
	res, runs, _ := f.build(nil)
	if runs != 2 {
		t.Fatalf("first build ran %d RUNs, want 2", runs)
	}
	checkOut(t, res, "ab", "target-1", "o")
	cases := []struct {
		name     string
		change   func() error
		hitSrc   bool // the RUN mounting src/ is CACHED
		hitRoot  bool // the RUN mounting the whole context is CACHED
		out, tgt string
		o2       string
	}{
		{name: "unchanged", change: func() error { return nil }, hitSrc: true, hitRoot: true, out: "ab", tgt: "target-1", o2: "o"},
		{name: "file outside the source", change: write("other", "o2"), hitSrc: true, out: "ab", tgt: "target-1", o2: "o2"},
		{name: "dockerignored file below the source", change: write("src/ignored", "changed"), hitSrc: true, hitRoot: true, out: "ab", tgt: "target-1", o2: "o2"},
		{name: "mtime only", change: func() error {
			future := time.Now().Add(time.Hour)
			return os.Chtimes(at("src/a"), future, future)
		}, hitSrc: true, hitRoot: true, out: "ab", tgt: "target-1", o2: "o2"},
		{name: "file below the source", change: write("src/sub/b", "B"), out: "aB", tgt: "target-1", o2: "o2"},
		{name: "mode below the source", change: func() error { return os.Chmod(at("src/a"), 0o600) }, out: "aB", tgt: "target-1", o2: "o2"},
		{name: "symlink target below the source", change: func() error {
			if err := os.Remove(at("src/l")); err != nil {
				return err
			}
			return os.Symlink("target-2", at("src/l"))
		}, out: "aB", tgt: "target-2", o2: "o2"},
		{name: "new file below the source", change: write("src/sub/new", "n"), out: "aB", tgt: "target-2", o2: "o2"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.change(); err != nil {
				t.Fatal(err)
			}
			res, runs, cached := f.build(nil)
			if cached[runSrc] != tc.hitSrc || cached[runRoot] != tc.hitRoot {
				t.Errorf("CACHED: src mount %v (want %v), root mount %v (want %v)", cached[runSrc], tc.hitSrc, cached[runRoot], tc.hitRoot)
			}
			want := int64(0)
			for _, hit := range []bool{tc.hitSrc, tc.hitSrc && tc.hitRoot} {
				if !hit {
					want++
				}
			}
			if runs != want {
				t.Errorf("ran %d RUNs, want %d", runs, want)
			}
			checkOut(t, res, tc.out, tc.tgt, tc.o2)
		})
	}
	t.Run("rw writes are not in the image", func(t *testing.T) {
		res, _, _ := f.build(nil)
		if _, ok := btFlatten(t, res.Image)["ctx/written"]; ok {
			t.Error("a write to the rw context mount reached the image")
		}
	})
	t.Run("missing source fails the build", func(t *testing.T) {
		df := "FROM busybox\nRUN --mount=type=bind,source=nope,target=/m true\n"
		if err := os.WriteFile(at("Dockerfile"), []byte(df), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := builder.Build(context.Background(), builder.Options{ContextDir: f.dir, Store: f.st, Executor: f.exec})
		if err == nil || !strings.Contains(err.Error(), "source /nope not found in the build context") {
			t.Fatalf("error %v, want the missing source", err)
		}
	})
}

// checkOut checks the files the RUNs of TestCacheBindMount wrote.
func checkOut(t *testing.T, res *builder.Result, out, target, o2 string) {
	t.Helper()
	fs := btFlatten(t, res.Image)
	if got, want := fs["out"].Content, out+target+"\n"; got != want {
		t.Errorf("/out = %q, want %q", got, want)
	}
	if got := fs["o2"].Content; got != o2 {
		t.Errorf("/o2 = %q, want %q", got, o2)
	}
}
