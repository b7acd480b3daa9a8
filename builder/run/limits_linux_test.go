package run_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/imgbuild/imgbuild/builder/run"
)

// cgroupDirs returns the directories where the sandbox creates its
// cgroups on this host (cgroup v2, else the v1 memory and pids
// hierarchies below this process's cgroups), or nil when limits cannot
// work here.
func cgroupDirs(t *testing.T) []string {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/cgroup", &st); err != nil {
		return nil
	}
	if st.Type == unix.CGROUP2_SUPER_MAGIC {
		if unix.Access("/sys/fs/cgroup", unix.W_OK) != nil {
			return nil
		}
		return []string{"/sys/fs/cgroup/imgbuild"}
	}
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	var dirs []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) == 3 && (f[1] == "memory" || f[1] == "pids") {
			d := filepath.Join("/sys/fs/cgroup", f[1], f[2])
			if unix.Statfs(d, &st) == nil && st.Type == unix.CGROUP_SUPER_MAGIC && unix.Access(d, unix.W_OK) == nil {
				dirs = append(dirs, d)
			}
		}
	}
	if len(dirs) != 2 {
		return nil
	}
	return dirs
}

// runCgroups lists the run cgroups present in dirs.
func runCgroups(dirs []string) []string {
	var names []string
	for _, d := range dirs {
		entries, _ := os.ReadDir(d)
		for _, e := range entries {
			if e.IsDir() && (strings.HasPrefix(e.Name(), "run-") || strings.HasPrefix(e.Name(), "imgbuild-run-")) {
				names = append(names, filepath.Join(d, e.Name()))
			}
		}
	}
	sort.Strings(names)
	return names
}

// checkNoNewCgroups fails t if a run cgroup appeared since before.
// checkNoNewCgroups fails when run cgroups that were not there before
// stay. Other test packages may run steps at the same time: their cgroups
// come and go, so a new one must outlive a grace period to count as left.
func checkNoNewCgroups(t *testing.T, dirs, before []string) {
	t.Helper()
	var left []string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		left = left[:0]
		for _, c := range runCgroups(dirs) {
			if !slices.Contains(before, c) {
				left = append(left, c)
			}
		}
		if len(left) == 0 || time.Now().After(deadline) {
			break
		}
	}
	if len(left) > 0 {
		t.Errorf("run cgroups left: %v (before: %v)", left, before)
	}
}

func TestLimits(t *testing.T) {
	ex, _ := newExecutor(t)
	root := busyboxRootfs(t)
	dirs := cgroupDirs(t)
	before := runCgroups(dirs)
	const mem = 64 << 20
	tests := []struct {
		name        string
		memory      int64
		pids        int64
		script      string
		wantOut     string
		wantErr     string // substring; "" for success
		wantStderr  string
		wantExitErr bool
	}{
		{name: "within the pids limit", pids: 32, script: "sleep 0.1 & sleep 0.1 & wait; echo ok", wantOut: "ok\n"},
		{name: "fork bomb", pids: 32, script: "i=0; while [ $i -lt 100 ]; do sleep 30 & i=$((i+1)); done; echo all-started",
			wantErr: "pids limit 32 reached", wantStderr: "can't fork", wantExitErr: true},
		{name: "within the memory limit", memory: mem, script: "head -c 1000000 /dev/zero | wc -c", wantOut: "1000000\n"},
		{name: "memory hog", memory: mem, script: `awk 'BEGIN { s = "x"; for (i = 0; i < 30; i++) s = s s; print length(s) }'`,
			wantErr: "memory limit 67108864 bytes reached (OOM kill)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := sh(root, tt.script)
			spec.Memory, spec.PidsLimit = tt.memory, tt.pids
			start := time.Now()
			out, errOut, err := runSpec(t, ex, spec)
			if dirs == nil {
				if err == nil || !strings.Contains(err.Error(), "memory and pids limits") {
					t.Fatalf("no usable cgroups here: error %v, want a clear one", err)
				}
				return
			}
			if err != nil && strings.Contains(err.Error(), "(the cgroup holds processes;") {
				// cgroup v2 namespace root with processes (a container):
				// controllers cannot be delegated, and Run says so.
				t.Logf("cgroup v2 controllers not delegable here: %v", err)
				return
			}
			if d := time.Since(start); d > 30*time.Second {
				t.Errorf("Run took %v", d)
			}
			t.Logf("Run: %v", err)
			var exit *run.ExitError
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("Run: %v\nstderr: %s", err, errOut)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("error %v, want one containing %q\nstdout: %s\nstderr: %s", err, tt.wantErr, out, errOut)
			case tt.wantExitErr && !errors.As(err, &exit):
				t.Fatalf("error %v (%T), want an *ExitError", err, err)
			case out != tt.wantOut:
				t.Errorf("stdout %q, want %q", out, tt.wantOut)
			case !strings.Contains(errOut, tt.wantStderr):
				t.Errorf("stderr %q, want it to contain %q", errOut, tt.wantStderr)
			}
		})
	}
	checkNoNewCgroups(t, dirs, before)
}
