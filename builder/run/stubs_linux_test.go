package run_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// hostDir makes a host directory that a sandbox following symlinks out of
// its root would damage: a file with content, a zero-sized file and an
// empty directory (what a naive stub cleanup removes) and a fake dev/null.
func hostDir(t *testing.T) string {
	t.Helper()
	h := t.TempDir()
	for name, body := range map[string]string{"hosts": "host hosts\n", "empty": "", "dev/null": "host null\n", "etc/hosts": ""} {
		p := filepath.Join(h, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(h, "dir"), 0o700); err != nil {
		t.Fatal(err)
	}
	return h
}

func symlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.RemoveAll(link); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}

// TestSymlinkedMountTargets: base images whose mount targets are symlinks
// to absolute host paths. The mounts land inside the root (or Run fails
// clearly), the host is untouched and no stub stays in the root.
func TestSymlinkedMountTargets(t *testing.T) {
	ex, _ := newExecutor(t)
	tests := []struct {
		name    string
		setup   func(t *testing.T, root, host string)
		script  string
		want    string
		wantErr string
	}{
		{name: "/etc/hosts to a host file", setup: func(t *testing.T, root, h string) { symlink(t, h+"/hosts", root+"/etc/hosts") },
			script: "cat /etc/hosts", want: "127.0.0.1\tlocalhost imgbuild\n::1\tlocalhost ip6-localhost ip6-loopback\n"},
		{name: "/etc/hosts to an empty host file", setup: func(t *testing.T, root, h string) { symlink(t, h+"/empty", root+"/etc/hosts") },
			script: "readlink /etc/hosts; head -1 /etc/hosts", want: "HOST/empty\n127.0.0.1\tlocalhost imgbuild\n"},
		{name: "/etc/hosts relative, escaping", setup: func(t *testing.T, root, h string) { symlink(t, "../../../../../.."+h+"/hosts", root+"/etc/hosts") },
			script: "head -1 /etc/hosts", want: "127.0.0.1\tlocalhost imgbuild\n"},
		{name: "/etc/resolv.conf to a missing host path", setup: func(t *testing.T, root, h string) {
			symlink(t, h+"/missing/resolv.conf", root+"/etc/resolv.conf")
		}, script: "cat /etc/resolv.conf", want: "nameserver 10.9.9.9\n"},
		{name: "/etc to a host directory", setup: func(t *testing.T, root, h string) { symlink(t, h+"/dir", root+"/etc") },
			script: "cat /etc/hostname; ls /etc", want: "imgbuild\nhostname\nhosts\nresolv.conf\n"},
		{name: "/etc to a host directory with a zero-sized hosts", setup: func(t *testing.T, root, h string) { symlink(t, h+"/etc", root+"/etc") },
			script: "cat /etc/hostname", want: "imgbuild\n"},
		{name: "/proc to a host directory", setup: func(t *testing.T, root, h string) { symlink(t, h+"/dir", root+"/proc") },
			script: "readlink /proc; cat /proc/self/comm", want: "HOST/dir\ncat\n"},
		{name: "/dev to a host directory", setup: func(t *testing.T, root, h string) { symlink(t, h+"/dev", root+"/dev") },
			script: "echo x > /dev/null; wc -c < /dev/null; ls /dev/ | wc -l", want: fmt.Sprintf("0\n%d\n", len(hostDevNodes()))},
		{name: "/dev/null to a host file", setup: func(t *testing.T, root, h string) { symlink(t, h+"/hosts", root+"/dev/null") },
			script: "echo x > /dev/null; wc -c < /dev/null", want: "0\n"},
		{name: "/sys to the host's /sys", setup: func(t *testing.T, root, h string) { symlink(t, "/sys", root+"/sys") }, wantErr: "too many"},
		{name: "/proc to the host's /proc", setup: func(t *testing.T, root, h string) { symlink(t, "/proc", root+"/proc") }, wantErr: "too many"},
		{name: "/sys into /proc", setup: func(t *testing.T, root, h string) { symlink(t, "/proc/sys", root+"/sys") },
			wantErr: "mount target /sys resolves to /proc/sys, inside the mount at /proc"},
		{name: "/proc to /", setup: func(t *testing.T, root, h string) { symlink(t, "/", root+"/proc") },
			wantErr: "mount target /proc resolves to the root directory"},
		{name: "/etc/hosts is a directory", setup: func(t *testing.T, root, h string) { os.Mkdir(root+"/etc/hosts", 0o755) },
			wantErr: "/etc/hosts is a directory"},
		{name: "/dev is a file", setup: func(t *testing.T, root, h string) { os.Remove(root + "/dev"); os.WriteFile(root+"/dev", nil, 0o644) },
			wantErr: "/dev is not a directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root, host := busyboxRootfs(t), hostDir(t)
			tt.setup(t, root, host)
			rootBefore, hostBefore := snapshot(t, root), snapshot(t, host)
			spec := sh(root, tt.script)
			spec.ResolvConf = []byte("nameserver 10.9.9.9\n")
			out, errOut, err := runSpec(t, ex, spec)
			switch {
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("error %v, want one containing %q", err, tt.wantErr)
			case tt.wantErr == "" && err != nil:
				t.Errorf("Run: %v\nstderr: %s", err, errOut)
			case out != strings.ReplaceAll(tt.want, "HOST", host):
				t.Errorf("stdout:\n%s\nwant:\n%s", out, tt.want)
			}
			checkSame(t, "the host directory", host, hostBefore)
			checkSame(t, "the root filesystem", root, rootBefore)
		})
	}
}

// TestMountStubs: the mount points the sandbox creates are removed after
// the run, parents' timestamps restored, unless the step filled them; and
// cleanup never follows a symlink the step planted (CVE-2024-23652).
func TestMountStubs(t *testing.T) {
	ex, _ := newExecutor(t)
	remove := func(names ...string) func(t *testing.T, root, h string) {
		return func(t *testing.T, root, h string) {
			for _, n := range names {
				if err := os.RemoveAll(filepath.Join(root, n)); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	tests := []struct {
		name      string
		setup     func(t *testing.T, root, host string)
		script    string
		wantAdded []string // entries of the root that the step made
	}{
		{name: "busybox: no /etc/hosts, resolv.conf, hostname", setup: remove(), script: "true"},
		{name: "no /proc, /sys, /dev, /etc", setup: remove("proc", "sys", "dev", "etc"), script: "ls /proc/self/ /dev/ /sys/ /etc >/dev/null"},
		{name: "failing step", setup: remove("proc", "etc"), script: "exit 1"},
		{name: "step fills a stub directory", setup: remove("etc"), script: "echo x > /etc/motd", wantAdded: []string{"etc", "etc/motd"}},
		{name: "step replaces /etc by a symlink to the host", setup: remove(),
			script: "mv /etc /etc.moved && ln -s HOST/etc /etc",
			// The stubs moved with /etc stay (as in BuildKit).
			wantAdded: []string{"etc.moved", "etc.moved/group", "etc.moved/passwd", "etc.moved/hosts", "etc.moved/resolv.conf", "etc.moved/hostname"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root, host := busyboxRootfs(t), hostDir(t)
			tt.setup(t, root, host)
			rootBefore, hostBefore := snapshot(t, root), snapshot(t, host)
			script := strings.ReplaceAll(tt.script, "HOST", host)
			_, errOut, err := runSpec(t, ex, sh(root, script))
			if err != nil && tt.name != "failing step" {
				t.Fatalf("Run: %v\nstderr: %s", err, errOut)
			}
			checkSame(t, "the host directory", host, hostBefore)
			after := snapshot(t, root)
			for _, a := range tt.wantAdded {
				if _, ok := after[a]; !ok {
					t.Errorf("%s missing after the run", a)
				}
				delete(after, a)
			}
			if tt.name == "step replaces /etc by a symlink to the host" {
				// mv and ln changed / and /etc.
				for _, k := range []string{".", "etc", "etc/group", "etc/passwd"} {
					after[k] = rootBefore[k]
				}
			}
			if d := rootBefore.diff(after); len(d) != 0 {
				t.Errorf("root filesystem changed beyond %v:\n%s", tt.wantAdded, joinLines(d))
			}
		})
	}
}

// TestConcurrentRuns runs steps in two root filesystems at once.
func TestConcurrentRuns(t *testing.T) {
	ex, _ := newExecutor(t)
	roots := []string{busyboxRootfs(t), busyboxRootfs(t)}
	errs := make(chan error, len(roots))
	for i, root := range roots {
		go func() {
			spec := sh(root, "echo $N > /n; sleep 0.2; cat /n")
			spec.Env = append(spec.Env, "N="+string(rune('a'+i)))
			errs <- ex.Run(t.Context(), spec)
		}()
	}
	for range roots {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	for i, root := range roots {
		if b, _ := os.ReadFile(root + "/n"); string(b) != string(rune('a'+i))+"\n" {
			t.Errorf("root %d: /n = %q", i, b)
		}
	}
}
