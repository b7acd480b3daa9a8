package builder

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// userRoot returns a rootfs holding testdata/copy/passwd and group as
// /etc/passwd and /etc/group.
func userRoot(t testing.TB) string {
	t.Helper()
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"passwd", "group"} {
		data, err := os.ReadFile(filepath.Join("testdata", "copy", name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, "etc", name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestLookupChown(t *testing.T) {
	root := userRoot(t)
	cases := []struct {
		spec     string
		uid, gid int
		err      string
	}{
		{spec: "app", uid: 1000, gid: 1000},
		{spec: "web", uid: 1001, gid: 50}, // primary gid from passwd
		{spec: "web:", uid: 1001, gid: 50},
		{spec: "app:staff", uid: 1000, gid: 50},
		{spec: "app:10", uid: 1000, gid: 10},
		{spec: "1234", uid: 1234, gid: 1234}, // numeric: same gid, no lookup
		{spec: "1000:", uid: 1000, gid: 1000},
		{spec: "1001", uid: 1001, gid: 1001}, // not web's primary group: BuildKit does not look numeric ids up
		{spec: "55:staff", uid: 55, gid: 50},
		{spec: "10:11", uid: 10, gid: 11},
		{spec: "root", uid: 0, gid: 0},
		{spec: "daemon:root", uid: 1, gid: 0},
		{spec: ":staff", uid: 0, gid: 50},
		{spec: "nosuchuser", err: "unable to find user nosuchuser"},
		{spec: "app:nosuchgroup", err: "unable to find group nosuchgroup"},
		{spec: "99999999999", err: "out of range"},
	}
	for _, tc := range cases {
		t.Run(tc.spec, func(t *testing.T) {
			uid, gid, err := lookupChown(root, tc.spec)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if uid != tc.uid || gid != tc.gid {
				t.Errorf("got %d:%d, want %d:%d", uid, gid, tc.uid, tc.gid)
			}
		})
	}
}

func TestLookupChownWithoutEtc(t *testing.T) {
	root := t.TempDir()
	if uid, gid, err := lookupChown(root, "42:43"); err != nil || uid != 42 || gid != 43 {
		t.Errorf("numeric ids: got %d:%d, %v", uid, gid, err)
	}
	if _, _, err := lookupChown(root, "app"); err == nil {
		t.Error("name without /etc/passwd: want an error")
	}
}

func TestLookupUser(t *testing.T) {
	root := userRoot(t)
	cases := []struct {
		spec string
		want execUser
		err  string
	}{
		{spec: "", want: execUser{UID: 0, GID: 0, Home: "/root"}},
		{spec: "root", want: execUser{UID: 0, GID: 0, Home: "/root"}},
		{spec: "app", want: execUser{UID: 1000, GID: 1000, ExtraGIDs: []int{50, 10}, Home: "/home/app"}},
		{spec: "1000", want: execUser{UID: 1000, GID: 1000, ExtraGIDs: []int{50, 10}, Home: "/home/app"}},
		{spec: "web", want: execUser{UID: 1001, GID: 50, ExtraGIDs: []int{50}, Home: "/var/www"}},
		{spec: "app:wheel", want: execUser{UID: 1000, GID: 10, Home: "/home/app"}},
		{spec: "app:777", want: execUser{UID: 1000, GID: 777, Home: "/home/app"}},
		{spec: "4242", want: execUser{UID: 4242, GID: 0, Home: "/"}},
		{spec: "4242:staff", want: execUser{UID: 4242, GID: 50, Home: "/"}},
		{spec: "ghost", err: "unable to find user ghost"},
		{spec: "app:ghosts", err: "unable to find group ghosts"},
	}
	for _, tc := range cases {
		t.Run(tc.spec, func(t *testing.T) {
			got, err := lookupUser(root, tc.spec)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.UID != tc.want.UID || got.GID != tc.want.GID || got.Home != tc.want.Home || !slices.Equal(got.ExtraGIDs, tc.want.ExtraGIDs) {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestUserFilesConfined(t *testing.T) {
	// /etc/passwd as a symlink out of the root resolves inside it; a
	// non-regular file is refused.
	root := t.TempDir()
	outside := t.TempDir()
	if err := os.WriteFile(filepath.Join(outside, "passwd"), []byte("evil:x:7:7::/:/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctTree(t, root, cl("etc/passwd", filepath.Join(outside, "passwd")))
	if _, _, err := lookupChown(root, "evil"); err == nil {
		t.Error("passwd symlinked out of the root was read")
	}
	root2 := t.TempDir()
	ctTree(t, root2, cd("etc/passwd", 0o755))
	if _, _, err := lookupChown(root2, "app"); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("directory as passwd: error = %v", err)
	}
}
