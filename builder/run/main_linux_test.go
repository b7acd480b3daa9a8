package run_test

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"golang.org/x/sys/unix"

	"github.com/imgbuild/imgbuild/builder/run"
	"github.com/imgbuild/imgbuild/registry/registrytest"
)

// TestMain makes the test binary the sandbox init when an Executor
// re-executes it: the pattern every package running RUN steps in its tests
// must follow.
func TestMain(m *testing.M) {
	if run.Init() {
		return
	}
	if os.Getenv(helperRootEnv) != "" {
		os.Exit(helperMain())
	}
	os.Exit(m.Run())
}

// busyboxRootfs extracts registrytest.BusyboxImage into a new directory
// (a trusted in-process image: directories, files, hard links and
// symlinks, with owners, modes and times).
func busyboxRootfs(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	rc := mutate.Extract(registrytest.BusyboxImage(t))
	defer rc.Close()
	tr := tar.NewReader(rc)
	var dirs []*tar.Header
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, filepath.Clean("/"+h.Name))
		switch h.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(p, 0o755)
			dirs = append(dirs, h)
		case tar.TypeReg:
			err = writeFile(p, tr)
		case tar.TypeSymlink:
			err = os.Symlink(h.Linkname, p)
		case tar.TypeLink:
			err = os.Link(filepath.Join(dir, filepath.Clean("/"+h.Linkname)), p)
		}
		if err == nil && h.Typeflag != tar.TypeLink {
			err = setMeta(p, h)
		}
		if err != nil {
			t.Fatalf("extracting busybox: %s: %v", h.Name, err)
		}
	}
	for i := len(dirs) - 1; i >= 0; i-- { // children changed their times
		if err := setMeta(filepath.Join(dir, filepath.Clean("/"+dirs[i].Name)), dirs[i]); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func writeFile(p string, r io.Reader) error {
	f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(f, r)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func setMeta(p string, h *tar.Header) error {
	if err := os.Lchown(p, h.Uid, h.Gid); err != nil {
		return err
	}
	if h.Typeflag != tar.TypeSymlink {
		if err := os.Chmod(p, os.FileMode(h.Mode&0o777)|modeBits(h.Mode)); err != nil {
			return err
		}
	}
	ts := []unix.Timespec{unix.NsecToTimespec(h.ModTime.UnixNano()), unix.NsecToTimespec(h.ModTime.UnixNano())}
	return unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW)
}

func modeBits(m int64) os.FileMode {
	var b os.FileMode
	if m&0o4000 != 0 {
		b |= os.ModeSetuid
	}
	if m&0o2000 != 0 {
		b |= os.ModeSetgid
	}
	if m&0o1000 != 0 {
		b |= os.ModeSticky
	}
	return b
}

// newExecutor returns an Executor with a private state directory, after
// checking that the test runs as root.
func newExecutor(t *testing.T) (run.Executor, string) {
	t.Helper()
	registrytest.RequireRoot(t)
	state := t.TempDir()
	ex, err := run.New(run.Options{StateDir: state})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if entries, _ := os.ReadDir(state); len(entries) != 0 {
			t.Errorf("state directory not empty after the runs: %v", entries)
		}
	})
	return ex, state
}

var testEnv = []string{"PATH=" + registrytest.DefaultPath, "HOME=/root"}

// sh returns a Spec running script with busybox sh in rootfs.
func sh(rootfs, script string) run.Spec {
	return run.Spec{Rootfs: rootfs, Args: []string{"/bin/sh", "-c", script}, Env: testEnv}
}

// runSpec runs spec with a timeout and returns its stdout and stderr.
func runSpec(t *testing.T, ex run.Executor, spec run.Spec) (string, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	spec.Stdout, spec.Stderr = &stdout, &stderr
	err := ex.Run(ctx, spec)
	return stdout.String(), stderr.String(), err
}

// mustRun runs spec and fails t unless it succeeds.
func mustRun(t *testing.T, ex run.Executor, spec run.Spec) string {
	t.Helper()
	out, errOut, err := runSpec(t, ex, spec)
	if err != nil {
		t.Fatalf("Run(%q): %v\nstdout: %s\nstderr: %s", spec.Args, err, out, errOut)
	}
	return out
}

func lines(s string) []string { return strings.Split(strings.TrimRight(s, "\n"), "\n") }
