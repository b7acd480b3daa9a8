package registrytest

import (
	"archive/tar"
	"io"
	"net/http"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

func TestBusyboxImageDeterministic(t *testing.T) {
	a, b := BusyboxImage(t), BusyboxImage(t)
	da, err := a.Digest()
	if err != nil {
		t.Fatal(err)
	}
	db, err := b.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if da != db {
		t.Fatalf("digests differ between builds: %s vs %s", da, db)
	}
	if err := validate.Image(a); err != nil {
		t.Fatalf("validate.Image: %v", err)
	}
}

func TestBusyboxImageLayout(t *testing.T) {
	img := BusyboxImage(t)
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.OS != "linux" || cfg.Architecture != runtime.GOARCH {
		t.Errorf("platform %s/%s, want linux/%s", cfg.OS, cfg.Architecture, runtime.GOARCH)
	}
	if got := strings.Join(cfg.Config.Env, ","); got != "PATH="+DefaultPath {
		t.Errorf("Env = %q", got)
	}
	if got := strings.Join(cfg.Config.Cmd, " "); got != "sh" {
		t.Errorf("Cmd = %q", got)
	}
	entries := flatEntries(t, img)
	out, err := exec.Command(BusyboxBinary, "--list").Output()
	if err != nil {
		t.Fatal(err)
	}
	applets := strings.Fields(string(out))
	if len(applets) < 100 {
		t.Fatalf("busybox --list printed %d applets", len(applets))
	}
	for _, a := range applets {
		if a == "busybox" {
			continue
		}
		h, ok := entries["bin/"+a]
		if !ok || h.Typeflag != tar.TypeLink || h.Linkname != "bin/busybox" {
			t.Errorf("bin/%s: want a hard link to bin/busybox, got %+v", a, h)
		}
	}
	tests := []struct {
		name     string
		typ      byte
		mode     int64
		uid, gid int
	}{
		{"bin/busybox", tar.TypeReg, 0o755, 0, 0},
		{"etc/passwd", tar.TypeReg, 0o644, 0, 0},
		{"etc/group", tar.TypeReg, 0o644, 0, 0},
		{"tmp/", tar.TypeDir, 0o1777, 0, 0},
		{"root/", tar.TypeDir, 0o700, 0, 0},
		{"home/app/", tar.TypeDir, 0o755, AppUID, AppGID},
		{"dev/", tar.TypeDir, 0o755, 0, 0},
		{"proc/", tar.TypeDir, 0o555, 0, 0},
		{"sys/", tar.TypeDir, 0o555, 0, 0},
		{"var/spool/mail/", tar.TypeDir, 0o755, 0, 0},
		{"usr/sbin/", tar.TypeDir, 0o755, 0, 0},
	}
	for _, tc := range tests {
		h, ok := entries[tc.name]
		if !ok {
			t.Errorf("%s missing", tc.name)
			continue
		}
		if h.Typeflag != tc.typ || h.Mode != tc.mode || h.Uid != tc.uid || h.Gid != tc.gid {
			t.Errorf("%s: type %c mode %o uid %d gid %d, want %c %o %d %d",
				tc.name, h.Typeflag, h.Mode, h.Uid, h.Gid, tc.typ, tc.mode, tc.uid, tc.gid)
		}
		if h.ModTime.Unix() != EpochUnix {
			t.Errorf("%s: mtime %v", tc.name, h.ModTime)
		}
	}
	for _, want := range []string{"root:x:0:0:root:/root:/bin/sh\n", "app:x:1000:1000:app:/home/app:/bin/sh\n", "nobody:x:65534:65534:"} {
		if !strings.Contains(passwd, want) {
			t.Errorf("passwd lacks %q", want)
		}
	}
	for _, want := range []string{"app:x:1000:\n", "nogroup:x:65534:\n", "root:x:0:\n"} {
		if !strings.Contains(group, want) {
			t.Errorf("group lacks %q", want)
		}
	}
}

// flatEntries reads the image's flattened filesystem as headers by name.
func flatEntries(t *testing.T, img v1.Image) map[string]*tar.Header {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	m := map[string]*tar.Header{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return m
		}
		if err != nil {
			t.Fatal(err)
		}
		n := h.Name
		if h.Typeflag == tar.TypeDir {
			n += "/"
		}
		m[n] = h
	}
}

func TestStartPushPull(t *testing.T) {
	host := Start(t)
	if !strings.HasPrefix(host, "127.0.0.1:") {
		t.Fatalf("Start returned %q", host)
	}
	resp, err := http.Get("http://" + host + "/v2/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/v2/: %s", resp.Status)
	}

	ref := PushBusybox(t, host)
	if want := host + "/" + BusyboxRepo; ref != want {
		t.Errorf("PushBusybox = %q, want %q", ref, want)
	}
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	got, err := remote.Image(r)
	if err != nil {
		t.Fatal(err)
	}
	gd, _ := got.Digest()
	wd, _ := BusyboxImage(t).Digest()
	if gd != wd {
		t.Errorf("pulled %s, pushed %s", gd, wd)
	}
	if err := validate.Image(got); err != nil {
		t.Errorf("validate.Image of pulled image: %v", err)
	}

	iref := PushBusyboxIndex(t, host)
	ir, err := name.ParseReference(iref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := remote.Index(ir)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Index(idx); err != nil {
		t.Errorf("validate.Index: %v", err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != len(IndexPlatforms()) {
		t.Fatalf("index has %d manifests, want %d", len(im.Manifests), len(IndexPlatforms()))
	}
	for i, d := range im.Manifests {
		if want := IndexPlatforms()[i]; d.Platform == nil || !d.Platform.Equals(want) {
			t.Errorf("manifest %d platform %v, want %v", i, d.Platform, want)
		}
	}
}

func TestStartTwoRegistries(t *testing.T) {
	a, b := Start(t), Start(t)
	if a == b {
		t.Fatalf("two registries on one address %s", a)
	}
}
