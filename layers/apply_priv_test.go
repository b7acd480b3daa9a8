//go:build linux

package layers_test

// Apply as root (owners, device nodes, trusted.* and security.* xattrs) and
// as an unprivileged user (re-executing the test binary as nobody).

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/imgbuild/imgbuild/layers"
	"github.com/imgbuild/imgbuild/registry/registrytest"
)

func owner(uid, gid int) func(h *tar.Header) {
	return func(h *tar.Header) { h.Uid, h.Gid = uid, gid }
}

func lstat(t *testing.T, p string) *unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return &st
}

// capNetBind is a security.capability value: VFS_CAP_REVISION_2 with
// CAP_NET_BIND_SERVICE permitted.
const capNetBind = "\x00\x00\x00\x02\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"

func TestApplyOwnersAsRoot(t *testing.T) {
	registrytest.RequireRoot(t)
	root := t.TempDir()
	mustApply(t, root, layers.ApplyOptions{}, fileE("d/su", "old", 0o644))
	mustApply(t, root, layers.ApplyOptions{},
		dirE("d", 0o2775).with(owner(1000, 2000)),
		fileE("d/su", "x", 0o4755).with(owner(1234, 5678)),
		fileE("d/sg", "x", 0o2755).with(owner(1234, 5678)),
		symE("d/l", "su").with(owner(42, 43)),
		ent{hdr: tar.Header{Typeflag: tar.TypeFifo, Name: "d/p", Mode: 0o640, Uid: 7, Gid: 8}},
		linkE("d/h", "d/su").with(owner(99, 99)),
	)
	for _, c := range []struct {
		path     string
		uid, gid uint32
		mode     uint32
	}{
		{"d", 1000, 2000, unix.S_IFDIR | 0o2775},
		{"d/su", 1234, 5678, unix.S_IFREG | 0o4755},
		{"d/sg", 1234, 5678, unix.S_IFREG | 0o2755},
		{"d/l", 42, 43, unix.S_IFLNK | 0o777},
		{"d/p", 7, 8, unix.S_IFIFO | 0o640},
		{"d/h", 1234, 5678, unix.S_IFREG | 0o4755},
	} {
		st := lstat(t, filepath.Join(root, c.path))
		if st.Uid != c.uid || st.Gid != c.gid || st.Mode != c.mode {
			t.Errorf("%s: %d:%d mode %o, want %d:%d %o", c.path, st.Uid, st.Gid, st.Mode, c.uid, c.gid, c.mode)
		}
	}
}

func TestApplyNoChownAsRoot(t *testing.T) {
	registrytest.RequireRoot(t)
	root := t.TempDir()
	mustApply(t, root, layers.ApplyOptions{NoChown: true}, fileE("f", "x", 0o4755).with(owner(1234, 5678)), symE("l", "f").with(owner(1, 1)))
	for _, p := range []string{"f", "l"} {
		if st := lstat(t, filepath.Join(root, p)); st.Uid != 0 || st.Gid != 0 {
			t.Errorf("%s owned by %d:%d with NoChown, want 0:0", p, st.Uid, st.Gid)
		}
	}
	if st := lstat(t, filepath.Join(root, "f")); st.Mode&0o7777 != 0o4755 {
		t.Errorf("f mode %o, want 4755", st.Mode&0o7777)
	}
}

func TestApplyDevicesAsRoot(t *testing.T) {
	registrytest.RequireRoot(t)
	root := t.TempDir()
	mustApply(t, root, layers.ApplyOptions{},
		ent{hdr: tar.Header{Typeflag: tar.TypeChar, Name: "dev/null", Mode: 0o666, Devmajor: 1, Devminor: 3, Uid: 5, Gid: 6}},
		ent{hdr: tar.Header{Typeflag: tar.TypeBlock, Name: "dev/loop0", Mode: 0o660, Devmajor: 7, Devminor: 0}},
		fileE("dev/tty", "replaced by a device", 0o644),
		ent{hdr: tar.Header{Typeflag: tar.TypeChar, Name: "dev/tty", Mode: 0o620, Devmajor: 5, Devminor: 0}},
	)
	wantTree(t, root, "dev/ d 0755", "dev/loop0 b 0660 7:0", "dev/null c 0666 1:3", "dev/tty c 0620 5:0")
	if st := lstat(t, filepath.Join(root, "dev/null")); st.Uid != 5 || st.Gid != 6 {
		t.Errorf("dev/null owned by %d:%d, want 5:6", st.Uid, st.Gid)
	}
}

func TestApplyPrivilegedXattrs(t *testing.T) {
	registrytest.RequireRoot(t)
	root := t.TempDir()
	mustApply(t, root, layers.ApplyOptions{},
		dirE("d", 0o755).with(xattr("trusted.dir", "td")),
		fileE("d/ping", "x", 0o755).with(owner(1, 1)).with(xattr("security.capability", capNetBind)).with(xattr("trusted.f", "tf")),
		symE("d/l", "ping").with(xattr("trusted.sym", "ts")),
	)
	for _, c := range []struct{ path, name, value string }{
		{"d", "trusted.dir", "td"}, {"d/ping", "trusted.f", "tf"},
		{"d/ping", "security.capability", capNetBind}, {"d/l", "trusted.sym", "ts"},
	} {
		buf := make([]byte, 64)
		n, err := unix.Lgetxattr(filepath.Join(root, c.path), c.name, buf)
		if err != nil || string(buf[:n]) != c.value {
			t.Errorf("%s %s = %q, %v; want %q", c.path, c.name, buf[:max(n, 0)], err, c.value)
		}
	}
}

// TestApplyUnprivileged runs TestApplyUnprivilegedChild as nobody: devices
// are skipped, privileged xattrs ignored, user.* xattrs and modes kept, and
// chown without NoChown fails.
func TestApplyUnprivileged(t *testing.T) {
	registrytest.RequireRoot(t)
	cmd, work := nobodyTestCmd(t, "imgbuild-apply-unpriv", "TestApplyUnprivilegedChild")
	cmd.Env = append(cmd.Env, "IMGBUILD_APPLY_CHILD_DIR="+work)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestApplyUnprivilegedChild") {
		t.Fatalf("child as nobody: %v\n%s", err, out)
	}
}

// nobodyTestCmd prepares a run of the test named test by a copy of the test
// binary as nobody (65534), in a temporary directory nobody can reach, with
// a work directory nobody owns. Root-only gating is switched off in it.
func nobodyTestCmd(t *testing.T, prefix, test string) (cmd *exec.Cmd, work string) {
	t.Helper()
	dir, bin := testBinaryCopy(t, prefix)
	work = filepath.Join(dir, "work")
	if err := os.Mkdir(work, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(work, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd = exec.Command(bin, "-test.run=^"+test+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), registrytest.RequireRootEnv+"=")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	return cmd, work
}

// testBinaryCopy copies the running test binary into a new temporary
// directory (removed at cleanup), for re-running tests as another user or in
// another namespace, and returns the directory and the copy.
func testBinaryCopy(t *testing.T, prefix string) (dir, bin string) {
	t.Helper()
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin = filepath.Join(dir, "layers.test")
	if err := copyFile(exe, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir, bin
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func TestApplyUnprivilegedChild(t *testing.T) {
	work := os.Getenv("IMGBUILD_APPLY_CHILD_DIR")
	if work == "" {
		t.Skip("[allowed-skip] helper process, run by TestApplyUnprivileged")
	}
	if os.Geteuid() == 0 {
		t.Fatal("child runs as root")
	}
	root := filepath.Join(work, "root")
	opts := layers.ApplyOptions{NoChown: true}
	mustApply(t, root, opts,
		dirE("ro", 0o555).with(xattr("trusted.x", "ignored")).with(xattr("user.x", "kept")),
		fileE("ro/su", "x", 0o4700).with(owner(0, 0)).with(xattr("security.capability", capNetBind)),
		dirE("ro/sub", 0o500), fileE("ro/sub/f", "f", 0o400),
		ent{hdr: tar.Header{Typeflag: tar.TypeChar, Name: "dev/null", Mode: 0o666, Devmajor: 1, Devminor: 3}},
		ent{hdr: tar.Header{Typeflag: tar.TypeFifo, Name: "dev/fifo", Mode: 0o600}},
	)
	wantTree(t, root, "dev/ d 0755", "dev/fifo p 0600 0:0", "ro/ d 0555", "ro/su f 4700 \"x\"", "ro/sub/ d 0500", "ro/sub/f f 0400 \"f\"")
	buf := make([]byte, 16)
	if n, err := unix.Lgetxattr(filepath.Join(root, "ro"), "user.x", buf); err != nil || string(buf[:n]) != "kept" {
		t.Errorf("ro user.x = %q, %v", buf[:max(n, 0)], err)
	}
	err := layers.Apply(context.Background(), filepath.Join(work, "root2"), bytes.NewReader(mkTar(t, fileE("f", "x", 0o644).with(owner(0, 0)))), layers.ApplyOptions{})
	if !errors.Is(err, unix.EPERM) {
		t.Errorf("Apply as nobody without NoChown: %v, want EPERM", err)
	}
}
