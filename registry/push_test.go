package registry

import (
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/imgbuild/imgbuild/registry/registrytest"
)

// blobCount is the number of blobs (layers and config) of img.
func blobCount(t *testing.T, img v1.Image) int {
	t.Helper()
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	return len(ls) + 1
}

// headDigest resolves ref on the registry.
func headDigest(t *testing.T, ref string, opts Options) v1.Hash {
	t.Helper()
	r, err := opts.parseRef(ref)
	if err != nil {
		t.Fatal(err)
	}
	d, err := remote.Head(r, opts.remoteOptions(t.Context())...)
	if err != nil {
		t.Fatalf("HEAD %s: %v", ref, err)
	}
	return d.Digest
}

func TestPushTagsOneUpload(t *testing.T) {
	f := newFakeRegistry(t)
	img := registrytest.BusyboxImage(t)
	want, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	tags := []string{f.host + "/team/app:1.0", f.host + "/team/app:latest", f.host + "/team/app:stable"}
	f.setHook(nil)
	if err := Push(t.Context(), img, tags, f.opts()); err != nil {
		t.Fatal(err)
	}
	blobs := blobCount(t, img)
	if n := f.count(t, http.MethodPost, `/blobs/uploads/$`); n != blobs {
		t.Errorf("%d uploads started, want %d (one per blob)", n, blobs)
	}
	if n := f.count(t, http.MethodPut, `/blobs/uploads/`); n != blobs {
		t.Errorf("%d uploads committed, want %d", n, blobs)
	}
	if n := f.count(t, http.MethodPut, `/manifests/`); n != len(tags) {
		t.Errorf("%d manifests put, want %d (one per tag)", n, len(tags))
	}
	// Manifests come after every blob.
	lastBlob, firstManifest := -1, -1
	f.mu.Lock()
	for i, r := range f.reqs {
		switch {
		case strings.HasPrefix(r, "PUT ") && strings.Contains(r, "/blobs/uploads/"):
			lastBlob = i
		case strings.HasPrefix(r, "PUT ") && strings.Contains(r, "/manifests/") && firstManifest < 0:
			firstManifest = i
		}
	}
	f.mu.Unlock()
	if firstManifest < lastBlob {
		t.Errorf("a manifest (request %d) was put before the last blob (request %d)", firstManifest, lastBlob)
	}
	for _, tag := range tags {
		if got := headDigest(t, tag, f.opts()); got != want {
			t.Errorf("%s resolves to %s, want %s", tag, got, want)
		}
	}

	// A second push skips the blobs the repository has.
	f.setHook(nil)
	if err := Push(t.Context(), img, []string{f.host + "/team/app:again"}, f.opts()); err != nil {
		t.Fatal(err)
	}
	if n := f.count(t, http.MethodPost, `/blobs/uploads/$`); n != 0 {
		t.Errorf("second push started %d uploads, want 0", n)
	}
	if n := f.count(t, http.MethodHead, `/blobs/sha256:`); n != blobs {
		t.Errorf("second push checked %d blobs, want %d", n, blobs)
	}
	if got := headDigest(t, f.host+"/team/app:again", f.opts()); got != want {
		t.Errorf("again resolves to %s, want %s", got, want)
	}
}

func TestPushErrors(t *testing.T) {
	f := newFakeRegistry(t)
	img := registrytest.BusyboxImage(t)
	h := f.host
	tests := []struct {
		name      string
		tags      []string
		hook      func(http.ResponseWriter, *http.Request, http.Handler) bool
		kind      error
		wantError string
	}{{
		name:      "no tags",
		wantError: "pushing: no tag given",
	}, {
		name:      "invalid tag",
		tags:      []string{h + "/ok:1", h + "/Bad:1"},
		wantError: "pushing " + h + "/Bad:1: invalid reference: repository can only contain the characters `abcdefghijklmnopqrstuvwxyz0123456789_-./`: Bad",
	}, {
		name: "auth refused",
		tags: []string{h + "/app:1"},
		hook: func(w http.ResponseWriter, r *http.Request, _ http.Handler) bool {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			writeRegistryError(w, http.StatusUnauthorized, "UNAUTHORIZED", "authentication required")
			return true
		},
		kind:      ErrUnauthorized,
		wantError: "pushing " + h + "/app:1: authentication refused by " + h + " (HTTP 401 Unauthorized)",
	}, {
		name: "denied on the second repository",
		tags: []string{h + "/app:1", h + "/locked/app:1"},
		hook: func(w http.ResponseWriter, r *http.Request, _ http.Handler) bool {
			if !strings.HasPrefix(r.URL.Path, "/v2/locked/") {
				return false
			}
			writeRegistryError(w, http.StatusForbidden, "DENIED", "requested access to the resource is denied")
			return true
		},
		kind:      ErrUnauthorized,
		wantError: "pushing " + h + "/locked/app:1: authentication refused by " + h + " (HTTP 403 Forbidden)",
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f.setHook(tc.hook)
			defer f.setHook(nil)
			err := Push(t.Context(), img, tc.tags, f.opts())
			if err == nil {
				t.Fatal("Push succeeded")
			}
			if err.Error() != tc.wantError {
				t.Errorf("error\n got: %s\nwant: %s", err, tc.wantError)
			}
			if tc.kind != nil && !errors.Is(err, tc.kind) {
				t.Errorf("errors.Is(err, %v) = false", tc.kind)
			}
		})
	}
}

func TestGroupByRepo(t *testing.T) {
	var tags []name.Tag
	for _, s := range []string{"a:1", "r.test/b:1", "a:2", "docker.io/library/a:3", "r.test/b:2", "r.test/c:1"} {
		tg, err := name.NewTag(s)
		if err != nil {
			t.Fatal(err)
		}
		tags = append(tags, tg)
	}
	var got []string
	for _, g := range groupByRepo(tags) {
		var names []string
		for _, tg := range g {
			names = append(names, tg.TagStr())
		}
		got = append(got, g[0].Context().Name()+"="+strings.Join(names, ","))
	}
	want := "index.docker.io/library/a=1,2,3 r.test/b=1,2 r.test/c=1"
	if s := strings.Join(got, " "); s != want {
		t.Errorf("groups %q, want %q", s, want)
	}
}
