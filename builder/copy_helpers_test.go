package builder

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// ctMtime is the mtime test trees get, so copies can be checked to keep it.
var ctMtime = time.Date(2021, 5, 6, 7, 8, 9, 0, time.UTC)

// ctEntry describes one entry of a test tree.
type ctEntry struct {
	path string
	kind byte   // 'f' file, 'd' dir, 'l' symlink (data = target), 'h' hardlink (data = existing path)
	data string // content, link target
	mode os.FileMode
	uid  int // owner (only applied when both are non-zero and running as root)
	gid  int
}

func cf(p, data string, mode os.FileMode) ctEntry {
	return ctEntry{path: p, kind: 'f', data: data, mode: mode}
}
func cd(p string, mode os.FileMode) ctEntry { return ctEntry{path: p, kind: 'd', mode: mode} }
func cl(p, target string) ctEntry           { return ctEntry{path: p, kind: 'l', data: target} }
func ch(p, existing string) ctEntry         { return ctEntry{path: p, kind: 'h', data: existing} }

// ctTree creates entries under root (parents as 0755 dirs) and sets every
// mtime to ctMtime.
func ctTree(t testing.TB, root string, entries ...ctEntry) {
	t.Helper()
	for _, e := range entries {
		p := filepath.Join(root, filepath.FromSlash(e.path))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		var err error
		switch e.kind {
		case 'f':
			err = os.WriteFile(p, []byte(e.data), 0o600)
			if err == nil {
				err = os.Chmod(p, e.mode)
			}
		case 'd':
			err = os.MkdirAll(p, 0o755)
			if err == nil {
				err = os.Chmod(p, e.mode)
			}
		case 'l':
			err = os.Symlink(e.data, p)
		case 'h':
			err = os.Link(filepath.Join(root, filepath.FromSlash(e.data)), p)
		}
		if err != nil {
			t.Fatal(err)
		}
		if e.uid != 0 || e.gid != 0 {
			if err := os.Lchown(p, e.uid, e.gid); err != nil {
				t.Fatal(err)
			}
			if e.kind == 'f' || e.kind == 'd' {
				if err := os.Chmod(p, e.mode); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	ctTouchAll(t, root)
}

// ctTouchAll sets the mtime of everything under root (root excluded) to
// ctMtime, children before parents.
func ctTouchAll(t testing.TB, root string) {
	t.Helper()
	var paths []string
	_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && p != root {
			paths = append(paths, p)
		}
		return nil
	})
	slices.Reverse(paths)
	ts, _ := unix.TimeToTimespec(ctMtime)
	for _, p := range paths {
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			t.Fatal(err)
		}
	}
}

// ctSnapshot describes every entry under root as "f 0644 0:0 content",
// "d 0755 0:0", "l -> target" (with " =path" appended to files hardlinked
// to an earlier path).
func ctSnapshot(t testing.TB, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	inodes := map[uint64]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == root {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		rel = filepath.ToSlash(rel)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		own := fmt.Sprintf("%d:%d", st.Uid, st.Gid)
		switch {
		case fi.Mode()&os.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			out[rel] = "l -> " + target
		case fi.IsDir():
			out[rel] = fmt.Sprintf("d %s %s", ctMode(fi.Mode()), own)
		case fi.Mode().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			s := fmt.Sprintf("f %s %s %s", ctMode(fi.Mode()), own, data)
			if st.Nlink > 1 {
				if first, ok := inodes[st.Ino]; ok {
					s += " =" + first
				} else {
					inodes[st.Ino] = rel
				}
			}
			out[rel] = s
		default:
			out[rel] = "other " + fi.Mode().String()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// ctMode prints permission bits in octal, with setuid/setgid/sticky.
func ctMode(m os.FileMode) string {
	v := uint32(m.Perm())
	if m&os.ModeSetuid != 0 {
		v |= 0o4000
	}
	if m&os.ModeSetgid != 0 {
		v |= 0o2000
	}
	if m&os.ModeSticky != 0 {
		v |= 0o1000
	}
	return fmt.Sprintf("%04o", v)
}

// ctDiff reports differences between two snapshots, sorted.
func ctDiff(got, want map[string]string) string {
	var keys []string
	for k := range got {
		keys = append(keys, k)
	}
	for k := range want {
		if _, ok := got[k]; !ok {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		g, gok := got[k]
		w, wok := want[k]
		switch {
		case !gok:
			fmt.Fprintf(&b, "  missing %s: want %q\n", k, w)
		case !wok:
			fmt.Fprintf(&b, "  unexpected %s: %q\n", k, g)
		case g != w:
			fmt.Fprintf(&b, "  %s: got %q, want %q\n", k, g, w)
		}
	}
	return b.String()
}

// ctLoadContext writes entries (and, if non-empty, a .dockerignore) into a
// new context directory and loads it with an inline Dockerfile.
func ctLoadContext(t testing.TB, ignore string, entries ...ctEntry) *buildContext {
	t.Helper()
	dir := t.TempDir()
	ctTree(t, dir, entries...)
	if ignore != "" {
		if err := os.WriteFile(filepath.Join(dir, ".dockerignore"), []byte(ignore), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	bc, err := loadContext(context.Background(), contextOptions{Dir: dir, DockerfileContent: []byte("FROM scratch\n")})
	if err != nil {
		t.Fatal(err)
	}
	return bc
}

// ctMtimeOf returns the modification time of p (not following symlinks).
func ctMtimeOf(t testing.TB, p string) time.Time {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.ModTime()
}

// ctOwner formats the owner of fi as "uid:gid".
func ctOwner(fi os.FileInfo) string {
	if fi == nil {
		return ""
	}
	st := fi.Sys().(*syscall.Stat_t)
	return fmt.Sprintf("%d:%d", st.Uid, st.Gid)
}
