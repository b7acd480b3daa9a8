package run_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgbuild/imgbuild/builder/run"
)

// mountSource makes a host directory to bind-mount: a file,
// subdirectories and a symlink, out -> /etc.
func mountSource(t *testing.T) string {
	t.Helper()
	src := t.TempDir()
	for _, d := range []string{"sub", "etc"} {
		if err := os.Mkdir(filepath.Join(src, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for name, body := range map[string]string{"f": "file\n", "sub/g": "g\n", "etc/inside": "in\n"} {
		if err := os.WriteFile(filepath.Join(src, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("/etc", filepath.Join(src, "out")); err != nil {
		t.Fatal(err)
	}
	return src
}

// TestExtraMounts: Spec.Mounts are mounted where the step looks, with their
// options; the mount points made for them go after the run, and neither the
// root filesystem nor the host gains anything but what a step writes through
// a read-write bind mount into its source.
func TestExtraMounts(t *testing.T) {
	ex, _ := newExecutor(t)
	tests := []struct {
		name      string
		mounts    func(src string) []run.Mount
		setup     func(t *testing.T, root, host string)
		script    string
		want      string
		srcAdded  []string // entries the step added to the bind source
		rootAdded []string // entries the step added to the root filesystem
	}{
		{name: "bind read-only directory in a new directory",
			mounts: func(src string) []run.Mount {
				return []run.Mount{{Type: run.MountBind, Target: "/mnt/a/b", Source: "/", SourceRoot: src, ReadOnly: true}}
			},
			script: "cat /mnt/a/b/f /mnt/a/b/sub/g; touch /mnt/a/b/x 2>/dev/null || echo ro; grep ' /mnt/a/b ' /proc/mounts | cut -d' ' -f4 | tr , '\\n' | grep -E '^(ro|nodev)$'",
			want:   "file\ng\nro\nro\nnodev\n"},
		{name: "bind read-write writes reach the source",
			mounts: func(src string) []run.Mount {
				return []run.Mount{{Type: run.MountBind, Target: "/w", Source: "sub", SourceRoot: src}}
			},
			script: "cat /w/g; echo new > /w/new; ls /w", want: "g\ng\nnew\n", srcAdded: []string{"sub/new"}},
		{name: "bind a file",
			mounts: func(src string) []run.Mount {
				return []run.Mount{{Type: run.MountBind, Target: "/etc/f.conf", Source: "f", SourceRoot: src, ReadOnly: true}}
			},
			script: "cat /etc/f.conf; test -f /etc/f.conf && echo file", want: "file\nfile\n"},
		{name: "bind source symlinks stay in the source root",
			mounts: func(src string) []run.Mount {
				return []run.Mount{{Type: run.MountBind, Target: "/s", Source: "out", SourceRoot: src, ReadOnly: true}}
			},
			// out -> /etc is src/etc, not the host's /etc.
			script: "cat /s/inside; test -e /s/passwd || echo not-the-host", want: "in\nnot-the-host\n"},
		{name: "bind host path",
			mounts: func(src string) []run.Mount {
				return []run.Mount{{Type: run.MountBind, Target: "/h", Source: filepath.Join(src, "sub"), ReadOnly: true}}
			},
			script: "cat /h/g", want: "g\n"},
		{name: "tmpfs with a size",
			mounts: func(string) []run.Mount {
				return []run.Mount{{Type: run.MountTmpfs, Target: "/t", Size: 1 << 20}}
			},
			script: "echo x > /t/x && cat /t/x; grep ' /t ' /proc/mounts | cut -d' ' -f1,3; df -k /t | awk 'NR==2 {print $2}'",
			want:   "x\ntmpfs tmpfs\n1024\n"},
		{name: "read-only tmpfs",
			mounts: func(string) []run.Mount { return []run.Mount{{Type: run.MountTmpfs, Target: "/t", ReadOnly: true}} },
			script: "touch /t/x 2>/dev/null || echo ro", want: "ro\n"},
		{name: "file mounts",
			mounts: func(string) []run.Mount {
				return []run.Mount{
					{Type: run.MountFile, Target: "/run/secrets/token", Data: []byte("s3cret"), Mode: 0o400},
					{Type: run.MountFile, Target: "/home/app/.npmrc", Data: []byte("npm"), Mode: 0o440, UID: 1000, GID: 1000},
				}
			},
			script: "cat /run/secrets/token; echo; stat -c '%a %u:%g %s' /run/secrets/token /home/app/.npmrc; " +
				"echo x > /run/secrets/token 2>/dev/null || echo ro; grep -c secrets /proc/mounts",
			want: "s3cret\n400 0:0 6\n440 1000:1000 3\nro\n1\n"},
		{name: "target through a symlink to the host",
			mounts: func(string) []run.Mount { return []run.Mount{{Type: run.MountTmpfs, Target: "/planted/cache"}} },
			setup: func(t *testing.T, root, host string) {
				symlink(t, host+"/dir", root+"/planted")
			},
			script: "echo x > /planted/cache/x; readlink /planted",
			want:   "HOST/dir\n", rootAdded: []string{}},
		{name: "step fills a parent stub",
			mounts: func(string) []run.Mount { return []run.Mount{{Type: run.MountTmpfs, Target: "/new/t"}} },
			script: "echo kept > /new/kept", rootAdded: []string{"new", "new/kept"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root, host, src := busyboxRootfs(t), hostDir(t), mountSource(t)
			if tt.setup != nil {
				tt.setup(t, root, host)
			}
			rootBefore, hostBefore, srcBefore := snapshot(t, root), snapshot(t, host), snapshot(t, src)
			spec := sh(root, tt.script)
			spec.Mounts = tt.mounts(src)
			out := mustRun(t, ex, spec)
			if want := strings.ReplaceAll(tt.want, "HOST", host); out != want {
				t.Errorf("stdout:\n%s\nwant:\n%s", out, want)
			}
			checkSame(t, "the host directory", host, hostBefore)
			checkAdded(t, "the bind source", src, srcBefore, tt.srcAdded)
			checkAdded(t, "the root filesystem", root, rootBefore, tt.rootAdded)
		})
	}
}

// checkAdded fails t unless dir is before plus the entries added (whose
// parents may have changed).
func checkAdded(t *testing.T, what, dir string, before tree, added []string) {
	t.Helper()
	after := snapshot(t, dir)
	for _, a := range added {
		if _, ok := after[a]; !ok {
			t.Errorf("%s: %s missing after the run", what, a)
		}
		delete(after, a)
		for p := filepath.Dir(a); ; p = filepath.Dir(p) {
			if b, ok := before[p]; ok {
				after[p] = b
			}
			if p == "." {
				break
			}
		}
	}
	if d := before.diff(after); len(d) != 0 {
		t.Errorf("%s changed beyond %v:\n%s", what, added, joinLines(d))
	}
}

// TestExtraMountErrors: mounts Run refuses, before the step runs, leaving
// the root filesystem as it was.
func TestExtraMountErrors(t *testing.T) {
	ex, _ := newExecutor(t)
	tmpfs := func(target string) run.Mount { return run.Mount{Type: run.MountTmpfs, Target: target} }
	tests := []struct {
		name    string
		mounts  func(src string) []run.Mount
		setup   func(t *testing.T, root string)
		wantErr string
	}{
		{name: "relative target", mounts: func(string) []run.Mount { return []run.Mount{tmpfs("t")} },
			wantErr: `invalid mount target "t"`},
		{name: "root target", mounts: func(string) []run.Mount { return []run.Mount{tmpfs("/x/..")} },
			wantErr: `invalid mount target "/x/.."`},
		{name: "unknown type", mounts: func(string) []run.Mount { return []run.Mount{{Type: "nfs", Target: "/n"}} },
			wantErr: `unknown mount type "nfs"`},
		{name: "relative host source", mounts: func(string) []run.Mount {
			return []run.Mount{{Type: run.MountBind, Target: "/b", Source: "rel"}}
		}, wantErr: `bind source "rel" is not an absolute path`},
		{name: "missing source", mounts: func(src string) []run.Mount {
			return []run.Mount{{Type: run.MountBind, Target: "/b", Source: "missing", SourceRoot: src}}
		}, wantErr: "mount at /b: source missing: "},
		{name: "symlink host source", mounts: func(src string) []run.Mount {
			return []run.Mount{{Type: run.MountBind, Target: "/b", Source: filepath.Join(src, "out")}}
		}, wantErr: "is a symlink"},
		{name: "inside /proc", mounts: func(string) []run.Mount { return []run.Mount{tmpfs("/proc/x")} },
			wantErr: "mount target /proc/x resolves to /proc/x, inside the mount at /proc"},
		{name: "on /etc/hosts", mounts: func(string) []run.Mount {
			return []run.Mount{{Type: run.MountFile, Target: "/etc/hosts"}}
		}, wantErr: "mount target /etc/hosts resolves to /etc/hosts, the mount at /etc/hosts"},
		{name: "covering /etc/hosts", mounts: func(string) []run.Mount { return []run.Mount{tmpfs("/etc")} },
			wantErr: "mount target /etc (/etc) would cover the mount at /etc/hosts"},
		{name: "nested", mounts: func(string) []run.Mount { return []run.Mount{tmpfs("/a"), tmpfs("/a/b")} },
			wantErr: "mount target /a/b resolves to /a/b, inside the mount at /a"},
		{name: "same target", mounts: func(string) []run.Mount {
			return []run.Mount{{Type: run.MountFile, Target: "/s"}, {Type: run.MountFile, Target: "/s"}}
		}, wantErr: "mount target /s resolves to /s, the mount at /s"},
		{name: "symlinked target to /", mounts: func(string) []run.Mount { return []run.Mount{tmpfs("/evil")} },
			setup:   func(t *testing.T, root string) { symlink(t, "/", root+"/evil") },
			wantErr: "mount target /evil resolves to the root directory"},
		{name: "symlinked target into /dev", mounts: func(string) []run.Mount { return []run.Mount{tmpfs("/evil")} },
			setup:   func(t *testing.T, root string) { symlink(t, "/dev/shm", root+"/evil") },
			wantErr: "mount target /evil resolves to /dev/shm, inside the mount at /dev"},
		{name: "directory source on a file", mounts: func(src string) []run.Mount {
			return []run.Mount{{Type: run.MountBind, Target: "/bin/sh", Source: "sub", SourceRoot: src}}
		}, wantErr: "/bin/sh is not a directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root, src := busyboxRootfs(t), mountSource(t)
			if tt.setup != nil {
				tt.setup(t, root)
			}
			before := snapshot(t, root)
			spec := sh(root, "echo ran > /ran")
			spec.Mounts = tt.mounts(src)
			_, _, err := runSpec(t, ex, spec)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %v, want one containing %q", err, tt.wantErr)
			}
			checkSame(t, "the root filesystem", root, before)
		})
	}
}
