package builder

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/imgbuild/imgbuild/registry/registrytest"
)

// ctxBasic is the build context most copy cases use.
var ctxBasic = []ctEntry{
	cf("f.txt", "hello", 0o644),
	cf("other.txt", "other", 0o644),
	cf("run.sh", "#!/bin/sh", 0o755),
	cd("dir", 0o700),
	cf("dir/a", "A", 0o640),
	cd("dir/sub", 0o750),
	cf("dir/sub/b", "B", 0o600),
	cl("dir/link", "a"),
}

type copyCase struct {
	name    string
	ctx     []ctEntry // build context (ctxBasic when nil)
	ignore  string    // .dockerignore
	base    []ctEntry // DestRoot before the copy
	op      copyOp    // Sources, Dest, ... (Context and DestRoot are filled in)
	want    map[string]string
	changed []string // exact changed list when non-nil
	err     string   // expected error substring
}

func TestCopyFiles(t *testing.T) {
	dirContents := map[string]string{
		"out":       "d 0755 0:0",
		"out/a":     "f 0640 0:0 A",
		"out/sub":   "d 0750 0:0",
		"out/sub/b": "f 0600 0:0 B",
		"out/link":  "l -> a",
	}
	cases := []copyCase{
		{name: "file to new path", op: copyOp{Sources: []string{"f.txt"}, Dest: "/dst"},
			want: map[string]string{"dst": "f 0644 0:0 hello"}, changed: []string{"dst"}},
		{name: "file to trailing slash creates dir", op: copyOp{Sources: []string{"f.txt"}, Dest: "/d/"},
			want:    map[string]string{"d": "d 0755 0:0", "d/f.txt": "f 0644 0:0 hello"},
			changed: []string{"d", "d/f.txt"}},
		{name: "file into existing dir without slash", base: []ctEntry{cd("d", 0o711)},
			op:      copyOp{Sources: []string{"f.txt"}, Dest: "/d"},
			want:    map[string]string{"d": "d 0711 0:0", "d/f.txt": "f 0644 0:0 hello"},
			changed: []string{"d/f.txt"}},
		{name: "file replaces existing file", base: []ctEntry{cf("dst", "old", 0o600)},
			op:   copyOp{Sources: []string{"f.txt"}, Dest: "/dst"},
			want: map[string]string{"dst": "f 0644 0:0 hello"}, changed: []string{"dst"}},
		{name: "exec bit kept", op: copyOp{Sources: []string{"run.sh"}, Dest: "/bin/"},
			want: map[string]string{"bin": "d 0755 0:0", "bin/run.sh": "f 0755 0:0 #!/bin/sh"}},
		{name: "dir copies its contents, created dest is 0755", op: copyOp{Sources: []string{"dir"}, Dest: "/out"},
			want: dirContents, changed: []string{"out", "out/a", "out/link", "out/sub", "out/sub/b"}},
		{name: "dir with trailing slash is the same", op: copyOp{Sources: []string{"dir/"}, Dest: "/out"}, want: dirContents},
		{name: "dir/. is the same", op: copyOp{Sources: []string{"dir/."}, Dest: "/out/"}, want: dirContents},
		{name: "dir into existing dir keeps its mode", base: []ctEntry{cd("out", 0o711)},
			op: copyOp{Sources: []string{"dir"}, Dest: "/out"},
			want: map[string]string{"out": "d 0711 0:0", "out/a": "f 0640 0:0 A", "out/sub": "d 0750 0:0",
				"out/sub/b": "f 0600 0:0 B", "out/link": "l -> a"},
			changed: []string{"out", "out/a", "out/link", "out/sub", "out/sub/b"}},
		{name: "existing nested dir gets source mode", base: []ctEntry{cd("out/sub", 0o777), cf("out/sub/keep", "k", 0o644)},
			op: copyOp{Sources: []string{"dir"}, Dest: "/out"},
			want: map[string]string{"out": "d 0755 0:0", "out/a": "f 0640 0:0 A", "out/sub": "d 0750 0:0",
				"out/sub/b": "f 0600 0:0 B", "out/sub/keep": "f 0644 0:0 k", "out/link": "l -> a"}},
		{name: "several sources make the destination a directory", op: copyOp{Sources: []string{"f.txt", "other.txt"}, Dest: "/m"},
			want: map[string]string{"m": "d 0755 0:0", "m/f.txt": "f 0644 0:0 hello", "m/other.txt": "f 0644 0:0 other"}},
		{name: "wildcard", op: copyOp{Sources: []string{"*.txt"}, Dest: "/w/"},
			want: map[string]string{"w": "d 0755 0:0", "w/f.txt": "f 0644 0:0 hello", "w/other.txt": "f 0644 0:0 other"}},
		{name: "wildcard with several matches makes a directory", op: copyOp{Sources: []string{"*.txt"}, Dest: "/w"},
			want: map[string]string{"w": "d 0755 0:0", "w/f.txt": "f 0644 0:0 hello", "w/other.txt": "f 0644 0:0 other"}},
		{name: "wildcard with one match to a file name", op: copyOp{Sources: []string{"f*.txt"}, Dest: "/single"},
			want: map[string]string{"single": "f 0644 0:0 hello"}},
		{name: "wildcard in a directory component", op: copyOp{Sources: []string{"di?/s*/b"}, Dest: "/x"},
			want: map[string]string{"x": "f 0600 0:0 B"}},
		{name: "wildcard matching a dir copies its contents", op: copyOp{Sources: []string{"d*"}, Dest: "/out/"}, want: dirContents},
		{name: "escaped wildcard is literal", ctx: []ctEntry{cf("arr[0].txt", "zero", 0o644), cf("arr0.txt", "no", 0o644)},
			op:   copyOp{Sources: []string{"arr[[]0].txt"}, Dest: "/e/"},
			want: map[string]string{"e": "d 0755 0:0", "e/arr[0].txt": "f 0644 0:0 zero"}},
		{name: "empty wildcard beside a file is fine", op: copyOp{Sources: []string{"f.txt", "nomatch*"}, Dest: "/e"},
			want: map[string]string{"e": "f 0644 0:0 hello"}},
		{name: "empty wildcard alone copies nothing", op: copyOp{Sources: []string{"nomatch*"}, Dest: "/e/"},
			want: map[string]string{}, changed: []string{}},
		{name: "missing source", op: copyOp{Sources: []string{"nope"}, Dest: "/"}, err: `"/nope": not found`},
		{name: "missing parent of source", op: copyOp{Sources: []string{"f.txt/x"}, Dest: "/"}, err: `"/f.txt/x": not found`},
		{name: "missing parents of dest created", op: copyOp{Sources: []string{"f.txt"}, Dest: "/a/b/c/f"},
			want:    map[string]string{"a": "d 0755 0:0", "a/b": "d 0755 0:0", "a/b/c": "d 0755 0:0", "a/b/c/f": "f 0644 0:0 hello"},
			changed: []string{"a", "a/b", "a/b/c", "a/b/c/f"}},
		{name: "relative dest joins the workdir", op: copyOp{Sources: []string{"f.txt"}, Dest: "sub/", Workdir: "/app"},
			want: map[string]string{"app": "d 0755 0:0", "app/sub": "d 0755 0:0", "app/sub/f.txt": "f 0644 0:0 hello"}},
		{name: "dot dest is the workdir", op: copyOp{Sources: []string{"f.txt"}, Dest: ".", Workdir: "/w"},
			want: map[string]string{"w": "d 0755 0:0", "w/f.txt": "f 0644 0:0 hello"}},
		{name: "dest .. stays in the root", op: copyOp{Sources: []string{"f.txt"}, Dest: "../../../x", Workdir: "/w"},
			want: map[string]string{"x": "f 0644 0:0 hello"}},
		{name: "source ../ is cleaned to the context root", op: copyOp{Sources: []string{"../../f.txt"}, Dest: "/x"},
			want: map[string]string{"x": "f 0644 0:0 hello"}},
		{name: "source ../ cannot leave the context", op: copyOp{Sources: []string{"../../../../../etc/passwd"}, Dest: "/x"},
			err: `"/etc/passwd": not found`},
		{name: "absolute source is relative to the context", op: copyOp{Sources: []string{"/f.txt"}, Dest: "/x"},
			want: map[string]string{"x": "f 0644 0:0 hello"}},
		{name: "top-level symlink is followed", ctx: append([]ctEntry{cl("lnk", "f.txt")}, ctxBasic...),
			op:   copyOp{Sources: []string{"lnk"}, Dest: "/d/"},
			want: map[string]string{"d": "d 0755 0:0", "d/lnk": "f 0644 0:0 hello"}},
		{name: "symlinked directory in the source path", ctx: append([]ctEntry{cl("ldir", "dir/sub")}, ctxBasic...),
			op: copyOp{Sources: []string{"ldir/b"}, Dest: "/b"}, want: map[string]string{"b": "f 0600 0:0 B"}},
		{name: "absolute symlink out of the context is confined", ctx: append([]ctEntry{cl("out1", "/etc/passwd")}, ctxBasic...),
			op: copyOp{Sources: []string{"out1"}, Dest: "/x"}, err: `"/out1": not found`},
		{name: "relative symlink out of the context is confined", ctx: append([]ctEntry{cl("out2", "../../../../../../etc/passwd")}, ctxBasic...),
			op: copyOp{Sources: []string{"out2"}, Dest: "/x"}, err: `"/out2": not found`},
		{name: "symlinked dir out of the context is confined", ctx: append([]ctEntry{cl("etcdir", "/etc")}, ctxBasic...),
			op: copyOp{Sources: []string{"etcdir/passwd"}, Dest: "/x"}, err: `"/etcdir/passwd": not found`},
		{name: "absolute symlink resolves inside the context", ctx: append([]ctEntry{cl("abs", "/f.txt")}, ctxBasic...),
			op: copyOp{Sources: []string{"abs"}, Dest: "/x"}, want: map[string]string{"x": "f 0644 0:0 hello"}},
		{name: "nested symlinks are copied as symlinks", ctx: []ctEntry{cl("d2/esc", "/etc/passwd"), cl("d2/up", "../../..")},
			op:   copyOp{Sources: []string{"d2"}, Dest: "/d2"},
			want: map[string]string{"d2": "d 0755 0:0", "d2/esc": "l -> /etc/passwd", "d2/up": "l -> ../../.."}},
		{name: "dest symlink to /etc lands in the root's /etc", base: []ctEntry{cd("etc", 0o755), cl("app", "/etc")},
			op:      copyOp{Sources: []string{"f.txt"}, Dest: "/app/"},
			want:    map[string]string{"etc": "d 0755 0:0", "app": "l -> /etc", "etc/f.txt": "f 0644 0:0 hello"},
			changed: []string{"etc/f.txt"}},
		{name: "relative dest symlink climbing out stays in the root", base: []ctEntry{cd("srv", 0o755), cl("srv/app", "../../../../etc")},
			op: copyOp{Sources: []string{"f.txt"}, Dest: "/srv/app/x/"},
			want: map[string]string{"srv": "d 0755 0:0", "srv/app": "l -> ../../../../etc", "etc": "d 0755 0:0",
				"etc/x": "d 0755 0:0", "etc/x/f.txt": "f 0644 0:0 hello"},
			changed: []string{"etc", "etc/x", "etc/x/f.txt"}},
		{name: "dest that is a symlink to a file is resolved in the root", base: []ctEntry{cf("etc/target", "old", 0o600), cl("x", "/etc/target")},
			op:   copyOp{Sources: []string{"f.txt"}, Dest: "/x"},
			want: map[string]string{"etc": "d 0755 0:0", "etc/target": "f 0644 0:0 hello", "x": "l -> /etc/target"}},
		{name: "symlink inside the dest dir is replaced, not written through", base: []ctEntry{cf("t", "target", 0o644), cl("d/f.txt", "/t")},
			op:   copyOp{Sources: []string{"f.txt"}, Dest: "/d/"},
			want: map[string]string{"t": "f 0644 0:0 target", "d": "d 0755 0:0", "d/f.txt": "f 0644 0:0 hello"}},
		{name: "dir onto a nested symlink fails", base: []ctEntry{cd("etc", 0o755), cl("out/sub", "/etc")},
			op: copyOp{Sources: []string{"dir"}, Dest: "/out"}, err: "cannot copy to non-directory"},
		{name: "dir onto a file fails", base: []ctEntry{cf("x", "file", 0o644)},
			op: copyOp{Sources: []string{"dir"}, Dest: "/x"}, err: "cannot copy to non-directory"},
		{name: "file onto a dir in a dir dest fails", base: []ctEntry{cd("d/f.txt", 0o755)},
			op: copyOp{Sources: []string{"f.txt"}, Dest: "/d/"}, err: "cannot replace to directory"},
		{name: "hardlinks stay hardlinks", ctx: []ctEntry{cf("h/one", "x", 0o644), ch("h/two", "h/one")},
			op:   copyOp{Sources: []string{"h"}, Dest: "/hl"},
			want: map[string]string{"hl": "d 0755 0:0", "hl/one": "f 0644 0:0 x", "hl/two": "f 0644 0:0 x =hl/one"}},
		{name: "chmod octal applies to files, dirs and created parents", op: copyOp{Sources: []string{"dir"}, Dest: "/o/p", Chmod: "751"},
			want: map[string]string{"o": "d 0751 0:0", "o/p": "d 0751 0:0", "o/p/a": "f 0751 0:0 A", "o/p/sub": "d 0751 0:0",
				"o/p/sub/b": "f 0751 0:0 B", "o/p/link": "l -> a"}},
		{name: "chmod 777 parent (BuildKit testCopyChmod)", op: copyOp{Sources: []string{"f.txt"}, Dest: "/parent/foo", Chmod: "777"},
			want: map[string]string{"parent": "d 0777 0:0", "parent/foo": "f 0777 0:0 hello"}},
		{name: "chmod 0", op: copyOp{Sources: []string{"f.txt"}, Dest: "/foobis", Chmod: "0"},
			want: map[string]string{"foobis": "f 0000 0:0 hello"}},
		{name: "chmod setuid", op: copyOp{Sources: []string{"run.sh"}, Dest: "/s", Chmod: "4755"},
			want: map[string]string{"s": "f 4755 0:0 #!/bin/sh"}},
		{name: "chmod symbolic u=rwX,go=rX", op: copyOp{Sources: []string{"dir", "run.sh", "f.txt"}, Dest: "/s/", Chmod: "u=rwX,go=rX"},
			want: map[string]string{"s": "d 0755 0:0", "s/a": "f 0644 0:0 A", "s/sub": "d 0755 0:0", "s/sub/b": "f 0644 0:0 B",
				"s/link": "l -> a", "s/run.sh": "f 0755 0:0 #!/bin/sh", "s/f.txt": "f 0644 0:0 hello"}},
		{name: "chmod symbolic +x", op: copyOp{Sources: []string{"f.txt"}, Dest: "/x", Chmod: "+x"},
			want: map[string]string{"x": "f 0755 0:0 hello"}},
		{name: "chmod symbolic g=u,o-r", op: copyOp{Sources: []string{"f.txt"}, Dest: "/x", Chmod: "g=u,o-r"},
			want: map[string]string{"x": "f 0660 0:0 hello"}},
		{name: "chmod symbolic does not change created parents", op: copyOp{Sources: []string{"f.txt"}, Dest: "/p/x", Chmod: "a=r"},
			want: map[string]string{"p": "d 0755 0:0", "p/x": "f 0444 0:0 hello"}},
		{name: "chmod invalid", op: copyOp{Sources: []string{"f.txt"}, Dest: "/x", Chmod: "64a"},
			err: "invalid chmod parameter: '64a'. it should be octal string and between 0 and 07777"},
		{name: "chmod too large", op: copyOp{Sources: []string{"f.txt"}, Dest: "/x", Chmod: "10000"},
			err: "invalid chmod parameter: '10000'. it should be octal string and between 0 and 07777"},
		{name: "chmod bad symbolic", op: copyOp{Sources: []string{"f.txt"}, Dest: "/x", Chmod: "u+q"}, err: "invalid chmod parameter"},
		{name: "heredoc into a directory", op: copyOp{Heredocs: []heredocSource{{Name: "EOF", Data: []byte("hi\n")}}, Dest: "/h/"},
			want: map[string]string{"h": "d 0755 0:0", "h/EOF": "f 0644 0:0 hi\n"}},
		{name: "heredoc to a file", op: copyOp{Heredocs: []heredocSource{{Name: "EOF", Data: []byte("x")}}, Dest: "/etc/conf"},
			want: map[string]string{"etc": "d 0755 0:0", "etc/conf": "f 0644 0:0 x"}},
		{name: "heredoc with chmod", op: copyOp{Heredocs: []heredocSource{{Name: "run", Data: []byte("x")}}, Dest: "/r", Chmod: "755"},
			want: map[string]string{"r": "f 0755 0:0 x"}},
		{name: "two heredocs make a directory",
			op:   copyOp{Heredocs: []heredocSource{{Name: "one", Data: []byte("1")}, {Name: "two", Data: []byte("2")}}, Dest: "/hd"},
			want: map[string]string{"hd": "d 0755 0:0", "hd/one": "f 0644 0:0 1", "hd/two": "f 0644 0:0 2"}},
		{name: "file and heredoc", op: copyOp{Sources: []string{"f.txt"}, Heredocs: []heredocSource{{Name: "EOF", Data: []byte("e")}}, Dest: "/fh"},
			want: map[string]string{"fh": "d 0755 0:0", "fh/f.txt": "f 0644 0:0 hello", "fh/EOF": "f 0644 0:0 e"}},
		{name: "COPY of a URL is refused", op: copyOp{Sources: []string{"http://127.0.0.1:1/x"}, Dest: "/"}, err: "source can't be a URL for COPY"},
		{name: "COPY of a git URL is refused", op: copyOp{Sources: []string{"https://127.0.0.1/r.git"}, Dest: "/"}, err: "source can't be a git ref for COPY"},
	}
	runCopyCases(t, cases)
}

func TestCopyParents(t *testing.T) {
	ctx := []ctEntry{
		cf("foo1/foo2/bar", "testing", 0o644), cf("foo1/foo2/baz", "testing2", 0o600), cd("foo1", 0o750),
		cf("x/y/a.txt", "a", 0o644), cf("x/y/b.txt", "b", 0o644), cf("x/y/c.md", "c", 0o644), cd("x/y", 0o711),
		cf("src/a.txt", "a", 0o644), cf("src/x/b.txt", "b", 0o644), cf("src/x/y/c.txt", "c", 0o644), cf("src/x/y/d.md", "d", 0o644),
		cf("other/z.txt", "z", 0o644),
	}
	cases := []copyCase{
		{name: "file keeps its parents (BuildKit testCopyParents)", ctx: ctx,
			op:      copyOp{Parents: true, Sources: []string{"foo1/foo2/bar"}, Dest: "/"},
			want:    map[string]string{"foo1": "d 0750 0:0", "foo1/foo2": "d 0755 0:0", "foo1/foo2/bar": "f 0644 0:0 testing"},
			changed: []string{"foo1", "foo1/foo2", "foo1/foo2/bar"}},
		{name: "wildcard keeps parents under the workdir", ctx: ctx,
			op: copyOp{Parents: true, Sources: []string{"foo1/foo2/ba*"}, Dest: ".", Workdir: "/test"},
			want: map[string]string{"test": "d 0755 0:0", "test/foo1": "d 0750 0:0", "test/foo1/foo2": "d 0755 0:0",
				"test/foo1/foo2/bar": "f 0644 0:0 testing", "test/foo1/foo2/baz": "f 0600 0:0 testing2"}},
		{name: "./ pivot limits the kept parents", ctx: ctx,
			op: copyOp{Parents: true, Sources: []string{"./x/./y/*.txt"}, Dest: "/parents/"},
			want: map[string]string{"parents": "d 0755 0:0", "parents/y": "d 0711 0:0",
				"parents/y/a.txt": "f 0644 0:0 a", "parents/y/b.txt": "f 0644 0:0 b"}},
		{name: "** matches any depth", ctx: ctx,
			op: copyOp{Parents: true, Sources: []string{"./src/**/*.txt"}, Dest: "/p/"},
			want: map[string]string{"p": "d 0755 0:0", "p/src": "d 0755 0:0", "p/src/a.txt": "f 0644 0:0 a",
				"p/src/x": "d 0755 0:0", "p/src/x/b.txt": "f 0644 0:0 b", "p/src/x/y": "d 0755 0:0", "p/src/x/y/c.txt": "f 0644 0:0 c"}},
		{name: "directory source keeps its path", ctx: ctx,
			op: copyOp{Parents: true, Sources: []string{"x/y", "other"}, Dest: "/d/"},
			want: map[string]string{"d": "d 0755 0:0", "d/x": "d 0755 0:0", "d/x/y": "d 0711 0:0",
				"d/x/y/a.txt": "f 0644 0:0 a", "d/x/y/b.txt": "f 0644 0:0 b", "d/x/y/c.md": "f 0644 0:0 c",
				"d/other": "d 0755 0:0", "d/other/z.txt": "f 0644 0:0 z"}},
		{name: "missing path is an error", ctx: ctx,
			op: copyOp{Parents: true, Sources: []string{"x/nonexistent-file"}, Dest: "/d/"}, err: `"/x/nonexistent-file": not found`},
		{name: "missing wildcard is not", ctx: ctx,
			op: copyOp{Parents: true, Sources: []string{"x/nomatch*/c"}, Dest: "/d/"}, want: map[string]string{"d": "d 0755 0:0"}},
	}
	runCopyCases(t, cases)
}

func TestCopyExclude(t *testing.T) {
	// The context of BuildKit's testExcludedFilesOnCopy.
	ctx := []ctEntry{
		cf("dir1/file-101.png", "2", 0o600), cf("dir1/file-102.txt", "3", 0o600), cf("dir1/file-103.jpeg", "4", 0o600),
		cf("dir2/file-201.pdf", "6", 0o600), cf("dir2/file-202.jpeg", "7", 0o600), cf("dir2/file-203.png", "8", 0o600),
		cf("dir3/file-301.mp3", "9", 0o600), cf("dir3/file-302.mpeg", "10", 0o600),
		cf("dir4/file-401.txt", "11", 0o600), cl("dir4/file-402.txt", "file-401.txt"), cl("dir4/file-403.txt", "file-404.txt"),
	}
	d := func(extra map[string]string) map[string]string { return extra }
	cases := []copyCase{
		{name: "builder1: images excluded", ctx: ctx,
			op: copyOp{Sources: []string{"."}, Dest: "/1", Excludes: []string{"*/*.png", "*/*.jpeg"}},
			want: d(map[string]string{"1": "d 0755 0:0", "1/dir1": "d 0755 0:0", "1/dir1/file-102.txt": "f 0600 0:0 3",
				"1/dir2": "d 0755 0:0", "1/dir2/file-201.pdf": "f 0600 0:0 6",
				"1/dir3": "d 0755 0:0", "1/dir3/file-301.mp3": "f 0600 0:0 9", "1/dir3/file-302.mpeg": "f 0600 0:0 10",
				"1/dir4": "d 0755 0:0", "1/dir4/file-401.txt": "f 0600 0:0 11",
				"1/dir4/file-402.txt": "l -> file-401.txt", "1/dir4/file-403.txt": "l -> file-404.txt"})},
		{name: "builder3: ADD dir", ctx: ctx,
			op:   copyOp{Add: true, Sources: []string{"dir3/"}, Dest: "/3/", Excludes: []string{"*.mp3"}},
			want: map[string]string{"3": "d 0755 0:0", "3/file-302.mpeg": "f 0600 0:0 10"}},
		{name: "builder4: wildcard sources", ctx: ctx,
			op:   copyOp{Sources: []string{"dir*"}, Dest: "/4/", Excludes: []string{"*.mp3", "*.jpeg", "*.png", "*.pdf", "*.txt"}},
			want: map[string]string{"4": "d 0755 0:0", "4/file-302.mpeg": "f 0600 0:0 10"}},
		{name: "builder6: everything excluded leaves an empty dir", ctx: ctx,
			op: copyOp{Add: true, Sources: []string{"dir*"}, Dest: "/6", Excludes: []string{"*"}}, want: map[string]string{"6": "d 0755 0:0"}},
		{name: "exclude with an exception", ctx: ctx,
			op:   copyOp{Sources: []string{"dir1"}, Dest: "/e/", Excludes: []string{"*", "!*.txt"}},
			want: map[string]string{"e": "d 0755 0:0", "e/file-102.txt": "f 0600 0:0 3"}},
	}
	runCopyCases(t, cases)
}

func TestCopyDockerignore(t *testing.T) {
	ctx := []ctEntry{
		cf("a.log", "a", 0o644), cf("keep.log", "k", 0o644), cf("sub/b.log", "b", 0o644), cf("secret", "s", 0o600),
		cf("docs/README.md", "r", 0o644), cf("docs/other.md", "o", 0o644), cf("f.txt", "hello", 0o644),
		cl("lnk", "secret"), cl("ldocs", "docs"), cd("cache", 0o755), cf("cache/x", "x", 0o644),
	}
	ignore := "**/*.log\n!keep.log\nsecret\ndocs\n!docs/README.md\n/cache\n"
	cases := []copyCase{
		{name: "ignored files are absent from a dir copy", ctx: ctx, ignore: ignore,
			op: copyOp{Sources: []string{"."}, Dest: "/o"},
			want: map[string]string{"o": "d 0755 0:0", "o/.dockerignore": "f 0644 0:0 " + ignore, "o/keep.log": "f 0644 0:0 k",
				"o/sub": "d 0755 0:0", "o/docs": "d 0755 0:0", "o/docs/README.md": "f 0644 0:0 r", "o/f.txt": "f 0644 0:0 hello",
				"o/lnk": "l -> secret", "o/ldocs": "l -> docs"}},
		{name: "ignored file is not found", ctx: ctx, ignore: ignore,
			op: copyOp{Sources: []string{"secret"}, Dest: "/x"}, err: `"/secret": not found`},
		{name: "symlink to an ignored file is not found", ctx: ctx, ignore: ignore,
			op: copyOp{Sources: []string{"lnk"}, Dest: "/x"}, err: `"/lnk": not found`},
		{name: "** pattern hides nested files", ctx: ctx, ignore: ignore,
			op: copyOp{Sources: []string{"sub/b.log"}, Dest: "/x"}, err: `"/sub/b.log": not found`},
		{name: "ignored dir is not found", ctx: ctx, ignore: ignore,
			op: copyOp{Sources: []string{"cache/x"}, Dest: "/x"}, err: `"/cache/x": not found`},
		{name: "wildcards skip ignored files", ctx: ctx, ignore: ignore,
			op:   copyOp{Sources: []string{"*.log"}, Dest: "/l/"},
			want: map[string]string{"l": "d 0755 0:0", "l/keep.log": "f 0644 0:0 k"}},
		{name: "ignored dir with an exception keeps only the exception", ctx: ctx, ignore: ignore,
			op:   copyOp{Sources: []string{"docs"}, Dest: "/d"},
			want: map[string]string{"d": "d 0755 0:0", "d/README.md": "f 0644 0:0 r"}},
		{name: "exception reached through a symlinked dir", ctx: ctx, ignore: ignore,
			op: copyOp{Sources: []string{"ldocs/README.md"}, Dest: "/r"}, want: map[string]string{"r": "f 0644 0:0 r"}},
		{name: "ignored file through a symlinked dir", ctx: ctx, ignore: ignore,
			op: copyOp{Sources: []string{"ldocs/other.md"}, Dest: "/r"}, err: `"/ldocs/other.md": not found`},
	}
	runCopyCases(t, cases)
}

// runCopyCases runs table cases: the whole DestRoot is compared with want,
// and the returned changed list is checked (exactly when the case gives
// one; otherwise it must hold every new or modified entry and nothing that
// does not exist).
func runCopyCases(t *testing.T, cases []copyCase) {
	t.Helper()
	registrytest.RequireRoot(t) // files are chowned to 0:0
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			entries := tc.ctx
			if entries == nil {
				entries = ctxBasic
			}
			bc := ctLoadContext(t, tc.ignore, entries...)
			root := t.TempDir()
			ctTree(t, root, tc.base...)
			before := ctSnapshot(t, root)
			op := tc.op
			op.Context, op.DestRoot, op.UserRoot = bc, root, root
			changed, err := copyFiles(context.Background(), op)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error = %v, want it to contain %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := ctSnapshot(t, root)
			if d := ctDiff(got, tc.want); d != "" {
				t.Errorf("destination differs:\n%s", d)
			}
			checkChanged(t, root, before, got, changed, tc.changed)
		})
	}
}

func checkChanged(t *testing.T, root string, before, after map[string]string, changed, exact []string) {
	t.Helper()
	if !slices.IsSorted(changed) {
		t.Errorf("changed list not sorted: %q", changed)
	}
	if exact != nil {
		if !slices.Equal(changed, exact) && !(len(changed) == 0 && len(exact) == 0) {
			t.Errorf("changed = %q, want %q", changed, exact)
		}
		return
	}
	for p, v := range after {
		if before[p] != v && !slices.Contains(changed, p) {
			t.Errorf("%s was written (%q) but is not in the changed list %q", p, v, changed)
		}
	}
	for _, p := range changed {
		if strings.HasPrefix(p, "/") || p == "" {
			t.Errorf("bad changed path %q", p)
		}
		if _, err := os.Lstat(filepath.Join(root, p)); err != nil {
			t.Errorf("changed path %s does not exist: %v", p, err)
		}
	}
}
