package builder

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgbuild/imgbuild/registry/registrytest"
)

func TestLoadContextDir(t *testing.T) {
	cases := []struct {
		name       string
		files      []ctEntry
		dockerfile string // -f, relative to the test's working directory (the context's parent)
		content    []byte
		wantName   string
		wantDF     string
		hidden     []string // context paths that must be ignored
		visible    []string
		err        string
	}{
		{name: "default Dockerfile", files: []ctEntry{cf("Dockerfile", "FROM a", 0o644)}, wantName: "Dockerfile", wantDF: "FROM a"},
		{name: "lowercase dockerfile fallback", files: []ctEntry{cf("dockerfile", "FROM b", 0o644)}, wantName: "dockerfile", wantDF: "FROM b"},
		{name: "missing Dockerfile", files: []ctEntry{cf("x", "", 0o644)}, err: "no such file or directory"},
		{name: "-f relative to the working directory", files: []ctEntry{cf("build/Dockerfile.prod", "FROM c", 0o644)},
			dockerfile: "ctx/build/Dockerfile.prod", wantName: "Dockerfile.prod", wantDF: "FROM c"},
		{name: "-f outside the context", files: []ctEntry{cf("f", "", 0o644)}, dockerfile: "outside.Dockerfile",
			wantName: "outside.Dockerfile", wantDF: "FROM outside"},
		{name: "Dockerfile from stdin", files: []ctEntry{cf("f", "", 0o644)}, content: []byte("FROM stdin"),
			wantName: "Dockerfile", wantDF: "FROM stdin"},
		{name: "symlinked Dockerfile (as in BuildKit's tests)", files: []ctEntry{cf("Dockerfile.web", "FROM w", 0o644), cl("Dockerfile", "Dockerfile.web")},
			wantName: "Dockerfile", wantDF: "FROM w"},
		{name: ".dockerignore", files: []ctEntry{cf("Dockerfile", "FROM a", 0o644), cf(".dockerignore", "# comment\n*.tmp\n/abs\n!keep.tmp\n", 0o644)},
			wantName: "Dockerfile", wantDF: "FROM a", hidden: []string{"x.tmp", "abs", "abs/deeper"}, visible: []string{"keep.tmp", "x.txt", "sub/x.tmp"}},
		{name: "<Dockerfile>.dockerignore wins", files: []ctEntry{
			cf("Dockerfile", "FROM a", 0o644), cf(".dockerignore", "a\n", 0o644), cf("Dockerfile.dockerignore", "b\n", 0o644)},
			wantName: "Dockerfile", wantDF: "FROM a", hidden: []string{"b"}, visible: []string{"a"}},
		{name: "-f file's own ignore file next to it", files: []ctEntry{
			cf("app/app.Dockerfile", "FROM a", 0o644), cf("app/app.Dockerfile.dockerignore", "secret\n", 0o644), cf(".dockerignore", "other\n", 0o644)},
			dockerfile: "ctx/app/app.Dockerfile", wantName: "app.Dockerfile", wantDF: "FROM a", hidden: []string{"secret"}, visible: []string{"other"}},
		{name: "stdin Dockerfile uses the context's .dockerignore", files: []ctEntry{cf(".dockerignore", "other\n", 0o644)},
			content: []byte("FROM s"), wantName: "Dockerfile", wantDF: "FROM s", hidden: []string{"other"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			work := t.TempDir()
			dir := filepath.Join(work, "ctx")
			ctTree(t, dir, tc.files...)
			if err := os.WriteFile(filepath.Join(work, "outside.Dockerfile"), []byte("FROM outside"), 0o644); err != nil {
				t.Fatal(err)
			}
			t.Chdir(work)
			bc, err := loadContext(context.Background(), contextOptions{Dir: "ctx", Dockerfile: tc.dockerfile, DockerfileContent: tc.content})
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if want, _ := filepath.EvalSymlinks(dir); bc.Dir != want {
				t.Errorf("Dir = %s, want %s", bc.Dir, want)
			}
			if bc.DockerfileName != tc.wantName || string(bc.Dockerfile) != tc.wantDF {
				t.Errorf("Dockerfile = %s %q, want %s %q", bc.DockerfileName, bc.Dockerfile, tc.wantName, tc.wantDF)
			}
			for _, p := range tc.hidden {
				if !bc.hidden(p, false) {
					t.Errorf("%s should be ignored", p)
				}
			}
			for _, p := range tc.visible {
				if bc.hidden(p, false) {
					t.Errorf("%s should not be ignored", p)
				}
			}
		})
	}
}

func TestLoadContextNotADir(t *testing.T) {
	f := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(f, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := loadContext(context.Background(), contextOptions{Dir: f}); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("error = %v", err)
	}
	if _, err := loadContext(context.Background(), contextOptions{Dir: filepath.Join(f, "nope")}); err == nil {
		t.Error("missing context dir: want an error")
	}
}

func TestLoadContextTar(t *testing.T) {
	registrytest.RequireRoot(t)
	tarball := tarOf(t, []tar.Header{
		{Name: "Dockerfile", Typeflag: tar.TypeReg, Mode: 0o644},
		{Name: "app/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "app/main.go", Typeflag: tar.TypeReg, Mode: 0o644},
		{Name: "app/prod.Dockerfile", Typeflag: tar.TypeReg, Mode: 0o644},
		{Name: "app/prod.Dockerfile.dockerignore", Typeflag: tar.TypeReg, Mode: 0o644},
		{Name: ".dockerignore", Typeflag: tar.TypeReg, Mode: 0o644},
		{Name: "secret", Typeflag: tar.TypeReg, Mode: 0o600},
		{Name: "../../outside", Typeflag: tar.TypeReg, Mode: 0o644},
	}, map[string]string{
		"Dockerfile": "FROM scratch\nCOPY . /\n", "app/main.go": "package main", "app/prod.Dockerfile": "FROM prod",
		"app/prod.Dockerfile.dockerignore": "app/main.go\n", ".dockerignore": "secret\n", "secret": "s", "../../outside": "o",
	})
	cases := []struct {
		name       string
		stream     []byte
		dockerfile string
		wantDF     string
		hidden     []string
		visible    []string
	}{
		{name: "plain", stream: tarball, wantDF: "FROM scratch\nCOPY . /\n", hidden: []string{"secret"}, visible: []string{"app/main.go"}},
		{name: "gzip", stream: gzipOf(t, tarball), wantDF: "FROM scratch\nCOPY . /\n", hidden: []string{"secret"}},
		{name: "xz", stream: xzOf(t, tarball), wantDF: "FROM scratch\nCOPY . /\n", hidden: []string{"secret"}},
		{name: "bzip2", stream: bzip2Of(t, tarball), wantDF: "FROM scratch\nCOPY . /\n", hidden: []string{"secret"}},
		{name: "-f names a file in the archive", stream: gzipOf(t, tarball), dockerfile: "app/prod.Dockerfile", wantDF: "FROM prod",
			hidden: []string{"app/main.go"}, visible: []string{"secret"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tmp := filepath.Join(t.TempDir(), "context")
			bc, err := loadContext(context.Background(), contextOptions{Tar: bytes.NewReader(tc.stream), Dockerfile: tc.dockerfile, TempDir: tmp})
			if err != nil {
				t.Fatal(err)
			}
			if string(bc.Dockerfile) != tc.wantDF {
				t.Errorf("Dockerfile = %q, want %q", bc.Dockerfile, tc.wantDF)
			}
			if data, err := os.ReadFile(filepath.Join(bc.Dir, "app", "main.go")); err != nil || string(data) != "package main" {
				t.Errorf("app/main.go = %q, %v", data, err)
			}
			if data, err := os.ReadFile(filepath.Join(bc.Dir, "outside")); err != nil || string(data) != "o" {
				t.Errorf("../../outside not confined to the context: %q, %v", data, err)
			}
			if _, err := os.Lstat(filepath.Join(filepath.Dir(filepath.Dir(tmp)), "outside")); err == nil {
				t.Error("../../outside escaped the context directory")
			}
			for _, p := range tc.hidden {
				if !bc.hidden(p, false) {
					t.Errorf("%s should be ignored", p)
				}
			}
			for _, p := range tc.visible {
				if bc.hidden(p, false) {
					t.Errorf("%s should not be ignored", p)
				}
			}
			// The loaded context works as a COPY source, ignore rules included.
			_, err = copyFiles(context.Background(), copyOp{Context: bc, Sources: []string{"app/main.go"}, Dest: "/m", DestRoot: t.TempDir()})
			if ignored := bc.hidden("app/main.go", false); (err != nil) != ignored {
				t.Errorf("COPY app/main.go: error %v, ignored %v", err, ignored)
			}
		})
	}
}

func TestContextHiddenDirs(t *testing.T) {
	bc := ctLoadContext(t, "vendor\n!vendor/keep/**\nbuild\nnode_modules\n",
		cf("vendor/a/x", "", 0o644), cf("vendor/keep/y", "", 0o644), cf("build/out", "", 0o644), cf("src/z", "", 0o644),
		cf("node_modules/m/index.js", "", 0o644))
	cases := []struct {
		path   string
		isDir  bool
		hidden bool
	}{
		{"vendor", true, false}, // an exception below keeps it
		{"vendor/a", true, true},
		{"vendor/a/x", false, true},
		{"vendor/keep", true, false},
		{"vendor/keep/y", false, false},
		{"build", true, true},
		{"build/out", false, true},
		{"src/z", false, false},
		{"", true, false},
		{"node_modules", true, true}, // no exception below: hidden without a walk
	}
	for _, tc := range cases {
		if got := bc.hidden(tc.path, tc.isDir); got != tc.hidden {
			t.Errorf("hidden(%q) = %v, want %v", tc.path, got, tc.hidden)
		}
	}
}

// TestContextConcurrentCopies copies from one context with .dockerignore
// rules from several goroutines, as concurrent stages do (run with -race).
func TestContextConcurrentCopies(t *testing.T) {
	registrytest.RequireRoot(t)
	bc := ctLoadContext(t, "**/*.log\n!keep.log\nvendor\n!vendor/keep\n",
		cf("a.log", "", 0o644), cf("keep.log", "k", 0o644), cf("vendor/x", "", 0o644), cf("vendor/keep", "", 0o644), cf("src/z", "z", 0o644))
	errs := make(chan error, 8)
	for range 8 {
		go func() {
			_, err := copyFiles(context.Background(), copyOp{Context: bc, Sources: []string{"."}, Dest: "/", DestRoot: t.TempDir()})
			errs <- err
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}
