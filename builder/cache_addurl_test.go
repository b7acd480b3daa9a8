package builder_test

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
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/imgbuild/imgbuild/builder"
)

// urlServer serves one file whose content and Last-Modified the test
// changes, counting the requests.
type urlServer struct {
	mu       sync.Mutex
	content  string
	modified time.Time // zero: no Last-Modified
	requests int
}

func (s *urlServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests++
	if !s.modified.IsZero() {
		w.Header().Set("Last-Modified", s.modified.UTC().Format(http.TimeFormat))
	}
	fmt.Fprint(w, s.content)
}

func (s *urlServer) set(content string, modified time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.content, s.modified = content, modified
}

func (s *urlServer) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests
}

// TestCacheAddURL: an ADD of a URL without --checksum is downloaded before
// the cache lookup (once: the copy uses that download) and keyed by its
// content and Last-Modified, as BuildKit's HTTP source; the same content
// hits (the RUN after it too), other content misses and reaches the image.
// The steps run one after another on the same store.
func TestCacheAddURL(t *testing.T) {
	us := &urlServer{content: "v1"}
	srv := httptest.NewServer(us)
	defer srv.Close()
	add := "ADD " + srv.URL + "/dir/f.txt /f.txt"
	const run = "RUN cat /f.txt > /copy"
	f := newCacheFixture(t, map[string]string{"Dockerfile": "FROM busybox\n" + add + "\n" + run + "\n"})
	lastMod := time.Date(2023, 1, 2, 3, 4, 5, 0, time.UTC)
	cases := []struct {
		name    string
		content string
		mod     time.Time
		noCache bool
		hit     bool
	}{
		{name: "first build", content: "v1"},
		{name: "same content", content: "v1", hit: true},
		{name: "content changed", content: "v2"},
		{name: "same again", content: "v2", hit: true},
		{name: "Last-Modified appears", content: "v2", mod: lastMod},
		{name: "same Last-Modified", content: "v2", mod: lastMod, hit: true},
		{name: "Last-Modified changed", content: "v2", mod: lastMod.Add(time.Hour)},
		{name: "no-cache downloads once", content: "v2", mod: lastMod.Add(time.Hour), noCache: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			us.set(tc.content, tc.mod)
			before := us.count()
			res, runs, cached := f.build(func(o *builder.Options) { o.NoCache = tc.noCache })
			if n := us.count() - before; n != 1 {
				t.Errorf("%d requests, want 1", n)
			}
			if cached[add] != tc.hit || cached[run] != tc.hit {
				t.Errorf("CACHED: ADD %v, RUN %v; want %v", cached[add], cached[run], tc.hit)
			}
			if want := map[bool]int64{true: 0, false: 1}[tc.hit]; runs != want {
				t.Errorf("ran %d RUNs, want %d", runs, want)
			}
			fs := btFlatten(t, res.Image)
			if fs["f.txt"].Content != tc.content || fs["copy"].Content != tc.content {
				t.Errorf("/f.txt %q, /copy %q, want %q", fs["f.txt"].Content, fs["copy"].Content, tc.content)
			}
			if fs["f.txt"].Mode != 0o600 {
				t.Errorf("/f.txt mode %o, want 0600", fs["f.txt"].Mode)
			}
			// mtime: Last-Modified, else the Unix epoch (BuildKit's).
			want := time.Unix(0, 0)
			if !tc.mod.IsZero() {
				want = tc.mod
			}
			if got := addedMtime(t, res.Image, "f.txt"); !got.Equal(want) {
				t.Errorf("/f.txt mtime %v, want %v", got, want)
			}
		})
	}
	t.Run("server down fails the build", func(t *testing.T) {
		srv.Close()
		_, err := builder.Build(context.Background(), builder.Options{ContextDir: f.dir, Store: f.st, Executor: f.exec})
		if err == nil || !strings.Contains(err.Error(), "Dockerfile:2: "+add) || !strings.Contains(err.Error(), "connection refused") {
			t.Fatalf("error %v, want the failed download of the ADD at line 2", err)
		}
	})
}

// TestCacheAddURLChecksum: with --checksum the key is the checksum, and a
// cached step downloads nothing; a miss downloads and checks it.
func TestCacheAddURLChecksum(t *testing.T) {
	us := &urlServer{content: "pinned"}
	srv := httptest.NewServer(us)
	defer srv.Close()
	sum := fmt.Sprintf("sha256:%x", sha256.Sum256([]byte("pinned")))
	add := "ADD --checksum=" + sum + " " + srv.URL + "/p.txt /p.txt"
	f := newCacheFixture(t, map[string]string{"Dockerfile": "FROM busybox\n" + add + "\n"})
	cases := []struct {
		name     string
		content  string
		requests int
		hit      bool
	}{
		{name: "first build downloads", content: "pinned", requests: 1},
		{name: "rebuild downloads nothing", content: "pinned", hit: true},
		{name: "served content changed: still the cached pinned file", content: "other", hit: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			us.set(tc.content, time.Time{})
			before := us.count()
			res, _, cached := f.build(nil)
			if n := us.count() - before; n != tc.requests {
				t.Errorf("%d requests, want %d", n, tc.requests)
			}
			if cached[add] != tc.hit {
				t.Errorf("ADD CACHED %v, want %v", cached[add], tc.hit)
			}
			if got := btFlatten(t, res.Image)["p.txt"].Content; got != "pinned" {
				t.Errorf("/p.txt = %q", got)
			}
		})
	}
	t.Run("a miss checks the checksum", func(t *testing.T) {
		us.set("other", time.Time{})
		_, err := builder.Build(context.Background(), builder.Options{ContextDir: f.dir, Store: f.st, Executor: f.exec, NoCache: true})
		if err == nil || !strings.Contains(err.Error(), "digest mismatch") {
			t.Fatalf("error %v, want a digest mismatch", err)
		}
	})
	// The local cache of an ADD --checksum must not depend on files of the
	// context: a new context file changes nothing.
	if err := os.WriteFile(filepath.Join(f.dir, "unrelated"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	us.set("pinned", time.Time{})
	if _, _, cached := f.build(nil); !cached[add] {
		t.Error("ADD --checksum not CACHED after an unrelated context change")
	}
}

// addedMtime is the mtime of name in the next-to-last layer of img (the
// ADD's, before the RUN's).
func addedMtime(t *testing.T, img v1.Image, name string) time.Time {
	t.Helper()
	ls, err := img.Layers()
	if err != nil || len(ls) < 2 {
		t.Fatalf("layers: %v (%d)", err, len(ls))
	}
	rc, err := ls[len(ls)-2].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("%s not in the ADD layer: %v", name, err)
		}
		if strings.TrimPrefix(h.Name, "./") == name {
			return h.ModTime
		}
	}
}
