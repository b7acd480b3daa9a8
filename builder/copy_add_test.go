package builder

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/imgbuild/imgbuild/registry/registrytest"
)

var tarMtime = time.Date(2019, 2, 3, 4, 5, 6, 0, time.UTC)

// tarOf builds an uncompressed tar of headers (Size and ModTime filled in
// from the content map and tarMtime).
func tarOf(t testing.TB, hdrs []tar.Header, content map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range hdrs {
		h.ModTime = tarMtime
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(content[h.Name]))
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write([]byte(content[h.Name])); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func fooTar(t testing.TB) []byte {
	return tarOf(t, []tar.Header{
		{Name: "foo", Typeflag: tar.TypeReg, Mode: 0o644, Uid: 11, Gid: 12},
		{Name: "d/", Typeflag: tar.TypeDir, Mode: 0o750},
		{Name: "d/x", Typeflag: tar.TypeReg, Mode: 0o755},
		{Name: "d/l", Typeflag: tar.TypeSymlink, Linkname: "x"},
	}, map[string]string{"foo": "content0", "d/x": "X"})
}

func gzipOf(t testing.TB, b []byte) []byte {
	return compressWith(t, b, func(w io.Writer) (io.WriteCloser, error) { return gzip.NewWriter(w), nil })
}

func xzOf(t testing.TB, b []byte) []byte {
	return compressWith(t, b, func(w io.Writer) (io.WriteCloser, error) { return xz.NewWriter(w) })
}

func zstdOf(t testing.TB, b []byte) []byte {
	return compressWith(t, b, func(w io.Writer) (io.WriteCloser, error) { return zstd.NewWriter(w) })
}

// compressWith compresses b with the writer newWriter makes.
func compressWith(t testing.TB, b []byte, newWriter func(io.Writer) (io.WriteCloser, error)) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := newWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// bzip2Of compresses with Debian's bzip2 (the Go library only decompresses).
func bzip2Of(t testing.TB, b []byte) []byte {
	t.Helper()
	cmd := exec.Command("bzip2", "-c")
	cmd.Stdin = bytes.NewReader(b)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("bzip2 (Debian package bzip2) failed: %v", err)
	}
	return out
}

func TestAddArchive(t *testing.T) {
	registrytest.RequireRoot(t)
	plain := fooTar(t)
	extracted := func(dir string) map[string]string {
		p := dir
		if p != "" {
			p += "/"
		}
		m := map[string]string{p + "foo": "f 0644 11:12 content0", p + "d": "d 0750 0:0", p + "d/x": "f 0755 0:0 X", p + "d/l": "l -> x"}
		if dir != "" {
			m[dir] = "d 0755 0:0"
		}
		return m
	}
	yes, no := true, false
	cases := []struct {
		name    string
		ctx     []ctEntry
		op      copyOp
		want    map[string]string
		changed []string
	}{
		{name: "tar", ctx: []ctEntry{cf("t.tar", string(plain), 0o600)},
			op: copyOp{Add: true, Sources: []string{"t.tar"}, Dest: "/"}, want: extracted(""),
			changed: []string{"d", "d/l", "d/x", "foo"}},
		{name: "gzip", ctx: []ctEntry{cf("t.tar.gz", string(gzipOf(t, plain)), 0o600)},
			op: copyOp{Add: true, Sources: []string{"t.tar.gz"}, Dest: "/out/"}, want: extracted("out"),
			changed: []string{"out", "out/d", "out/d/l", "out/d/x", "out/foo"}},
		{name: "bzip2", ctx: []ctEntry{cf("t.tbz", string(bzip2Of(t, plain)), 0o600)},
			op: copyOp{Add: true, Sources: []string{"t.tbz"}, Dest: "/out/"}, want: extracted("out")},
		{name: "xz", ctx: []ctEntry{cf("t.tar.xz", string(xzOf(t, plain)), 0o600)},
			op: copyOp{Add: true, Sources: []string{"t.tar.xz"}, Dest: "/out/"}, want: extracted("out")},
		{name: "zstd", ctx: []ctEntry{cf("t.tar.zst", string(zstdOf(t, plain)), 0o600)},
			op: copyOp{Add: true, Sources: []string{"t.tar.zst"}, Dest: "/out/"}, want: extracted("out")},
		{name: "detected by content, not name", ctx: []ctEntry{cf("archive.bin", string(gzipOf(t, plain)), 0o600)},
			op: copyOp{Add: true, Sources: []string{"archive.bin"}, Dest: "/out"}, want: extracted("out")},
		{name: "--chmod does not apply to archive entries", ctx: []ctEntry{cf("t.tar", string(plain), 0o600)},
			op: copyOp{Add: true, Sources: []string{"t.tar"}, Dest: "/out/", Chmod: "700"}, want: extracted("out")},
		{name: "archive dest is always a directory", ctx: []ctEntry{cf("t.tar", string(plain), 0o600)},
			op: copyOp{Add: true, Sources: []string{"t.tar"}, Dest: "/dest"}, want: extracted("dest")},
		{name: "--unpack=false copies the file", ctx: []ctEntry{cf("t.tar.gz", string(gzipOf(t, plain)), 0o600)},
			op:   copyOp{Add: true, Unpack: &no, Sources: []string{"t.tar.gz"}, Dest: "/"},
			want: map[string]string{"t.tar.gz": "f 0600 0:0 " + string(gzipOf(t, plain))}},
		{name: "--unpack=true local", ctx: []ctEntry{cf("t.tar", string(plain), 0o600)},
			op: copyOp{Add: true, Unpack: &yes, Sources: []string{"t.tar"}, Dest: "/"}, want: extracted("")},
		{name: "COPY does not extract", ctx: []ctEntry{cf("t.tar", string(plain), 0o600)},
			op: copyOp{Sources: []string{"t.tar"}, Dest: "/"}, want: map[string]string{"t.tar": "f 0600 0:0 " + string(plain)}},
		{name: "not an archive despite its name", ctx: []ctEntry{cf("fake.tar.gz", "just text", 0o644), cf("empty.tar", "", 0o644)},
			op:   copyOp{Add: true, Sources: []string{"fake.tar.gz", "empty.tar"}, Dest: "/"},
			want: map[string]string{"fake.tar.gz": "f 0644 0:0 just text", "empty.tar": "f 0644 0:0 "}},
		{name: "wildcard archives into one dir (BuildKit testDockerfileAddArchiveWildcard)",
			ctx: []ctEntry{cf("t.tar", string(tarOf(t, []tar.Header{{Name: "foo", Typeflag: tar.TypeReg, Mode: 0o644}}, map[string]string{"foo": "content0"})), 0o600),
				cf("b.tar", string(tarOf(t, []tar.Header{{Name: "bar", Typeflag: tar.TypeReg, Mode: 0o644}}, map[string]string{"bar": "content1"})), 0o600)},
			op:   copyOp{Add: true, Sources: []string{"*.tar"}, Dest: "/dest"},
			want: map[string]string{"dest": "d 0755 0:0", "dest/foo": "f 0644 0:0 content0", "dest/bar": "f 0644 0:0 content1"}},
		{name: "directory source: archives inside are not extracted", ctx: []ctEntry{cf("in/t.tar", string(plain), 0o600)},
			op: copyOp{Add: true, Sources: []string{"in"}, Dest: "/in"}, want: map[string]string{"in": "d 0755 0:0", "in/t.tar": "f 0600 0:0 " + string(plain)}},
		{name: "whiteout names are plain files", ctx: []ctEntry{cf("w.tar", string(tarOf(t, []tar.Header{
			{Name: ".wh.keep", Typeflag: tar.TypeReg, Mode: 0o644}, {Name: ".wh..wh..opq", Typeflag: tar.TypeReg, Mode: 0o644},
		}, nil)), 0o600)},
			op:   copyOp{Add: true, Sources: []string{"w.tar"}, Dest: "/d/"},
			want: map[string]string{"d": "d 0755 0:0", "d/.wh.keep": "f 0644 0:0 ", "d/.wh..wh..opq": "f 0644 0:0 "}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			bc := ctLoadContext(t, "", tc.ctx...)
			root := t.TempDir()
			op := tc.op
			op.Context, op.DestRoot, op.UserRoot = bc, root, root
			changed, err := copyFiles(context.Background(), op)
			if err != nil {
				t.Fatal(err)
			}
			got := ctSnapshot(t, root)
			if os.Geteuid() != 0 { // owners from the archive need root
				for k, v := range tc.want {
					tc.want[k] = strings.Replace(v, "11:12", "0:0", 1)
				}
			}
			if d := ctDiff(got, tc.want); d != "" {
				t.Errorf("destination differs:\n%s", d)
			}
			checkChanged(t, root, map[string]string{}, got, changed, tc.changed)
			if fi, err := os.Lstat(filepath.Join(root, "foo")); err == nil && tc.op.Unpack != &no {
				if !fi.ModTime().Equal(tarMtime) {
					t.Errorf("foo mtime = %v, want the archive's %v", fi.ModTime(), tarMtime)
				}
			}
		})
	}
}

func TestAddArchiveChown(t *testing.T) {
	registrytest.RequireRoot(t)
	bc := ctLoadContext(t, "", cf("t.tar", string(tarOf(t, []tar.Header{
		{Name: "foo", Typeflag: tar.TypeReg, Mode: 0o4755, Uid: 1, Gid: 2},
		{Name: "sub/", Typeflag: tar.TypeDir, Mode: 0o700},
		{Name: "sub/l", Typeflag: tar.TypeSymlink, Linkname: "../foo"},
	}, map[string]string{"foo": "content0"})), 0o600))
	root := t.TempDir()
	if _, err := copyFiles(context.Background(), copyOp{Context: bc, Add: true, Sources: []string{"t.tar"}, Dest: "/out/",
		Chown: "100:200", DestRoot: root, UserRoot: root}); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"out": "d 0755 100:200", "out/foo": "f 4755 100:200 content0", "out/sub": "d 0700 100:200", "out/sub/l": "l -> ../foo"}
	got := ctSnapshot(t, root)
	if d := ctDiff(got, want); d != "" {
		t.Errorf("destination differs:\n%s", d)
	}
	if st, err := os.Lstat(filepath.Join(root, "out/sub/l")); err != nil || ctOwner(st) != "100:200" {
		t.Errorf("symlink owner = %v, %v", ctOwner(st), err)
	}
}

// TestAddArchiveConfined follows BuildKit's
// testDockerfileAddArchiveThroughAbsoluteSymlink and containerd-style
// breakouts: entries resolve inside the destination root.
func TestAddArchiveConfined(t *testing.T) {
	registrytest.RequireRoot(t)
	host := t.TempDir()
	sentinel := filepath.Join(host, "sentinel")
	if err := os.WriteFile(sentinel, []byte("untouched"), 0o644); err != nil {
		t.Fatal(err)
	}
	rootfs := tarOf(t, []tar.Header{
		{Name: "run/", Typeflag: tar.TypeDir, Mode: 0o755}, {Name: "var/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "var/run", Typeflag: tar.TypeSymlink, Linkname: "/run"},
	}, nil)
	payload := tarOf(t, []tar.Header{
		{Name: "var/run/act/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "var/run/act/HEAD", Typeflag: tar.TypeReg, Mode: 0o644},
		{Name: "var/run/act/HEAD.link", Typeflag: tar.TypeLink, Linkname: "var/run/act/HEAD"},
		{Name: "../../escape", Typeflag: tar.TypeReg, Mode: 0o644},
		{Name: "/abs", Typeflag: tar.TypeReg, Mode: 0o644},
	}, map[string]string{"var/run/act/HEAD": "ref: refs/heads/main\n", "../../escape": "e", "/abs": "a"})
	evil := tarOf(t, []tar.Header{
		{Name: "hostlink", Typeflag: tar.TypeSymlink, Linkname: host},
		{Name: "hostlink/sentinel", Typeflag: tar.TypeReg, Mode: 0o644},
	}, map[string]string{"hostlink/sentinel": "overwritten"})
	bc := ctLoadContext(t, "", cf("rootfs.tar", string(rootfs), 0o600), cf("payload.tar", string(payload), 0o600), cf("evil.tar", string(evil), 0o600))
	root := t.TempDir()
	for _, src := range []string{"rootfs.tar", "payload.tar"} {
		if _, err := copyFiles(context.Background(), copyOp{Context: bc, Add: true, Sources: []string{src}, Dest: "/", DestRoot: root, UserRoot: root}); err != nil {
			t.Fatal(err)
		}
	}
	got := ctSnapshot(t, root)
	for p, want := range map[string]string{
		"run/act/HEAD":      "f 0644 0:0 ref: refs/heads/main\n",
		"run/act/HEAD.link": "f 0644 0:0 ref: refs/heads/main\n =run/act/HEAD",
		"escape":            "f 0644 0:0 e",
		"abs":               "f 0644 0:0 a",
	} {
		if got[p] != want {
			t.Errorf("%s = %q, want %q", p, got[p], want)
		}
	}
	// Writing through a symlink to a host path: layers.Apply either refuses
	// or writes inside the root; the host file must stay as it was.
	_, err := copyFiles(context.Background(), copyOp{Context: bc, Add: true, Sources: []string{"evil.tar"}, Dest: "/e/", DestRoot: root, UserRoot: root})
	if err == nil {
		if data, err := os.ReadFile(filepath.Join(root, "e", host, "sentinel")); err != nil || string(data) != "overwritten" {
			t.Errorf("entry through the symlink not confined in the root: %q, %v", data, err)
		}
	}
	if data, _ := os.ReadFile(sentinel); string(data) != "untouched" {
		t.Errorf("host sentinel changed: %q", data)
	}
}
