package builder_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/imgbuild/imgbuild/builder"
	"github.com/imgbuild/imgbuild/layers"
	"github.com/imgbuild/imgbuild/registry/registrytest"
)

// The attack tests run hostile Dockerfiles through builder.Build (the
// issue's "Bad input") and check after every build that the host is
// untouched: the test binary (the sandbox init) and the host's /dev/null
// are unchanged, a host directory of sentinel files is unchanged, and
// nothing is left behind (mounts, processes, cgroups, store scratch).

// attackHost is what the attack tests watch on the host.
type attackHost struct {
	exe, exeSum string
	exeStat     unix.Stat_t
	null        unix.Stat_t
	dir         string // host directory of sentinel files
	sentinel    string // a sentinel file in dir
	content     string // its content, which no build may see
	secret      string // value of a variable of the test process's environment
	mark        string // ENV value every RUN process carries, to find leftovers
	listing     string // of dir
	hostname    string
}

const (
	attackSecretVar = "IMGBUILD_ATTACK_SECRET"
	attackMarkVar   = "IMGBUILD_ATTACK_MARK"
)

func randomHex(t *testing.T) string {
	t.Helper()
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func newAttackHost(t *testing.T) *attackHost {
	t.Helper()
	registrytest.RequireRoot(t)
	h := &attackHost{dir: t.TempDir(), secret: "secret-" + randomHex(t), mark: "mark-" + randomHex(t)}
	h.sentinel = filepath.Join(h.dir, "sentinel")
	h.content = "host-sentinel-" + randomHex(t) + "\n"
	t.Setenv(attackSecretVar, h.secret)
	var err error
	if h.exe, err = os.Executable(); err != nil {
		t.Fatal(err)
	}
	h.exeSum = sha256File(t, h.exe)
	if err := unix.Stat(h.exe, &h.exeStat); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat("/dev/null", &h.null); err != nil {
		t.Fatal(err)
	}
	if h.null.Mode != unix.S_IFCHR|0o666 {
		t.Fatalf("host /dev/null has mode %o before the test, want a 0666 character device", h.null.Mode)
	}
	// Besides the sentinels: what a build must not read when it follows
	// a link to this directory as /etc (passwd, group), and empty files
	// and directories named as the sandbox's mount stubs, which a stub
	// cleanup following links would remove (CVE-2024-23652).
	hostPasswd := "root:x:0:0:" + strings.TrimSpace(h.content) + ":/hostroot:/bin/sh\napp:x:4242:4242::/hostapp:/bin/sh\n"
	for name, data := range map[string]string{
		"sentinel": h.content, "sub/file": h.content, "passwd": hostPasswd, "group": "hostgrp:x:4242:app,root\n",
		"hosts": "", "resolv.conf": "", "hostname": "", "proc/": "", "sys/": "", "dev/": "", "etc/": "",
	} {
		p := filepath.Join(h.dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(name, "/") {
			continue
		}
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	h.listing = treeListing(t, h.dir)
	if h.hostname, err = os.Hostname(); err != nil {
		t.Fatal(err)
	}
	return h
}

func sha256File(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := sha256.New()
	if _, err := io.Copy(s, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(s.Sum(nil))
}

// treeListing describes every entry below dir: type, mode, owner, size,
// content, link target.
func treeListing(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s %o %d:%d %d", p, st.Mode, st.Uid, st.Gid, st.Size)
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(&b, " %q", data)
		case unix.S_IFLNK:
			l, _ := os.Readlink(p)
			fmt.Fprintf(&b, " -> %s", l)
		}
		b.WriteByte('\n')
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// check fails t if the host or the store shows a trace of the build.
func (h *attackHost) check(t *testing.T, st *layers.Store) {
	t.Helper()
	if sum := sha256File(t, h.exe); sum != h.exeSum {
		t.Errorf("HOST CHANGED: the test binary %s has sha256 %s, was %s", h.exe, sum, h.exeSum)
	}
	var exe unix.Stat_t
	if err := unix.Stat(h.exe, &exe); err != nil {
		t.Fatal(err)
	}
	if exe.Mode != h.exeStat.Mode || exe.Uid != h.exeStat.Uid || exe.Gid != h.exeStat.Gid || exe.Ctim != h.exeStat.Ctim {
		t.Errorf("HOST CHANGED: the test binary is mode %o owner %d:%d ctime %v, was %o %d:%d %v",
			exe.Mode, exe.Uid, exe.Gid, exe.Ctim, h.exeStat.Mode, h.exeStat.Uid, h.exeStat.Gid, h.exeStat.Ctim)
	}
	var null unix.Stat_t
	if err := unix.Stat("/dev/null", &null); err != nil {
		t.Fatal(err)
	}
	if null.Mode != h.null.Mode || null.Rdev != h.null.Rdev || null.Uid != h.null.Uid || null.Gid != h.null.Gid {
		t.Errorf("HOST CHANGED: /dev/null is mode %o rdev %d owner %d:%d, was %o %d %d:%d",
			null.Mode, null.Rdev, null.Uid, null.Gid, h.null.Mode, h.null.Rdev, h.null.Uid, h.null.Gid)
	}
	if hn, _ := os.Hostname(); hn != h.hostname {
		t.Errorf("HOST CHANGED: hostname %q, was %q", hn, h.hostname)
	}
	if l := treeListing(t, h.dir); l != h.listing {
		t.Errorf("HOST CHANGED: sentinel directory now:\n%s\nwas:\n%s", l, h.listing)
	}
	for _, m := range mountsBelow(t, st.Root(), h.dir) {
		t.Errorf("mount left behind: %s", m)
	}
	if procs := processesWith(h.mark); len(procs) > 0 {
		t.Errorf("processes of the build left behind: %v", procs)
	}
	for dir, allowed := range map[string]func(string) bool{
		"tmp":       func(string) bool { return false },
		"snapshots": func(n string) bool { return strings.HasPrefix(n, ".") },
		"run":       func(string) bool { return false },
	} {
		ents, err := os.ReadDir(filepath.Join(st.Root(), dir))
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		for _, e := range ents {
			if !allowed(e.Name()) {
				t.Errorf("left in the store: %s/%s", dir, e.Name())
			}
		}
	}
}

// mountsBelow lists the mount points strictly below any of dirs.
func mountsBelow(t *testing.T, dirs ...string) []string {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 5 {
			continue
		}
		mp := strings.ReplaceAll(f[4], `\040`, " ")
		for _, d := range dirs {
			if strings.HasPrefix(mp, d+"/") {
				out = append(out, mp)
			}
		}
	}
	return out
}

// processesWith lists the live processes whose environment holds mark.
func processesWith(mark string) []string {
	ents, _ := os.ReadDir("/proc")
	var out []string
	for _, e := range ents {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err == nil && bytes.Contains(env, []byte(mark)) {
			comm, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
			out = append(out, e.Name()+" "+strings.TrimSpace(string(comm)))
		}
	}
	return out
}

// attackBuild is the outcome of one build.
type attackBuild struct {
	res *builder.Result
	err error
	log string // the steps' output
	// cgroups are the run cgroups seen while a step printed (read from
	// the run directories in the store; other processes' runs, such as
	// the run package's tests, use the same parent cgroups).
	cgroups []string
}

// build builds df (placeholders expanded, the mark ENV added after its
// first line) on st, without the cache, within a minute.
func (h *attackHost) build(t *testing.T, st *layers.Store, df string, cancelAfter time.Duration, mod func(*builder.Options)) attackBuild {
	t.Helper()
	df = h.expand(df)
	first, rest, _ := strings.Cut(df, "\n")
	df = first + "\nENV " + attackMarkVar + "=" + h.mark + "\n" + rest
	var out attackBuild
	var log bytes.Buffer
	var mu sync.Mutex // Progress may be called from the goroutines of stages
	opts := builder.Options{
		ContextDir: btContext(t, map[string]string{"Dockerfile": df}), Store: st, NoCache: true,
		Progress: func(ev builder.Event) {
			mu.Lock()
			defer mu.Unlock()
			log.Write(ev.Log)
			if len(ev.Log) > 0 {
				out.cgroups = appendRunCgroups(out.cgroups, st)
			}
		},
	}
	if mod != nil {
		mod(&opts)
	}
	if cancelAfter == 0 {
		cancelAfter = time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), cancelAfter)
	defer cancel()
	out.res, out.err = builder.Build(ctx, opts)
	mu.Lock()
	defer mu.Unlock()
	out.log = log.String()
	return out
}

// appendRunCgroups adds to cgs the cgroups that the live runs in st
// record.
func appendRunCgroups(cgs []string, st *layers.Store) []string {
	files, _ := filepath.Glob(filepath.Join(st.Root(), "run", "run-*", "cgroups"))
	for _, f := range files {
		data, _ := os.ReadFile(f)
		for _, cg := range strings.Fields(string(data)) {
			if !slices.Contains(cgs, cg) {
				cgs = append(cgs, cg)
			}
		}
	}
	return cgs
}

func (h *attackHost) expand(s string) string {
	return strings.NewReplacer("{{DIR}}", h.dir, "{{SENTINEL}}", h.sentinel, "{{SECRET}}", attackSecretVar).Replace(s)
}

// attackCase is one hostile Dockerfile and the outcome it must have.
type attackCase struct {
	name string
	df   string
	// wantErr is "" when the build must succeed (the attack contained),
	// else a substring of its error (the build fails clearly).
	wantErr string
	wantLog []string // substrings of the steps' output
	// emptyLayer: the last step's layer must have no entry (no mount stub
	// or host path leaks into it).
	emptyLayer bool
	imageFiles map[string]string // path -> content in the built image
	cgroups    bool              // the step runs in cgroups (limits)
	// cancel, when set, cancels the build that long after it started;
	// it must then return within 5 seconds.
	cancel time.Duration
}

// run builds tc on st and checks its outcome, then the host.
func (h *attackHost) run(t *testing.T, st *layers.Store, tc attackCase, mod func(*builder.Options)) {
	t.Helper()
	start := time.Now()
	b := h.build(t, st, tc.df, tc.cancel, mod)
	res, err, log := b.res, b.err, b.log
	took := time.Since(start)
	t.Logf("%v: %v", took.Round(time.Millisecond), err)
	if tc.cancel > 0 && took > tc.cancel+5*time.Second {
		t.Errorf("the build took %v, cancelled after %v", took, tc.cancel)
	}
	if tc.cgroups && len(b.cgroups) == 0 {
		t.Errorf("no run cgroup seen while the step ran")
	}
	for _, cg := range b.cgroups {
		if _, err := os.Stat(cg); !os.IsNotExist(err) {
			t.Errorf("run cgroup left behind: %s (%v)", cg, err)
		}
	}
	switch {
	case tc.wantErr == "" && err != nil:
		t.Errorf("build failed, want the attack contained and the build to succeed: %v\noutput:\n%s", err, log)
	case tc.wantErr != "" && err == nil:
		t.Errorf("build succeeded, want an error containing %q\noutput:\n%s", tc.wantErr, log)
	case tc.wantErr != "" && !strings.Contains(err.Error(), tc.wantErr):
		t.Errorf("error %q, want it to contain %q", err, tc.wantErr)
	}
	seen := log
	if err != nil {
		seen += "\n" + err.Error()
	}
	for _, w := range tc.wantLog {
		if !strings.Contains(seen, h.expand(w)) {
			t.Errorf("output lacks %q:\n%s", h.expand(w), seen)
		}
	}
	for _, leak := range []string{h.secret, strings.TrimSpace(h.content)} {
		if strings.Contains(seen, leak) {
			t.Errorf("HOST LEAK: the build saw %q:\n%s", leak, seen)
		}
	}
	if res != nil {
		fs := btFlatten(t, res.Image)
		for p, e := range fs {
			if strings.Contains(e.Content, h.secret) || strings.Contains(e.Content, strings.TrimSpace(h.content)) {
				t.Errorf("HOST LEAK: image file %s holds host data", p)
			}
		}
		for p, want := range tc.imageFiles {
			p = strings.TrimPrefix(h.expand(p), "/")
			if e, ok := fs[p]; !ok || e.Content != want {
				t.Errorf("image file %s = %q, want %q", p, fs[p].Content, want)
			}
		}
		if names := lastLayerEntries(t, res.Image); tc.emptyLayer && len(names) > 0 {
			t.Errorf("last layer has %v, want no entry", names)
		}
	}
	h.check(t, st)
}

// TestAttackRunHost: RUN steps that go for the host through /proc, mounts,
// devices or the working directory. BuildKit (runc) contains each of
// these the same way: the init is not dumpable (runc's runc:[2:INIT] too,
// since CVE-2019-5736), Docker's default capabilities lack CAP_SYS_ADMIN,
// the root is pivoted, so the step sees EACCES, EPERM or ENOENT and fails.
func TestAttackRunHost(t *testing.T) {
	h := newAttackHost(t)
	st := rtStore(t)
	sysrqDenied := "Read-only file system"
	if _, err := os.Stat("/proc/sysrq-trigger"); os.IsNotExist(err) {
		sysrqDenied = "nonexistent directory" // no CONFIG_MAGIC_SYSRQ (e.g. a microVM)
	}
	tests := []attackCase{
		// /proc/self/exe is the step's own shell, a file of the image
		// being busy: ETXTBSY, as under runc. Not the host binary.
		{name: "write /proc/self/exe", df: "FROM busybox\nRUN echo x > /proc/self/exe\n",
			wantErr: "exit status", wantLog: []string{"Text file busy"}},
		// /proc/1/exe is the sandbox init, i.e. the host binary (the
		// CVE-2019-5736 target): the init is not dumpable.
		{name: "write /proc/1/exe", df: "FROM busybox\nRUN echo x > /proc/1/exe\n",
			wantErr: "exit status 1", wantLog: []string{"Permission denied"}},
		{name: "cp over /proc/1/exe", df: "FROM busybox\nRUN cp /bin/busybox /proc/1/exe\n",
			wantErr: "exit status 1", wantLog: []string{"Permission denied"}},
		{name: "read /proc/1/exe", df: "FROM busybox\nRUN cat /proc/1/exe > /stolen\n",
			wantErr: "exit status 1", wantLog: []string{"Permission denied"}},
		{name: "exec /proc/1/exe", df: "FROM busybox\nRUN /proc/1/exe\n",
			wantErr: "exit status", wantLog: []string{"Permission denied"}},
		// Exec form: the init's own child execs the path before it is the
		// step's process, so /proc/self/exe would be the host binary (runc
		// execs a sealed copy of itself there since CVE-2019-5736). The
		// kernel does not resolve it: the binary's mount is not in the
		// sandbox's mount namespace.
		{name: "exec form /proc/self/exe", df: "FROM busybox\nRUN [\"/proc/self/exe\", \"-test.list=.\"]\n",
			wantErr: "run: sandbox: exec /proc/self/exe: no such file or directory"},
		{name: "exec form /proc/1/exe", df: "FROM busybox\nRUN [\"/proc/1/exe\", \"-test.list=.\"]\n",
			wantErr: "run: sandbox: exec /proc/1/exe: permission denied"},
		// The init's root is the pivoted root anyway; the host's files are
		// out of reach by any name.
		{name: "list /proc/1/root", df: "FROM busybox\nRUN ls /proc/1/root/\n",
			wantErr: "exit status 1", wantLog: []string{"Permission denied"}},
		{name: "read the sentinel through /proc/1/root", df: "FROM busybox\nRUN cat /proc/1/root{{SENTINEL}}\n",
			wantErr: "exit status 1", wantLog: []string{"Permission denied"}},
		{name: "read the sentinel by any root", df: "FROM busybox\nRUN for r in / /proc/self/root/ /proc/*/root/ /proc/*/cwd/; do cat $r{{SENTINEL}} $r{{DIR}}/sub/file; done 2>&1; echo done\n",
			wantLog: []string{"done\n"}},
		// The step's parent is the init (pid 1 in the sandbox), whose
		// environment holds only the init flag and which is not dumpable;
		// the test process is not in the pid namespace.
		{name: "read /proc/$PPID/environ", df: "FROM busybox\nRUN echo ppid=$PPID; cat /proc/$PPID/environ\n",
			wantErr: "exit status 1", wantLog: []string{"ppid=1\n", "Permission denied"}},
		{name: "sweep every environ", df: "FROM busybox\nRUN for f in /proc/[0-9]*/environ /proc/self/environ; do tr '\\0' '\\n' < $f; done 2>&1; env; echo ${{SECRET}}; echo done\n",
			wantLog: []string{"done\n"}},
		// No CAP_SYS_ADMIN (Docker's default set): every mount is EPERM.
		{name: "remount /sys rw", df: "FROM busybox\nRUN mount -o remount,rw /sys\n",
			wantErr: "exit status", wantLog: []string{"permission denied"}},
		{name: "mount proc", df: "FROM busybox\nRUN mkdir -p /mnt && mount -t proc proc /mnt\n",
			wantErr: "exit status", wantLog: []string{"permission denied"}},
		{name: "bind mount", df: "FROM busybox\nRUN mkdir -p /mnt && mount --bind / /mnt\n",
			wantErr: "exit status", wantLog: []string{"permission denied"}},
		{name: "mount a cgroup hierarchy (release_agent)", df: "FROM busybox\nRUN mkdir /cg && mount -t cgroup -o memory cgroup /cg\n",
			wantErr: "exit status", wantLog: []string{"permission denied"}},
		{name: "unmount /etc/hosts", df: "FROM busybox\nRUN umount /etc/hosts\n",
			wantErr: "exit status", wantLog: []string{"Operation not permitted"}},
		{name: "unmount /proc", df: "FROM busybox\nRUN umount -l /proc\n",
			wantErr: "exit status", wantLog: []string{"Operation not permitted"}},
		// /dev/null is a read-only bind mount of the host's node, so chmod
		// fails (EROFS). runc makes a node of the container's own instead
		// and chmod succeeds there: a difference, but a contained one.
		{name: "chmod /dev/null", df: "FROM busybox\nRUN chmod 777 /dev/null\n",
			wantErr: "exit status 1", wantLog: []string{"Read-only file system"}},
		{name: "chown /dev/null", df: "FROM busybox\nRUN chown 1000 /dev/null\n",
			wantErr: "exit status 1", wantLog: []string{"Read-only file system"}},
		// /proc/sys and /proc/sysrq-trigger are read-only, as Docker's. The
		// writes would be harmless if they went through: the same
		// core_pattern, sysrq "h" (help).
		{name: "write core_pattern", df: "FROM busybox\nRUN cat /proc/sys/kernel/core_pattern > /cp && cat /cp > /proc/sys/kernel/core_pattern\n",
			wantErr: "exit status 1", wantLog: []string{"Read-only file system"}},
		{name: "write sysrq-trigger", df: "FROM busybox\nRUN echo h > /proc/sysrq-trigger\n",
			wantErr: "exit status 1", wantLog: []string{sysrqDenied}},
		// The step shares the host's network (docker build's default) but
		// lacks CAP_NET_ADMIN; the MTU would be unchanged anyway.
		{name: "configure the host's loopback", df: "FROM busybox\nRUN ip link set lo mtu $(cat /sys/class/net/lo/mtu)\n",
			wantErr: "exit status", wantLog: []string{"Operation not permitted"}},
		{name: "set the hostname", df: "FROM busybox\nRUN hostname evil\n",
			wantErr: "exit status 1", wantLog: []string{"Operation not permitted"}},
		// Signals reach only the sandbox's pid namespace; its init ignores
		// SIGKILL from inside it, as every pid namespace init.
		{name: "kill everything", df: "FROM busybox\nRUN kill -9 -1; kill -9 1; sleep 0.2; echo alive\n",
			wantLog: []string{"alive\n"}},
		// mknod works (CAP_MKNOD is in the default set) but the root is
		// nodev; runc's device cgroup denies the open instead.
		{name: "mknod /dev/mem", df: "FROM busybox\nRUN mknod /mem c 1 1 && head -c 1 /mem\n",
			wantErr: "exit status 1", wantLog: []string{"Permission denied"}},
	}
	tests = append(tests,
		// A heredoc named ".." would be written as /dev/pipes/.. (the
		// sandbox's /dev, a tmpfs, at worst).
		attackCase{name: "heredoc script named ..", df: "FROM busybox\nRUN <<..\n#!/bin/sh\necho hi\n..\n",
			wantErr: `run: invalid script name ".."`},
		// Cancelling the build kills the step's whole tree, processes that
		// ignore signals and background ones included.
		attackCase{name: "cancelled while the step's tree ignores signals", cancel: time.Second,
			df:      "FROM busybox\nRUN trap '' TERM INT HUP; (trap '' TERM INT HUP; sleep 300) & sleep 300 & echo started; wait\n",
			wantErr: "context deadline exceeded", wantLog: []string{"started\n"}},
	)
	// CVE-2024-21626: a working directory through an fd of the init. The
	// WORKDIR step creates the directories in the image; the sandbox then
	// refuses the working directory (runc: "possible container breakout
	// detected").
	for _, n := range []string{"3", "4", "5", "6", "7", "8"} {
		tests = append(tests, attackCase{name: "WORKDIR /proc/self/fd/" + n,
			df: "FROM busybox\nWORKDIR /proc/self/fd/" + n + "\nRUN pwd\n", wantErr: "working directory"})
	}
	// The init's own cwd is the new root: the step runs in "/", as under
	// runc, whose init also chdirs before the exec.
	tests = append(tests, attackCase{name: "WORKDIR /proc/1/cwd",
		df: "FROM busybox\nWORKDIR /proc/1/cwd\nRUN pwd; ls\n", wantLog: []string{"/\n", "etc\n"}})
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { h.run(t, st, tc, nil) })
	}
}
