package builder_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/imgbuild/imgbuild/builder"
	"github.com/imgbuild/imgbuild/layers"
	"github.com/imgbuild/imgbuild/registry/registrytest"
)

// Attack tests of RUN's resource limits and of a full disk; the helpers
// are in attack_run_test.go.

// TestAttackRunLimits: fork bombs and memory hogs under Options.PidsLimit
// and Options.Memory (cgroup v2 or v1). BuildKit sets no such limits by
// default; with them (runc applies --pids-limit/--memory) a step whose
// forks fail or that is OOM-killed fails with its exit status, here with
// the limit that was hit. Each step prints first, so that its run cgroups
// are seen while it runs.
func TestAttackRunLimits(t *testing.T) {
	h := newAttackHost(t)
	st := rtStore(t)
	pids := func(o *builder.Options) { o.PidsLimit = 64 }
	mem := func(o *builder.Options) { o.Memory = 64 << 20 }
	tests := []struct {
		attackCase
		mod func(*builder.Options)
	}{
		// busybox sh has no ":" functions (":(){ :|:& };:" is a syntax
		// error there). In the foreground, the shell gets EAGAIN from
		// fork, which is fatal to it.
		{mod: pids, attackCase: attackCase{name: "fork bomb", cgroups: true,
			df: "FROM busybox\nRUN echo start; f(){ f|f; }; f\n", wantErr: "exit status 2: pids limit 64 reached"}},
		// The classic bomb runs in the background: the step ends when its
		// command does, with status 0, and the rest of the tree dies with
		// the sandbox init, as with BuildKit (the step succeeds there too).
		// The command waits, with builtins only, until a fork of the bomb
		// failed.
		{mod: pids, attackCase: attackCase{name: "background fork bomb", cgroups: true,
			// It polls the first line of the bomb's stderr until that line is
			// whole (a half-written line was a flake under load).
			df: "FROM busybox\nRUN echo start; f(){ f|f& }; f 2>/dev/shm/bomb; i=0; c=; " +
				"while [ $i -lt 1000000 ]; do read -r c < /dev/shm/bomb; case \"$c\" in *unavailable*) break;; esac; i=$((i+1)); done; " +
				"echo \"bomb: $c\"\n",
			wantLog: []string{"bomb: ", "can't fork: Resource temporarily unavailable"}}},
		{mod: pids, attackCase: attackCase{name: "fork loop", cgroups: true,
			df: "FROM busybox\nRUN echo start; while :; do sleep 60 & done\n", wantErr: "exit status 2: pids limit 64 reached", wantLog: []string{"can't fork"}}},
		{mod: mem, attackCase: attackCase{name: "memory hog", cgroups: true,
			df:      "FROM busybox\nRUN echo start; awk 'BEGIN { s = \"x\"; for (i = 0; i < 30; i++) s = s s; print length(s) }'\n",
			wantErr: "exit status 137 (killed by signal: killed): memory limit 67108864 bytes reached (OOM kill)"}},
		{mod: func(o *builder.Options) { o.Memory = 1 << 20 }, attackCase: attackCase{name: "memory limit too small",
			df: "FROM busybox\nRUN true\n", wantErr: "memory limit 1048576 bytes is below the minimum"}},
		{mod: func(o *builder.Options) { o.PidsLimit = 8 }, attackCase: attackCase{name: "pids limit too small",
			df: "FROM busybox\nRUN true\n", wantErr: "pids limit 8 is below the minimum"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { h.run(t, st, tc.attackCase, tc.mod) })
	}
}

// TestAttackRunNoCgroups: where limits cannot be enforced the build fails
// rather than running the step without them. The test re-executes itself
// in a mount namespace of its own with an empty tmpfs over /sys/fs/cgroup.
func TestAttackRunNoCgroups(t *testing.T) {
	registrytest.RequireRoot(t)
	if ns := os.Getenv("IMGBUILD_ATTACK_PARENT_MNTNS"); ns != "" {
		noCgroupsChild(t, ns)
		return
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ns, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^TestAttackRunNoCgroups$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), "IMGBUILD_ATTACK_PARENT_MNTNS="+ns)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS, Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("--- PASS: TestAttackRunNoCgroups")) {
		t.Fatalf("child test: %v\n%s", err, out)
	}
	t.Logf("child test:\n%s", out)
}

func noCgroupsChild(t *testing.T, parentNS string) {
	if ns, err := os.Readlink("/proc/self/ns/mnt"); err != nil || ns == parentNS {
		t.Fatalf("not in a mount namespace of its own (%s, %v): refusing to hide the host's cgroups", ns, err)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", "/sys/fs/cgroup", "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	h := newAttackHost(t)
	st := rtStore(t)
	for _, mod := range []func(*builder.Options){
		func(o *builder.Options) { o.PidsLimit = 64 },
		func(o *builder.Options) { o.Memory = 64 << 20 },
	} {
		h.run(t, st, attackCase{df: "FROM busybox\nRUN echo ran > /ran\n", wantErr: "memory and pids limits: no cgroup v2 at /sys/fs/cgroup"}, mod)
	}
}

// TestAttackRunDiskFull: a step that fills the disk, with the store on a
// small tmpfs. The step fails with ENOSPC (or its commit does), the build
// fails clearly and removes its scratch directories, so the space comes
// back. A step can also fill the sandbox's own tmpfs (/dev/shm, 64 MiB
// as Docker's), which is not the store's disk.
func TestAttackRunDiskFull(t *testing.T) {
	h := newAttackHost(t)
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=64m,mode=0700"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmounting the store's tmpfs: %v", err)
		}
	})
	ctx := context.Background()
	st, err := layers.OpenStore(ctx, filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	dgst, err := st.PutImage(ctx, registrytest.BusyboxImage(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Tag(ctx, "busybox", dgst); err != nil {
		t.Fatal(err)
	}
	// Extract the base once, so that the free space below is the steady one.
	h.run(t, st, attackCase{df: "FROM busybox\nRUN true\n", emptyLayer: true}, nil)
	free := func() int64 {
		var fs unix.Statfs_t
		if err := unix.Statfs(dir, &fs); err != nil {
			t.Fatal(err)
		}
		return int64(fs.Bavail) * fs.Bsize
	}
	before := free()
	for _, tc := range []attackCase{
		{name: "dd until ENOSPC", df: "FROM busybox\nRUN dd if=/dev/zero of=/big bs=1M\n",
			wantErr: "exit status 1", wantLog: []string{"No space left on device"}},
		// 40 MiB fit in the step's upper directory, not again as a layer.
		{name: "ENOSPC while committing", df: "FROM busybox\nRUN head -c 40m /dev/urandom > /big\n",
			wantErr: "no space left on device"},
		{name: "fill /dev/shm", df: "FROM busybox\nRUN dd if=/dev/zero of=/dev/shm/big bs=1M\n",
			wantErr: "exit status 1", wantLog: []string{"No space left on device"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h.run(t, st, tc, nil)
			// Blobs of failed builds are not written; allow a little for
			// the store's own files.
			if after := free(); after < before-1<<20 {
				t.Errorf("free space %d bytes after the build, %d before", after, before)
			}
		})
	}
}
