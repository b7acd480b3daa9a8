package registry

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/imgbuild/imgbuild/registry/registrytest"
)

type rf = registrytest.File

// whiteoutImage has three layers exercising whiteouts, opaque directories,
// a hard link to a lower layer, an escaping symlink and odd entry names.
func whiteoutImage(t *testing.T) v1.Image {
	t.Helper()
	layers := [][]rf{{
		{Name: "a/"},
		{Name: "a/keep", Body: []byte("old keep")},
		{Name: "a/gone", Body: []byte("gone")},
		{Name: "a/b/"},
		{Name: "a/b/deep", Body: []byte("deep")},
		{Name: "opq/"},
		{Name: "opq/old", Body: []byte("old")},
		{Name: "x", Body: []byte("x-data"), Mode: 0o600},
		{Name: "sl", Link: "a/keep"},
		{Name: "etc/"},
		{Name: "etc/file", Body: []byte("etc")},
	}, {
		{Name: "a/.wh.gone"},
		{Name: "a/keep", Body: []byte("new keep")},
		{Name: "a/.wh.b"},
		{Name: "opq/", Mode: 0o700},
		{Name: "opq/new", Body: []byte("new")},
		{Name: "opq/.wh..wh..opq"},
		{Name: "h2", Link: "x", Hard: true},
		{Name: "up", Link: "../../etc/file"},
	}, {
		{Name: "c/"},
		{Name: "c/f", Body: []byte("c")},
		{Name: "./d/../c/g", Body: []byte("g")},
		{Name: "/abs", Body: []byte("abs"), UID: 1000, GID: 1000},
	}}
	img := mutate.MediaType(empty.Image, "application/vnd.docker.distribution.manifest.v2+json")
	for _, files := range layers {
		var err error
		img, err = mutate.AppendLayers(img, registrytest.Layer(t, files))
		if err != nil {
			t.Fatal(err)
		}
	}
	return img
}

// tarEntry is what the tests compare of a tar entry.
type tarEntry struct {
	name string
	typ  byte
	mode int64
	uid  int
	link string
	body string
}

func readTar(t *testing.T, r io.Reader) []tarEntry {
	t.Helper()
	tr := tar.NewReader(r)
	var out []tarEntry
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		name := strings.TrimSuffix(strings.TrimPrefix(h.Name, "/"), "/")
		out = append(out, tarEntry{name, h.Typeflag, h.Mode, h.Uid, h.Linkname, string(b)})
	}
}

func TestWriteFlatTar(t *testing.T) {
	img := whiteoutImage(t)
	var buf bytes.Buffer
	if err := WriteFlatTar(t.Context(), &buf, img); err != nil {
		t.Fatal(err)
	}
	got := readTar(t, bytes.NewReader(buf.Bytes()))
	want := []tarEntry{ // bottom layer first
		{"a", tar.TypeDir, 0o755, 0, "", ""},
		{"x", tar.TypeReg, 0o600, 0, "", "x-data"},
		{"sl", tar.TypeSymlink, 0o777, 0, "a/keep", ""},
		{"etc", tar.TypeDir, 0o755, 0, "", ""},
		{"etc/file", tar.TypeReg, 0o644, 0, "", "etc"},
		{"a/keep", tar.TypeReg, 0o644, 0, "", "new keep"},
		{"opq", tar.TypeDir, 0o700, 0, "", ""},
		{"opq/new", tar.TypeReg, 0o644, 0, "", "new"},
		{"h2", tar.TypeLink, 0, 0, "x", ""},
		{"up", tar.TypeSymlink, 0o777, 0, "../../etc/file", ""},
		{"c", tar.TypeDir, 0o755, 0, "", ""},
		{"c/f", tar.TypeReg, 0o644, 0, "", "c"},
		{"c/g", tar.TypeReg, 0o644, 0, "", "g"},
		{"abs", tar.TypeReg, 0o644, 1000, "", "abs"},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("flat tar\n got: %v\nwant: %v", got, want)
	}

	// Same bytes on a second run.
	var again bytes.Buffer
	if err := WriteFlatTar(t.Context(), &again, img); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), again.Bytes()) {
		t.Error("WriteFlatTar is not deterministic")
	}

	// Differential: the same set of entries as mutate.Extract, which drops
	// symlinks leaving the root ("up") and keeps "/abs" absolute.
	rc := mutate.Extract(img)
	ref := readTar(t, rc)
	rc.Close()
	key := func(es []tarEntry) []string {
		var ks []string
		for _, e := range es {
			if e.name != "up" {
				ks = append(ks, fmt.Sprint(e))
			}
		}
		sort.Strings(ks)
		return ks
	}
	if g, w := key(got), key(ref); fmt.Sprint(g) != fmt.Sprint(w) {
		t.Errorf("entries differ from mutate.Extract\n got: %v\nwant: %v", g, w)
	}
}

func TestFlatOutputsAgree(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("layers.Apply is linux-only")
	}
	img := whiteoutImage(t)
	tarFile := filepath.Join(t.TempDir(), "flat.tar")
	f, err := os.Create(tarFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteFlatTar(t.Context(), f, img); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	fromTar := t.TempDir()
	if out, err := exec.Command("tar", "-xf", tarFile, "-C", fromTar).CombinedOutput(); err != nil {
		t.Fatalf("tar -x of the flat tar: %v\n%s", err, out)
	}
	extracted := filepath.Join(t.TempDir(), "rootfs") // created by ExtractFlat
	if err := ExtractFlat(t.Context(), extracted, img); err != nil {
		t.Fatal(err)
	}
	a, b := treeOf(t, fromTar), treeOf(t, extracted)
	if n := strings.Count(b, "\n") + 1; n != 14 {
		t.Errorf("extracted tree has %d entries, want 14", n)
	}
	if a != b {
		t.Errorf("tar -x of WriteFlatTar and ExtractFlat differ\n tar: %s\nextract: %s", a, b)
	}
	for _, gone := range []string{"a/gone", "a/b", "opq/old"} {
		if _, err := os.Lstat(filepath.Join(extracted, gone)); !os.IsNotExist(err) {
			t.Errorf("%s survived its whiteout: %v", gone, err)
		}
	}
	var sx, sh syscall.Stat_t
	if err := syscall.Lstat(filepath.Join(extracted, "x"), &sx); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Lstat(filepath.Join(extracted, "h2"), &sh); err != nil {
		t.Fatal(err)
	}
	if sx.Ino != sh.Ino {
		t.Error("h2 is not a hard link of x")
	}
}

// treeOf describes a directory tree: path, type, permissions, owner (when
// root), content hash, link target; hard links as "=first path".
func treeOf(t *testing.T, root string) string {
	t.Helper()
	var lines []string
	inodes := map[uint64]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		line := fmt.Sprintf("%s %v", rel, fi.Mode())
		if os.Geteuid() == 0 {
			line += fmt.Sprintf(" %d:%d", st.Uid, st.Gid)
		}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			line += " -> " + target
		case fi.Mode().IsRegular():
			if first, ok := inodes[st.Ino]; ok {
				line += " =" + first
				break
			}
			inodes[st.Ino] = rel
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			line += fmt.Sprintf(" %x", sha256.Sum256(b))
		}
		lines = append(lines, line)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(lines, "\n")
}

func TestExtractFlatBusybox(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "rootfs")
	if err := ExtractFlat(t.Context(), dir, registrytest.BusyboxImage(t)); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(filepath.Join(dir, "bin/sh"), "-c", "echo hi").CombinedOutput()
	if err != nil || string(out) != "hi\n" {
		t.Fatalf("extracted bin/sh: %v %q", err, out)
	}
	fi, err := os.Stat(filepath.Join(dir, "tmp"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&fs.ModeSticky == 0 || fi.Mode().Perm() != 0o777 {
		t.Errorf("tmp mode %v, want 1777", fi.Mode())
	}
}
