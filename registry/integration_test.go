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

// TestRealRegistry pushes to and pulls from Debian's docker-registry.
func TestRealRegistry(t *testing.T) {
	reg := registrytest.Start(t)
	proxy := newCountingProxy(t, reg)
	h := proxy.host
	opts := Options{Insecure: []string{h}, Keychain: anonymous{}}
	img := registrytest.BusyboxImage(t)
	want, _ := img.Digest()
	blobs := blobCount(t, img)

	t.Run("push several tags and repositories", func(t *testing.T) {
		tags := []string{h + "/team/app:1.0", h + "/team/app:latest", h + "/mirror/app:1.0"}
		proxy.take()
		if err := Push(t.Context(), img, tags, opts); err != nil {
			t.Fatal(err)
		}
		reqs := proxy.take()
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
			got, err := Pull(t.Context(), tag, opts)
			if err != nil {
				t.Fatal(err)
			}
			if d, _ := got.Digest(); d != want {
				t.Errorf("%s is %s, want %s", tag, d, want)
			}
			if err := validate.Image(got); err != nil {
				t.Errorf("validate.Image %s: %v", tag, err)
			}
		}
	})

	t.Run("push again uploads nothing", func(t *testing.T) {
		proxy.take()
		if err := Push(t.Context(), img, []string{h + "/team/app:again"}, opts); err != nil {
			t.Fatal(err)
		}
		reqs := proxy.take()
		if n := matching(reqs, "POST", "/blobs/uploads/"); n != 0 {
			t.Errorf("%d uploads started, want 0", n)
		}
	})

	t.Run("pulled image extracts and runs", func(t *testing.T) {
		got, err := Pull(t.Context(), h+"/team/app:1.0", opts)
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
	})

	t.Run("pushed image from a pulled base mounts its layers", func(t *testing.T) {
		base, err := Pull(t.Context(), h+"/team/app:1.0", opts)
		if err != nil {
			t.Fatal(err)
		}
		proxy.take()
		if err := Push(t.Context(), base, []string{h + "/derived/app:1"}, opts); err != nil {
			t.Fatal(err)
		}
		reqs := proxy.take()
		if n := matching(reqs, "PUT", "/blobs/uploads/"); n != 0 {
			t.Errorf("%d blob uploads, want 0 (mounted from team/app)", n)
		}
	})

	t.Run("platforms", func(t *testing.T) {
		ref := registrytest.PushBusyboxIndex(t, h)
		for i, p := range registrytest.IndexPlatforms() {
			o := opts
			o.Platform = &p
			got, err := Pull(t.Context(), ref, o)
			if err != nil {
				t.Fatalf("%s: %v", p, err)
			}
			if i == 0 {
				if d, _ := got.Digest(); d != want {
					t.Errorf("%s: %s, want busybox %s", p, d, want)
				}
				continue
			}
			if m := markerOf(t, got); m != p.String()+"\n" {
				t.Errorf("%s: marker %q", p, m)
			}
		}
		o := opts
		o.Platform = &v1.Platform{OS: "linux", Architecture: "riscv64"}
		_, err := Pull(t.Context(), ref, o)
		if !errors.Is(err, ErrPlatformNotFound) || !strings.Contains(err.Error(), "available: linux/") {
			t.Errorf("riscv64: %v", err)
		}
	})

	t.Run("errors", func(t *testing.T) {
		tests := []struct {
			ref, want string
			kind      error
		}{
			{h + "/team/app:nope", "pulling " + h + `/team/app:nope: manifest unknown: tag "nope" not found in ` + h + "/team/app", ErrNotFound},
			// docker-registry answers MANIFEST_UNKNOWN for a missing repository too.
			{h + "/nothing/here:1", "pulling " + h + `/nothing/here:1: manifest unknown: tag "1" not found in ` + h + "/nothing/here", ErrNotFound},
			{h + "/team/app@sha256:" + strings.Repeat("1", 64), "pulling " + h + "/team/app@sha256:" + strings.Repeat("1", 64) +
				": manifest unknown: digest sha256:" + strings.Repeat("1", 64) + " not found in " + h + "/team/app", ErrNotFound},
		}
		for _, tc := range tests {
			_, err := Pull(t.Context(), tc.ref, opts)
			if err == nil || err.Error() != tc.want || !errors.Is(err, tc.kind) {
				t.Errorf("error\n got: %v\nwant: %s", err, tc.want)
			}
		}
	})
}
