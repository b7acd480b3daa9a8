//go:build linux

package layers_test

// The snapshotters as root of a user namespace (a rootless build): overlay
// mounts with userxattr, layer trees mark opaque directories with
// user.overlay.opaque ("-u" trees), and both kinds still write the same
// layers.

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"

	"github.com/imgbuild/imgbuild/layers"
	"github.com/imgbuild/imgbuild/registry/registrytest"
)

// usernsBase is the first host id mapped into the child's user namespace.
const usernsBase = 100000

func TestSnapshotUserNamespace(t *testing.T) {
	registrytest.RequireRoot(t)
	dir, bin := testBinaryCopy(t, "imgbuild-snap-userns")
	store := filepath.Join(dir, "store")
	if err := os.Mkdir(store, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(store, usernsBase, usernsBase); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^TestSnapshotUserNamespaceChild$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), "IMGBUILD_SNAPSHOT_USERNS_STORE="+store, registrytest.RequireRootEnv+"=")
	idmap := []syscall.SysProcIDMap{{ContainerID: 0, HostID: usernsBase, Size: 65536}}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:                 syscall.CLONE_NEWUSER | syscall.CLONE_NEWNS,
		UidMappings:                idmap,
		GidMappings:                idmap,
		GidMappingsEnableSetgroups: true,
		Credential:                 &syscall.Credential{Uid: 0, Gid: 0},
	}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestSnapshotUserNamespaceChild") {
		t.Fatalf("child in a user namespace: %v\n%s", err, out)
	}
}

func TestSnapshotUserNamespaceChild(t *testing.T) {
	root := os.Getenv("IMGBUILD_SNAPSHOT_USERNS_STORE")
	if root == "" {
		t.Skip("[allowed-skip] helper process, run by TestSnapshotUserNamespace")
	}
	ctx := context.Background()
	s, err := layers.OpenStore(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string]bool{"delete-dir": true, "recreate-dir": true, "hardlinks": true, "chown-only": true,
		"setuid-setgid": true, "stacked": true, "stacked-opaque": true, "socket-skipped": true}
	base := storeLayerOf(t, s, append(baseEnts(), fileE(".wh.gone", "", 0))...)
	diffIDs := map[string]string{}
	for _, kind := range snapKinds {
		sn, err := layers.NewSnapshotter(ctx, s, kind, layers.SnapshotOptions{})
		if err != nil {
			t.Fatalf("NewSnapshotter(%s) in a user namespace: %v", kind, err)
		}
		defer sn.Close()
		env := snapEnv{sn, base}
		for _, tc := range snapCases() {
			if !cases[tc.name] {
				continue
			}
			ids, listings := runSnapCase(t, env, tc)
			checkGoldenFile(t, filepath.Join("snapshots", tc.name+".golden"), strings.Join(listings, ""))
			if other, ok := diffIDs[tc.name]; ok && other != strings.Join(ids, " ") {
				t.Errorf("%s: diffIDs differ between overlay and copy: %s, %v", tc.name, other, ids)
			}
			diffIDs[tc.name] = strings.Join(ids, " ")
		}
	}
	// The overlay trees use user.overlay.opaque.
	ents, err := os.ReadDir(filepath.Join(root, "layers"))
	if err != nil {
		t.Fatal(err)
	}
	var opaque int
	for _, e := range ents {
		if !e.IsDir() || !strings.HasSuffix(e.Name(), "-u") {
			continue
		}
		buf := make([]byte, 4)
		if n, err := unix.Lgetxattr(filepath.Join(root, "layers", e.Name(), "data"), "user.overlay.opaque", buf); err == nil && string(buf[:n]) == "y" {
			opaque++
		}
	}
	if opaque == 0 {
		t.Error("no layer tree marks data/ opaque with user.overlay.opaque")
	}
}

// TestNewSnapshotterFallsBackToCopy puts the store on overlayfs, which
// cannot be an upperdir (as inside a container whose root is overlay):
// auto picks copy, overlay fails clearly, and copy works.
func TestNewSnapshotterFallsBackToCopy(t *testing.T) {
	registrytest.RequireRoot(t)
	dir := t.TempDir()
	for _, d := range []string{"l", "u", "w", "m"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	p := func(d string) string { return filepath.Join(dir, d) }
	if err := unix.Mount("overlay", p("m"), "overlay", 0, "lowerdir="+p("l")+",upperdir="+p("u")+",workdir="+p("w")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(p("m"), unix.MNT_DETACH); err != nil {
			t.Error(err)
		}
	})
	ctx := context.Background()
	s, err := layers.OpenStore(ctx, filepath.Join(p("m"), "store"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := layers.NewSnapshotter(ctx, s, layers.SnapshotterOverlay, layers.SnapshotOptions{}); err == nil {
		t.Error("overlay snapshotter in a store on overlayfs: no error")
	}
	sn, err := layers.NewSnapshotter(ctx, s, layers.SnapshotterAuto, layers.SnapshotOptions{})
	if err != nil || sn.Kind() != layers.SnapshotterCopy {
		t.Fatalf("auto in a store on overlayfs: %v, %v; want copy", sn, err)
	}
	t.Cleanup(func() {
		if err := sn.Close(); err != nil {
			t.Error(err)
		}
	})
	m := prepare(t, sn, []v1.Layer{storeLayerOf(t, s, baseEnts()...)})
	fsOps{t, m.Dir}.write("etc/new.conf", "new", 0o644)
	l, err := sn.Commit(ctx, m, layers.CommitOptions{SourceDateEpoch: &testTime})
	if err != nil {
		t.Fatal(err)
	}
	checkGoldenFile(t, filepath.Join("snapshots", "add-file.golden"), layerListing(t, l))
}

// TestCopySnapshotterUnprivileged runs the copy snapshotter as nobody
// (re-executing the test binary when run as root): auto picks copy, layers
// extract without chown, read-only directories are no obstacle, and the
// scratch tree goes on Release.
func TestCopySnapshotterUnprivileged(t *testing.T) {
	if os.Geteuid() != 0 {
		unprivilegedCopy(t, t.TempDir())
		return
	}
	cmd, work := nobodyTestCmd(t, "imgbuild-snap-nobody", "TestCopySnapshotterUnprivileged")
	cmd.Env = append(cmd.Env, "TMPDIR="+work)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestCopySnapshotterUnprivileged") {
		t.Fatalf("child as nobody: %v\n%s", err, out)
	}
}

func unprivilegedCopy(t *testing.T, root string) {
	ctx := context.Background()
	s, err := layers.OpenStore(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	sn, err := layers.NewSnapshotter(ctx, s, layers.SnapshotterAuto, layers.SnapshotOptions{NoChown: true})
	if err != nil || sn.Kind() != layers.SnapshotterCopy {
		t.Fatalf("auto as %d: %v, %v; want copy", os.Geteuid(), sn, err)
	}
	base := storeLayerOf(t, s, append(baseEnts(), dirE("ro/", 0o555), fileE("ro/f", "f", 0o444))...)
	m, err := sn.Prepare(ctx, []v1.Layer{base})
	if err != nil {
		t.Fatal(err)
	}
	o := fsOps{t, m.Dir}
	o.write("etc/new.conf", "new", 0o644)
	o.rm("etc/group")
	o.rm("data")
	o.mkdirs("data")
	l, err := sn.Commit(ctx, m, layers.CommitOptions{})
	if err != nil || l == nil {
		t.Fatalf("Commit: %v, %v", l, err)
	}
	var got []string
	for _, e := range parseTar(t, uncompressed(t, l)) {
		got = append(got, e.hdr.Name)
	}
	want := "data/ data/.wh..wh..opq etc/ etc/.wh.group etc/new.conf"
	if strings.Join(got, " ") != want {
		t.Errorf("layer entries %q, want %q", got, want)
	}
	if err := sn.Release(ctx, m); err != nil {
		t.Fatal(err)
	}
	if err := sn.Close(); err != nil {
		t.Fatalf("Close (removing a tree with read-only directories): %v", err)
	}
	if ents, _ := os.ReadDir(filepath.Join(root, "snapshots")); len(ents) != 1 {
		t.Errorf("snapshots/ after Close: %v, want only its lock", ents)
	}
}
