package run

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestNewCgroupWithoutCgroups(t *testing.T) {
	fake := t.TempDir() // neither cgroup2 nor a v1 hierarchy
	if cg, err := newCgroup(fake, "run-x", limits{}); cg != nil || err != nil {
		t.Errorf("no limits: %v, %v; want no cgroup and no error", cg, err)
	}
	for _, l := range []limits{{pids: 10}, {memory: 1 << 20}} {
		_, err := newCgroup(fake, "run-x", l)
		want := "memory and pids limits: no cgroup v2 at " + fake + " and no cgroup v1"
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("limits %+v: error %v, want one containing %q", l, err, want)
		}
	}
}

// TestEnableControllers drives the cgroup v2 controller delegation against
// plain files laid out like cgroupfs.
func TestEnableControllers(t *testing.T) {
	tests := []struct {
		name, controllers, subtree string
		want                       string // subtree_control after, or the error
	}{
		{"already enabled", "cpu memory pids", "memory pids", "memory pids"},
		{"enables a missing one", "cpu memory pids", "memory", "+pids"},
		{"not available", "cpu memory", "memory", `cgroup v2 controller "pids" is not available in`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			os.WriteFile(filepath.Join(dir, "cgroup.controllers"), []byte(tt.controllers+"\n"), 0o644)
			os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte(tt.subtree+"\n"), 0o644)
			err := enableControllers(dir, []string{"memory", "pids"})
			got, _ := os.ReadFile(filepath.Join(dir, "cgroup.subtree_control"))
			if err != nil {
				if !strings.Contains(err.Error(), tt.want) {
					t.Errorf("error %v, want %q", err, tt.want)
				}
				return
			}
			if strings.TrimSpace(string(got)) != tt.want {
				t.Errorf("subtree_control %q, want %q", got, tt.want)
			}
		})
	}
}

func TestCleanStale(t *testing.T) {
	state := t.TempDir()
	live, err := newRunDir(state)
	if err != nil {
		t.Fatal(err)
	}
	defer live.remove()
	mk := func(name string, files ...string) string {
		p := filepath.Join(state, name)
		if err := os.Mkdir(p, 0o700); err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			os.WriteFile(filepath.Join(p, f), []byte("/tmp\n"), 0o600)
		}
		return p
	}
	dead := mk("run-dead", lockName, cgroupsName) // cgroups outside /sys/fs/cgroup are ignored
	noLock := mk("run-nolock")
	oldNew := mk(".new-old", lockName)
	old := time.Now().Add(-time.Hour)
	os.Chtimes(oldNew, old, old)
	youngNew := mk(".new-young", lockName)
	other := mk("unrelated")
	if err := cleanStale(state); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]bool{live.path: true, dead: false, noLock: false, oldNew: false, youngNew: true, other: true, "/tmp": true} {
		if _, err := os.Stat(p); (err == nil) != want {
			t.Errorf("%s: exists=%v, want %v", p, err == nil, want)
		}
	}
}
