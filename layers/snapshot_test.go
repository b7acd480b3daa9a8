//go:build linux

package layers_test

// Conformance suite of the snapshotters: every case runs against overlay
// and copy; both must write the same layers (same diffIDs), matching the
// golden listing in testdata/snapshots/, that reproduce the step's rootfs
// when extracted, and a Prepare on top of them must give exactly what a
// fresh extraction gives (times included).

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"

	"github.com/imgbuild/imgbuild/layers"
	"github.com/imgbuild/imgbuild/registry/registrytest"
)

// snapKinds are the snapshotters of the conformance suite.
var snapKinds = []string{layers.SnapshotterOverlay, layers.SnapshotterCopy}

// baseEnts is the base layer of the conformance cases (mtimes testTime).
func baseEnts() []ent {
	return []ent{
		dirE("bin/", 0o755), fileE("bin/sh", "#!shell", 0o755),
		fileE("bin/hard1", "shared", 0o644), linkE("bin/hard2", "bin/hard1"),
		dirE("data/", 0o755), fileE("data/x", "x", 0o644), fileE("data/y", "y", 0o644),
		dirE("data/sub/", 0o700), fileE("data/sub/z", "z", 0o600),
		dirE("dev/", 0o755),
		dirE("etc/", 0o755), fileE("etc/group", "root:x:0:\n", 0o644),
		fileE("etc/hosts", "127.0.0.1 localhost\n", 0o644), fileE("etc/passwd", "root:x:0:0::/root:/bin/sh\n", 0o644),
		dirE("home/", 0o755), dirE("home/app/", 0o750).with(owner(1000, 1000)),
		fileE("home/app/.profile", "PS1=$\n", 0o644).with(owner(1000, 1000)),
		dirE("opt/", 0o755), fileE("opt/tool", "tool", 0o755),
		dirE("tmp/", 0o1777),
		dirE("usr/", 0o755), dirE("usr/lib/", 0o755), fileE("usr/lib/libc.so", "libc", 0o644),
		symE("usr/lib/libc.so.6", "libc.so"),
		dirE("var/", 0o755), dirE("var/cache/", 0o755), dirE("var/cache/apt/", 0o755),
		fileE("var/cache/apt/a", "a", 0o644), dirE("var/cache/apt/sub/", 0o755), fileE("var/cache/apt/sub/b", "b", 0o644),
	}
}

// fsOps changes a step's rootfs with plain file operations.
type fsOps struct {
	t   *testing.T
	dir string
}

func (o fsOps) p(rel string) string { return filepath.Join(o.dir, rel) }

func (o fsOps) do(err error) {
	o.t.Helper()
	if err != nil {
		o.t.Fatal(err)
	}
}

func (o fsOps) write(rel, body string, mode uint32) {
	o.t.Helper()
	o.do(os.WriteFile(o.p(rel), []byte(body), 0o600))
	o.do(unix.Chmod(o.p(rel), mode)) // raw bits: setuid, setgid
}

func (o fsOps) mkdirs(rel string) { o.t.Helper(); o.do(os.MkdirAll(o.p(rel), 0o755)) }
func (o fsOps) rm(rel string)     { o.t.Helper(); o.do(os.RemoveAll(o.p(rel))) }

func (o fsOps) want(rel, body string) {
	o.t.Helper()
	b, err := os.ReadFile(o.p(rel))
	if err != nil || string(b) != body {
		o.t.Fatalf("%s = %q, %v; want %q", rel, b, err, body)
	}
}

func (o fsOps) absent(rel string) {
	o.t.Helper()
	if _, err := os.Lstat(o.p(rel)); !os.IsNotExist(err) {
		o.t.Fatalf("%s exists (%v)", rel, err)
	}
}

func (o fsOps) socket(rel string) {
	o.t.Helper()
	l, err := net.Listen("unix", o.p(rel))
	o.do(err)
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	o.do(l.Close())
}

type snapCase struct {
	name  string
	steps []func(o fsOps) // one committed layer each, stacked
}

func one(name string, f func(o fsOps)) snapCase { return snapCase{name, []func(fsOps){f}} }

func snapCases() []snapCase {
	return append(fileCases(), treeCases()...)
}

// fileCases change, delete and replace files.
func fileCases() []snapCase {
	return []snapCase{
		one("add-file", func(o fsOps) { o.write("etc/new.conf", "new", 0o644) }),
		one("modify-file", func(o fsOps) {
			f, err := os.OpenFile(o.p("etc/passwd"), os.O_APPEND|os.O_WRONLY, 0)
			o.do(err)
			_, err = f.WriteString("app:x:1000:1000::/home/app:/bin/sh\n")
			o.do(err)
			o.do(f.Close())
		}),
		one("chmod-only", func(o fsOps) { o.do(os.Chmod(o.p("etc/hosts"), 0o600)) }),
		one("chown-only", func(o fsOps) { o.do(os.Lchown(o.p("etc/hosts"), 1000, 1000)) }),
		one("touch-only", func(o fsOps) { o.do(os.Chtimes(o.p("etc/hosts"), testTime, testTime.Add(3600e9))) }),
		one("same-size-rewrite-same-mtime", func(o fsOps) {
			o.do(os.WriteFile(o.p("etc/hosts"), []byte("127.0.0.2 localhost\n"), 0o644))
			o.do(os.Chtimes(o.p("etc/hosts"), testTime, testTime))
		}),
		// A file created and removed again (a RUN mount stub) changes only its
		// directory's times: BuildKit's differ records nothing.
		one("stub-created-and-removed", func(o fsOps) { o.write("etc/stub", "", 0o644); o.rm("etc/stub") }),
		one("dir-created-and-removed", func(o fsOps) { o.mkdirs("data/sub/tmp"); o.rm("data/sub/tmp") }),
		one("opened-for-write-unchanged", func(o fsOps) {
			f, err := os.OpenFile(o.p("etc/passwd"), os.O_APPEND|os.O_WRONLY, 0)
			o.do(err)
			o.do(f.Close())
		}),
		one("delete-file", func(o fsOps) { o.rm("etc/group") }),
		one("delete-dir", func(o fsOps) { o.rm("var/cache/apt") }),
		one("delete-nested-then-parent", func(o fsOps) { o.rm("data/sub/z"); o.rm("data/sub") }),
		one("recreate-dir", func(o fsOps) {
			o.rm("data")
			o.mkdirs("data")
			o.write("data/x", "new x", 0o644)
			o.write("data/new", "new", 0o600)
		}),
		one("recreate-file", func(o fsOps) { o.rm("etc/passwd"); o.write("etc/passwd", "root", 0o600) }),
		one("rename-file", func(o fsOps) { o.do(os.Rename(o.p("etc/hosts"), o.p("etc/hosts.bak"))) }),
		one("xattrs", func(o fsOps) {
			o.write("etc/x", "x", 0o644)
			o.do(unix.Lsetxattr(o.p("etc/x"), "user.foo", []byte("bar"), 0))
			o.do(unix.Lsetxattr(o.p("bin/sh"), "security.capability", []byte(capNetBind), 0))
		}),
		one("setuid-setgid", func(o fsOps) {
			o.write("bin/su", "su", 0o4755)
			o.do(unix.Chmod(o.p("bin/sh"), 0o2755))
			o.do(unix.Chmod(o.p("data/sub"), 0o2770))
		}),
	}
}

// treeCases change directories, links and special files, and stack steps.
func treeCases() []snapCase {
	return []snapCase{
		one("file-to-dir", func(o fsOps) { o.rm("opt/tool"); o.mkdirs("opt/tool"); o.write("opt/tool/bin", "b", 0o755) }),
		one("dir-to-file", func(o fsOps) { o.rm("var/cache/apt"); o.write("var/cache/apt", "file", 0o644) }),
		one("symlinks", func(o fsOps) {
			o.do(os.Symlink("libc.so", o.p("usr/lib/libfoo.so")))
			o.rm("usr/lib/libc.so.6")
			o.do(os.Symlink("libfoo.so", o.p("usr/lib/libc.so.6")))
			o.do(os.Symlink("/etc/passwd", o.p("etc/pw")))
		}),
		one("hardlinks", func(o fsOps) {
			o.mkdirs("usr/local/bin")
			o.write("usr/local/bin/a", "a", 0o755)
			o.do(os.Link(o.p("usr/local/bin/a"), o.p("usr/local/bin/b")))
			o.do(os.Link(o.p("bin/sh"), o.p("bin/sh2"))) // link to a lower file
		}),
		one("device-nodes", func(o fsOps) {
			o.do(unix.Mknod(o.p("dev/null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
			o.do(unix.Mknod(o.p("dev/loop0"), unix.S_IFBLK|0o660, int(unix.Mkdev(7, 0))))
			o.do(unix.Chmod(o.p("dev/null"), 0o666))
		}),
		one("fifo", func(o fsOps) { o.do(unix.Mkfifo(o.p("tmp/fifo"), 0o644)) }),
		one("socket-skipped", func(o fsOps) { o.socket("tmp/app.sock"); o.write("tmp/keep", "k", 0o644) }),
		one("socket-in-root-only", func(o fsOps) { o.socket("s.sock") }),
		one("dir-mode-owner", func(o fsOps) {
			o.do(os.Chmod(o.p("home/app"), 0o700))
			o.do(os.Lchown(o.p("usr/lib"), 0, 50))
		}),
		one("deep-new-tree", func(o fsOps) {
			o.mkdirs("srv/a/b/c/d/e/f")
			o.write("srv/a/1", "1", 0o644)
			o.write("srv/a/b/c/3", "3", 0o644)
			o.write("srv/a/b/c/d/e/f/6", "6", 0o644)
		}),
		one("empty-diff", func(o fsOps) {
			o.want("etc/passwd", "root:x:0:0::/root:/bin/sh\n")
			_, err := os.ReadDir(o.p("var/cache/apt"))
			o.do(err)
		}),
		{"stacked", []func(fsOps){
			func(o fsOps) {
				o.mkdirs("app")
				o.write("app/main", "v1", 0o755)
				o.write("app/lib", "lib", 0o644)
				o.rm("etc/group")
			},
			func(o fsOps) {
				o.want("app/main", "v1")
				o.absent("etc/group")
				o.write("app/main", "v2", 0o755)
				o.rm("app/lib")
				o.write("etc/group", "wheel:x:10:\n", 0o644)
			},
		}},
		{"stacked-opaque", []func(fsOps){
			func(o fsOps) { o.rm("data"); o.mkdirs("data"); o.write("data/n1", "1", 0o644) },
			func(o fsOps) {
				o.absent("data/x")
				o.absent("data/sub")
				o.want("data/n1", "1")
				o.write("data/n2", "2", 0o644)
				o.rm("data/n1")
			},
		}},
	}
}

// snapEnv is one snapshotter with its store and the base layer in it.
type snapEnv struct {
	sn   layers.Snapshotter
	base v1.Layer
}

func TestSnapshotConformance(t *testing.T) {
	registrytest.RequireRoot(t)
	envs := map[string]snapEnv{}
	for _, kind := range snapKinds {
		s := snapStore(t)
		envs[kind] = snapEnv{newSnap(t, s, kind, layers.SnapshotOptions{}), storeLayerOf(t, s, baseEnts()...)}
	}
	for _, tc := range snapCases() {
		t.Run(tc.name, func(t *testing.T) {
			diffIDs := map[string][]string{}
			var golden string
			for _, kind := range snapKinds {
				var listings []string
				diffIDs[kind], listings = runSnapCase(t, envs[kind], tc)
				if kind == layers.SnapshotterCopy {
					golden = strings.Join(listings, "")
				}
			}
			o, c := diffIDs[layers.SnapshotterOverlay], diffIDs[layers.SnapshotterCopy]
			if strings.Join(o, " ") != strings.Join(c, " ") {
				t.Errorf("diffIDs differ:\noverlay %v\ncopy    %v", o, c)
			}
			checkGoldenFile(t, filepath.Join("snapshots", tc.name+".golden"), golden)
		})
	}
}

// runSnapCase runs the steps of tc with kind and returns the diffID
// ("none" for no layer) and listing of each step's layer.
func runSnapCase(t *testing.T, env snapEnv, tc snapCase) (diffIDs, listings []string) {
	ctx := context.Background()
	sn, kind := env.sn, env.sn.Kind()
	parent := []v1.Layer{env.base}
	opts := layers.CommitOptions{SourceDateEpoch: &testTime}
	for i, step := range tc.steps {
		m := prepare(t, sn, parent)
		step(fsOps{t, m.Dir})
		before := view(t, m.Dir, false)
		l, err := sn.Commit(ctx, m, opts)
		if err != nil {
			t.Fatalf("%s step %d: Commit: %v", kind, i, err)
		}
		if err := sn.Release(ctx, m); err != nil {
			t.Fatalf("%s step %d: Release: %v", kind, i, err)
		}
		listings = append(listings, layerListing(t, l))
		if l == nil {
			diffIDs = append(diffIDs, "none")
		} else {
			h, err := l.DiffID()
			if err != nil {
				t.Fatal(err)
			}
			diffIDs = append(diffIDs, h.Hex)
			parent = append(parent, l)
		}
		// Hard links are compared through the layers' tar entries: the st_ino
		// of overlayfs's merged view is not stable across copy-up.
		sameView(t, kind+": step rootfs vs extraction of its layers", noLinks(view(t, applyAll(t, parent), false)), noLinks(before))
	}
	m := prepare(t, sn, parent)
	sameView(t, kind+": Prepare on the committed layers vs their extraction", view(t, m.Dir, true), view(t, applyAll(t, parent), true))
	return diffIDs, listings
}

// noLinks drops the hard link groups of view lines.
func noLinks(lines []string) []string {
	out := make([]string, len(lines))
	for i, l := range lines {
		out[i] = linkGroup.ReplaceAllString(l, "")
	}
	return out
}

var linkGroup = regexp.MustCompile(` =[^ ]+`)

func TestSnapshotCommitTwice(t *testing.T) {
	registrytest.RequireRoot(t)
	ctx := context.Background()
	for _, kind := range snapKinds {
		s := snapStore(t)
		sn := newSnap(t, s, kind, layers.SnapshotOptions{})
		m := prepare(t, sn, []v1.Layer{storeLayerOf(t, s, baseEnts()...)})
		fsOps{t, m.Dir}.write("f", "f", 0o644)
		if l, err := sn.Commit(ctx, m, layers.CommitOptions{}); err != nil || l == nil {
			t.Fatalf("%s: Commit: %v, %v", kind, l, err)
		}
		if _, err := sn.Commit(ctx, m, layers.CommitOptions{}); err == nil {
			t.Errorf("%s: second Commit succeeded", kind)
		}
		for i := 0; i < 2; i++ {
			if err := sn.Release(ctx, m); err != nil {
				t.Errorf("%s: Release %d: %v", kind, i, err)
			}
		}
	}
}

func TestSnapshotFromScratch(t *testing.T) {
	registrytest.RequireRoot(t)
	var ids []string
	for _, kind := range snapKinds {
		s := snapStore(t)
		sn := newSnap(t, s, kind, layers.SnapshotOptions{})
		m := prepare(t, sn, nil)
		if got := view(t, m.Dir, false); len(got) != 0 {
			t.Errorf("%s: scratch rootfs not empty: %v", kind, got)
		}
		fsOps{t, m.Dir}.write("hello", "world", 0o644)
		l, err := sn.Commit(context.Background(), m, layers.CommitOptions{SourceDateEpoch: &testTime})
		if err != nil || l == nil {
			t.Fatalf("%s: Commit: %v, %v", kind, l, err)
		}
		h, _ := l.DiffID()
		ids = append(ids, h.Hex)
	}
	if ids[0] != ids[1] {
		t.Errorf("diffIDs differ: %v", ids)
	}
}

func TestNewSnapshotterKinds(t *testing.T) {
	registrytest.RequireRoot(t)
	s := snapStore(t)
	auto, err := layers.NewSnapshotter(context.Background(), s, "", layers.SnapshotOptions{})
	if err != nil || auto.Kind() != layers.SnapshotterOverlay {
		t.Errorf("auto as root on %s: %v, %v (want overlay)", s.Root(), auto, err)
	}
	if _, err := layers.NewSnapshotter(context.Background(), s, "zfs", layers.SnapshotOptions{}); err == nil {
		t.Error("unknown kind accepted")
	}
	if _, err := layers.NewSnapshotter(context.Background(), s, "copy", layers.SnapshotOptions{MaxLowers: 1}); err == nil {
		t.Error("MaxLowers 1 accepted")
	}
}
