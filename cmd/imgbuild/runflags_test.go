package main

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/imgbuild/imgbuild/registry/registrytest"
)

// limitsUsable builds a RUN step with --memory and --pids-limit and
// reports whether RUN limits work on this host. When they cannot (no
// writable cgroups, or a cgroup v2 namespace root holding processes),
// imgbuild must say so, as builder/run's tests expect: why is that error.
// Any other failure fails t.
func limitsUsable(t *testing.T, host, base string) (ok bool, why string) {
	t.Helper()
	ctxDir := writeContext(t, map[string]string{"Dockerfile": "FROM " + base + "\nRUN true\n"})
	code, _, stderr := runCLI(t, "", "--root", t.TempDir(), "build", "-q", "--insecure-registry", host,
		"--memory", "64m", "--pids-limit", "64", ctxDir)
	switch {
	case code == 0:
		return true, ""
	case strings.Contains(stderr, "memory and pids limits") || strings.Contains(stderr, "(the cgroup holds processes;"):
		return false, stderr
	}
	t.Fatalf("build with --memory and --pids-limit: exit %d: %s", code, stderr)
	return false, ""
}

// TestRunLimits checks that --pids-limit and --memory reach RUN steps: a
// fork bomb and a memory hog fail the build and say which limit they hit.
func TestRunLimits(t *testing.T) {
	registrytest.RequireRoot(t)
	host := registrytest.Start(t)
	base := registrytest.PushBusybox(t, host)
	if ok, why := limitsUsable(t, host, base); !ok {
		t.Skipf("RUN limits cannot work here: %s", why)
	}
	tests := []struct {
		name, run string
		flags     []string
		wantErr   string
	}{
		{"fork bomb", "i=0; while [ $i -lt 100 ]; do sleep 30 & i=$((i+1)); done; echo all-started",
			[]string{"--pids-limit", "32"}, "pids limit 32 reached"},
		{"memory hog", `awk 'BEGIN { s = "x"; for (i = 0; i < 30; i++) s = s s; print length(s) }'`,
			[]string{"-m", "64m"}, "memory limit 67108864 bytes reached"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctxDir := writeContext(t, map[string]string{"Dockerfile": "FROM " + base + "\nRUN " + tt.run + "\n"})
			args := append([]string{"--root", t.TempDir(), "build", "--insecure-registry", host}, tt.flags...)
			code, stdout, stderr := runCLI(t, "", append(args, ctxDir)...)
			lines := strings.Split(strings.TrimSpace(stderr), "\n")
			last := lines[len(lines)-1]
			t.Logf("%s", last)
			if code != exitError || stdout != "" || !strings.HasPrefix(last, "imgbuild: Dockerfile:2: RUN ") || !strings.Contains(last, tt.wantErr) {
				t.Errorf("exit %d, stdout %q, last stderr line %q; want exit %d, nothing on stdout, \"imgbuild: Dockerfile:2: RUN ...%s...\"; stderr:\n%s",
					code, stdout, last, exitError, tt.wantErr, stderr)
			}
		})
	}
}

// TestRunNetwork checks that --network reaches RUN steps: with none a step
// sees only the loopback interface, with default and host the host's
// interfaces (/proc/net/dev lists those of the reader's network
// namespace: two header lines, then one line per interface).
func TestRunNetwork(t *testing.T) {
	registrytest.RequireRoot(t)
	host := registrytest.Start(t)
	base := registrytest.PushBusybox(t, host)
	b, err := os.ReadFile("/proc/net/dev")
	if err != nil {
		t.Fatal(err)
	}
	hostLines := strings.Count(string(b), "\n")
	for _, tt := range []struct {
		network   string
		wantLines int
	}{{"none", 3}, {"default", hostLines}, {"host", hostLines}} {
		t.Run(tt.network, func(t *testing.T) {
			run := fmt.Sprintf(`n=$(wc -l < /proc/net/dev); test "$n" -eq %d || { cat /proc/net/dev; echo "$n lines"; exit 1; }`, tt.wantLines)
			ctxDir := writeContext(t, map[string]string{"Dockerfile": "FROM " + base + "\nRUN " + run + "\n"})
			code, _, stderr := runCLI(t, "", "--root", t.TempDir(), "build", "-q", "--insecure-registry", host, "--network", tt.network, ctxDir)
			if code != 0 {
				t.Errorf("--network %s: exit %d, want a RUN seeing %d lines in /proc/net/dev: %s", tt.network, code, tt.wantLines, stderr)
			}
		})
	}
}
