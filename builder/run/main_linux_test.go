package run_test

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/imgbuild/imgbuild/builder/run"
	"github.com/imgbuild/imgbuild/layers"
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

// busyboxRootfs extracts registrytest.BusyboxImage into a new directory.
func busyboxRootfs(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	rc := mutate.Extract(registrytest.BusyboxImage(t))
	defer rc.Close()
	if err := layers.Apply(context.Background(), dir, rc, layers.ApplyOptions{}); err != nil {
		t.Fatalf("extracting busybox: %v", err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
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
