package builder

import (
	"archive/tar"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"

	"github.com/imgbuild/imgbuild/layers"
	"github.com/imgbuild/imgbuild/registry/registrytest"
)

// sdCase is a source tree, an op over it, and a change to the tree: the
// digest must change exactly when the change reaches what the copy writes.
type sdCase struct {
	name   string
	tree   []ctEntry // the context (or, with from, the source rootfs); ctxBasic when nil
	ignore string    // .dockerignore
	from   bool      // sources come from a rootfs (COPY --from) instead of the context
	op     copyOp    // Sources, Dest, ... (Context/SrcRoot, DestRoot filled in)
	change func(t *testing.T, dir string)
	same   bool // the digest must not change (nor the copy's result)
}

func sdWrite(rel, data string) func(*testing.T, string) {
	return func(t *testing.T, dir string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, rel), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func sdChmod(rel string, m os.FileMode) func(*testing.T, string) {
	return func(t *testing.T, dir string) {
		t.Helper()
		if err := os.Chmod(filepath.Join(dir, rel), m); err != nil {
			t.Fatal(err)
		}
	}
}

func sdRename(from, to string) func(*testing.T, string) {
	return func(t *testing.T, dir string) {
		t.Helper()
		if err := os.Rename(filepath.Join(dir, from), filepath.Join(dir, to)); err != nil {
			t.Fatal(err)
		}
	}
}

func sdRemove(rel string) func(*testing.T, string) {
	return func(t *testing.T, dir string) {
		t.Helper()
		if err := os.RemoveAll(filepath.Join(dir, rel)); err != nil {
			t.Fatal(err)
		}
	}
}

// sdRelink points the symlink rel at target.
func sdRelink(rel, target string) func(*testing.T, string) {
	return func(t *testing.T, dir string) {
		t.Helper()
		p := filepath.Join(dir, rel)
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, p); err != nil {
			t.Fatal(err)
		}
	}
}

// sdHardlink replaces rel by a hard link to existing.
func sdHardlink(rel, existing string) func(*testing.T, string) {
	return func(t *testing.T, dir string) {
		t.Helper()
		p := filepath.Join(dir, rel)
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
		if err := os.Link(filepath.Join(dir, existing), p); err != nil {
			t.Fatal(err)
		}
	}
}

func sdChown(rel string, uid, gid int) func(*testing.T, string) {
	return func(t *testing.T, dir string) {
		t.Helper()
		if err := os.Lchown(filepath.Join(dir, rel), uid, gid); err != nil {
			t.Fatal(err)
		}
	}
}

func sdXattr(rel, name, val string) func(*testing.T, string) {
	return func(t *testing.T, dir string) {
		t.Helper()
		if err := unix.Lsetxattr(filepath.Join(dir, rel), name, []byte(val), 0); err != nil {
			t.Skipf("[allowed-skip] no user xattrs on the test filesystem: %v", err)
		}
	}
}

// sdTouchAll gives everything under dir (dir included) other times.
func sdTouchAll(t *testing.T, dir string) {
	t.Helper()
	ts, _ := unix.TimeToTimespec(time.Date(2030, 1, 2, 3, 4, 5, 6, time.UTC))
	err := filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func sdSteps(steps ...func(*testing.T, string)) func(*testing.T, string) {
	return func(t *testing.T, dir string) {
		for _, s := range steps {
			s(t, dir)
		}
	}
}

// sdSnapshot is ctSnapshot with each entry's user.* extended attributes.
func sdSnapshot(t *testing.T, root string) map[string]string {
	t.Helper()
	snap := ctSnapshot(t, root)
	for rel := range snap {
		p := filepath.Join(root, rel)
		buf := make([]byte, 4096)
		n, err := unix.Llistxattr(p, buf)
		if err != nil {
			continue
		}
		names := strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00")
		slices.Sort(names)
		for _, name := range names {
			if !strings.HasPrefix(name, "user.") {
				continue
			}
			val := make([]byte, 4096)
			if m, err := unix.Lgetxattr(p, name, val); err == nil {
				snap[rel] += " " + name + "=" + string(val[:m])
			}
		}
	}
	return snap
}

// sdOp fills in the source of tc.op from dir (the context is loaded again,
// so a changed .dockerignore counts).
func sdOp(t *testing.T, tc *sdCase, dir string) copyOp {
	t.Helper()
	op := tc.op
	if tc.from {
		op.SrcRoot = dir
		return op
	}
	bc, err := loadContext(context.Background(), contextOptions{Dir: dir, DockerfileContent: []byte("FROM scratch\n")})
	if err != nil {
		t.Fatal(err)
	}
	op.Context = bc
	return op
}

// sdDigestAndCopy digests op (without and with a stat index, which must
// agree) and copies it into a new root, whose snapshot it returns.
func sdDigestAndCopy(t *testing.T, op copyOp, idx *layers.StatIndex) (v1.Hash, map[string]string) {
	t.Helper()
	ctx := context.Background()
	h, err := sourcesDigest(ctx, op, nil)
	if err != nil {
		t.Fatal(err)
	}
	if h2, err := sourcesDigest(ctx, op, idx); err != nil || h2 != h {
		t.Fatalf("digest with a stat index = %s, %v; without = %s", h2, err, h)
	}
	root := t.TempDir()
	op.DestRoot, op.UserRoot = root, root
	if _, err := copyFiles(ctx, op); err != nil {
		t.Fatal(err)
	}
	return h, sdSnapshot(t, root)
}

func openSDIndex(t testing.TB) (*layers.Store, *layers.StatIndex) {
	t.Helper()
	s, err := layers.OpenStore(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	idx, err := layers.OpenStatIndex(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	return s, idx
}

func runSDCases(t *testing.T, cases []sdCase) {
	t.Helper()
	registrytest.RequireRoot(t) // the copies chown to 0:0; some changes chown
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, idx := openSDIndex(t)
			dir := t.TempDir()
			tree := tc.tree
			if tree == nil {
				tree = ctxBasic
			}
			ctTree(t, dir, tree...)
			if tc.ignore != "" {
				if err := os.WriteFile(filepath.Join(dir, ".dockerignore"), []byte(tc.ignore), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			h1, snap1 := sdDigestAndCopy(t, sdOp(t, &tc, dir), idx)
			tc.change(t, dir)
			h2, snap2 := sdDigestAndCopy(t, sdOp(t, &tc, dir), idx)
			copyChanged := ctDiff(snap2, snap1)
			switch {
			case tc.same && h1 != h2:
				t.Errorf("digest changed (%s -> %s); copy result changes:\n%s", h1, h2, copyChanged)
			case tc.same && copyChanged != "":
				t.Errorf("bad case: the change reaches the copy:\n%s", copyChanged)
			case !tc.same && h1 == h2:
				t.Errorf("digest unchanged; copy result changes:\n%s", copyChanged)
			case !tc.same && copyChanged == "":
				t.Errorf("bad case: the change does not reach the copy")
			}
		})
	}
}

func TestSourcesDigestContext(t *testing.T) {
	all := copyOp{Sources: []string{"."}, Dest: "/app/"}
	one := copyOp{Sources: []string{"f.txt"}, Dest: "/app/"}
	dir := copyOp{Sources: []string{"dir"}, Dest: "/d"}
	twins := []ctEntry{cf("a", "same", 0o644), cf("b", "same", 0o644), cf("c", "other", 0o644)}
	logs := []ctEntry{cf("app.go", "package main", 0o644), cf("a.log", "log", 0o644), cf("sub/b.log", "b", 0o644), cf("sub/keep.go", "k", 0o644)}
	cases := []sdCase{
		{name: "mtimes only", op: all, change: sdTouchAll, same: true},
		{name: "content of a selected file", op: all, change: sdWrite("f.txt", "HELLO")},
		{name: "content with the same size and mtime", op: one, change: sdSteps(sdWrite("f.txt", "jello"), func(t *testing.T, d string) { ctTouchAll(t, d) })},
		{name: "mode of a selected file", op: all, change: sdChmod("f.txt", 0o600)},
		{name: "setuid bit", op: all, change: sdChmod("run.sh", os.ModeSetuid|0o755)},
		{name: "sticky directory", op: dir, change: sdChmod("dir/sub", os.ModeSticky|0o750)},
		{name: "directory mode", op: dir, change: sdChmod("dir/sub", 0o755)},
		{name: "selected file renamed", op: all, change: sdRename("other.txt", "other2.txt")},
		{name: "selected file removed", op: all, change: sdRemove("dir/sub/b")},
		{name: "file added to a selected dir", op: dir, change: sdWrite("dir/new", "n")},
		{name: "empty dir added", op: dir, change: func(t *testing.T, d string) { os.Mkdir(filepath.Join(d, "dir/empty"), 0o755) }},
		{name: "symlink target", op: dir, change: sdRelink("dir/link", "sub/b")},
		{name: "symlink becomes a file with its target's name", op: dir, change: sdSteps(sdRemove("dir/link"), sdWrite("dir/link", "a"))},
		{name: "xattr on a selected file", op: dir, change: sdXattr("dir/a", "user.test", "1")},
		{name: "hard link between equal files", tree: twins, op: all, change: sdHardlink("b", "a")},
		{name: "hard link across sources is no link", tree: twins, op: copyOp{Sources: []string{"a", "b"}, Dest: "/x/"}, change: sdHardlink("b", "a"), same: true},
		{name: "owner of a context file", op: all, change: sdChown("f.txt", 1000, 1000), same: true},
		{name: "unselected file", op: one, change: sdWrite("other.txt", "changed"), same: true},
		{name: "file next to a selected dir", op: dir, change: sdSteps(sdWrite("f.txt", "x"), sdChmod("run.sh", 0o700)), same: true},
		{name: "wildcard: unmatched file", op: copyOp{Sources: []string{"*.txt"}, Dest: "/t/"}, change: sdWrite("run.sh", "x"), same: true},
		{name: "wildcard: new match", op: copyOp{Sources: []string{"*.txt"}, Dest: "/t/"}, change: sdWrite("new.txt", "x")},
		{name: "source symlink: its target changes", tree: []ctEntry{cf("t1", "1", 0o644), cf("t2", "2", 0o644), cl("l", "t1")},
			op: copyOp{Sources: []string{"l"}, Dest: "/x"}, change: sdRelink("l", "t2")},
		{name: "dockerignored file changed", tree: logs, ignore: "*.log\n**/*.log\n", op: all, change: sdWrite("sub/b.log", "BB"), same: true},
		{name: "dockerignored file added", tree: logs, ignore: "*.log\n**/*.log\n", op: all, change: sdWrite("new.log", "n"), same: true},
		{name: ".dockerignore stops ignoring", tree: logs, ignore: "*.log\n**/*.log\n", op: copyOp{Sources: []string{"sub"}, Dest: "/s"},
			change: sdWrite(".dockerignore", "*.log\n")},
		{name: "--exclude'd file changed", tree: logs, op: copyOp{Sources: []string{"."}, Dest: "/e/", Excludes: []string{"**/*.log"}},
			change: sdSteps(sdWrite("a.log", "changed"), sdWrite("sub/b.log", "changed")), same: true},
		{name: "--exclude with exception: excluded file", tree: logs, op: copyOp{Sources: []string{"sub"}, Dest: "/e/", Excludes: []string{"*", "!*.go"}},
			change: sdWrite("sub/b.log", "changed"), same: true},
		{name: "--exclude with exception: re-included file", tree: logs, op: copyOp{Sources: []string{"sub"}, Dest: "/e/", Excludes: []string{"*", "!*.go"}},
			change: sdWrite("sub/keep.go", "changed")},
	}
	runSDCases(t, cases)
}

func TestSourcesDigestParents(t *testing.T) {
	tree := []ctEntry{
		cf("src/a.txt", "a", 0o644), cf("src/x/b.txt", "b", 0o644), cf("src/x/y/c.txt", "c", 0o644),
		cf("src/x/y/d.md", "d", 0o644), cf("src/z/only.md", "z", 0o644), cf("other/z.txt", "z", 0o644),
	}
	op := copyOp{Parents: true, Sources: []string{"./src/**/*.txt"}, Dest: "/p/"}
	cases := []sdCase{
		{name: "selected file", tree: tree, op: op, change: sdWrite("src/x/y/c.txt", "C")},
		{name: "parent dir of a selected file", tree: tree, op: op, change: sdChmod("src/x", 0o700)},
		{name: "unmatched file", tree: tree, op: op, change: sdWrite("src/x/y/d.md", "D"), same: true},
		{name: "dir with nothing selected", tree: tree, op: op, change: sdChmod("src/z", 0o700), same: true},
		{name: "file outside the tree", tree: tree, op: op, change: sdWrite("other/z.txt", "Z"), same: true},
		{name: "new match makes a dir", tree: tree, op: op, change: sdWrite("src/z/new.txt", "n")},
	}
	runSDCases(t, cases)
}

func TestSourcesDigestFrom(t *testing.T) {
	tree := []ctEntry{
		cf("etc/target", "t", 0o644), cl("link", "/etc/target"), cf("app/bin", "b", 0o755),
		{path: "app/owned", kind: 'f', data: "o", mode: 0o640, uid: 7, gid: 8},
	}
	cases := []sdCase{
		{name: "owner of a rootfs file", tree: tree, from: true, op: copyOp{Sources: []string{"/app"}, Dest: "/x"},
			change: sdChown("app/bin", 5, 5)},
		{name: "owner under --chown", tree: tree, from: true, op: copyOp{Sources: []string{"/app"}, Dest: "/x", Chown: "1:1"},
			change: sdChown("app/bin", 5, 5), same: true},
		{name: "absolute symlink source resolved in the root", tree: tree, from: true, op: copyOp{Sources: []string{"/link"}, Dest: "/x"},
			change: sdWrite("etc/target", "T")},
		{name: "mtimes", tree: tree, from: true, op: copyOp{Sources: []string{"/"}, Dest: "/x"}, change: sdTouchAll, same: true},
	}
	runSDCases(t, cases)
}

func TestSourcesDigestAdd(t *testing.T) {
	tarball := fooTar(t)
	other := tarOf(t, nil, nil)
	changed := tarOf(t, []tar.Header{{Name: "foo", Typeflag: tar.TypeReg, Mode: 0o644}}, map[string]string{"foo": "content1"})
	tree := []ctEntry{cf("a.tar", string(tarball), 0o644), cf("plain", "p", 0o644)}
	cases := []sdCase{
		{name: "archive content", tree: tree, op: copyOp{Add: true, Sources: []string{"a.tar"}, Dest: "/x/"},
			change: sdWrite("a.tar", string(gzipOf(t, changed)))},
		{name: "archive becomes an empty archive", tree: tree, op: copyOp{Add: true, Sources: []string{"a.tar"}, Dest: "/x/"},
			change: sdWrite("a.tar", string(other))},
		{name: "archive mtime", tree: tree, op: copyOp{Add: true, Sources: []string{"a.tar"}, Dest: "/x/"},
			change: sdTouchAll, same: true},
		{name: "plain file", tree: tree, op: copyOp{Add: true, Sources: []string{"plain"}, Dest: "/x/"},
			change: sdWrite("plain", "q")},
	}
	runSDCases(t, cases)
}

// TestSourcesDigestOp: what the op itself contributes (heredocs, URLs) and
// the errors that mirror copyFiles'.
func TestSourcesDigestOp(t *testing.T) {
	bc := ctLoadContext(t, "", ctxBasic...)
	sum := "sha256:" + strings.Repeat("ab", 32)
	digest := func(op copyOp) (v1.Hash, error) {
		op.Context = bc
		return sourcesDigest(context.Background(), op, nil)
	}
	hd := func(name, data string, m os.FileMode) copyOp {
		return copyOp{Heredocs: []heredocSource{{Name: name, Data: []byte(data), Mode: m}}, Dest: "/h"}
	}
	groups := [][]copyOp{
		// Every op in a group has the digest of the group's first; ops of
		// different groups differ.
		{hd("EOF", "hello\n", 0), hd("EOF", "hello\n", 0o644), hd("/x/EOF", "hello\n", 0)},
		{hd("EOF", "hello!\n", 0)},
		{hd("EOF", "hello\n", 0o755)},
		{hd("OTHER", "hello\n", 0)},
		{{Add: true, Sources: []string{"http://127.0.0.1:1/f.tar"}, Checksum: sum, Dest: "/"},
			{Add: true, Sources: []string{"https://127.0.0.1:2/y/f.tar"}, Checksum: sum, Dest: "/"}},
		{{Add: true, Sources: []string{"http://127.0.0.1:1/g.tar"}, Checksum: sum, Dest: "/"}},
		{{Add: true, Sources: []string{"http://127.0.0.1:1/f.tar"}, Checksum: "sha256:" + strings.Repeat("cd", 32), Dest: "/"}},
		{{Sources: []string{"f.txt"}, Dest: "/"}, {Sources: []string{"./f.txt"}, Dest: "/other"}},
		{{Sources: []string{"f.txt", "other.txt"}, Dest: "/"}},
		{{Sources: []string{"f.txt"}, Heredocs: []heredocSource{{Name: "EOF", Data: []byte("hello\n")}}, Dest: "/"}},
	}
	seen := map[v1.Hash]int{}
	for g, ops := range groups {
		var first v1.Hash
		for i, op := range ops {
			h, err := digest(op)
			if err != nil {
				t.Fatalf("group %d op %d: %v", g, i, err)
			}
			if i == 0 {
				first = h
				if prev, ok := seen[h]; ok {
					t.Errorf("group %d has the digest of group %d", g, prev)
				}
				seen[h] = g
			} else if h != first {
				t.Errorf("group %d op %d: digest differs from the group's first", g, i)
			}
		}
	}

	errCases := []struct {
		name        string
		op          copyOp
		uncacheable bool
		err         string
	}{
		{name: "URL without checksum", op: copyOp{Add: true, Sources: []string{"http://127.0.0.1:1/f"}, Dest: "/"}, uncacheable: true},
		{name: "bad checksum", op: copyOp{Add: true, Sources: []string{"http://127.0.0.1:1/f"}, Checksum: "sha256:zz", Dest: "/"}, err: "invalid checksum"},
		{name: "COPY of a URL", op: copyOp{Sources: []string{"http://127.0.0.1:1/f"}, Dest: "/"}, err: "source can't be a URL for COPY"},
		{name: "git source", op: copyOp{Add: true, Sources: []string{"git@127.0.0.1:r.git"}, Dest: "/"}, err: "not supported yet"},
		{name: "checksum on a local file", op: copyOp{Add: true, Sources: []string{"f.txt"}, Checksum: sum, Dest: "/"}, err: "checksum requires HTTP(S)"},
		{name: "missing source", op: copyOp{Sources: []string{"nope"}, Dest: "/"}, err: `"/nope": not found`},
		{name: "bad --exclude", op: copyOp{Sources: []string{"."}, Excludes: []string{"["}, Dest: "/"}, err: "invalid --exclude"},
		{name: "bad heredoc name", op: copyOp{Heredocs: []heredocSource{{Name: "/"}}, Dest: "/"}, err: "invalid name"},
	}
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := sourcesDigest(cancelled, copyOp{Context: bc, Sources: []string{"."}, Dest: "/"}, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context: error %v", err)
	}
	for _, tc := range errCases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := digest(tc.op)
			switch {
			case err == nil:
				t.Fatal("no error")
			case tc.uncacheable != errors.Is(err, errUncacheable):
				t.Fatalf("error %v: errUncacheable %v, want %v", err, !tc.uncacheable, tc.uncacheable)
			case !strings.Contains(err.Error(), tc.err):
				t.Fatalf("error %v, want it to contain %q", err, tc.err)
			}
		})
	}
}

// TestSourcesDigestIndex: with the stat index, a second digest of unchanged
// sources reads no file, also after Save and a reopen; files changed just
// now are never trusted.
func TestSourcesDigestIndex(t *testing.T) {
	ctx := context.Background()
	tree := append(slices.Clone(ctxBasic),
		cf("a.tar", string(fooTar(t)), 0o644), ch("dir/hard", "f.txt"), cf("x.log", "ignored", 0o644))
	bc := ctLoadContext(t, "*.log\n", tree...)
	ops := []copyOp{
		{Context: bc, Sources: []string{"."}, Dest: "/app/"},
		{Context: bc, Add: true, Sources: []string{"a.tar"}, Dest: "/x/"},
	}
	// Files COPY . reads: .dockerignore, a.tar, f.txt (once for its two
	// names), other.txt, run.sh, dir/a, dir/sub/b; x.log is ignored. The ADD
	// reads a.tar again unless the index knows it.
	const wantRacy, wantCold = 8, 7

	s, idx := openSDIndex(t)
	digestAll := func(idx *layers.StatIndex) []v1.Hash {
		t.Helper()
		var out []v1.Hash
		for _, op := range ops {
			h, err := sourcesDigest(ctx, op, idx)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, h)
		}
		return out
	}
	want := digestAll(nil)

	// Racy: the files were written just now, so nothing is recorded.
	if got := digestAll(idx); !slices.Equal(got, want) {
		t.Fatal("digest with an index differs")
	}
	if n := idx.Hashed(); n != wantRacy {
		t.Fatalf("first digest read %d files, want %d", n, wantRacy)
	}
	digestAll(idx)
	if n := idx.Hashed(); n != 2*wantRacy {
		t.Fatalf("racy files were trusted: second digest read %d files, want %d", n-wantRacy, wantRacy)
	}
	// A same-size rewrite right away is seen.
	p := filepath.Join(bc.Dir, "other.txt")
	if err := os.WriteFile(p, []byte("OTHER"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctTouchAll(t, bc.Dir)
	changed := digestAll(idx)
	if changed[0] == want[0] {
		t.Fatal("same-size rewrite of a racy file not seen")
	}
	if err := os.WriteFile(p, []byte("other"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctTouchAll(t, bc.Dir)

	time.Sleep(layers.StatIndexRacyWindow + 100*time.Millisecond)
	idx, err := layers.OpenStatIndex(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	digestAll(idx)
	if n := idx.Hashed(); n != wantCold {
		t.Fatalf("cold digest read %d files, want %d", n, wantCold)
	}
	if got := digestAll(idx); !slices.Equal(got, want) || idx.Hashed() != wantCold {
		t.Fatalf("warm digest read %d files (want none); equal %v", idx.Hashed()-wantCold, slices.Equal(got, want))
	}
	if err := idx.Save(ctx); err != nil {
		t.Fatal(err)
	}
	idx, err = layers.OpenStatIndex(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	if got := digestAll(idx); !slices.Equal(got, want) || idx.Hashed() != 0 {
		t.Fatalf("digest after reopening read %d files (want none); equal %v", idx.Hashed(), slices.Equal(got, want))
	}
	if err := os.WriteFile(filepath.Join(bc.Dir, "dir/sub/b"), []byte("changed"), 0o600); err != nil {
		t.Fatal(err)
	}
	got := digestAll(idx)
	if idx.Hashed() != 1 || got[0] == want[0] || got[1] != want[1] {
		t.Fatalf("after one change: read %d files (want 1), COPY digest changed %v, ADD digest changed %v",
			idx.Hashed(), got[0] != want[0], got[1] != want[1])
	}
}

// TestSourcesDigestConcurrent: stages digest concurrently with one context
// and one stat index (run with -race).
func TestSourcesDigestConcurrent(t *testing.T) {
	bc := ctLoadContext(t, "*.log\n!keep.log\n", append(slices.Clone(ctxBasic), cf("a.log", "a", 0o644), cf("keep.log", "k", 0o644))...)
	_, idx := openSDIndex(t)
	ops := []copyOp{
		{Context: bc, Sources: []string{"."}, Dest: "/"},
		{Context: bc, Sources: []string{"*.log", "dir"}, Dest: "/l/"},
		{Context: bc, Sources: []string{"."}, Excludes: []string{"dir/sub"}, Dest: "/"},
	}
	want := make([]v1.Hash, len(ops))
	for i, op := range ops {
		h, err := sourcesDigest(context.Background(), op, nil)
		if err != nil {
			t.Fatal(err)
		}
		want[i] = h
	}
	errs := make(chan error, 12)
	for g := range 12 {
		go func() {
			i := g % len(ops)
			h, err := sourcesDigest(context.Background(), ops[i], idx)
			if err == nil && h != want[i] {
				err = errors.New("digest differs from the sequential one")
			}
			errs <- err
		}()
	}
	for range 12 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}
