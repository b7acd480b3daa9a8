//go:build linux

package registrytest

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"
	"github.com/klauspost/compress/gzip"
	"golang.org/x/sys/unix"
)

// fakeDebootstrap stands in for debootstrap: it makes a tiny tree holding
// what the script must strip, and counts its runs in $FAKE_COUNT.
const fakeDebootstrap = `#!/bin/sh
set -e
[ "$1" = --variant=minbase ] && [ "$2" = bookworm ] || exit 3
[ -z "$FAKE_FAIL" ] || { echo "fake failure" >&2; exit 1; }
echo run >>"$FAKE_COUNT"
sleep 1
d=$3
mkdir -p "$d/dev/pts" "$d/etc" "$d/usr/bin" "$d/var/cache/apt/archives" "$d/var/lib/apt/lists"
echo 12.0 >"$d/etc/debian_version"
echo host >"$d/etc/hostname"
echo "nameserver 192.0.2.1" >"$d/etc/resolv.conf"
: >"$d/dev/null"
: >"$d/var/cache/apt/archives/bash.deb"
: >"$d/var/cache/apt/pkgcache.bin"
: >"$d/var/lib/apt/lists/lock"
: >"$d/var/lib/apt/lists/bookworm_Packages"
`

// runRootfsScript runs .ci/debian-rootfs with the cache in cache and the
// fake debootstrap; it returns stdout and the error.
func runRootfsScript(t *testing.T, cache, fake, count string, fail bool) (string, error) {
	t.Helper()
	script, err := findScript()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(script)
	cmd.Env = append(os.Environ(), CacheEnv+"="+cache, "IMGBUILD_DEBOOTSTRAP="+fake, "FAKE_COUNT="+count)
	if fail {
		cmd.Env = append(cmd.Env, "FAKE_FAIL=1")
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	if err != nil {
		t.Logf("script stderr: %s", stderr.String())
	}
	return strings.TrimSpace(stdout.String()), err
}

// TestDebianRootfsScript checks the script's cache protocol with a fake
// debootstrap: concurrent callers build once and print the same path, stale
// temporary trees are removed, host files and package files are stripped,
// and a failed debootstrap leaves nothing behind.
func TestDebianRootfsScript(t *testing.T) {
	RequireRoot(t)
	base := t.TempDir()
	fake := filepath.Join(base, "fake-debootstrap")
	if err := os.WriteFile(fake, []byte(fakeDebootstrap), 0o755); err != nil {
		t.Fatal(err)
	}
	count := filepath.Join(base, "count")

	t.Run("failure", func(t *testing.T) {
		cache := filepath.Join(base, "failcache")
		if out, err := runRootfsScript(t, cache, fake, count, true); err == nil {
			t.Fatalf("script succeeded with a failing debootstrap, printed %q", out)
		}
		left, _ := filepath.Glob(filepath.Join(cache, debianName+"*"))
		if len(left) != 0 {
			t.Errorf("failed build left %v", left)
		}
	})

	cache := filepath.Join(base, "cache")
	stale := filepath.Join(cache, debianName+".tmp.crashed")
	if err := os.MkdirAll(filepath.Join(stale, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.Remove(count)
	const callers = 4
	outs := make([]string, callers)
	errs := make([]error, callers)
	var wg sync.WaitGroup
	for i := range callers {
		wg.Go(func() { outs[i], errs[i] = runRootfsScript(t, cache, fake, count, false) })
	}
	wg.Wait()
	want := filepath.Join(cache, debianName)
	for i := range callers {
		if errs[i] != nil || outs[i] != want {
			t.Errorf("caller %d: printed %q, err %v; want %q", i, outs[i], errs[i], want)
		}
	}
	if runs, _ := os.ReadFile(count); string(runs) != "run\n" {
		t.Errorf("debootstrap ran %d times for %d concurrent callers, want once", strings.Count(string(runs), "run"), callers)
	}
	if fi, err := os.Stat(want); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("rootfs %s: %v, %v; want mode 0755", want, fi.Mode(), err)
	}
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale %s not removed (%v)", stale, err)
	}
	for _, tc := range []struct {
		path   string
		exists bool
	}{
		{"etc/debian_version", true},
		{"dev", true},
		{"dev/null", false},
		{"dev/pts", false},
		{"etc/hostname", false},
		{"etc/resolv.conf", false},
		{"var/cache/apt/archives/bash.deb", false},
		{"var/cache/apt/pkgcache.bin", false},
		{"var/lib/apt/lists/bookworm_Packages", false},
		{"var/lib/apt/lists/lock", true},
	} {
		_, err := os.Lstat(filepath.Join(want, tc.path))
		if got := err == nil; got != tc.exists {
			t.Errorf("%s exists = %v, want %v", tc.path, got, tc.exists)
		}
	}
	if out, err := runRootfsScript(t, cache, fake, count, true); err != nil || out != want {
		t.Errorf("cached call ran debootstrap again: printed %q, err %v", out, err)
	}
}

// tarEntry is what the layer tests compare of a tar header.
type tarEntry struct {
	typ      byte
	mode     int64
	uid, gid int
	link     string
	size     int64
	xattr    string
}

func readLayerTar(t *testing.T, gz []byte) (map[string]tarEntry, []string, string) {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.New()
	tr := tar.NewReader(io.TeeReader(zr, sum))
	got := map[string]tarEntry{}
	var order []string
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if !hdr.ModTime.Equal(epoch()) || hdr.Uname != "" || hdr.Gname != "" {
			t.Errorf("%s: mtime %v uname %q gname %q, want epoch and no names", hdr.Name, hdr.ModTime, hdr.Uname, hdr.Gname)
		}
		got[hdr.Name] = tarEntry{hdr.Typeflag, hdr.Mode, hdr.Uid, hdr.Gid, hdr.Linkname, hdr.Size,
			hdr.PAXRecords["SCHILY.xattr.user.imgbuild"]}
		order = append(order, hdr.Name)
	}
	io.Copy(io.Discard, zr) // the tar trailer's padding belongs to the diffID
	return got, order, hex.EncodeToString(sum.Sum(nil))
}

func TestWriteDirLayer(t *testing.T) {
	RequireRoot(t) // chown
	dir := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "usr/bin"), 0o755))
	must(os.WriteFile(filepath.Join(dir, "usr/bin/su"), []byte("su binary"), 0o755))
	must(os.Chmod(filepath.Join(dir, "usr/bin/su"), 0o755|os.ModeSetuid))
	must(os.Link(filepath.Join(dir, "usr/bin/su"), filepath.Join(dir, "usr/bin/su2")))
	must(os.Symlink("usr/bin", filepath.Join(dir, "bin")))
	must(os.Mkdir(filepath.Join(dir, "tmp"), 0o755))
	must(os.Chmod(filepath.Join(dir, "tmp"), 0o777|os.ModeSticky))
	must(os.WriteFile(filepath.Join(dir, "shadow"), []byte("x"), 0o640))
	must(os.Chown(filepath.Join(dir, "shadow"), 0, 42))
	must(unix.Mkfifo(filepath.Join(dir, "fifo"), 0o600))
	wantXattr := "v"
	if err := unix.Setxattr(filepath.Join(dir, "shadow"), "user.imgbuild", []byte("v"), 0); err != nil {
		t.Logf("no user xattrs on %s (%v): not checking them", dir, err)
		wantXattr = ""
	}

	var a, b bytes.Buffer
	digest, diffID, size, err := WriteDirLayer(t.Context(), &a, dir)
	must(err)
	digest2, _, _, err := WriteDirLayer(t.Context(), &b, dir)
	must(err)
	if digest != digest2 || !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Errorf("two layers of the same tree differ: %s, %s", digest, digest2)
	}
	if sum := sha256.Sum256(a.Bytes()); hex.EncodeToString(sum[:]) != digest.Hex || size != int64(a.Len()) {
		t.Errorf("digest %s size %d, but the output hashes to %x with %d bytes", digest, size, sum, a.Len())
	}
	got, order, tarSum := readLayerTar(t, a.Bytes())
	if tarSum != diffID.Hex {
		t.Errorf("diffID %s, tar hashes to %s", diffID, tarSum)
	}
	want := map[string]tarEntry{
		"bin":         {typ: tar.TypeSymlink, mode: 0o777, link: "usr/bin"},
		"fifo":        {typ: tar.TypeFifo, mode: 0o600},
		"shadow":      {typ: tar.TypeReg, mode: 0o640, gid: 42, size: 1, xattr: wantXattr},
		"tmp/":        {typ: tar.TypeDir, mode: 0o1777},
		"usr/":        {typ: tar.TypeDir, mode: 0o755},
		"usr/bin/":    {typ: tar.TypeDir, mode: 0o755},
		"usr/bin/su":  {typ: tar.TypeReg, mode: 0o4755, size: 9},
		"usr/bin/su2": {typ: tar.TypeLink, mode: 0o4755, link: "usr/bin/su"},
	}
	for name, w := range want {
		if g, ok := got[name]; !ok || g != w {
			t.Errorf("%s: got %+v (present %v), want %+v", name, g, ok, w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("entries %v, want %d", order, len(want))
	}
	if !sortedStrings(order) {
		t.Errorf("entries not in lexical order: %v", order)
	}
}

func sortedStrings(s []string) bool {
	for i := 1; i < len(s); i++ {
		if strings.TrimSuffix(s[i-1], "/") > strings.TrimSuffix(s[i], "/") {
			return false
		}
	}
	return true
}

// TestCachedDirLayer: concurrent callers share one cached blob; a new
// stamp rebuilds it; the layer's hashes are those of its bytes.
func TestCachedDirLayer(t *testing.T) {
	src, cache := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "f"), []byte("one"), 0o644); err != nil {
		t.Fatal(err)
	}
	const callers = 4
	digests := make([]v1.Hash, callers)
	var wg sync.WaitGroup
	for i := range callers {
		wg.Go(func() {
			l, err := CachedDirLayer(t.Context(), src, cache, "x", "stamp1")
			if err != nil {
				t.Error(err)
				return
			}
			digests[i], _ = l.Digest()
		})
	}
	wg.Wait()
	for i := 1; i < callers; i++ {
		if digests[i] != digests[0] {
			t.Errorf("caller %d got %s, caller 0 %s", i, digests[i], digests[0])
		}
	}
	names, _ := filepath.Glob(filepath.Join(cache, "*"))
	if len(names) != 3 { // x.layer.tar.gz, x.layer.json, the lock
		t.Errorf("cache holds %v, want the blob, its json and the lock", names)
	}

	if err := os.WriteFile(filepath.Join(src, "f"), []byte("two"), 0o644); err != nil {
		t.Fatal(err)
	}
	same, err := CachedDirLayer(t.Context(), src, cache, "x", "stamp1")
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := same.Digest(); d != digests[0] {
		t.Errorf("same stamp rebuilt the layer: %s, cached %s", d, digests[0])
	}
	l, err := CachedDirLayer(t.Context(), src, cache, "x", "stamp2")
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := l.Digest(); d == digests[0] {
		t.Errorf("new stamp kept the old layer %s", d)
	}
	if err := validate.Layer(l); err != nil {
		t.Errorf("validate.Layer: %v", err)
	}
}

func TestDebianImage(t *testing.T) {
	if fi, err := os.Stat(DebianRootfs(t)); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("DebianRootfs: %v, %v; want a directory of mode 0755", fi.Mode(), err)
	}
	start := time.Now()
	img := DebianImage(t)
	t.Logf("DebianImage: %v", time.Since(start).Round(time.Millisecond))
	d1, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if d2, err := DebianImage(t).Digest(); err != nil || d2 != d1 {
		t.Fatalf("second DebianImage: %s, %v; first %s", d2, err, d1)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.OS != "linux" || cfg.Architecture != runtime.GOARCH ||
		strings.Join(cfg.Config.Env, ",") != "PATH="+DefaultPath || strings.Join(cfg.Config.Cmd, " ") != "bash" {
		t.Errorf("config: %s/%s Env %q Cmd %q", cfg.OS, cfg.Architecture, cfg.Config.Env, cfg.Config.Cmd)
	}
	start = time.Now()
	if err := validate.Image(img); err != nil {
		t.Fatalf("validate.Image: %v", err)
	}
	t.Logf("validate.Image: %v", time.Since(start).Round(time.Millisecond))
	entries := flatEntries(t, img)
	for _, tc := range []struct {
		name string
		typ  byte
		link string
		mode int64
		gid  int
	}{
		{"bin", tar.TypeSymlink, "usr/bin", 0o777, 0},
		{"usr/bin/bash", tar.TypeReg, "", 0o755, 0},
		{"usr/bin/apt-get", tar.TypeReg, "", 0o755, 0},
		{"etc/shadow", tar.TypeReg, "", 0o640, 42},
		{"usr/bin/chage", tar.TypeReg, "", 0o2755, 42},
		{"tmp/", tar.TypeDir, "", 0o1777, 0},
		{"dev/", tar.TypeDir, "", 0o755, 0},
	} {
		e, ok := entries[tc.name]
		if !ok || e.Typeflag != tc.typ || e.Linkname != tc.link || e.Mode != tc.mode || e.Gid != tc.gid {
			t.Errorf("%s: got %+v (present %v)", tc.name, e, ok)
		}
	}
	for name := range entries {
		if strings.HasPrefix(name, "dev/") && name != "dev/" || name == "etc/resolv.conf" || name == "etc/hostname" {
			t.Errorf("image holds %s", name)
		}
	}
}

func TestPushDebian(t *testing.T) {
	RequireRoot(t)
	DebianImage(t) // build the caches outside the timing
	host := Start(t)
	start := time.Now()
	ref := PushDebian(t, host)
	t.Logf("DebianImage + push: %v", time.Since(start).Round(time.Millisecond))
	want, err := DebianImage(t).Digest()
	if err != nil {
		t.Fatal(err)
	}
	got, err := remote.Head(refFor(t, host, DebianRepo), remote.WithContext(t.Context()))
	if err != nil {
		t.Fatal(err)
	}
	if got.Digest != want || ref != host+"/"+DebianRepo {
		t.Errorf("pushed %s as %s, want %s at %s/%s", got.Digest, ref, want, host, DebianRepo)
	}
}
