package builder

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imgbuild/imgbuild/registry/registrytest"
)

func TestAddURL(t *testing.T) {
	registrytest.RequireRoot(t)
	lastMod := time.Date(2022, 3, 4, 5, 6, 7, 0, time.UTC)
	archive := gzipOf(t, tarOf(t, []tar.Header{{Name: "foo", Typeflag: tar.TypeReg, Mode: 0o644}}, map[string]string{"foo": "content0"}))
	mux := http.NewServeMux()
	mux.HandleFunc("/foo", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "content1") })
	mux.HandleFunc("/dated/file.txt", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Last-Modified", lastMod.Format(http.TimeFormat))
		fmt.Fprint(w, "dated")
	})
	mux.HandleFunc("/t.tar.gz", func(w http.ResponseWriter, r *http.Request) { w.Write(archive) })
	mux.HandleFunc("/missing", func(w http.ResponseWriter, r *http.Request) { http.NotFound(w, r) })
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprint(w, "root")
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	sum := func(s string) string { return fmt.Sprintf("sha256:%x", sha256.Sum256([]byte(s))) }
	yes := true
	cases := []struct {
		name string
		op   copyOp
		want map[string]string
		err  string
	}{
		{name: "file name from the URL path", op: copyOp{Sources: []string{srv.URL + "/foo"}, Dest: "/dest/"},
			want: map[string]string{"dest": "d 0755 0:0", "dest/foo": "f 0600 0:0 content1"}},
		{name: "dest without slash is the file name", op: copyOp{Sources: []string{srv.URL + "/foo"}, Dest: "/bar"},
			want: map[string]string{"bar": "f 0600 0:0 content1"}},
		{name: "no path gives __unnamed__", op: copyOp{Sources: []string{srv.URL + "/"}, Dest: "/dest/"},
			want: map[string]string{"dest": "d 0755 0:0", "dest/__unnamed__": "f 0600 0:0 root"}},
		{name: "checksum ok", op: copyOp{Sources: []string{srv.URL + "/foo"}, Dest: "/f", Checksum: sum("content1")},
			want: map[string]string{"f": "f 0600 0:0 content1"}},
		{name: "checksum mismatch writes nothing", op: copyOp{Sources: []string{srv.URL + "/foo"}, Dest: "/f", Checksum: sum("other")},
			err: "digest mismatch"},
		{name: "checksum bad format", op: copyOp{Sources: []string{srv.URL + "/foo"}, Dest: "/f", Checksum: "md5:abc"},
			err: "unsupported algorithm"},
		{name: "checksum on a local source", op: copyOp{Sources: []string{"f.txt"}, Dest: "/f", Checksum: sum("hello")},
			err: "checksum requires HTTP(S) or Git sources"},
		{name: "chmod applies", op: copyOp{Sources: []string{srv.URL + "/foo"}, Dest: "/f", Chmod: "0413"},
			want: map[string]string{"f": "f 0413 0:0 content1"}},
		{name: "remote archive is not extracted", op: copyOp{Sources: []string{srv.URL + "/t.tar.gz"}, Dest: "/"},
			want: map[string]string{"t.tar.gz": "f 0600 0:0 " + string(archive)}},
		{name: "remote archive renamed", op: copyOp{Sources: []string{srv.URL + "/t.tar.gz"}, Dest: "/newname.tar.gz"},
			want: map[string]string{"newname.tar.gz": "f 0600 0:0 " + string(archive)}},
		{name: "--unpack=true extracts a remote archive", op: copyOp{Sources: []string{srv.URL + "/t.tar.gz"}, Dest: "/dest/", Unpack: &yes},
			want: map[string]string{"dest": "d 0755 0:0", "dest/foo": "f 0644 0:0 content0"}},
		{name: "URL and local file", op: copyOp{Sources: []string{srv.URL + "/foo", "f.txt"}, Dest: "/m"},
			want: map[string]string{"m": "d 0755 0:0", "m/foo": "f 0600 0:0 content1", "m/f.txt": "f 0644 0:0 hello"}},
		{name: "HTTP error", op: copyOp{Sources: []string{srv.URL + "/missing"}, Dest: "/x"}, err: "404"},
		{name: "git URL", op: copyOp{Sources: []string{srv.URL + "/repo.git"}, Dest: "/x"}, err: "ADD of git repositories is not supported yet"},
		{name: "git ssh address", op: copyOp{Sources: []string{"git@127.0.0.1:org/repo.git"}, Dest: "/x"}, err: "ADD of git repositories is not supported yet"},
		{name: "--keep-git-dir", op: copyOp{Sources: []string{srv.URL + "/foo"}, Dest: "/x", KeepGitDir: true}, err: "not supported yet"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			bc := ctLoadContext(t, "", cf("f.txt", "hello", 0o644))
			root := t.TempDir()
			op := tc.op
			op.Add, op.Context, op.DestRoot, op.UserRoot, op.HTTPClient = true, bc, root, root, srv.Client()
			changed, err := copyFiles(context.Background(), op)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error = %v, want %q", err, tc.err)
				}
				if got := ctSnapshot(t, root); len(got) != 0 {
					t.Errorf("failed ADD wrote %v", got)
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
			checkChanged(t, root, map[string]string{}, got, changed, nil)
		})
	}
	t.Run("Last-Modified sets the mtime", func(t *testing.T) {
		root := t.TempDir()
		if _, err := copyFiles(context.Background(), copyOp{Add: true, Sources: []string{srv.URL + "/dated/file.txt"}, Dest: "/",
			DestRoot: root, HTTPClient: srv.Client()}); err != nil {
			t.Fatal(err)
		}
		if got := ctMtimeOf(t, filepath.Join(root, "file.txt")); !got.Equal(lastMod) {
			t.Errorf("mtime = %v, want %v", got, lastMod)
		}
	})
	t.Run("no temporary files left", func(t *testing.T) {
		tmp := t.TempDir()
		t.Setenv("TMPDIR", tmp)
		root := t.TempDir()
		if _, err := copyFiles(context.Background(), copyOp{Add: true, Sources: []string{srv.URL + "/foo"},
			Heredocs: []heredocSource{{Name: "h", Data: []byte("x")}}, Dest: "/d/", DestRoot: root, HTTPClient: srv.Client()}); err != nil {
			t.Fatal(err)
		}
		if entries, _ := os.ReadDir(tmp); len(entries) != 0 {
			t.Errorf("temporary files left: %v", entries)
		}
	})
	t.Run("cancelled context", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := copyFiles(ctx, copyOp{Add: true, Sources: []string{srv.URL + "/foo"}, Dest: "/", DestRoot: t.TempDir(), HTTPClient: srv.Client()})
		if err == nil {
			t.Fatal("want an error")
		}
	})
}

func TestSourceKinds(t *testing.T) {
	cases := []struct {
		src       string
		http, git bool
	}{
		{src: "https://example.invalid/file.tar.gz", http: true},
		{src: "http://127.0.0.1/x", http: true},
		{src: "https://example.invalid/repo.git", git: true},
		{src: "https://example.invalid/repo.git#main:sub", git: true},
		{src: "git@example.invalid:org/repo.git", git: true},
		{src: "git://example.invalid/repo", git: true},
		{src: "ssh://git@example.invalid/repo", git: true},
		{src: "github.com/org/repo"},
		{src: "./local.git"},
		{src: "file.txt"},
	}
	for _, tc := range cases {
		if got := isHTTPSource(tc.src); got != tc.http {
			t.Errorf("isHTTPSource(%q) = %v", tc.src, got)
		}
		if got := isGitSource(tc.src); got != tc.git {
			t.Errorf("isGitSource(%q) = %v", tc.src, got)
		}
	}
}
