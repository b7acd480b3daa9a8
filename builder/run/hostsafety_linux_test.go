package run_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/imgbuild/imgbuild/builder/run"
)

// TestHostUntouched runs the "bad input" steps and checks that the
// host's /dev/null and the test binary (the sandbox init) are unchanged.
func TestHostUntouched(t *testing.T) {
	ex, _ := newExecutor(t)
	root := busyboxRootfs(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	exeSum := fileSum(t, exe)
	var nullBefore unix.Stat_t
	if err := unix.Stat("/dev/null", &nullBefore); err != nil {
		t.Fatal(err)
	}
	marker := filepath.Join(t.TempDir(), "host-marker")
	if err := os.WriteFile(marker, []byte("host"), 0o644); err != nil {
		t.Fatal(err)
	}
	checks := []struct{ cmd, want string }{
		{"chmod 777 /dev/null", "denied"},
		{"chown 1:1 /dev/null", "denied"},
		{"chmod 777 /proc/keys", "denied"}, // masked by the host's /dev/null
		{"echo x > /dev/null", "ok"},
		{"echo garbage > /proc/1/exe", "denied"},
		{"echo garbage > /proc/self/exe", "denied"},
		{"cat /proc/1/exe > /dev/null", "denied"},
		{"ls /proc/1/root/", "denied"},
		{"cat /proc/1/environ", "denied"},
		{"readlink /proc/1/fd/0", "denied"},
		{"ls /proc/1/cwd/", "denied"},
		{"test -e " + marker, "denied"},
		{"echo 1 > /proc/sys/vm/drop_caches", "denied"},
		{"echo h > /proc/sysrq-trigger", "denied"},
		{"test -s /proc/kcore", "denied"},
		{"mount -t tmpfs none /tmp", "denied"},
		{"umount /etc/hosts", "denied"},
		{"mount -o remount,rw /sys", "denied"},
		{"echo 1 > /sys/kernel/profiling", "denied"},
	}
	var script, want strings.Builder
	for _, c := range checks {
		fmt.Fprintf(&script, "(%s) >/dev/null 2>&1 && echo 'ok: %s' || echo 'denied: %s'\n", c.cmd, c.cmd, c.cmd)
		fmt.Fprintf(&want, "%s: %s\n", c.want, c.cmd)
	}
	got := mustRun(t, ex, sh(root, script.String()))
	if got != want.String() {
		t.Errorf("got:\n%s\nwant:\n%s", got, want.String())
	}
	var nullAfter unix.Stat_t
	if err := unix.Stat("/dev/null", &nullAfter); err != nil {
		t.Fatal(err)
	}
	if nullAfter.Mode != nullBefore.Mode || nullAfter.Uid != nullBefore.Uid || nullAfter.Gid != nullBefore.Gid {
		t.Errorf("host /dev/null changed: mode %o owner %d:%d, was %o %d:%d",
			nullAfter.Mode, nullAfter.Uid, nullAfter.Gid, nullBefore.Mode, nullBefore.Uid, nullBefore.Gid)
	}
	if sum := fileSum(t, exe); sum != exeSum {
		t.Errorf("the test binary changed: sha256 %s, was %s", sum, exeSum)
	}
}

// TestCwdThroughProcFd is CVE-2024-21626: a working directory reached
// through a file descriptor the init holds would be outside the root.
func TestCwdThroughProcFd(t *testing.T) {
	ex, _ := newExecutor(t)
	root := busyboxRootfs(t)
	for fd := 3; fd < 16; fd++ {
		for _, cwd := range []string{fmt.Sprintf("/proc/self/fd/%d", fd), fmt.Sprintf("/proc/1/fd/%d", fd)} {
			out, _, err := runSpec(t, ex, run.Spec{Rootfs: root, Args: []string{"/bin/pwd"}, Cwd: cwd})
			var exit *run.ExitError
			if err == nil || errors.As(err, &exit) {
				t.Errorf("Cwd %s: err %v, output %q; want a sandbox error", cwd, err, out)
			}
		}
	}
}
