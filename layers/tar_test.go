//go:build linux

package layers_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/imgbuild/imgbuild/layers"
	"github.com/imgbuild/imgbuild/registry/registrytest"
)

var updateGolden = flag.Bool("update", false, "rewrite golden files under testdata/")

// fixtureTime is the mtime of every fixture file unless a test says otherwise.
var fixtureTime = time.Unix(1700000000, 500_000_000)

// fsNode is one file of a fixture tree.
type fsNode struct {
	path   string
	kind   byte   // 'd' dir, 'f' file, 'l' symlink, 'h' hard link, 'p' fifo, 'c' char dev, 's' socket
	mode   uint32 // permission bits incl. setuid/setgid/sticky
	data   string // content, or target for 'l' and 'h'
	uid    int    // applied with lchown when running as root
	gid    int
	xattrs map[string]string
	rdev   uint64
	mtime  time.Time // zero means fixtureTime
}

// makeFixture creates nodes under root (in the given order), then sets
// modes, owners, xattrs and times.
func makeFixture(t testing.TB, root string, nodes []fsNode) {
	t.Helper()
	for _, n := range nodes {
		p := filepath.Join(root, n.path)
		var err error
		switch n.kind {
		case 'd':
			err = os.MkdirAll(p, 0o755)
		case 'f':
			err = os.WriteFile(p, []byte(n.data), 0o644)
		case 'l':
			err = os.Symlink(n.data, p)
		case 'h':
			err = os.Link(filepath.Join(root, n.data), p)
		case 'p':
			err = unix.Mkfifo(p, 0o644)
		case 'c':
			err = unix.Mknod(p, unix.S_IFCHR|0o644, int(n.rdev))
		case 's':
			var l net.Listener
			l, err = net.Listen("unix", p)
			if err == nil {
				l.(*net.UnixListener).SetUnlinkOnClose(false)
				l.Close()
			}
		}
		if err != nil {
			t.Fatalf("fixture %s: %v", n.path, err)
		}
	}
	// Metadata deepest first, so that creating entries does not touch the
	// mtime of directories already done.
	for i := len(nodes) - 1; i >= 0; i-- {
		n := nodes[i]
		p := filepath.Join(root, n.path)
		if n.kind != 'l' && n.kind != 'h' && n.kind != 's' {
			if err := os.Chmod(p, os.FileMode(n.mode&0o777)|modeExtra(n.mode)); err != nil {
				t.Fatal(err)
			}
		}
		if os.Geteuid() == 0 && n.kind != 'h' {
			if err := os.Lchown(p, n.uid, n.gid); err != nil {
				t.Fatal(err)
			}
			// chown clears setuid/setgid: set the mode again.
			if n.kind != 'l' && n.kind != 's' {
				if err := os.Chmod(p, os.FileMode(n.mode&0o777)|modeExtra(n.mode)); err != nil {
					t.Fatal(err)
				}
			}
		}
		for k, v := range n.xattrs {
			if err := unix.Lsetxattr(p, k, []byte(v), 0); err != nil {
				t.Fatalf("setxattr %s on %s: %v", k, n.path, err)
			}
		}
		mt := n.mtime
		if mt.IsZero() {
			mt = fixtureTime
		}
		ts := []unix.Timespec{unix.NsecToTimespec(mt.UnixNano()), unix.NsecToTimespec(mt.UnixNano())}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			t.Fatal(err)
		}
	}
}

func modeExtra(m uint32) os.FileMode {
	var fm os.FileMode
	if m&unix.S_ISUID != 0 {
		fm |= os.ModeSetuid
	}
	if m&unix.S_ISGID != 0 {
		fm |= os.ModeSetgid
	}
	if m&unix.S_ISVTX != 0 {
		fm |= os.ModeSticky
	}
	return fm
}

// tarEntry is a parsed tar entry with a digest of its content.
type tarEntry struct {
	hdr  *tar.Header
	data []byte
}

func parseTar(t testing.TB, b []byte) []tarEntry {
	t.Helper()
	var out []tarEntry
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("reading tar: %v", err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, tarEntry{hdr, data})
	}
}

func entryNames(es []tarEntry) []string {
	var names []string
	for _, e := range es {
		names = append(names, e.hdr.Name)
	}
	return names
}

// listing renders headers one per line for golden comparisons.
func listing(es []tarEntry) string {
	var sb strings.Builder
	for _, e := range es {
		h := e.hdr
		fmt.Fprintf(&sb, "%c %s mode=%05o uid=%d gid=%d uname=%q gname=%q size=%d mtime=%d",
			h.Typeflag, h.Name, h.Mode, h.Uid, h.Gid, h.Uname, h.Gname, h.Size, h.ModTime.UnixNano())
		if h.Linkname != "" {
			fmt.Fprintf(&sb, " link=%s", h.Linkname)
		}
		if h.Typeflag == tar.TypeChar || h.Typeflag == tar.TypeBlock {
			fmt.Fprintf(&sb, " dev=%d,%d", h.Devmajor, h.Devminor)
		}
		if !h.AccessTime.IsZero() || !h.ChangeTime.IsZero() {
			fmt.Fprintf(&sb, " atime=%v ctime=%v", h.AccessTime, h.ChangeTime)
		}
		var keys []string
		for k := range h.PAXRecords {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(&sb, " pax:%s=%q", k, h.PAXRecords[k])
		}
		if len(e.data) > 0 {
			fmt.Fprintf(&sb, " sha256=%x", sha256.Sum256(e.data))
		}
		sb.WriteString("\n")
	}
	return sb.String()
}

func writeTar(t testing.TB, root string, opts layers.TarOptions) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := layers.WriteTar(context.Background(), &buf, root, opts); err != nil {
		t.Fatalf("WriteTar: %v", err)
	}
	return buf.Bytes()
}

func checkGolden(t *testing.T, name, got string) {
	t.Helper()
	p := filepath.Join("testdata", name)
	if *updateGolden {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
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
		t.Errorf("listing differs from %s (run with -update to accept):\ngot:\n%s\nwant:\n%s", p, got, want)
	}
}

// goldenNodes is a tree with every kind of entry; owners need root.
func goldenNodes() []fsNode {
	long := strings.Repeat("long-name-", 12)
	return []fsNode{
		{path: "a", kind: 'd', mode: 0o755},
		{path: "a/z", kind: 'f', mode: 0o644, data: "z"},
		{path: "a-b", kind: 'f', mode: 0o600, data: "a-b"},
		{path: "bin", kind: 'd', mode: 0o755},
		{path: "bin/su", kind: 'f', mode: 0o4755, data: "setuid"},
		{path: "bin/wall", kind: 'f', mode: 0o2755, data: "setgid", gid: 5},
		{path: "cap", kind: 'f', mode: 0o755, data: "ping",
			xattrs: map[string]string{"security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"}},
		{path: "dev", kind: 'd', mode: 0o755},
		{path: "dev/fifo", kind: 'p', mode: 0o600},
		{path: "dev/null", kind: 'c', mode: 0o666, rdev: unix.Mkdev(1, 3)},
		{path: "etc", kind: 'd', mode: 0o755},
		{path: "etc/abs", kind: 'l', data: "/etc/shadow"},
		{path: "etc/passwd", kind: 'f', mode: 0o644, data: "root:x:0:0::/root:/bin/sh\n"},
		{path: "home", kind: 'd', mode: 0o755},
		{path: "home/user", kind: 'd', mode: 0o750, uid: 1000, gid: 1000,
			xattrs: map[string]string{"user.dir": "d"}},
		{path: "home/user/file", kind: 'f', mode: 0o640, uid: 1000, gid: 1000, data: "hello\n",
			xattrs: map[string]string{"user.note": "hi", "user.bin": "\x00\xff"}},
		{path: "home/user/hard", kind: 'h', data: "home/user/file"},
		{path: "home/user/" + long, kind: 'f', mode: 0o644, data: "long"},
		{path: "link", kind: 'l', data: "bin/su"},
		{path: "old", kind: 'f', mode: 0o644, data: "old", mtime: time.Unix(1000, 999)},
		{path: "tmp", kind: 'd', mode: 0o1777},
		{path: "tmp/sock", kind: 's'},
		{path: "zero", kind: 'f', mode: 0o000},
	}
}

func TestWriteTarGolden(t *testing.T) {
	registrytest.RequireRoot(t) // owners, device nodes, security.* xattrs
	epoch := time.Unix(1600000000, 0)
	for _, tc := range []struct {
		golden string
		opts   layers.TarOptions
	}{
		{"tar_full.golden", layers.TarOptions{}},
		{"tar_epoch.golden", layers.TarOptions{SourceDateEpoch: &epoch}},
		{"tar_paths.golden", layers.TarOptions{Paths: []string{"home/user/hard", "/bin/su", "dev/null", "tmp", "bin/su"}}},
	} {
		t.Run(tc.golden, func(t *testing.T) {
			root := t.TempDir()
			makeFixture(t, root, goldenNodes())
			checkGolden(t, tc.golden, listing(parseTar(t, writeTar(t, root, tc.opts))))
		})
	}
}

// userNodes is a tree that needs no privileges.
func userNodes() []fsNode {
	return []fsNode{
		{path: "d", kind: 'd', mode: 0o755},
		{path: "d/sub", kind: 'd', mode: 0o700},
		{path: "d/sub/f", kind: 'f', mode: 0o644, data: "f"},
		{path: "d/x", kind: 'f', mode: 0o4755, data: "suid"},
		{path: "d-e", kind: 'f', mode: 0o644, data: "sibling"},
		{path: "h1", kind: 'f', mode: 0o644, data: "same inode"},
		{path: "d/h2", kind: 'h', data: "h1"},
		{path: "ln", kind: 'l', data: "../../outside"},
		{path: "sticky", kind: 'd', mode: 0o1777},
		{path: "fifo", kind: 'p', mode: 0o644},
		{path: "sock", kind: 's'},
	}
}

func TestWriteTarDeterministic(t *testing.T) {
	nodes := userNodes()
	a, b := t.TempDir(), t.TempDir()
	makeFixture(t, a, nodes)
	// Build the second copy in another creation order: inode numbers and
	// directory order on disk differ, the archive must not.
	rev := make([]fsNode, 0, len(nodes))
	for _, n := range nodes {
		if n.kind == 'd' {
			rev = append(rev, n)
		}
	}
	for i := len(nodes) - 1; i >= 0; i-- {
		if nodes[i].kind != 'd' && nodes[i].kind != 'h' {
			rev = append(rev, nodes[i])
		}
	}
	for _, n := range nodes {
		if n.kind == 'h' {
			rev = append(rev, n)
		}
	}
	makeFixture(t, b, rev)
	ta, tb := writeTar(t, a, layers.TarOptions{}), writeTar(t, b, layers.TarOptions{})
	if !bytes.Equal(ta, tb) {
		t.Fatalf("archives differ:\n%s\n%s", listing(parseTar(t, ta)), listing(parseTar(t, tb)))
	}
	if again := writeTar(t, a, layers.TarOptions{}); !bytes.Equal(ta, again) {
		t.Fatal("second archive of the same tree differs")
	}
	es := parseTar(t, ta)
	want := []string{"d/", "d/h2", "d/sub/", "d/sub/f", "d/x", "d-e", "fifo", "h1", "ln", "sticky/"}
	if got := entryNames(es); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("entries %q, want %q (sorted, socket skipped)", got, want)
	}
	byName := map[string]*tar.Header{}
	for _, e := range es {
		byName[e.hdr.Name] = e.hdr
		if e.hdr.Uname != "" || e.hdr.Gname != "" || !e.hdr.AccessTime.IsZero() || !e.hdr.ChangeTime.IsZero() {
			t.Errorf("%s: uname %q gname %q atime %v ctime %v, want none", e.hdr.Name, e.hdr.Uname, e.hdr.Gname, e.hdr.AccessTime, e.hdr.ChangeTime)
		}
		if !e.hdr.ModTime.Equal(time.Unix(fixtureTime.Unix(), 0)) {
			t.Errorf("%s: mtime %v, want %v truncated to seconds", e.hdr.Name, e.hdr.ModTime, fixtureTime)
		}
	}
	for name, want := range map[string]struct {
		typ  byte
		mode int64
		link string
	}{
		"d/h2":    {tar.TypeReg, 0o644, ""}, // first path of the inode
		"h1":      {tar.TypeLink, 0o644, "d/h2"},
		"d/x":     {tar.TypeReg, 0o4755, ""},
		"sticky/": {tar.TypeDir, 0o1777, ""},
		"ln":      {tar.TypeSymlink, 0o777, "../../outside"},
		"fifo":    {tar.TypeFifo, 0o644, ""},
	} {
		h := byName[name]
		if h == nil || h.Typeflag != want.typ || h.Mode != want.mode || h.Linkname != want.link {
			t.Errorf("%s: got %+v, want type %c mode %o link %q", name, h, want.typ, want.mode, want.link)
		}
	}
}

func TestWriteTarPaths(t *testing.T) {
	root := t.TempDir()
	makeFixture(t, root, userNodes())
	if err := os.Symlink("d", filepath.Join(root, "dirlink")); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		paths   []string
		want    []string
		wantErr string
	}{
		{"empty", []string{}, nil, ""},
		{"file and ancestors", []string{"d/sub/f"}, []string{"d/", "d/sub/", "d/sub/f"}, ""},
		{"directory is not recursive", []string{"d"}, []string{"d/"}, ""},
		{"dedup and sort", []string{"d-e", "/d/x", "d/sub", "d/x", "./d/sub/"}, []string{"d/", "d/sub/", "d/x", "d-e"}, ""},
		{"link target outside the set", []string{"h1"}, []string{"h1"}, ""},
		{"link kept within the set", []string{"h1", "d/h2"}, []string{"d/", "d/h2", "h1"}, ""},
		{"root ignored", []string{"/", "."}, nil, ""},
		{"symlink entry", []string{"dirlink"}, []string{"dirlink"}, ""},
		{"socket skipped", []string{"sock"}, nil, ""},
		{"through a symlink", []string{"dirlink/x"}, nil, "not a directory"},
		{"climbing out", []string{"d/../../etc/passwd"}, nil, "leaves the root"},
		{"missing", []string{"nope"}, nil, "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			err := layers.WriteTar(context.Background(), &buf, root, layers.TarOptions{Paths: tc.paths})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			es := parseTar(t, buf.Bytes())
			if got := entryNames(es); strings.Join(got, " ") != strings.Join(tc.want, " ") {
				t.Fatalf("entries %q, want %q", got, tc.want)
			}
			for _, e := range es {
				if e.hdr.Name == "h1" && len(tc.paths) == 1 && e.hdr.Typeflag != tar.TypeReg {
					t.Errorf("h1 alone must be a regular file, got %c", e.hdr.Typeflag)
				}
			}
		})
	}
}

func TestWriteTarXattrsUser(t *testing.T) {
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Lsetxattr(filepath.Join(root, "f"), "user.k", []byte("v\x00w"), 0); err != nil {
		if errors.Is(err, unix.ENOTSUP) {
			t.Skip("filesystem without user xattrs")
		}
		t.Fatal(err)
	}
	es := parseTar(t, writeTar(t, root, layers.TarOptions{}))
	if len(es) != 1 || es[0].hdr.PAXRecords["SCHILY.xattr.user.k"] != "v\x00w" {
		t.Fatalf("got %s", listing(es))
	}
	if es[0].hdr.Format&tar.FormatPAX == 0 {
		t.Errorf("format %v, want PAX", es[0].hdr.Format)
	}
}

func TestWriteTarSourceDateEpoch(t *testing.T) {
	root := t.TempDir()
	makeFixture(t, root, []fsNode{
		{path: "new", kind: 'f', mode: 0o644, data: "n", mtime: time.Unix(2000, 700)},
		{path: "old", kind: 'f', mode: 0o644, data: "o", mtime: time.Unix(500, 700)},
		{path: "dir", kind: 'd', mode: 0o755, mtime: time.Unix(5000, 0)},
		{path: "sym", kind: 'l', data: "new", mtime: time.Unix(3000, 0)},
	})
	epoch := time.Unix(1000, 0)
	want := map[string]int64{"dir/": 1000, "new": 1000, "old": 500, "sym": 1000}
	for _, e := range parseTar(t, writeTar(t, root, layers.TarOptions{SourceDateEpoch: &epoch})) {
		if got := e.hdr.ModTime.UnixNano(); got != want[e.hdr.Name]*1e9 {
			t.Errorf("%s: mtime %d ns, want %d s", e.hdr.Name, got, want[e.hdr.Name])
		}
		if len(e.hdr.PAXRecords) != 0 {
			t.Errorf("%s: PAX records %v, want none (no atime/ctime)", e.hdr.Name, e.hdr.PAXRecords)
		}
	}
}

func TestWriteTarCanceled(t *testing.T) {
	root := t.TempDir()
	makeFixture(t, root, userNodes())
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := layers.WriteTar(ctx, io.Discard, root, layers.TarOptions{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want context.Canceled", err)
	}
}

func TestComparePaths(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want int
	}{
		{"a", "a", 0},
		{"a", "a/b", -1},
		{"a/b", "a-b", -1},
		{"a/b", "a.b", -1},
		{"a-b", "a/b", 1},
		{"a/z", "ab", -1},
		{"a/b/c", "a/bc", -1},
		{"B", "a", -1},
	} {
		if got := layers.ComparePaths(tc.a, tc.b); got != tc.want {
			t.Errorf("ComparePaths(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
	}
}

// TestTarWriterMarkers covers the entries a copy-and-compare snapshotter
// writes for deleted paths.
func TestTarWriterMarkers(t *testing.T) {
	root := t.TempDir()
	makeFixture(t, root, []fsNode{{path: "d", kind: 'd', mode: 0o755}, {path: "d/f", kind: 'f', mode: 0o644, data: "x"}})
	var buf bytes.Buffer
	tw := layers.NewTarWriter(&buf, root, layers.TarOptions{})
	ctx := context.Background()
	steps := []func() error{
		func() error { return tw.WriteEntry(ctx, "d") },
		func() error { return tw.WriteOpaque("d") },
		func() error { return tw.WriteEntry(ctx, "d/f") },
		func() error { return tw.WriteWhiteout("d/gone") },
		func() error { return tw.WriteWhiteout("top") },
		tw.Close,
	}
	for i, f := range steps {
		if err := f(); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	got := listing(parseTar(t, buf.Bytes()))
	want := strings.Join([]string{
		"5 d/ mode=00755 uid=%[1]d gid=%[2]d uname=\"\" gname=\"\" size=0 mtime=1700000000000000000",
		"0 d/.wh..wh..opq mode=00000 uid=0 gid=0 uname=\"\" gname=\"\" size=0 mtime=0",
		"0 d/f mode=00644 uid=%[1]d gid=%[2]d uname=\"\" gname=\"\" size=1 mtime=1700000000000000000 sha256=2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881",
		"0 d/.wh.gone mode=00000 uid=0 gid=0 uname=\"\" gname=\"\" size=0 mtime=0",
		"0 .wh.top mode=00000 uid=0 gid=0 uname=\"\" gname=\"\" size=0 mtime=0",
		"",
	}, "\n")
	if want = fmt.Sprintf(want, os.Geteuid(), os.Getegid()); got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
	for _, bad := range []string{"", "/", "../x"} {
		if err := tw.WriteWhiteout(bad); err == nil {
			t.Errorf("WriteWhiteout(%q) succeeded", bad)
		}
	}
}

// TestWriteTarOverlayWhiteouts converts a real overlayfs upper directory.
func TestWriteTarOverlayWhiteouts(t *testing.T) {
	registrytest.RequireRoot(t) // mknod 0/0, trusted.* xattrs, mount
	base := t.TempDir()
	lower, upper, work, merged := filepath.Join(base, "lower"), filepath.Join(base, "upper"), filepath.Join(base, "work"), filepath.Join(base, "merged")
	makeFixture(t, base, []fsNode{
		{path: "lower", kind: 'd', mode: 0o755},
		{path: "lower/gone", kind: 'f', mode: 0o644, data: "gone"},
		{path: "lower/gone2", kind: 'f', mode: 0o644, data: "gone"},
		{path: "lower/opq", kind: 'd', mode: 0o755},
		{path: "lower/opq/old", kind: 'f', mode: 0o644, data: "old"},
		{path: "lower/keep", kind: 'f', mode: 0o644, data: "keep"},
		{path: "upper", kind: 'd', mode: 0o755},
		{path: "work", kind: 'd', mode: 0o755},
		{path: "merged", kind: 'd', mode: 0o755},
	})
	opts := "lowerdir=" + lower + ",upperdir=" + upper + ",workdir=" + work
	if err := unix.Mount("overlay", merged, "overlay", 0, opts); err != nil {
		t.Skipf("cannot mount overlayfs here: %v", err)
	}
	mounted := true
	defer func() {
		if mounted {
			unix.Unmount(merged, unix.MNT_DETACH)
		}
	}()
	for _, step := range []error{
		os.Remove(filepath.Join(merged, "gone")),
		os.Remove(filepath.Join(merged, "gone2")),
		os.RemoveAll(filepath.Join(merged, "opq")),
		os.Mkdir(filepath.Join(merged, "opq"), 0o755),
		os.WriteFile(filepath.Join(merged, "opq", "new"), []byte("new"), 0o644),
		os.WriteFile(filepath.Join(merged, "added"), []byte("added"), 0o644),
	} {
		if step != nil {
			t.Fatal(step)
		}
	}
	if err := unix.Unmount(merged, 0); err != nil {
		t.Fatal(err)
	}
	mounted = false
	// Fix the upper dir's times so that the listing is stable.
	if err := filepath.Walk(upper, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		ts := []unix.Timespec{unix.NsecToTimespec(fixtureTime.UnixNano()), unix.NsecToTimespec(fixtureTime.UnixNano())}
		return unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW)
	}); err != nil {
		t.Fatal(err)
	}
	got := listing(parseTar(t, writeTar(t, upper, layers.TarOptions{Overlay: true})))
	want := "" +
		"0 .wh.gone mode=00000 uid=0 gid=0 uname=\"\" gname=\"\" size=0 mtime=0\n" +
		"0 .wh.gone2 mode=00000 uid=0 gid=0 uname=\"\" gname=\"\" size=0 mtime=0\n" +
		"0 added mode=00644 uid=0 gid=0 uname=\"\" gname=\"\" size=5 mtime=1700000000000000000 sha256=" + sha("added") + "\n" +
		"5 opq/ mode=00755 uid=0 gid=0 uname=\"\" gname=\"\" size=0 mtime=1700000000000000000\n" +
		"0 opq/.wh..wh..opq mode=00000 uid=0 gid=0 uname=\"\" gname=\"\" size=0 mtime=0\n" +
		"0 opq/new mode=00644 uid=0 gid=0 uname=\"\" gname=\"\" size=3 mtime=1700000000000000000 sha256=" + sha("new") + "\n"
	if got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
}

func sha(s string) string { return fmt.Sprintf("%x", sha256.Sum256([]byte(s))) }
