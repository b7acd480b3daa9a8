package registry

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/imgbuild/imgbuild/registry/registrytest"
)

// countingProxy fronts a real registry and logs the requests it forwards.
type countingProxy struct {
	host string
	mu   sync.Mutex
	reqs []string
}

func newCountingProxy(t *testing.T, target string) *countingProxy {
	t.Helper()
	p := &countingProxy{}
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: target})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		p.reqs = append(p.reqs, r.Method+" "+r.URL.RequestURI())
		p.mu.Unlock()
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	p.host = strings.TrimPrefix(srv.URL, "http://")
	return p
}

// take returns the logged requests containing all of parts and clears the log.
func (p *countingProxy) take() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	r := p.reqs
	p.reqs = nil
	return r
}

func matching(reqs []string, method string, parts ...string) int {
	n := 0
next:
	for _, r := range reqs {
		if !strings.HasPrefix(r, method+" ") {
			continue
		}
		for _, p := range parts {
			if !strings.Contains(r, p) {
				continue next
			}
		}
		n++
	}
	return n
}

// realEnv is a Debian docker-registry behind a counting proxy.
type realEnv struct {
	proxy *countingProxy
	h     string // the proxy's address: what the tests push to
	opts  Options
	img   v1.Image
	want  v1.Hash
}

// TestRealRegistry pushes to and pulls from Debian's docker-registry.
func TestRealRegistry(t *testing.T) {
	reg := registrytest.Start(t)
	proxy := newCountingProxy(t, reg)
	e := &realEnv{
		proxy: proxy,
		h:     proxy.host,
		opts:  Options{Insecure: []string{proxy.host}, Keychain: anonymous{}},
		img:   registrytest.BusyboxImage(t),
	}
	e.want, _ = e.img.Digest()
	// In order: later subtests pull what earlier ones pushed.
	t.Run("push several tags and repositories", e.testPushTags)
	t.Run("push again uploads nothing", e.testPushAgain)
	t.Run("pulled image extracts and runs", e.testPullExtract)
	t.Run("pushed image from a pulled base mounts its layers", e.testPushFromPulled)
	t.Run("platforms", e.testPlatforms)
	t.Run("errors", e.testErrors)
}

func (e *realEnv) testPushTags(t *testing.T) {
	h, blobs := e.h, blobCount(t, e.img)
	tags := []string{h + "/team/app:1.0", h + "/team/app:latest", h + "/mirror/app:1.0"}
	e.proxy.take()
	if err := Push(t.Context(), e.img, tags, e.opts); err != nil {
		t.Fatal(err)
	}
	reqs := e.proxy.take()
	if n := matching(reqs, "PUT", "/v2/team/app/blobs/uploads/"); n != blobs {
		t.Errorf("%d blob uploads to team/app, want %d", n, blobs)
	}
	if n := matching(reqs, "PUT", "/v2/mirror/app/blobs/uploads/"); n != 0 {
		t.Errorf("%d blob uploads to mirror/app, want 0 (mounted)", n)
	}
	if n := matching(reqs, "POST", "/v2/mirror/app/blobs/uploads/", "mount=", "from=team%2Fapp"); n != blobs {
		t.Errorf("%d mounts into mirror/app, want %d\n%s", n, blobs, strings.Join(reqs, "\n"))
	}
	if n := matching(reqs, "PUT", "/manifests/"); n != len(tags) {
		t.Errorf("%d manifest puts, want %d", n, len(tags))
	}
	for _, tag := range tags {
		got, err := Pull(t.Context(), tag, e.opts)
		if err != nil {
			t.Fatal(err)
		}
		if d, _ := got.Digest(); d != e.want {
			t.Errorf("%s is %s, want %s", tag, d, e.want)
		}
		if err := validate.Image(got); err != nil {
			t.Errorf("validate.Image %s: %v", tag, err)
		}
	}
}

func (e *realEnv) testPushAgain(t *testing.T) {
	e.proxy.take()
	if err := Push(t.Context(), e.img, []string{e.h + "/team/app:again"}, e.opts); err != nil {
		t.Fatal(err)
	}
	if n := matching(e.proxy.take(), "POST", "/blobs/uploads/"); n != 0 {
		t.Errorf("%d uploads started, want 0", n)
	}
}

func (e *realEnv) testPullExtract(t *testing.T) {
	got, err := Pull(t.Context(), e.h+"/team/app:1.0", e.opts)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "rootfs")
	if err := ExtractFlat(t.Context(), dir, got); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(filepath.Join(dir, "bin/busybox"), "echo", "ok").CombinedOutput()
	if err != nil || string(out) != "ok\n" {
		t.Errorf("busybox from the pulled image: %v %q", err, out)
	}
}

func (e *realEnv) testPushFromPulled(t *testing.T) {
	base, err := Pull(t.Context(), e.h+"/team/app:1.0", e.opts)
	if err != nil {
		t.Fatal(err)
	}
	e.proxy.take()
	if err := Push(t.Context(), base, []string{e.h + "/derived/app:1"}, e.opts); err != nil {
		t.Fatal(err)
	}
	if n := matching(e.proxy.take(), "PUT", "/blobs/uploads/"); n != 0 {
		t.Errorf("%d blob uploads, want 0 (mounted from team/app)", n)
	}
}

func (e *realEnv) testPlatforms(t *testing.T) {
	ref := registrytest.PushBusyboxIndex(t, e.h)
	for i, p := range registrytest.IndexPlatforms() {
		o := e.opts
		o.Platform = &p
		got, err := Pull(t.Context(), ref, o)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if i == 0 {
			if d, _ := got.Digest(); d != e.want {
				t.Errorf("%s: %s, want busybox %s", p, d, e.want)
			}
			continue
		}
		if m := markerOf(t, got); m != p.String()+"\n" {
			t.Errorf("%s: marker %q", p, m)
		}
	}
	o := e.opts
	o.Platform = &v1.Platform{OS: "linux", Architecture: "riscv64"}
	_, err := Pull(t.Context(), ref, o)
	if !errors.Is(err, ErrPlatformNotFound) || !strings.Contains(err.Error(), "available: linux/") {
		t.Errorf("riscv64: %v", err)
	}
}

func (e *realEnv) testErrors(t *testing.T) {
	h, missing := e.h, "sha256:"+strings.Repeat("1", 64)
	tests := []struct {
		ref, want string
	}{
		{h + "/team/app:nope", "pulling " + h + `/team/app:nope: manifest unknown: tag "nope" not found in ` + h + "/team/app"},
		// docker-registry answers MANIFEST_UNKNOWN for a missing repository too.
		{h + "/nothing/here:1", "pulling " + h + `/nothing/here:1: manifest unknown: tag "1" not found in ` + h + "/nothing/here"},
		{h + "/team/app@" + missing, "pulling " + h + "/team/app@" + missing + ": manifest unknown: digest " + missing + " not found in " + h + "/team/app"},
	}
	for _, tc := range tests {
		_, err := Pull(t.Context(), tc.ref, e.opts)
		if err == nil || err.Error() != tc.want || !errors.Is(err, ErrNotFound) {
			t.Errorf("error\n got: %v\nwant: %s", err, tc.want)
		}
	}
}
