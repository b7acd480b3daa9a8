//go:build linux

package layers_test

// Helpers of the snapshotter tests: stores checked for leftover mounts,
// tree views, fresh extractions, golden files.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"

	"github.com/imgbuild/imgbuild/layers"
)

// snapStore opens a store whose test fails if anything is still mounted
// below it, or a scratch directory is left, once the test is done.
func snapStore(t testing.TB) *layers.Store {
	t.Helper()
	s := openTestStore(t)
	t.Cleanup(func() {
		if ms := mountsBelow(t, s.Root()); len(ms) > 0 {
			t.Errorf("mounts left below the store: %v", ms)
		}
		ents, _ := os.ReadDir(filepath.Join(s.Root(), "snapshots"))
		for _, e := range ents {
			if !strings.HasPrefix(e.Name(), ".") {
				t.Errorf("scratch directory left: %s", e.Name())
			}
		}
	})
	return s
}

// mountsBelow lists the mount points below dir in /proc/self/mountinfo.
func mountsBelow(t testing.TB, dir string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			out = append(out, f[4])
		}
	}
	return out
}

// newSnap returns a snapshotter closed when the test ends.
func newSnap(t testing.TB, s *layers.Store, kind string, opts layers.SnapshotOptions) layers.Snapshotter {
	t.Helper()
	sn, err := layers.NewSnapshotter(context.Background(), s, kind, opts)
	if err != nil {
		t.Fatalf("NewSnapshotter(%s): %v", kind, err)
	}
	if sn.Kind() != kind {
		t.Fatalf("NewSnapshotter(%s) is %s", kind, sn.Kind())
	}
	t.Cleanup(func() {
		if err := sn.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return sn
}

// prepare is Snapshotter.Prepare, releasing the mount when the test ends.
func prepare(t testing.TB, sn layers.Snapshotter, parent []v1.Layer) *layers.Mount {
	t.Helper()
	m, err := sn.Prepare(context.Background(), parent)
	if err != nil {
		t.Fatalf("%s Prepare: %v", sn.Kind(), err)
	}
	t.Cleanup(func() {
		if err := sn.Release(context.Background(), m); err != nil {
			t.Errorf("Release: %v", err)
		}
	})
	return m
}

// view lists the tree at root (root excluded, sockets skipped) one line per
// entry: type, permissions, owner, content digest, link target, device,
// xattrs (but security.selinux), hard link group, and with times the
// modification time in nanoseconds.
func view(t testing.TB, root string, times bool) []string {
	t.Helper()
	var lines []string
	inodes := map[uint64]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		line := fmt.Sprintf("%s %06o %d:%d", rel, st.Mode, st.Uid, st.Gid)
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFSOCK:
			return nil
		case unix.S_IFREG:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			line += fmt.Sprintf(" sha256:%x", sha256.Sum256(b))
			if first, ok := inodes[st.Ino]; ok {
				line += " =" + first
			} else if st.Nlink > 1 {
				inodes[st.Ino] = rel
			}
		case unix.S_IFLNK:
			target, _ := os.Readlink(p)
			line += " -> " + target
		case unix.S_IFCHR, unix.S_IFBLK:
			line += fmt.Sprintf(" %d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
		}
		line += xattrList(t, p)
		if times {
			line += fmt.Sprintf(" mtime=%d.%09d", st.Mtim.Sec, st.Mtim.Nsec)
		}
		lines = append(lines, line)
		return nil
	})
	if err != nil {
		t.Fatalf("view of %s: %v", root, err)
	}
	sort.Strings(lines)
	return lines
}

func xattrList(t testing.TB, p string) string {
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if err != nil || n == 0 {
		return ""
	}
	names := strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00")
	sort.Strings(names)
	var sb strings.Builder
	for _, name := range names {
		if name == "security.selinux" {
			continue
		}
		v := make([]byte, 64<<10)
		m, err := unix.Lgetxattr(p, name, v)
		if err != nil {
			t.Fatalf("getxattr %s %s: %v", p, name, err)
		}
		fmt.Fprintf(&sb, " %s=%q", name, v[:m])
	}
	return sb.String()
}

// sameView fails t with a readable difference when got and want differ.
func sameView(t testing.TB, what string, got, want []string) {
	t.Helper()
	g, w := map[string]bool{}, map[string]bool{}
	for _, l := range got {
		g[l] = true
	}
	for _, l := range want {
		w[l] = true
	}
	var diff []string
	for _, l := range want {
		if !g[l] {
			diff = append(diff, "- "+l)
		}
	}
	for _, l := range got {
		if !w[l] {
			diff = append(diff, "+ "+l)
		}
	}
	if len(diff) > 0 {
		t.Errorf("%s: differs (- want, + got):\n%s", what, strings.Join(diff, "\n"))
	}
}

// applyAll extracts ls in order into a fresh directory with Apply.
func applyAll(t testing.TB, ls []v1.Layer) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "root")
	for i, l := range ls {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		err = layers.Apply(context.Background(), dir, rc, layers.ApplyOptions{})
		rc.Close()
		if err != nil {
			t.Fatalf("applying layer %d: %v", i, err)
		}
	}
	return dir
}

// layerListing renders the tar of l (listing format); "(no layer)" for nil.
func layerListing(t testing.TB, l v1.Layer) string {
	t.Helper()
	if l == nil {
		return "(no layer)\n"
	}
	return listing(parseTar(t, uncompressed(t, l)))
}

// uncompressed reads the tar of l whole.
func uncompressed(t testing.TB, l v1.Layer) []byte {
	t.Helper()
	b, err := readAllClose(l.Uncompressed())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkGoldenFile compares got with testdata/<name> (rewritten with -update).
func checkGoldenFile(t *testing.T, name, got string) {
	t.Helper()
	p := filepath.Join("testdata", name)
	if *updateGolden {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (run with -update to create)", err)
	}
	if got != string(want) {
		t.Errorf("differs from %s (run with -update to accept):\ngot:\n%s\nwant:\n%s", p, got, want)
	}
}

// countingLayer counts the calls of Uncompressed (extractions).
type countingLayer struct {
	v1.Layer
	n *atomic.Int32
}

func (c countingLayer) Uncompressed() (io.ReadCloser, error) {
	c.n.Add(1)
	return c.Layer.Uncompressed()
}

// storeLayerOf writes a gzip layer of entries to s.
func storeLayerOf(t testing.TB, s *layers.Store, entries ...ent) v1.Layer {
	t.Helper()
	return bytesLayer(t, s, mkTar(t, entries...), layers.LayerOptions{})
}

// inode returns the inode number of p.
func inode(t testing.TB, p string) uint64 {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}
