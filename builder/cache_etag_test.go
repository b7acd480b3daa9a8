package builder_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/imgbuild/imgbuild/builder"
)

// etagServer serves one file with an ETag, answering 304 to a matching
// If-None-Match. With lie set it answers 304 to any If-None-Match.
type etagServer struct {
	mu       sync.Mutex
	content  string
	lie      bool
	statuses []int
}

func (s *etagServer) etag() string { return fmt.Sprintf(`"%x"`, len(s.content)*31+int(s.content[0])) }

func (s *etagServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	w.Header().Set("ETag", s.etag())
	if inm := r.Header.Get("If-None-Match"); inm != "" && (inm == s.etag() || s.lie) {
		s.statuses = append(s.statuses, http.StatusNotModified)
		w.WriteHeader(http.StatusNotModified)
		return
	}
	s.statuses = append(s.statuses, http.StatusOK)
	fmt.Fprint(w, s.content)
}

func (s *etagServer) set(content string, lie bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.content, s.lie, s.statuses = content, lie, nil
}

func (s *etagServer) answers() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]int(nil), s.statuses...)
}

// TestCacheAddURLETag: as BuildKit's HTTP source, a rebuild asks with
// If-None-Match; a 304 keys the step with the recorded content digest, so
// the step hits without a download; a step that misses anyway (another
// destination) downloads once more and checks the content is the one the
// key covers; --no-cache asks unconditionally.
func TestCacheAddURLETag(t *testing.T) {
	es := &etagServer{}
	srv := httptest.NewServer(es)
	defer srv.Close()
	f := newCacheFixture(t, map[string]string{})
	const run = "RUN cat /f.txt > /copy"
	dockerfile := func(dest string) string {
		add := "ADD " + srv.URL + "/f.txt " + dest
		df := "FROM busybox\n" + add + "\n" + run + "\n"
		if err := os.WriteFile(filepath.Join(f.dir, "Dockerfile"), []byte(df), 0o644); err != nil {
			t.Fatal(err)
		}
		return add
	}
	ok, nm := http.StatusOK, http.StatusNotModified
	cases := []struct {
		name, content, dest string
		noCache             bool
		answers             []int
		hit                 bool
	}{
		{name: "first build", content: "v1", dest: "/f.txt", answers: []int{ok}},
		{name: "rebuild: 304, no download", content: "v1", dest: "/f.txt", answers: []int{nm}, hit: true},
		{name: "content changed", content: "v22", dest: "/f.txt", answers: []int{ok}},
		{name: "rebuild of the new content", content: "v22", dest: "/f.txt", answers: []int{nm}, hit: true},
		{name: "no-cache asks unconditionally", content: "v22", dest: "/f.txt", noCache: true, answers: []int{ok}},
		{name: "304 but the step misses: downloaded once more", content: "v22", dest: "/g/../f.txt", answers: []int{nm, ok}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			es.set(tc.content, false)
			add := dockerfile(tc.dest)
			res, runs, cached := f.build(func(o *builder.Options) { o.NoCache = tc.noCache })
			if got := es.answers(); fmt.Sprint(got) != fmt.Sprint(tc.answers) {
				t.Errorf("server answered %v, want %v", got, tc.answers)
			}
			if cached[add] != tc.hit || (runs == 0) != tc.hit {
				t.Errorf("ADD CACHED %v, %d RUNs; want CACHED %v", cached[add], runs, tc.hit)
			}
			fs := btFlatten(t, res.Image)
			if fs["copy"].Content != tc.content {
				t.Errorf("/copy = %q, want %q", fs["copy"].Content, tc.content)
			}
		})
	}
	t.Run("a server that says 304 and then serves other bytes fails the step", func(t *testing.T) {
		es.set("v333", true) // 304 to the recorded ETag of "v22", but "v333" on a plain GET
		dockerfile("/h/../f.txt")
		_, err := builder.Build(context.Background(), builder.Options{ContextDir: f.dir, Store: f.st, Executor: f.exec})
		if err == nil || !strings.Contains(err.Error(), "changed during the build") {
			t.Fatalf("error %v, want the content change named", err)
		}
	})
}
