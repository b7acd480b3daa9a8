package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/imgbuild/imgbuild/registry/registrytest"
)

// exitDeadline is how soon imgbuild must exit after SIGINT or SIGTERM
// during a RUN (the requirement).
const exitDeadline = 5 * time.Second

// runBuild is an imgbuild subprocess building a Dockerfile whose RUN step
// sleeps for a duration unique to the test, so that its processes can be
// told from any other.
type runBuild struct {
	cmd    *exec.Cmd
	root   string
	marker string // "sleep <seconds>", in the command line of the step's processes
	exited chan struct{}
	err    error // of cmd.Wait, once exited is closed

	mu     sync.Mutex
	stderr bytes.Buffer
	events []jsonEvent
}

// startRunBuild starts `imgbuild build --progress=json -t x [flags]` of
// `FROM base` + `RUN sleep N` with state directory root, and waits until
// the sleep runs.
func startRunBuild(t *testing.T, root, host, base string, flags ...string) *runBuild {
	t.Helper()
	secs := strconv.Itoa(100000 + rand.IntN(800000))
	ctxDir := writeContext(t, map[string]string{"Dockerfile": "FROM " + base + "\nRUN sleep " + secs + "\n"})
	b := &runBuild{root: root, marker: "sleep " + secs, exited: make(chan struct{})}
	args := append([]string{"--root", root, "build", "--progress=json", "--insecure-registry", host, "-t", "x"}, flags...)
	b.cmd = imgbuildCommand(append(args, ctxDir)...)
	stderr, err := b.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		b.cmd.Process.Kill()
		<-b.exited
	})
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var ev jsonEvent
			b.mu.Lock()
			b.stderr.Write(append(sc.Bytes(), '\n'))
			if json.Unmarshal(sc.Bytes(), &ev) == nil {
				b.events = append(b.events, ev)
			}
			b.mu.Unlock()
		}
		b.err = b.cmd.Wait()
		close(b.exited)
	}()
	b.waitFor(t, 60*time.Second, "the RUN step's running event", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		for _, ev := range b.events {
			if strings.HasPrefix(ev.Instruction, "RUN ") && ev.Status == "running" {
				return true
			}
		}
		return false
	})
	b.waitFor(t, 20*time.Second, "the process "+b.marker, func() bool {
		return len(markedProcs(t, b.marker, false)) > 0
	})
	return b
}

// imgbuildCommand runs the test binary as imgbuild with args.
func imgbuildCommand(args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), mainEnv+"=1")
	return cmd
}

// waitFor polls cond until it holds, failing t after timeout or when the
// build exits first.
func (b *runBuild) waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		select {
		case <-b.exited:
			t.Fatalf("imgbuild exited (%v) before %s; stderr:\n%s", b.err, what, b.stderrText())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s after %v; stderr:\n%s", what, timeout, b.stderrText())
		}
	}
}

func (b *runBuild) stderrText() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.stderr.String()
}

// markedProcs returns "pid: cmdline" of the processes whose command line
// contains marker and, when sameExe is set, those other than this one that
// run this test binary (imgbuild subprocesses and sandbox inits, the test
// binary re-executed).
func markedProcs(t *testing.T, marker string, sameExe bool) []string {
	t.Helper()
	self, err := os.Stat("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var found []string
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		raw, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(raw) == 0 {
			continue // gone, or a zombie
		}
		cmdline := strings.TrimSpace(string(bytes.ReplaceAll(raw, []byte{0}, []byte{' '})))
		exe, err := os.Stat(filepath.Join("/proc", e.Name(), "exe"))
		if strings.Contains(cmdline, marker) || (sameExe && err == nil && os.SameFile(exe, self)) {
			found = append(found, fmt.Sprintf("%d: %s", pid, cmdline))
		}
	}
	return found
}

// mountsUnder returns the mount points at or below dir in this process's
// mount namespace (imgbuild mounts its snapshots in its caller's).
func mountsUnder(t *testing.T, dir string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var found []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			found = append(found, f[4])
		}
	}
	return found
}

// scratchDirs are the directories of a state directory that hold only
// what running builds use.
var scratchDirs = []string{"snapshots", "tmp", "run"}

// leftovers returns the entries of root's scratch directories (hidden lock
// files aside) and the mounts below root.
func leftovers(t *testing.T, root string) []string {
	t.Helper()
	var found []string
	for _, d := range scratchDirs {
		ents, err := os.ReadDir(filepath.Join(root, d))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		for _, e := range ents {
			if !strings.HasPrefix(e.Name(), ".") {
				found = append(found, filepath.Join(d, e.Name()))
			}
		}
	}
	for _, m := range mountsUnder(t, root) {
		found = append(found, "mount "+m)
	}
	return found
}

// taggedX reports whether the store at root lists the tag x.
func taggedX(t *testing.T, root string) bool {
	t.Helper()
	code, stdout, stderr := runCLI(t, "", "--root", root, "images", "--format", "json")
	if code != 0 {
		t.Fatalf("imgbuild images: exit %d: %s", code, stderr)
	}
	dec := json.NewDecoder(strings.NewReader(stdout))
	for dec.More() {
		var im imageLine
		if err := dec.Decode(&im); err != nil {
			t.Fatalf("imgbuild images: %v: %s", err, stdout)
		}
		if im.Repository == "x" || strings.HasSuffix(im.Repository, "/x") {
			return true
		}
	}
	return false
}

// TestRunInterrupted sends SIGINT or SIGTERM to imgbuild while a RUN step
// runs: imgbuild exits by itself within exitDeadline with status
// 128+signal, tags nothing, and leaves no process, mount or scratch
// directory.
func TestRunInterrupted(t *testing.T) {
	registrytest.RequireRoot(t)
	host := registrytest.Start(t)
	base := registrytest.PushBusybox(t, host)
	tests := []struct {
		name        string
		sig         syscall.Signal
		snapshotter string // --snapshotter, or IMGBUILD_SNAPSHOTTER when env is set
		env         bool
	}{
		{"SIGINT", syscall.SIGINT, "", false},
		{"SIGTERM", syscall.SIGTERM, "", false},
		{"SIGINT, --snapshotter copy", syscall.SIGINT, "copy", false},
		{"SIGTERM, IMGBUILD_SNAPSHOTTER=overlay", syscall.SIGTERM, "overlay", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sig, root := tt.sig, t.TempDir()
			var flags []string
			switch {
			case tt.env:
				t.Setenv(snapshotterEnv, tt.snapshotter)
			case tt.snapshotter != "":
				flags = []string{"--snapshotter", tt.snapshotter}
			}
			b := startRunBuild(t, root, host, base, flags...)
			// The overlay snapshotter mounts the step's root below root
			// (in this mount namespace); copy mounts nothing there.
			mounts := mountsUnder(t, root)
			switch {
			case tt.snapshotter == "copy" && len(mounts) > 0:
				t.Errorf("--snapshotter copy: mounts during the RUN: %q", mounts)
			case tt.snapshotter == "overlay" && len(mounts) == 0:
				t.Errorf("snapshotter overlay: no mount below the state directory during the RUN")
			}
			sent := time.Now()
			if err := b.cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			select {
			case <-b.exited:
			case <-time.After(exitDeadline):
				t.Fatalf("imgbuild still running %v after %v; stderr:\n%s", exitDeadline, sig, b.stderrText())
			}
			errText := strings.TrimSpace(b.stderrText())
			t.Logf("exited %v after %v: %v, %q", time.Since(sent).Round(time.Millisecond), sig, b.err, errText[strings.LastIndex(errText, "\n")+1:])
			var ee *exec.ExitError
			if !errors.As(b.err, &ee) || ee.ExitCode() != 128+int(sig) {
				t.Errorf("after %v: %v, want exit status %d (imgbuild exiting by itself); stderr:\n%s", sig, b.err, 128+int(sig), b.stderrText())
			}
			if want := "\nimgbuild: canceled by " + unix.SignalName(sig); !strings.HasSuffix(errText, want) {
				t.Errorf("stderr ends with %q, want %q", errText[strings.LastIndex(errText, "\n")+1:], want[1:])
			}
			if p := markedProcs(t, b.marker, true); len(p) > 0 {
				t.Errorf("processes left after imgbuild exited: %q", p)
			}
			if l := leftovers(t, root); len(l) > 0 {
				t.Errorf("left in the state directory after imgbuild exited: %q", l)
			}
			if taggedX(t, root) {
				t.Error("the interrupted build tagged x")
			}
		})
	}
}

// TestRunKilled kills imgbuild with SIGKILL while a RUN step runs: the
// step's processes die with it (the sandbox init has a parent-death signal
// and is pid 1 of its namespace), and the next imgbuild (prune, or a build
// with a RUN step) on the same state directory removes the mounts, scratch
// directories and cgroups it left.
func TestRunKilled(t *testing.T) {
	registrytest.RequireRoot(t)
	host := registrytest.Start(t)
	base := registrytest.PushBusybox(t, host)
	prune := func(t *testing.T, root string) {
		if code, _, stderr := runCLI(t, "", "--root", root, "prune"); code != 0 {
			t.Fatalf("imgbuild prune: exit %d: %s", code, stderr)
		}
	}
	build := func(t *testing.T, root string) {
		ctxDir := writeContext(t, map[string]string{"Dockerfile": "FROM " + base + "\nRUN true\n"})
		code, _, stderr := runCLI(t, "", "--root", root, "build", "-q", "--insecure-registry", host, ctxDir)
		if code != 0 {
			t.Fatalf("imgbuild build: exit %d: %s", code, stderr)
		}
	}
	limits := []string{"--memory", "64m", "--pids-limit", "64"}
	limitsOK, why := limitsUsable(t, host, base)
	tests := []struct {
		name  string
		flags []string
		next  func(t *testing.T, root string)
	}{
		{"then prune", nil, prune},
		{"then build", nil, build},
		{"with limits, then prune", limits, prune},
		{"with limits, then build", limits, build},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.flags != nil && !limitsOK {
				t.Skipf("RUN limits cannot work here: %s", why)
			}
			root := t.TempDir()
			b := startRunBuild(t, root, host, base, tt.flags...)
			if err := b.cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			<-b.exited
			killed := time.Now()
			var procs []string
			for {
				if procs = markedProcs(t, b.marker, true); len(procs) == 0 || time.Since(killed) > exitDeadline {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			if len(procs) > 0 {
				t.Errorf("processes alive %v after imgbuild was killed: %q", exitDeadline, procs)
			} else {
				t.Logf("the step's processes were gone %v after the kill", time.Since(killed).Round(time.Millisecond))
			}
			cgroups := runCgroups(t, root)
			if tt.flags != nil && len(cgroups) == 0 {
				t.Errorf("a RUN step with limits recorded no cgroup in %s/run", root)
			}
			t.Logf("left by the killed imgbuild: %q, cgroups %q", leftovers(t, root), cgroups)
			tt.next(t, root)
			if l := leftovers(t, root); len(l) > 0 {
				t.Errorf("still left after %s: %q", tt.name, l)
			}
			for _, cg := range cgroups {
				if _, err := os.Stat(cg); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("cgroup %s of the killed step still there after %s (%v)", cg, tt.name, err)
				}
			}
			if taggedX(t, root) {
				t.Error("the killed build tagged x")
			}
		})
	}
}

// runCgroups returns the cgroup directories that the RUN steps of root
// recorded in their run directories (ROOT/run/run-*/cgroups).
func runCgroups(t *testing.T, root string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(root, "run", "run-*", "cgroups"))
	if err != nil {
		t.Fatal(err)
	}
	var dirs []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dirs = append(dirs, strings.Fields(string(b))...)
	}
	return dirs
}
