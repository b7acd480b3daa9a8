package run_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imgbuild/imgbuild/builder/run"
)

// Environment of the test binary re-executed as a process that runs a
// sandbox and gets killed (TestParentKilled).
const (
	helperRootEnv  = "IMGBUILD_RUN_TEST_HELPER_ROOT"
	helperStateEnv = "IMGBUILD_RUN_TEST_HELPER_STATE"
	helperSleepEnv = "IMGBUILD_RUN_TEST_HELPER_SLEEP"
	helperPidsEnv  = "IMGBUILD_RUN_TEST_HELPER_PIDS" // "1": set a pids limit
)

// helperMain runs `sleep N` twice in a sandbox until it is killed.
func helperMain() int {
	ex, err := run.New(run.Options{StateDir: os.Getenv(helperStateEnv)})
	if err == nil {
		n := os.Getenv(helperSleepEnv)
		spec := sh(os.Getenv(helperRootEnv), "sleep "+n+" & sleep "+n)
		if os.Getenv(helperPidsEnv) == "1" {
			spec.PidsLimit = 100
		}
		err = ex.Run(context.Background(), spec)
	}
	fmt.Fprintln(os.Stderr, "helper:", err)
	return 1
}

// sentinel is a sleep duration that identifies the processes of one test.
func sentinel() string {
	return fmt.Sprint(1_000_000 + time.Now().UnixNano()%1_000_000)
}

// sleepers returns the pids of the host's `sleep <n>` processes.
func sleepers(t *testing.T, n string) []string {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []string
	for _, e := range entries {
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && bytes.Equal(cmdline, []byte("sleep\x00"+n+"\x00")) {
			pids = append(pids, e.Name())
		}
	}
	return pids
}

// waitSleepers waits until count `sleep <n>` processes run.
func waitSleepers(t *testing.T, n string, count int) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); len(sleepers(t, n)) < count; {
		if time.Now().After(deadline) {
			t.Fatalf("the sandbox's sleep %s processes did not start", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestCancel(t *testing.T) {
	ex, state := newExecutor(t)
	root := busyboxRootfs(t)
	before := snapshot(t, root)
	n := sentinel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- ex.Run(ctx, sh(root, fmt.Sprintf("trap '' TERM INT; sleep %s & (sleep %s; echo) & setsid sleep %s & sleep %s", n, n, n, n)))
	}()
	waitSleepers(t, n, 4)
	// A New on the same state directory keeps the live run's directory.
	if _, err := run.New(run.Options{StateDir: state}); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(state); len(entries) != 1 {
		t.Errorf("state directory during the run: %v, want the run's directory", entries)
	}
	start := time.Now()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Run: %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancellation")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Run returned %v after cancellation", d)
	}
	if left := sleepers(t, n); len(left) != 0 {
		t.Errorf("processes left after Run returned: %v", left)
	}
	checkSame(t, "the root filesystem", root, before)
}

func TestCancelledBeforeStart(t *testing.T) {
	ex, _ := newExecutor(t)
	root := busyboxRootfs(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := ex.Run(ctx, sh(root, "touch /x")); !errors.Is(err, context.Canceled) {
		t.Errorf("Run: %v, want context.Canceled", err)
	}
	if _, err := os.Lstat(root + "/x"); err == nil {
		t.Error("the step ran")
	}
}

// TestParentKilled: after kill -9 of the process that runs a sandbox, its
// processes die (parent death signal, then the pid namespace) and the next
// New cleans the state directory and removes the run's cgroup.
func TestParentKilled(t *testing.T) {
	_, state := newExecutor(t)
	root := busyboxRootfs(t)
	dirs := cgroupDirs(t)
	cgroupsBefore := runCgroups(dirs)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	n := sentinel()
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), helperRootEnv+"="+root, helperStateEnv+"="+state, helperSleepEnv+"="+n)
	if dirs != nil {
		cmd.Env = append(cmd.Env, helperPidsEnv+"=1")
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitSleepers(t, n, 2)
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	for deadline := time.Now().Add(2 * time.Second); len(sleepers(t, n)) != 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("sandbox processes survive their parent: %v (helper: %s)", sleepers(t, n), stderr.String())
		}
	}
	entries, _ := os.ReadDir(state)
	if len(entries) != 1 || !strings.HasPrefix(entries[0].Name(), "run-") {
		t.Fatalf("state directory after the kill: %v, want the dead run's directory", entries)
	}
	// Other packages' steps create and remove cgroups meanwhile: look for
	// one that was not there before.
	if dirs != nil && !slices.ContainsFunc(runCgroups(dirs), func(c string) bool { return !slices.Contains(cgroupsBefore, c) }) {
		t.Errorf("no cgroup of the killed run: %v", runCgroups(dirs))
	}
	if _, err := run.New(run.Options{StateDir: state}); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(state); len(entries) != 0 {
		t.Errorf("New left %v in the state directory", entries)
	}
	checkNoNewCgroups(t, dirs, cgroupsBefore)
}
