//go:build linux

package layers_test

// Malicious layers, ported from containerd's pkg/archive TestBreakouts and
// umoci's oci/layer scoping tests. Each case runs in a fresh layout
//
//	<dir>/outside/sentinel   host file the layer must never touch
//	<dir>/root               the root Apply writes into
//
// and asserts, besides its own expectation, that nothing outside root changed
// (content, mode, owner, mtime, no new entry) and that no escape target
// appeared at the top of the host filesystem. Ported cases use "xetc" where
// the originals use "etc" so that a regression could never touch the host's
// /etc.

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/imgbuild/imgbuild/layers"
)

type layout struct {
	dir  string // holds outside/ and root/
	out  string // absolute host path of the outside directory
	root string
}

func newLayout(t *testing.T) layout {
	t.Helper()
	dir := t.TempDir()
	l := layout{dir: dir, out: filepath.Join(dir, "outside"), root: filepath.Join(dir, "root")}
	for _, d := range []string{l.out, l.root} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(l.out, "sentinel"), []byte("sentinel"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(l.out, "sentinel"), 0o640); err != nil {
		t.Fatal(err)
	}
	return l
}

// hostEscapes are paths a breakout from a deep "../" chain would create.
var hostEscapes = []string{"/outside", "/sentinel", "/xetc", "/tmp/outside", "/tmp/sentinel", "/pwned"}

// outsideState describes every entry under the parent of l.dir except root.
func outsideState(t *testing.T, l layout) []string {
	t.Helper()
	var lines []string
	top := filepath.Dir(l.dir)
	err := filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == l.root {
			return filepath.SkipDir
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		line := fmt.Sprintf("%s %v %d:%d size=%d mtime=%d", p, fi.Mode(), st.Uid, st.Gid, fi.Size(), fi.ModTime().UnixNano())
		if fi.Mode().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			line += fmt.Sprintf(" sha256=%x", sha256.Sum256(b))
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			target, _ := os.Readlink(p)
			line += " -> " + target
		}
		lines = append(lines, line)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(lines)
	return lines
}

// checks on the result inside root; paths are relative to root and are
// inspected without following symlinks in their last component.
type check func(t *testing.T, l layout)

func fileIs(rel, content string) check {
	return func(t *testing.T, l layout) {
		t.Helper()
		p := filepath.Join(l.root, rel)
		fi, err := os.Lstat(p)
		if err != nil {
			t.Errorf("%s: %v", rel, err)
			return
		}
		if !fi.Mode().IsRegular() {
			t.Errorf("%s: %v, want a regular file", rel, fi.Mode())
			return
		}
		if b, _ := os.ReadFile(p); string(b) != content {
			t.Errorf("%s = %q, want %q", rel, b, content)
		}
	}
}

func symlinkIs(rel, target string) check {
	return func(t *testing.T, l layout) {
		t.Helper()
		if got, err := os.Readlink(filepath.Join(l.root, rel)); err != nil || got != target {
			t.Errorf("%s: symlink to %q (%v), want -> %q", rel, got, err, target)
		}
	}
}

func dirIs(rel string) check {
	return func(t *testing.T, l layout) {
		t.Helper()
		if fi, err := os.Lstat(filepath.Join(l.root, rel)); err != nil || !fi.IsDir() {
			t.Errorf("%s: %v, want a directory", rel, err)
		}
	}
}

func absent(rel string) check {
	return func(t *testing.T, l layout) {
		t.Helper()
		if _, err := os.Lstat(filepath.Join(l.root, rel)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s exists (%v), want it absent", rel, err)
		}
	}
}

func sameInode(rel1, rel2 string) check {
	return func(t *testing.T, l layout) {
		t.Helper()
		fi1, err1 := os.Lstat(filepath.Join(l.root, rel1))
		fi2, err2 := os.Lstat(filepath.Join(l.root, rel2))
		if err1 != nil || err2 != nil || !os.SameFile(fi1, fi2) {
			t.Errorf("%s and %s are not the same inode (%v, %v)", rel1, rel2, err1, err2)
		}
	}
}

func notSameInode(rel1, rel2 string) check {
	return func(t *testing.T, l layout) {
		t.Helper()
		fi1, err1 := os.Lstat(filepath.Join(l.root, rel1))
		fi2, err2 := os.Lstat(filepath.Join(l.root, rel2))
		if err1 != nil || err2 != nil || os.SameFile(fi1, fi2) {
			t.Errorf("%s and %s: want two existing, distinct inodes (%v, %v)", rel1, rel2, err1, err2)
		}
	}
}

func all(checks ...check) check {
	return func(t *testing.T, l layout) {
		t.Helper()
		for _, c := range checks {
			c(t, l)
		}
	}
}

// setup helpers build a lower tree in root directly (trusted test code).
type setupFn func(t *testing.T, l layout)

func mkfile(rel, content string) setupFn {
	return func(t *testing.T, l layout) {
		t.Helper()
		p := filepath.Join(l.root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func mkdir(rel string) setupFn {
	return func(t *testing.T, l layout) {
		t.Helper()
		if err := os.MkdirAll(filepath.Join(l.root, rel), 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// mksymlink makes rel a symlink to target; "OUT" in target is replaced by
// the absolute host path of the outside directory.
func mksymlink(rel, target string) setupFn {
	return func(t *testing.T, l layout) {
		t.Helper()
		p := filepath.Join(l.root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(strings.ReplaceAll(target, "OUT", l.out), p); err != nil {
			t.Fatal(err)
		}
	}
}

func mklink(rel, target string) setupFn {
	return func(t *testing.T, l layout) {
		t.Helper()
		if err := os.Link(filepath.Join(l.root, target), filepath.Join(l.root, rel)); err != nil {
			t.Fatal(err)
		}
	}
}

type breakoutCase struct {
	name    string
	setup   []setupFn
	layer   func(l layout) []ent
	raw     []byte // a hand-made tar, instead of layer
	wantErr string // substring of the expected error; "" means success
	check   check
}

func entries(es ...ent) func(layout) []ent { return func(layout) []ent { return es } }

func TestBreakouts(t *testing.T) {
	var cases []breakoutCase
	cases = append(cases, nameCases()...)
	cases = append(cases, scopingCases()...)
	cases = append(cases, symlinkCases()...)
	cases = append(cases, hardlinkCases()...)
	cases = append(cases, replaceCases()...)
	cases = append(cases, whiteoutCases()...)
	cases = append(cases, deviceCases()...)
	cases = append(cases, hugeHeaderCases()...)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { runBreakout(t, c) })
	}
}

func runBreakout(t *testing.T, c breakoutCase) {
	l := newLayout(t)
	for _, s := range c.setup {
		s(t, l)
	}
	before := outsideState(t, l)
	data := c.raw
	if data == nil {
		data = mkTar(t, c.layer(l)...)
	}
	err := layers.Apply(context.Background(), l.root, bytes.NewReader(data), layers.ApplyOptions{NoChown: os.Geteuid() != 0})
	switch {
	case c.wantErr == "" && err != nil:
		t.Errorf("Apply: %v", err)
	case c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)):
		t.Errorf("Apply: %v, want error containing %q", err, c.wantErr)
	}
	after := outsideState(t, l)
	if strings.Join(before, "\n") != strings.Join(after, "\n") {
		t.Errorf("BREAKOUT: outside root changed:\n before:\n  %s\n after:\n  %s", strings.Join(before, "\n  "), strings.Join(after, "\n  "))
	}
	for _, p := range hostEscapes {
		if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("BREAKOUT: %s exists on the host (%v)", p, err)
		}
	}
	if c.check != nil {
		c.check(t, l)
	}
}

// nameCases: entry names with "..", absolute names.
func nameCases() []breakoutCase {
	return []breakoutCase{
		{name: "NameDotDot", layer: entries(fileE("../outside/sentinel", "pwned", 0o644)), check: fileIs("outside/sentinel", "pwned")},
		{name: "NameDotDotDeep", layer: entries(fileE("../../../../../../../../../../outside/sentinel", "pwned", 0o644)), check: fileIs("outside/sentinel", "pwned")},
		{name: "NameDotDotMiddle", layer: entries(fileE("a/../../outside/sentinel", "pwned", 0o644)), check: fileIs("outside/sentinel", "pwned")},
		{name: "NameDotDotOnly", layer: entries(dirE("..", 0o700), dirE("../..", 0o700)), check: dirIs(".")},
		{name: "NameAbsolute", layer: func(l layout) []ent { return []ent{fileE(l.out+"/sentinel", "pwned", 0o644)} },
			check: func(t *testing.T, l layout) { fileIs(l.out+"/sentinel", "pwned")(t, l) }},
		{name: "NameAbsoluteDotDot", layer: entries(fileE("/../../outside/sentinel", "pwned", 0o644)), check: fileIs("outside/sentinel", "pwned")},
		{name: "DirNameDotDot", layer: entries(dirE("../outside/newdir", 0o777)), check: dirIs("outside/newdir")},
		{name: "SymlinkNameDotDot", layer: entries(symE("../outside/sentinel", "/pwned")), check: symlinkIs("outside/sentinel", "/pwned")},
		{name: "HardlinkNameDotDot", layer: entries(fileE("f", "f", 0o644), linkE("../outside/sentinel", "f")), check: sameInode("f", "outside/sentinel")},
		{name: "FifoNameDotDot", layer: entries(ent{hdr: tar.Header{Typeflag: tar.TypeFifo, Name: "../outside/fifo", Mode: 0o666}}), check: func(t *testing.T, l layout) {
			if fi, err := os.Lstat(filepath.Join(l.root, "outside/fifo")); err != nil || fi.Mode()&fs.ModeNamedPipe == 0 {
				t.Errorf("outside/fifo in root: %v %v", fi, err)
			}
		}},
	}
}

// scopingCases: umoci's TestUnpackEntrySymlinkScoping, an existing symlink
// "link" with an escaping target, then "link/sentinel" written.
func scopingCases() []breakoutCase {
	var cases []breakoutCase
	for i, prefix := range []string{"/", "/../", "/../../../../../../../../../../../../../../../", "/./.././.././.././.././.././.././.././.././../", "..", "../..", "."} {
		cases = append(cases, breakoutCase{
			name:  fmt.Sprintf("ExistingSymlinkScoping%d", i),
			setup: []setupFn{mksymlink("link", prefix)},
			layer: entries(fileE("link/sentinel", "pwned", 0o644)),
			check: fileIs("sentinel", "pwned"),
		})
	}
	return append(cases,
		breakoutCase{name: "ExistingSymlinkRelativeToOutside", setup: []setupFn{mkdir("outside"), mksymlink("a/link", "../../outside")},
			layer: entries(fileE("a/link/sentinel", "pwned", 0o644)), check: fileIs("outside/sentinel", "pwned")},
		breakoutCase{name: "ExistingSymlinkAbsoluteToOutsideDangling", setup: []setupFn{mksymlink("link", "OUT")},
			layer: entries(fileE("link/sentinel", "pwned", 0o644)), wantErr: "not a directory", check: absent("sentinel")},
		breakoutCase{name: "ExistingSymlinkRelativeToOutsideDangling", setup: []setupFn{mksymlink("link", "../outside")},
			layer: entries(fileE("link/sentinel", "pwned", 0o644)), wantErr: "not a directory"},
	)
}

// symlinkCases: symlinks created by the layer, then written through.
func symlinkCases() []breakoutCase {
	return []breakoutCase{
		{name: "SymlinkAbsolute", layer: func(l layout) []ent {
			return []ent{dirE(l.out, 0o755), symE("localout", l.out), fileE("localout/sentinel", "pwned", 0o644)}
		}, check: func(t *testing.T, l layout) { fileIs(l.out+"/sentinel", "pwned")(t, l) }},
		{name: "SymlinkAbsoluteDangling", layer: func(l layout) []ent {
			return []ent{symE("localout", l.out), fileE("localout/sentinel", "pwned", 0o644)}
		}, wantErr: "not a directory"},
		{name: "SymlinkUpAndOut", layer: entries(dirE("outside", 0o755), symE("localout", "../outside"), fileE("localout/sentinel", "pwned", 0o644)),
			check: fileIs("outside/sentinel", "pwned")},
		{name: "SymlinkDotDotInTarget", layer: entries(dirE("outside", 0o755), dirE("dummy", 0o755), symE("localout", "/dummy/../../outside"), fileE("localout/sentinel", "pwned", 0o644)),
			check: fileIs("outside/sentinel", "pwned")},
		{name: "SymlinkChainAbsolute", layer: entries(dirE("outside", 0o755), dirE("dummy", 0o755), symE("dummy/out", "../../../outside"), symE("localout", "/dummy/out"), fileE("localout/sentinel", "pwned", 0o644)),
			check: fileIs("outside/sentinel", "pwned")},
		{name: "SymlinkChainRelative", layer: func(l layout) []ent {
			return []ent{dirE(l.out, 0o755), symE("dummy/out", l.out), symE("localout", "./dummy/out"), fileE("localout/sentinel", "pwned", 0o644)}
		}, check: func(t *testing.T, l layout) { fileIs(l.out+"/sentinel", "pwned")(t, l) }},
		{name: "SymlinkToRootParent", layer: entries(symE("up", ".."), symE("up2", "up/../.."), fileE("up/up2/up/outside/sentinel", "pwned", 0o644)),
			check: fileIs("outside/sentinel", "pwned")},
		{name: "SymlinkFileWriteThroughRelative", layer: entries(symE("f", "../outside/sentinel"), fileE("f", "pwned", 0o644)), check: fileIs("f", "pwned")},
		{name: "SymlinkFileWriteThroughAbsolute", layer: func(l layout) []ent {
			return []ent{symE("f", l.out+"/sentinel"), fileE("f", "", 0o666)}
		}, check: fileIs("f", "")},
		{name: "SymlinkFileThenSymlinkThenFile", layer: entries(symE("f", "../outside/sentinel"), symE("f", "/../outside/sentinel"), fileE("f", "pwned", 0o644)), check: fileIs("f", "pwned")},
		{name: "ExistingSymlinkFileWriteThrough", setup: []setupFn{mksymlink("f", "OUT/sentinel")}, layer: entries(fileE("f", "pwned", 0o644)), check: fileIs("f", "pwned")},
		{name: "ExistingSymlinkChmodThrough", setup: []setupFn{mksymlink("d", "OUT")}, layer: entries(dirE("d", 0o777)), check: dirIs("d")},
		{name: "SymlinkToDirThenFileInside", layer: entries(dirE("outside", 0o700), symE("d", "../outside"), fileE("d/new", "pwned", 0o644)),
			check: all(fileIs("outside/new", "pwned"), symlinkIs("d", "../outside"))},
		{name: "SymlinkLoop", layer: entries(symE("a", "b"), symE("b", "a"), fileE("a/x", "pwned", 0o644)), wantErr: "too many levels of symbolic links"},
		{name: "SymlinkNamedDotDot", layer: entries(dirE("xetc", 0o770), fileE("/xetc/passwd", "inside", 0o644), symE("..", "/xetc/")), wantErr: "non-directory entry for the root"},
		{name: "SymlinkEmptyName", layer: entries(symE("", "/xetc/")), wantErr: "non-directory entry for the root"},
		{name: "SymlinkParentRelative", layer: entries(dirE("xetc", 0o770), fileE("/xetc/passwd", "inside", 0o644), symE("localetc/sub/..", "/xetc/"), linkE("/localetc/localpasswd", "/xetc/passwd")),
			check: all(symlinkIs("localetc", "/xetc/"), sameInode("xetc/localpasswd", "xetc/passwd"))},
		{name: "SymlinkSlashEnded", layer: entries(dirE("xetc", 0o770), fileE("/xetc/passwd", "inside", 0o644), dirE("localetc/", 0o770), linkE("/localetc/localpasswd", "/xetc/passwd")),
			check: sameInode("localetc/localpasswd", "xetc/passwd")},
	}
}

// hardlinkCases: hardlink targets outside, through symlinks, to symlinks.
func hardlinkCases() []breakoutCase {
	passwd := []ent{dirE("xetc", 0o770), fileE("/xetc/passwd", "inside", 0o644)}
	with := func(es ...ent) func(layout) []ent { return entries(append(append([]ent{}, passwd...), es...)...) }
	chmodLink := func(h *tar.Header) { h.Mode, h.Uid, h.Gid = 0o777, 4242, 4242 }
	return []breakoutCase{
		{name: "HardlinkRelative", layer: with(dirE("breakouts", 0o755), symE("breakouts/d1", "../../xetc"), linkE("breakouts/mypasswd", "/breakouts/d1/passwd")),
			check: sameInode("breakouts/mypasswd", "xetc/passwd")},
		{name: "HardlinkDownAndOut", layer: with(dirE("breakouts", 0o755), dirE("downandout", 0o755), symE("breakouts/d1", "../downandout/../../xetc"), linkE("breakouts/mypasswd", "/breakouts/d1/passwd")),
			check: sameInode("breakouts/mypasswd", "xetc/passwd")},
		{name: "HardlinkAbsolute", layer: with(symE("localetc", "/xetc"), linkE("localpasswd", "/localetc/passwd")), check: sameInode("localpasswd", "xetc/passwd")},
		{name: "HardlinkRelativeLong", layer: with(symE("localetc", "../../../../../../../xetc"), linkE("localpasswd", "/localetc/passwd")), check: sameInode("localpasswd", "xetc/passwd")},
		// The kernel resolves "upandout/.." only if upandout exists (containerd
		// cleans symlink targets lexically and succeeds here).
		{name: "HardlinkRelativeUpAndOut", layer: with(symE("localetc", "upandout/../../../xetc"), linkE("localpasswd", "/localetc/passwd")), wantErr: "no such file", check: absent("localpasswd")},
		{name: "HardlinkRelativeUpAndOutExisting", layer: with(dirE("upandout", 0o755), symE("localetc", "upandout/../../../xetc"), linkE("localpasswd", "/localetc/passwd")), check: sameInode("localpasswd", "xetc/passwd")},
		{name: "HardlinkDirectRelative", layer: with(linkE("localpasswd", "../../../../../xetc/passwd")), check: sameInode("localpasswd", "xetc/passwd")},
		{name: "HardlinkDirectAbsolute", layer: with(linkE("localpasswd", "/xetc/passwd")), check: sameInode("localpasswd", "xetc/passwd")},
		{name: "HardlinkToOutsideRelative", layer: entries(linkE("l", "../outside/sentinel")), wantErr: "no such file", check: absent("l")},
		{name: "HardlinkToOutsideAbsolute", layer: func(l layout) []ent { return []ent{linkE("l", l.out+"/sentinel")} }, wantErr: "no such file", check: absent("l")},
		{name: "HardlinkThroughExistingSymlink", setup: []setupFn{mksymlink("lo", "OUT")}, layer: entries(linkE("l", "lo/sentinel")), wantErr: "no such file", check: absent("l")},
		{name: "HardlinkThroughSymlinkConfined", layer: entries(fileE("outside/sentinel", "inroot", 0o644), symE("lo", "../../outside"), linkE("l", "lo/sentinel")),
			check: all(sameInode("l", "outside/sentinel"), fileIs("l", "inroot"))},
		{name: "HardlinkToSymlinkPointingOut", layer: func(l layout) []ent {
			return []ent{symE("s", l.out+"/sentinel"), linkE("h", "s").with(chmodLink)}
		}, check: func(t *testing.T, l layout) { sameInode("h", "s")(t, l); symlinkIs("h", l.out+"/sentinel")(t, l) }},
		{name: "HardlinkSymlinkChmod", setup: []setupFn{mksymlink("sketchy", "OUT/sentinel")}, layer: entries(linkE("sketchylink", "sketchy").with(chmodLink)),
			check: sameInode("sketchylink", "sketchy")},
		{name: "HardlinkToSymlinkThenWrite", layer: entries(symE("s", "../outside/sentinel"), linkE("h", "s"), fileE("h", "pwned", 0o644)),
			check: all(fileIs("h", "pwned"), symlinkIs("s", "../outside/sentinel"))},
		{name: "HardlinkSymlinkBeforeCreateTarget", layer: entries(dirE("xetc", 0o770), symE("localpasswd", "/xetc/passwd"), linkE("localpasswd-dup", "localpasswd"), fileE("/xetc/passwd", "after", 0o644)),
			check: all(sameInode("localpasswd-dup", "localpasswd"), symlinkIs("localpasswd-dup", "/xetc/passwd"), fileIs("xetc/passwd", "after"))},
		{name: "HardlinkSymlinkRelative", layer: with(symE("passwdlink", "../../../../../xetc/passwd"), linkE("/localpasswd", "/passwdlink")),
			check: all(sameInode("localpasswd", "passwdlink"), symlinkIs("localpasswd", "../../../../../xetc/passwd"))},
		{name: "HardlinkToDirectory", layer: entries(dirE("d", 0o755), linkE("l", "d")), wantErr: "operation not permitted"},
		{name: "HardlinkNameIsTargetParent", layer: with(linkE("xetc", "xetc/passwd")), wantErr: "no such file"},
	}
}

// replaceCases: the final component is replaced, never followed.
func replaceCases() []breakoutCase {
	passwd := []setupFn{mkfile("xetc/passwd", "inside")}
	return []breakoutCase{
		{name: "DirectoryOverSymlink", setup: append(passwd, mksymlink("localetc", "OUT")), layer: entries(dirE("/localetc/", 0o755), fileE("localetc/sentinel", "pwned", 0o644)),
			check: all(dirIs("localetc"), fileIs("localetc/sentinel", "pwned"))},
		{name: "DirectoryOverSymlinkAndHardlink", setup: append(passwd, mksymlink("localetc", "xetc"), mklink("xetc/localpasswd", "xetc/passwd")),
			layer: entries(dirE("/localetc/", 0o755), fileE("/localetc/localpasswd", "different", 0o644)),
			check: all(notSameInode("localetc/localpasswd", "xetc/passwd"), fileIs("xetc/passwd", "inside"), fileIs("localetc/localpasswd", "different"))},
		{name: "SymlinkOverDirectory", setup: append(passwd, mkdir("localetc")), layer: entries(symE("localetc", "/xetc"), linkE("/localetc/localpasswd", "/xetc/passwd")),
			check: all(symlinkIs("localetc", "/xetc"), sameInode("xetc/localpasswd", "xetc/passwd"))},
		{name: "SymlinkOverDirectoryRelative", setup: append(passwd, mkdir("localetc")), layer: entries(symE("localetc", "../../xetc"), linkE("/localetc/localpasswd", "/xetc/passwd")),
			check: sameInode("xetc/localpasswd", "xetc/passwd")},
		{name: "FileOverDirectory", setup: []setupFn{mkfile("d/x", "x"), mksymlink("d/out", "OUT")}, layer: entries(fileE("d", "file", 0o644)), check: fileIs("d", "file")},
		{name: "FileOverDirectorySymlinkInside", setup: []setupFn{mksymlink("d/out", "../../outside"), mkdir("outside")}, layer: entries(fileE("d", "file", 0o644)),
			check: all(fileIs("d", "file"), dirIs("outside"))},
	}
}

// whiteoutCases: whiteouts naming "." or "..", through symlinks, of symlinks.
func whiteoutCases() []breakoutCase {
	passwd := []setupFn{mkfile("xetc/passwd", "all users")}
	cases := []breakoutCase{}
	for _, name := range []string{".wh...", "xetc/.wh...", ".wh..", "xetc/.wh..", ".wh.", "xetc/.wh."} {
		cases = append(cases, breakoutCase{name: "WhiteoutInvalid" + strings.ReplaceAll(name, "/", "_"), setup: passwd,
			layer: entries(fileE(name, "", 0o644)), wantErr: "invalid layer entry", check: fileIs("xetc/passwd", "all users")})
	}
	return append(cases, []breakoutCase{
		{name: "WhiteoutSymlink", setup: append(passwd, mksymlink("localetc", "/xetc"), mksymlink("localout", "OUT")),
			layer: entries(fileE(".wh.localetc", "", 0o644), fileE(".wh.localout", "", 0o644)),
			check: all(fileIs("xetc/passwd", "all users"), absent("localetc"), absent("localout"))},
		{name: "WhiteoutSymlinkPath", setup: append(passwd, mkfile("xetc/whitedout", "x"), mksymlink("localetc", "/xetc")),
			layer: entries(fileE("localetc/.wh.whitedout", "", 0o644)),
			check: all(fileIs("xetc/passwd", "all users"), absent("xetc/whitedout"))},
		{name: "WhiteoutThroughSymlinkToOutside", setup: []setupFn{mkfile("outside/sentinel", "inroot"), mksymlink("lo", "../outside")},
			layer: entries(fileE("lo/.wh.sentinel", "", 0o644)), check: all(absent("outside/sentinel"), symlinkIs("lo", "../outside"))},
		{name: "WhiteoutThroughAbsoluteSymlinkDangling", setup: []setupFn{mksymlink("lo", "OUT")},
			layer: entries(fileE("lo/.wh.sentinel", "", 0o644)), check: func(t *testing.T, l layout) { symlinkIs("lo", l.out)(t, l) }},
		{name: "WhiteoutDotDotName", setup: []setupFn{mkfile("outside/sentinel", "inroot")},
			layer: entries(fileE("../outside/.wh.sentinel", "", 0o644)), check: absent("outside/sentinel")},
		{name: "WhiteoutDotDotNameMissing", layer: entries(fileE("../../outside/.wh.sentinel", "", 0o644)), check: absent("outside")},
		{name: "WhiteoutDirectoryName", setup: append(passwd, mksymlink("localetc", "/xetc")),
			layer: entries(fileE(".wh.xetc/somefile", "non-empty", 0o644)),
			check: all(fileIs("xetc/passwd", "all users"), fileIs(".wh.xetc/somefile", "non-empty"))},
		{name: "WhiteoutDeadSymlinkParent", setup: append(passwd, mksymlink("localetc", "/dne")),
			layer: entries(fileE("localetc/.wh.xetc", "", 0o644)), check: fileIs("xetc/passwd", "all users")},
		{name: "WhiteoutRelativePath", setup: append(passwd, mksymlink("localetc", "/dne")),
			layer: entries(fileE("dne/../.wh.xetc", "", 0o644)), check: absent("xetc")},
		{name: "WhiteoutDirWithSymlinkInside", setup: []setupFn{mkdir("outside"), mksymlink("d/out", "../../outside"), mksymlink("d/abs", "OUT")},
			layer: entries(fileE(".wh.d", "", 0o644)), check: all(absent("d"), dirIs("outside"))},
		{name: "OpaqueThroughSymlink", setup: []setupFn{mkfile("outside/a", "a"), mksymlink("lo", "../outside")},
			layer: entries(fileE("lo/.wh..wh..opq", "", 0o644)), check: all(absent("outside/a"), dirIs("outside"), symlinkIs("lo", "../outside"))},
		{name: "OpaqueThroughAbsoluteSymlinkDangling", setup: []setupFn{mksymlink("lo", "OUT")},
			layer: entries(fileE("lo/.wh..wh..opq", "", 0o644)), wantErr: "not a directory"},
		{name: "OpaqueWithSymlinksInside", setup: []setupFn{mkdir("outside"), mksymlink("d/out", "../../outside"), mksymlink("d/abs", "OUT"), mkfile("d/sub/f", "f")},
			layer: entries(fileE("d/.wh..wh..opq", "", 0o644)), check: all(dirIs("d"), absent("d/out"), absent("d/abs"), absent("d/sub"), dirIs("outside"))},
	}...)
}

// deviceCases: device nodes are created (inside root) only when root.
func deviceCases() []breakoutCase {
	dev := func(typ byte, name string, major, minor int64) ent {
		return ent{hdr: tar.Header{Typeflag: typ, Name: name, Mode: 0o666, Devmajor: major, Devminor: minor}}
	}
	deviceAt := func(rel string) check {
		return func(t *testing.T, l layout) {
			t.Helper()
			fi, err := os.Lstat(filepath.Join(l.root, rel))
			if os.Geteuid() != 0 {
				if !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("%s: %v %v, want device skipped when not root", rel, fi, err)
				}
				return
			}
			if err != nil || fi.Mode()&fs.ModeDevice == 0 {
				t.Errorf("%s: %v %v, want a device node", rel, fi, err)
			}
		}
	}
	return []breakoutCase{
		{name: "DeviceNameDotDot", layer: entries(dev(tar.TypeChar, "../outside/null", 1, 3)), check: deviceAt("outside/null")},
		{name: "DeviceAbsoluteName", layer: func(l layout) []ent { return []ent{dev(tar.TypeBlock, l.out+"/sda", 8, 0)} },
			check: func(t *testing.T, l layout) { deviceAt(l.out+"/sda")(t, l) }},
		{name: "DeviceOverSymlink", setup: []setupFn{mksymlink("null", "OUT/sentinel")}, layer: entries(dev(tar.TypeChar, "null", 1, 3)),
			check: func(t *testing.T, l layout) {
				if os.Geteuid() == 0 {
					deviceAt("null")(t, l)
				} else {
					symlinkIs("null", l.out+"/sentinel")(t, l)
				}
			}},
		{name: "DeviceThroughSymlinkDir", setup: []setupFn{mkdir("outside"), mksymlink("dev", "../outside")}, layer: entries(dev(tar.TypeChar, "dev/zero", 1, 5)),
			check: deviceAt("outside/zero")},
	}
}

// hugeHeaderCases: oversized PAX records, long names and link targets fail
// cleanly without reading them into memory.
func hugeHeaderCases() []breakoutCase {
	long := func(n int) string { return strings.Repeat("a/", n/2) }
	return []breakoutCase{
		{name: "HugePAXRecord", raw: rawTar(paxRecord("SCHILY.xattr.user.big", 4<<20), tar.TypeXHeader), wantErr: "too long", check: absent("f")},
		{name: "HugePAXPath", raw: rawTar(paxRecord("path", 2<<20), tar.TypeXHeader), wantErr: "too long", check: absent("f")},
		{name: "HugeGNULongName", raw: rawTar(bytes.Repeat([]byte("g"), 2<<20), tar.TypeGNULongName), wantErr: "too long", check: absent("f")},
		{name: "HugeGNULongLink", raw: rawTar(bytes.Repeat([]byte("g"), 2<<20), tar.TypeGNULongLink), wantErr: "too long", check: absent("f")},
		{name: "PAXPathNearLimit", raw: rawTar(paxRecord("path", 900<<10), tar.TypeXHeader), wantErr: "name longer than 4096", check: absent("f")},
		{name: "LongName", layer: entries(fileE(long(8192)+"f", "x", 0o644)), wantErr: "name longer than 4096", check: absent("a")},
		{name: "LongComponent", layer: entries(fileE(strings.Repeat("c", 300), "x", 0o644)), wantErr: "file name too long"},
		{name: "LongHardlinkTarget", layer: entries(linkE("l", long(8192)+"f")), wantErr: "name longer than 4096"},
		{name: "LongSymlinkTarget", layer: entries(symE("s", long(8192))), wantErr: "symlink target longer than 4096", check: absent("s")},
	}
}

// paxRecord is one PAX record "LEN key=value\n" with a value of n bytes.
func paxRecord(key string, n int) []byte {
	body := " " + key + "=" + strings.Repeat("v", n) + "\n"
	l := len(body)
	for l != len(body)+len(strconv.Itoa(l)) {
		l = len(body) + len(strconv.Itoa(l))
	}
	return []byte(strconv.Itoa(l) + body)
}

// rawTar hand-writes a tar whose first header is a special header (PAX 'x',
// GNU 'L' or 'K') holding data, followed by a regular file "f":
// archive/tar refuses to write such oversized headers.
func rawTar(data []byte, typeflag byte) []byte {
	var buf bytes.Buffer
	buf.Write(ustarHeader("././@LongHeader", typeflag, int64(len(data))))
	buf.Write(data)
	buf.Write(make([]byte, (512-len(data)%512)%512))
	buf.Write(ustarHeader("f", tar.TypeReg, 0))
	buf.Write(make([]byte, 1024))
	return buf.Bytes()
}

// ustarHeader encodes a minimal ustar header block.
func ustarHeader(name string, typeflag byte, size int64) []byte {
	b := make([]byte, 512)
	copy(b[0:100], name)
	copy(b[100:108], "0000644\x00")
	copy(b[108:116], "0000000\x00")
	copy(b[116:124], "0000000\x00")
	copy(b[124:136], fmt.Sprintf("%011o\x00", size))
	copy(b[136:148], "00000000000\x00")
	b[156] = typeflag
	copy(b[257:265], "ustar\x0000")
	copy(b[148:156], "        ")
	sum := 0
	for _, c := range b {
		sum += int(c)
	}
	copy(b[148:156], fmt.Sprintf("%06o\x00 ", sum))
	return b
}
