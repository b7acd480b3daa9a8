package builder

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imgbuild/imgbuild/registry/registrytest"
)

func TestCopyChown(t *testing.T) {
	registrytest.RequireRoot(t)
	users := userRoot(t)
	cases := []copyCase{
		{name: "user name uses its primary group", op: copyOp{Sources: []string{"f.txt"}, Dest: "/foo", Chown: "web"},
			want: map[string]string{"foo": "f 0644 1001:50 hello"}},
		{name: "user:group names", op: copyOp{Sources: []string{"dir"}, Dest: "/d", Chown: "app:staff"},
			want: map[string]string{"d": "d 0755 1000:50", "d/a": "f 0640 1000:50 A", "d/sub": "d 0750 1000:50",
				"d/sub/b": "f 0600 1000:50 B", "d/link": "l -> a"}},
		{name: "numeric uid gives the same gid", op: copyOp{Sources: []string{"f.txt"}, Dest: "/n", Chown: "1000:"},
			want: map[string]string{"n": "f 0644 1000:1000 hello"}},
		{name: "numeric uid and group name", op: copyOp{Sources: []string{"f.txt"}, Dest: "/n", Chown: "1000:nogroup"},
			want: map[string]string{"n": "f 0644 1000:65534 hello"}},
		{name: "created parents get the owner", op: copyOp{Sources: []string{"f.txt"}, Dest: "/p/q/f", Chown: "7:8"},
			want: map[string]string{"p": "d 0755 7:8", "p/q": "d 0755 7:8", "p/q/f": "f 0644 7:8 hello"}},
		{name: "existing dest dir keeps its owner", base: []ctEntry{{path: "d", kind: 'd', mode: 0o755, uid: 5, gid: 6}},
			op:   copyOp{Sources: []string{"f.txt"}, Dest: "/d/", Chown: "7:8"},
			want: map[string]string{"d": "d 0755 5:6", "d/f.txt": "f 0644 7:8 hello"}},
		{name: "heredoc chown", op: copyOp{Heredocs: []heredocSource{{Name: "h", Data: []byte("x")}}, Dest: "/h", Chown: "app"},
			want: map[string]string{"h": "f 0644 1000:1000 x"}},
		{name: "chown then chmod keeps setuid", op: copyOp{Sources: []string{"run.sh"}, Dest: "/s", Chown: "app", Chmod: "4755"},
			want: map[string]string{"s": "f 4755 1000:1000 #!/bin/sh"}},
		{name: "unknown user", op: copyOp{Sources: []string{"f.txt"}, Dest: "/x", Chown: "ghost"}, err: "unable to find user ghost"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			bc := ctLoadContext(t, "", ctxBasic...)
			root := t.TempDir()
			ctTree(t, root, tc.base...)
			op := tc.op
			op.Context, op.DestRoot, op.UserRoot = bc, root, users
			_, err := copyFiles(context.Background(), op)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := ctDiff(ctSnapshot(t, root), tc.want); d != "" {
				t.Errorf("destination differs:\n%s", d)
			}
		})
	}
}

// TestCopyFromRootfs follows BuildKit's testCopyChownExistingDir: COPY
// --from keeps the owners of the source stage, the destination directory it
// creates is 0:0 (or the --chown owner), existing directories keep theirs.
func TestCopyFromRootfs(t *testing.T) {
	registrytest.RequireRoot(t)
	src := t.TempDir()
	ctTree(t, src,
		ctEntry{path: "file", kind: 'f', mode: 0o644, uid: 100, gid: 200},
		ctEntry{path: "dir", kind: 'd', mode: 0o755, uid: 100, gid: 200},
		ctEntry{path: "dir/subdir", kind: 'd', mode: 0o755, uid: 101, gid: 201},
		ctEntry{path: "dir/subdir/nestedfile", kind: 'f', mode: 0o644, uid: 102, gid: 202},
		cf("out/sub/foo", "data", 0o644), cl("sub", "/out/sub"), cl("sub2", "out/sub"),
		cl("escape", "../../../../../../etc"),
	)
	base := []ctEntry{
		{path: "existingdir", kind: 'd', mode: 0o755, uid: 500, gid: 600},
		{path: "existingdir/existingsubdir", kind: 'd', mode: 0o755, uid: 501, gid: 601},
		{path: "existingdir/existingfile", kind: 'f', mode: 0o644, uid: 501, gid: 601},
	}
	run := func(t *testing.T, chown string) map[string]string {
		root := t.TempDir()
		ctTree(t, root, base...)
		for _, o := range []copyOp{
			{Sources: []string{"/file"}, Dest: "."},
			{Sources: []string{"/dir"}, Dest: "/dir"},
			{Sources: []string{"/dir/."}, Dest: "/existingdir"},
			{Sources: []string{"/sub/foo"}, Dest: "."},
			{Sources: []string{"/sub2/foo"}, Dest: "bar"},
		} {
			o.SrcRoot, o.DestRoot, o.UserRoot, o.Chown = src, root, root, chown
			if _, err := copyFiles(context.Background(), o); err != nil {
				t.Fatal(err)
			}
		}
		return ctSnapshot(t, root)
	}
	t.Run("owners kept", func(t *testing.T) {
		got := run(t, "")
		want := map[string]string{
			"file": "f 0644 100:200 ", "dir": "d 0755 0:0", "dir/subdir": "d 0755 101:201",
			"dir/subdir/nestedfile": "f 0644 102:202 ", "existingdir": "d 0755 500:600",
			"existingdir/existingsubdir": "d 0755 501:601", "existingdir/existingfile": "f 0644 501:601 ",
			"existingdir/subdir": "d 0755 101:201", "existingdir/subdir/nestedfile": "f 0644 102:202 ",
			"foo": "f 0644 0:0 data", "bar": "f 0644 0:0 data",
		}
		if d := ctDiff(got, want); d != "" {
			t.Errorf("destination differs:\n%s", d)
		}
	})
	t.Run("chowned", func(t *testing.T) {
		got := run(t, "300:400")
		want := map[string]string{
			"file": "f 0644 300:400 ", "dir": "d 0755 300:400", "dir/subdir": "d 0755 300:400",
			"dir/subdir/nestedfile": "f 0644 300:400 ", "existingdir": "d 0755 500:600",
			"existingdir/existingsubdir": "d 0755 501:601", "existingdir/existingfile": "f 0644 501:601 ",
			"existingdir/subdir": "d 0755 300:400", "existingdir/subdir/nestedfile": "f 0644 300:400 ",
			"foo": "f 0644 300:400 data", "bar": "f 0644 300:400 data",
		}
		if d := ctDiff(got, want); d != "" {
			t.Errorf("destination differs:\n%s", d)
		}
	})
	t.Run("symlink out of the source rootfs is confined", func(t *testing.T) {
		root := t.TempDir()
		_, err := copyFiles(context.Background(), copyOp{SrcRoot: src, Sources: []string{"/escape/passwd"}, Dest: "/x", DestRoot: root})
		if err == nil || !strings.Contains(err.Error(), "not found") {
			t.Fatalf("error = %v, want not found", err)
		}
	})
}

// TestCopyDestBreakouts checks that destinations resolve inside DestRoot:
// symlinks in the rootfs pointing at host paths never make COPY write
// outside it.
func TestCopyDestBreakouts(t *testing.T) {
	registrytest.RequireRoot(t)
	host := t.TempDir() // stands for a host directory an attacker targets
	sentinel := filepath.Join(host, "sentinel")
	if err := os.WriteFile(sentinel, []byte("untouched"), 0o644); err != nil {
		t.Fatal(err)
	}
	name := "imgbuild-breakout-" + filepath.Base(host)
	cases := []struct {
		name string
		base []ctEntry
		dest string
		in   string // where the file must land, relative to the root
	}{
		{name: "dir symlink to /etc", base: []ctEntry{cd("etc", 0o755), cl("app", "/etc")}, dest: "/app/", in: "etc/" + name},
		{name: "absolute symlink to a host dir", base: []ctEntry{cl("app", host)}, dest: "/app/", in: strings.TrimPrefix(host, "/") + "/" + name},
		{name: "relative symlink climbing out", base: []ctEntry{cl("app", "../../../../../../../../"+strings.TrimPrefix(host, "/"))},
			dest: "/app/", in: strings.TrimPrefix(host, "/") + "/" + name},
		{name: "final symlink to a host file", base: []ctEntry{cl("x", sentinel)}, dest: "/x", in: strings.TrimPrefix(sentinel, "/")},
		{name: "symlink inside dest dir to a host file", base: []ctEntry{cl("d/"+name, sentinel)}, dest: "/d/", in: "d/" + name},
		{name: "symlinked parent created inside", base: []ctEntry{cl("p", host)}, dest: "/p/new/sub/", in: strings.TrimPrefix(host, "/") + "/new/sub/" + name},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			bc := ctLoadContext(t, "", cf(name, "payload", 0o644))
			root := t.TempDir()
			ctTree(t, root, tc.base...)
			if _, err := copyFiles(context.Background(), copyOp{Context: bc, Sources: []string{name}, Dest: tc.dest, DestRoot: root}); err != nil {
				t.Fatal(err)
			}
			if data, err := os.ReadFile(filepath.Join(root, tc.in)); err != nil || string(data) != "payload" {
				t.Errorf("file not at %s inside the root: %q, %v", tc.in, data, err)
			}
			if data, err := os.ReadFile(sentinel); err != nil || string(data) != "untouched" {
				t.Errorf("host sentinel changed: %q, %v", data, err)
			}
			entries, _ := os.ReadDir(host)
			if len(entries) != 1 {
				t.Errorf("host directory gained entries: %v", entries)
			}
			if _, err := os.Lstat("/etc/" + name); err == nil {
				t.Errorf("host /etc/%s was created", name)
			}
		})
	}
}

func TestCopyTimes(t *testing.T) {
	registrytest.RequireRoot(t)
	bc := ctLoadContext(t, "", ctxBasic...)
	t.Run("source mtimes kept", func(t *testing.T) {
		root := t.TempDir()
		if _, err := copyFiles(context.Background(), copyOp{Context: bc, Sources: []string{"dir", "f.txt"}, Dest: "/new/d/", DestRoot: root}); err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{"new/d/a", "new/d/sub", "new/d/sub/b", "new/d/link", "new/d/f.txt"} {
			if got := ctMtimeOf(t, filepath.Join(root, p)); !got.Equal(ctMtime) {
				t.Errorf("%s mtime = %v, want %v", p, got, ctMtime)
			}
		}
	})
	t.Run("SOURCE_DATE_EPOCH clamps everything written", func(t *testing.T) {
		root := t.TempDir()
		epoch := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC) // before ctMtime
		changed, err := copyFiles(context.Background(), copyOp{Context: bc, Sources: []string{"dir", "f.txt"},
			Heredocs: []heredocSource{{Name: "h", Data: []byte("x")}}, Dest: "/new/d/", DestRoot: root, SourceDateEpoch: &epoch})
		if err != nil {
			t.Fatal(err)
		}
		if len(changed) < 8 {
			t.Fatalf("changed = %q", changed)
		}
		for _, p := range changed {
			if got := ctMtimeOf(t, filepath.Join(root, p)); got.After(epoch) {
				t.Errorf("%s mtime = %v, after the epoch %v", p, got, epoch)
			}
		}
	})
	t.Run("later epoch keeps older source mtimes", func(t *testing.T) {
		root := t.TempDir()
		epoch := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
		if _, err := copyFiles(context.Background(), copyOp{Context: bc, Sources: []string{"f.txt"}, Dest: "/f", DestRoot: root, SourceDateEpoch: &epoch}); err != nil {
			t.Fatal(err)
		}
		if got := ctMtimeOf(t, filepath.Join(root, "f")); !got.Equal(ctMtime) {
			t.Errorf("mtime = %v, want %v", got, ctMtime)
		}
	})
}
