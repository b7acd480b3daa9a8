//go:build linux

package layers_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
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
	"time"

	"golang.org/x/sys/unix"

	"github.com/imgbuild/imgbuild/layers"
)

// ent is one tar entry of a test layer.
type ent struct {
	hdr  tar.Header
	body string
}

var testTime = time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)

func dirE(name string, mode int64) ent {
	return ent{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode, ModTime: testTime}}
}

func fileE(name, body string, mode int64) ent {
	return ent{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(body)), ModTime: testTime}, body: body}
}

func symE(name, target string) ent {
	return ent{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777, ModTime: testTime}}
}

func linkE(name, target string) ent {
	return ent{hdr: tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target, Mode: 0o644, ModTime: testTime}}
}

// with returns e changed by f (for timestamps, owners, xattrs).
func (e ent) with(f func(h *tar.Header)) ent {
	f(&e.hdr)
	return e
}

func xattr(name, value string) func(h *tar.Header) {
	return func(h *tar.Header) {
		if h.PAXRecords == nil {
			h.PAXRecords = map[string]string{}
		}
		h.PAXRecords["SCHILY.xattr."+name] = value
	}
}

// mkTar writes entries as a PAX tar, in the given order.
func mkTar(t testing.TB, entries ...ent) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		if h.Format == tar.FormatUnknown {
			h.Format = tar.FormatPAX
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("writing test tar header %.64q: %.200v", h.Name, err)
		}
		if _, err := io.WriteString(tw, e.body); err != nil {
			t.Fatalf("writing test tar body %.64q: %.200v", h.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func apply(t testing.TB, root string, opts layers.ApplyOptions, entries ...ent) error {
	t.Helper()
	return layers.Apply(context.Background(), root, bytes.NewReader(mkTar(t, entries...)), opts)
}

func mustApply(t testing.TB, root string, opts layers.ApplyOptions, entries ...ent) {
	t.Helper()
	if err := apply(t, root, opts, entries...); err != nil {
		t.Fatalf("Apply: %v", err)
	}
}

// tree lists root as sorted lines "path type perm detail": file content
// (short) or sha256, symlink target, device numbers. Directories list as
// "path/ d perm". Hardlinked files name their link group by first path.
func tree(t testing.TB, root string) []string {
	t.Helper()
	var lines []string
	inodes := map[uint64]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "." {
			return nil
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		perm := fmt.Sprintf("%04o", uint32(st.Mode)&0o7777)
		switch fi.Mode().Type() {
		case fs.ModeDir:
			lines = append(lines, rel+"/ d "+perm)
		case fs.ModeSymlink:
			target, _ := os.Readlink(p)
			lines = append(lines, rel+" l -> "+target)
		case 0:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			c := fmt.Sprintf("%q", b)
			if len(b) > 32 {
				sum := sha256.Sum256(b)
				c = "sha256:" + hex.EncodeToString(sum[:8])
			}
			line := rel + " f " + perm + " " + c
			if first, ok := inodes[st.Ino]; ok {
				line += " =" + first
			} else if st.Nlink > 1 {
				inodes[st.Ino] = rel
			}
			lines = append(lines, line)
		default:
			kind := "p"
			if fi.Mode()&fs.ModeCharDevice != 0 {
				kind = "c"
			} else if fi.Mode()&fs.ModeDevice != 0 {
				kind = "b"
			}
			lines = append(lines, fmt.Sprintf("%s %s %s %d:%d", rel, kind, perm, unix.Major(st.Rdev), unix.Minor(st.Rdev)))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(lines)
	return lines
}

func wantTree(t testing.TB, root string, want ...string) {
	t.Helper()
	got := tree(t, root)
	sort.Strings(want)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("tree of %s:\n got:\n  %s\n want:\n  %s", root, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

// applyCase applies lower then layer to an empty root and compares the tree.
type applyCase struct {
	name   string
	lower  []ent // applied first, as a lower layer
	layer  []ent
	noWh   bool
	result []string
}

func TestApply(t *testing.T) {
	uid, gid := os.Getuid(), os.Getgid()
	own := func(h *tar.Header) { h.Uid, h.Gid = uid, gid }
	tests := append(basicApplyCases(), whiteoutApplyCases()...)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			opts := layers.ApplyOptions{NoChown: os.Geteuid() != 0, NoWhiteouts: tt.noWh}
			for i := range tt.layer {
				tt.layer[i] = tt.layer[i].with(own)
			}
			if tt.lower != nil {
				mustApply(t, root, opts, tt.lower...)
			}
			mustApply(t, root, opts, tt.layer...)
			wantTree(t, root, tt.result...)
		})
	}
}

func basicApplyCases() []applyCase {
	big := strings.Repeat("0123456789", 10000)
	bigSum := sha256.Sum256([]byte(big))
	bigC := "sha256:" + hex.EncodeToString(bigSum[:8])
	return []applyCase{
		{
			name: "FilesDirsLinks",
			layer: []ent{
				dirE("etc/", 0o755), fileE("etc/passwd", "root:x:0:0", 0o644),
				fileE("bin/sh", big, 0o755), linkE("bin/ash", "bin/sh"), linkE("bin/bash", "/bin/sh"),
				symE("usr/bin/sh", "/bin/sh"), symE("rel", "../../x/y"), fileE("empty", "", 0o600),
			},
			result: []string{
				"bin/ d 0755", "bin/ash f 0755 " + bigC, "bin/bash f 0755 " + bigC + " =bin/ash",
				"bin/sh f 0755 " + bigC + " =bin/ash", "empty f 0600 \"\"", "etc/ d 0755",
				"etc/passwd f 0644 \"root:x:0:0\"", "rel l -> ../../x/y", "usr/ d 0755", "usr/bin/ d 0755", "usr/bin/sh l -> /bin/sh",
			},
		},
		{
			name: "SpecialModes",
			layer: []ent{
				dirE("tmp", 0o1777), dirE("g", 0o2755), fileE("su", "x", 0o4755), fileE("sg", "x", 0o2711),
				dirE("ro", 0o555), fileE("ro/f", "x", 0o400), dirE("ro/sub", 0o500), fileE("ro/sub/f", "y", 0o444),
			},
			result: []string{
				"g/ d 2755", "ro/ d 0555", "ro/f f 0400 \"x\"", "ro/sub/ d 0500", "ro/sub/f f 0444 \"y\"",
				"sg f 2711 \"x\"", "su f 4755 \"x\"", "tmp/ d 1777",
			},
		},
		{
			name:   "Replacements",
			lower:  []ent{symE("f", "/target"), fileE("target", "t", 0o644), fileE("s", "s", 0o644), fileE("d/x", "x", 0o644), dirE("dd", 0o700), fileE("dd/x", "x", 0o644), symE("ds", "/target")},
			layer:  []ent{fileE("f", "new", 0o600), symE("s", "/else"), fileE("d", "was a dir", 0o644), dirE("dd", 0o755), dirE("ds", 0o711)},
			result: []string{"d f 0644 \"was a dir\"", "dd/ d 0755", "dd/x f 0644 \"x\"", "ds/ d 0711", "f f 0600 \"new\"", "s l -> /else", "target f 0644 \"t\""},
		},
		{
			name:   "HardlinkToLowerAndRelink",
			lower:  []ent{fileE("lib/a", "a", 0o644), linkE("lib/b", "lib/a")},
			layer:  []ent{linkE("c", "lib/a"), linkE("lib/b", "lib/a"), fileE("x", "x", 0o644), linkE("x", "x")},
			result: []string{"c f 0644 \"a\"", "lib/ d 0755", "lib/a f 0644 \"a\" =c", "lib/b f 0644 \"a\" =c", "x f 0644 \"x\""},
		},
		{
			name:   "RootEntryAndDotNames",
			layer:  []ent{dirE("./", 0o711), dirE("./a/", 0o755), fileE("./a/./b", "b", 0o644), fileE("a//c", "c", 0o644)},
			result: []string{"a/ d 0755", "a/b f 0644 \"b\"", "a/c f 0644 \"c\""},
		},
		{
			name:   "Fifo",
			layer:  []ent{{hdr: tar.Header{Typeflag: tar.TypeFifo, Name: "p", Mode: 0o640, ModTime: testTime}}},
			result: []string{"p p 0640 0:0"},
		},
	}
}

func whiteoutApplyCases() []applyCase {
	return []applyCase{
		{
			name:  "Whiteouts",
			lower: []ent{fileE("a", "a", 0o644), fileE("d/x", "x", 0o644), fileE("d/sub/y", "y", 0o644), fileE("keep", "k", 0o644), symE("s", "/d")},
			layer: []ent{fileE(".wh.a", "", 0o644), fileE(".wh.d", "", 0o644), fileE(".wh.s", "", 0o644), fileE(".wh.missing", "", 0o644), fileE("nodir/.wh.x", "", 0o644)},
			result: []string{
				"keep f 0644 \"k\"",
			},
		},
		{
			name:  "WhiteoutKeepsSameLayerEntries",
			lower: []ent{fileE("d/old", "o", 0o644)},
			layer: []ent{fileE("d/new", "n", 0o644), fileE("d/.wh.new", "", 0o644), fileE("d/.wh.old", "", 0o644), fileE("n2", "n2", 0o644), fileE(".wh.n2", "", 0o644)},
			result: []string{
				"d/ d 0755", "d/new f 0644 \"n\"", "n2 f 0644 \"n2\"",
			},
		},
		{
			name:  "OpaqueMarkerFirst",
			lower: []ent{fileE("d/a", "a", 0o644), fileE("d/sub/b", "b", 0o644), symE("d/s", "/x"), fileE("e/c", "c", 0o644)},
			layer: []ent{dirE("d", 0o750), fileE("d/.wh..wh..opq", "", 0o644), fileE("d/new", "n", 0o644), fileE("d/sub/new", "n", 0o644)},
			result: []string{
				"d/ d 0750", "d/new f 0644 \"n\"", "d/sub/ d 0755", "d/sub/new f 0644 \"n\"", "e/ d 0755", "e/c f 0644 \"c\"",
			},
		},
		{
			name:  "OpaqueMarkerLast",
			lower: []ent{fileE("d/a", "a", 0o644), fileE("d/sub/b", "b", 0o644), fileE("d/deep/er/c", "c", 0o644), fileE("d/keep/k", "k", 0o644)},
			layer: []ent{
				dirE("d", 0o755), fileE("d/new", "n", 0o644), dirE("d/sub", 0o700), fileE("d/sub/new", "n", 0o644),
				fileE("d/keep/k", "k2", 0o644), fileE("d/.wh..wh..opq", "", 0o644),
			},
			result: []string{
				"d/ d 0755", "d/keep/ d 0755", "d/keep/k f 0644 \"k2\"", "d/new f 0644 \"n\"", "d/sub/ d 0700", "d/sub/new f 0644 \"n\"",
			},
		},
		{
			name:   "OpaqueNewDir",
			layer:  []ent{fileE("n/.wh..wh..opq", "", 0o644), fileE("n/f", "f", 0o644)},
			result: []string{"n/ d 0755", "n/f f 0644 \"f\""},
		},
		{
			name:   "AUFSMetadataSkipped",
			layer:  []ent{fileE(".wh..wh.plnk/123", "x", 0o644), fileE(".wh..wh.aufs", "", 0o644), fileE("f", "f", 0o644)},
			result: []string{".wh..wh.plnk/ d 0755", ".wh..wh.plnk/123 f 0644 \"x\"", "f f 0644 \"f\""},
		},
		{
			name:   "NoWhiteouts",
			lower:  []ent{fileE("a", "a", 0o644)},
			layer:  []ent{fileE(".wh.a", "", 0o644), fileE("d/.wh..wh..opq", "", 0o600)},
			noWh:   true,
			result: []string{".wh.a f 0644 \"\"", "a f 0644 \"a\"", "d/ d 0755", "d/.wh..wh..opq f 0600 \"\""},
		},
	}
}

func TestApplyRootEntryMode(t *testing.T) {
	root := filepath.Join(t.TempDir(), "new-root")
	mustApply(t, root, layers.ApplyOptions{NoChown: true}, dirE("./", 0o750), fileE("f", "f", 0o644))
	fi, err := os.Stat(root)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o750 || !fi.ModTime().Equal(testTime) {
		t.Errorf("root: mode %v mtime %v, want 0750 %v", fi.Mode().Perm(), fi.ModTime(), testTime)
	}
}

func TestApplyTimes(t *testing.T) {
	root := t.TempDir()
	mtime := time.Date(2001, 2, 3, 4, 5, 6, 789000000, time.UTC)
	atime := time.Date(2002, 2, 3, 4, 5, 6, 0, time.UTC)
	dirTime := time.Date(1999, 12, 31, 23, 59, 59, 0, time.UTC)
	setT := func(h *tar.Header) { h.ModTime, h.AccessTime = mtime, atime }
	setD := func(h *tar.Header) { h.ModTime = dirTime }
	mustApply(t, root, layers.ApplyOptions{NoChown: true},
		dirE("d", 0o755).with(setD), dirE("d/sub", 0o555).with(setD),
		fileE("d/f", "data", 0o644).with(setT), symE("d/l", "/nowhere").with(setT),
		fileE("d/sub/g", "g", 0o644).with(setT),
		ent{hdr: tar.Header{Typeflag: tar.TypeFifo, Name: "d/p", Mode: 0o600, ModTime: mtime}},
	)
	for _, c := range []struct {
		path         string
		mtime, atime time.Time
	}{
		{"d", dirTime, dirTime}, {"d/sub", dirTime, dirTime}, {"d/f", mtime, atime},
		{"d/l", mtime, atime}, {"d/sub/g", mtime, atime}, {"d/p", mtime, mtime},
	} {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(root, c.path), &st); err != nil {
			t.Fatal(err)
		}
		gotM := time.Unix(st.Mtim.Unix())
		gotA := time.Unix(st.Atim.Unix())
		if !gotM.Equal(c.mtime) || !gotA.Equal(c.atime) {
			t.Errorf("%s: mtime %v atime %v, want %v %v", c.path, gotM.UTC(), gotA.UTC(), c.mtime, c.atime)
		}
	}
}

func TestApplyXattrsUser(t *testing.T) {
	root := t.TempDir()
	err := apply(t, root, layers.ApplyOptions{NoChown: true},
		dirE("d", 0o755).with(xattr("user.dir", "dv")),
		fileE("d/f", "x", 0o644).with(xattr("user.a", "1")).with(xattr("user.b", "two\x00bytes")),
	)
	if errors.Is(err, unix.ENOTSUP) {
		t.Fatalf("filesystem of %s lacks user xattrs: %v", root, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ path, name, value string }{
		{"d", "user.dir", "dv"}, {"d/f", "user.a", "1"}, {"d/f", "user.b", "two\x00bytes"},
	} {
		buf := make([]byte, 64)
		n, err := unix.Lgetxattr(filepath.Join(root, c.path), c.name, buf)
		if err != nil || string(buf[:n]) != c.value {
			t.Errorf("%s %s = %q, %v; want %q", c.path, c.name, buf[:max(n, 0)], err, c.value)
		}
	}
}

func TestApplyContextCanceled(t *testing.T) {
	root := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := layers.Apply(ctx, root, bytes.NewReader(mkTar(t, fileE("f", "x", 0o644))), layers.ApplyOptions{NoChown: true})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Apply with canceled ctx: %v, want context.Canceled", err)
	}
	if _, err := os.Lstat(filepath.Join(root, "f")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("f was written after cancel: %v", err)
	}
}

// TestApplyCancelMidFile cancels while a large file streams in.
func TestApplyCancelMidFile(t *testing.T) {
	root := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	go func() {
		tw := tar.NewWriter(pw)
		_ = tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "big", Mode: 0o644, Size: 1 << 30})
		_, _ = io.CopyN(tw, zeros{}, 1<<20)
		cancel()
		_, err := io.CopyN(tw, zeros{}, 1<<30-1<<20)
		pw.CloseWithError(err)
	}()
	err := layers.Apply(ctx, root, pr, layers.ApplyOptions{NoChown: true})
	pr.CloseWithError(errors.New("test done"))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Apply: %v, want context.Canceled", err)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// TestApplyStreamsFileData checks memory stays bounded: a 256 MiB file is
// applied with far less than that allocated.
func TestApplyStreamsFileData(t *testing.T) {
	const size = 256 << 20
	root := t.TempDir()
	pr, pw := io.Pipe()
	go func() {
		tw := tar.NewWriter(pw)
		err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "big", Mode: 0o644, Size: size})
		if err == nil {
			_, err = io.CopyN(tw, zeros{}, size)
		}
		if err == nil {
			err = tw.Close()
		}
		pw.CloseWithError(err)
	}()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	err := layers.Apply(context.Background(), root, pr, layers.ApplyOptions{NoChown: true})
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 16<<20 {
		t.Errorf("applying a %d MiB file allocated %d MiB", size>>20, alloc>>20)
	}
	fi, err := os.Stat(filepath.Join(root, "big"))
	if err != nil || fi.Size() != size {
		t.Fatalf("big: %v, %v", fi, err)
	}
}

func TestApplyErrors(t *testing.T) {
	tests := []struct {
		name  string
		layer []ent
		want  string
	}{
		{"UnknownType", []ent{{hdr: tar.Header{Typeflag: 'Z', Name: "z", Mode: 0o644}}}, "unsupported type"},
		{"NonDirRoot", []ent{fileE(".", "", 0o644)}, "non-directory entry for the root"},
		{"HardlinkMissing", []ent{linkE("l", "nope")}, "no such file"},
		{"HardlinkToDir", []ent{dirE("d", 0o755), linkE("l", "d")}, "operation not permitted"},
		{"HardlinkToRoot", []ent{linkE("l", "/")}, "hardlink to the root"},
		{"ParentIsFile", []ent{fileE("f", "", 0o644), fileE("f/g", "", 0o644)}, "not a directory"},
		{"SymlinkLoop", []ent{symE("a", "b"), symE("b", "a"), fileE("a/x", "", 0o644)}, "too many levels of symbolic links"},
		{"Truncated", nil, "unexpected EOF"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			var data []byte
			if tt.layer != nil {
				data = mkTar(t, tt.layer...)
			} else {
				data = mkTar(t, fileE("f", strings.Repeat("x", 2000), 0o644))[:1024]
			}
			err := layers.Apply(context.Background(), root, bytes.NewReader(data), layers.ApplyOptions{NoChown: true})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Apply: %v, want error containing %q", err, tt.want)
			}
		})
	}
}

// BenchmarkApply applies a 5,000-file layer (50 directories of 100 files of
// 1 KiB) into a fresh root.
func BenchmarkApply(b *testing.B) {
	var es []ent
	body := strings.Repeat("x", 1024)
	for d := 0; d < 50; d++ {
		es = append(es, dirE(fmt.Sprintf("usr/share/d%02d", d), 0o755))
		for f := 0; f < 100; f++ {
			es = append(es, fileE(fmt.Sprintf("usr/share/d%02d/f%03d", d, f), body, 0o644))
		}
	}
	data := mkTar(b, es...)
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		root := filepath.Join(b.TempDir(), "root")
		if err := layers.Apply(context.Background(), root, bytes.NewReader(data), layers.ApplyOptions{NoChown: true}); err != nil {
			b.Fatal(err)
		}
	}
}

// TestApplyGNUTarArchive applies an archive written by GNU tar (PAX, "./"
// prefixes, hardlinks, symlinks, xattrs) and compares with the source tree.
func TestApplyGNUTarArchive(t *testing.T) {
	tarBin, err := exec.LookPath("tar")
	if err != nil {
		t.Fatalf("GNU tar is needed: %v", err)
	}
	src, root := t.TempDir(), t.TempDir()
	for _, s := range []setupFn{mkfile("etc/passwd", "root:x:0:0"), mkfile("bin/busybox", strings.Repeat("b", 5000)), mklink("bin/sh", "bin/busybox"),
		mksymlink("usr/bin/env", "/bin/busybox"), mkfile("a b/ü ñ", "utf-8 names"), mkdir("empty")} {
		s(t, layout{root: src})
	}
	if err := os.Chmod(filepath.Join(src, "bin/busybox"), 0o4755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(filepath.Join(src, "etc/passwd"), "user.test", []byte("v"), 0); err != nil {
		t.Fatalf("setting a user xattr in %s: %v", src, err)
	}
	out, err := exec.Command(tarBin, "--format=pax", "--xattrs", "--xattrs-include=user.*", "-C", src, "-cf", "-", ".").Output()
	if err != nil {
		t.Fatalf("tar: %v", err)
	}
	if err := layers.Apply(context.Background(), root, bytes.NewReader(out), layers.ApplyOptions{NoChown: os.Geteuid() != 0}); err != nil {
		t.Fatal(err)
	}
	wantTree(t, root, tree(t, src)...)
	buf := make([]byte, 8)
	if n, err := unix.Lgetxattr(filepath.Join(root, "etc/passwd"), "user.test", buf); err != nil || string(buf[:n]) != "v" {
		t.Errorf("etc/passwd user.test = %q, %v", buf[:max(n, 0)], err)
	}
	for _, p := range []string{"etc", "etc/passwd", "usr/bin/env", "empty"} {
		s1, s2 := lstat(t, filepath.Join(src, p)), lstat(t, filepath.Join(root, p))
		if s1.Mtim.Sec != s2.Mtim.Sec {
			t.Errorf("%s: mtime %d, source %d", p, s2.Mtim.Sec, s1.Mtim.Sec)
		}
	}
}
