package registry

import (
	"context"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/imgbuild/imgbuild/registry/registrytest"
)

// pushFake pushes a small busybox image to the fake registry.
func pushFake(t *testing.T, f *fakeRegistry, repo string) (string, v1.Image) {
	t.Helper()
	img := registrytest.BusyboxImage(t)
	ref := f.host + "/" + repo
	if err := Push(t.Context(), img, []string{ref}, f.opts()); err != nil {
		t.Fatal(err)
	}
	return ref, img
}

// pullErrorCase is a Pull expected to fail with wantError.
type pullErrorCase struct {
	name      string
	ref       string
	opts      Options // zero: the fake registry's
	hook      func(http.ResponseWriter, *http.Request, http.Handler) bool
	kind      error
	wantError string
}

// pullErrorCases are failures against the fake registry at h, which holds
// ref (HOST/test/busybox:1); closed is an address nothing listens on.
func pullErrorCases(h, ref, closed string) []pullErrorCase {
	other := "sha256:" + strings.Repeat("0", 64)
	return []pullErrorCase{{
		name:      "unknown host",
		ref:       "nosuch.invalid/app:1",
		opts:      Options{Keychain: anonymous{}, Transport: dnsFailTransport()},
		kind:      ErrUnknownHost,
		wantError: `pulling nosuch.invalid/app:1: unknown host "nosuch.invalid"`,
	}, {
		name: "auth refused 401",
		ref:  ref,
		hook: func(w http.ResponseWriter, r *http.Request, _ http.Handler) bool {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			writeRegistryError(w, http.StatusUnauthorized, "UNAUTHORIZED", "authentication required")
			return true
		},
		kind:      ErrUnauthorized,
		wantError: "pulling " + ref + ": authentication refused by " + h + " (HTTP 401 UNAUTHORIZED: authentication required)",
	}, {
		name: "access denied 403",
		ref:  ref,
		hook: func(w http.ResponseWriter, r *http.Request, next http.Handler) bool {
			if r.URL.Path == "/v2/" {
				return false
			}
			writeRegistryError(w, http.StatusForbidden, "DENIED", "requested access to the resource is denied")
			return true
		},
		kind:      ErrUnauthorized,
		wantError: "pulling " + ref + ": authentication refused by " + h + " (HTTP 403 DENIED: requested access to the resource is denied)",
	}, {
		name:      "missing tag",
		ref:       h + "/test/busybox:nope",
		kind:      ErrNotFound,
		wantError: "pulling " + h + `/test/busybox:nope: manifest unknown: tag "nope" not found in ` + h + "/test/busybox",
	}, {
		name:      "missing digest",
		ref:       h + "/test/busybox@" + other,
		kind:      ErrNotFound,
		wantError: "pulling " + h + "/test/busybox@" + other + ": manifest unknown: digest " + other + " not found in " + h + "/test/busybox",
	}, {
		name:      "missing repository",
		ref:       h + "/nothing/here:1",
		kind:      ErrNotFound,
		wantError: "pulling " + h + "/nothing/here:1: repository unknown: " + h + "/nothing/here does not exist",
	}, {
		name: "plain 404",
		ref:  ref,
		hook: func(w http.ResponseWriter, r *http.Request, _ http.Handler) bool {
			if r.URL.Path == "/v2/" {
				return false
			}
			http.NotFound(w, r)
			return true
		},
		kind:      ErrNotFound,
		wantError: "pulling " + ref + `: not found (HTTP 404): tag "1" not found in ` + h + "/test/busybox",
	}, {
		name:      "connection refused",
		ref:       closed + "/app:1",
		opts:      Options{Insecure: []string{closed}, Keychain: anonymous{}},
		wantError: "pulling " + closed + "/app:1: connection refused by " + closed,
	}, {
		name:      "invalid reference",
		ref:       "UPPER/Case:1",
		wantError: "pulling UPPER/Case:1: invalid reference: repository can only contain the characters `abcdefghijklmnopqrstuvwxyz0123456789_-./`: UPPER/Case",
	}}
}

func TestPullErrors(t *testing.T) {
	f := newFakeRegistry(t)
	ref, img := pushFake(t, f, "test/busybox:1")
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range pullErrorCases(f.host, ref, closedAddr(t)) {
		t.Run(tc.name, func(t *testing.T) {
			f.setHook(tc.hook)
			defer f.setHook(nil)
			opts := tc.opts
			if opts.Keychain == nil {
				opts = f.opts()
			}
			_, err := Pull(t.Context(), tc.ref, opts)
			if err == nil {
				t.Fatal("Pull succeeded")
			}
			if err.Error() != tc.wantError {
				t.Errorf("error\n got: %s\nwant: %s", err, tc.wantError)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
			if tc.kind != nil && !errors.Is(err, tc.kind) {
				t.Errorf("errors.Is(err, %v) = false", tc.kind)
			}
		})
	}
	// The image itself pulls fine by tag and by digest.
	for _, r := range []string{ref, f.host + "/test/busybox@" + d.String()} {
		got, err := Pull(t.Context(), r, f.opts())
		if err != nil {
			t.Fatal(err)
		}
		if gd, _ := got.Digest(); gd != d {
			t.Errorf("%s: digest %s, want %s", r, gd, d)
		}
	}
}

// closedAddr is a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func TestPullRetries(t *testing.T) {
	tests := []struct {
		name   string
		fails  int
		status int
		method string
		path   string
		want   string // error; "" for success after retries
		// status 0 drops the connection instead of answering
	}{
		{"429 on manifest", 1, http.StatusTooManyRequests, http.MethodGet, `/manifests/`, ""},
		{"500 twice on manifest", 2, http.StatusInternalServerError, http.MethodGet, `/manifests/`, ""},
		{"503 on ping", 1, http.StatusServiceUnavailable, http.MethodGet, `^/v2/$`, ""},
		{"502 on config blob", 1, http.StatusBadGateway, http.MethodGet, `/blobs/`, ""},
		{"connection dropped twice on manifest", 2, 0, http.MethodGet, `/manifests/`, ""},
		{"connection dropped on config blob", 1, 0, http.MethodGet, `/blobs/`, ""},
		{"500 forever gives up", 1000, http.StatusInternalServerError, http.MethodGet, `/manifests/`,
			": registry answered HTTP 500 UNAVAILABLE: injected failure"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFakeRegistry(t)
			ref, img := pushFake(t, f, "test/retry:1")
			if tc.status == 0 {
				f.setHook(dropN(tc.fails, tc.method, tc.path))
			} else {
				f.setHook(failN(tc.fails, tc.status, tc.method, tc.path))
			}
			start := time.Now()
			got, err := Pull(t.Context(), ref, f.opts())
			n := f.count(t, tc.method, tc.path)
			if tc.want != "" {
				if err == nil || err.Error() != "pulling "+ref+tc.want {
					t.Fatalf("error %v, want %q", err, "pulling "+ref+tc.want)
				}
				if n != 5 {
					t.Errorf("%d attempts, want 5", n)
				}
				if d := time.Since(start); d > 20*time.Second {
					t.Errorf("gave up after %v", d)
				}
				return
			}
			if err != nil {
				t.Fatalf("Pull after %d× %d: %v", tc.fails, tc.status, err)
			}
			want, _ := img.Digest()
			if d, _ := got.Digest(); d != want {
				t.Errorf("digest %s, want %s", d, want)
			}
			if n < tc.fails+1 {
				t.Errorf("%d requests matching %s, want the %d failed ones and a retry", n, tc.path, tc.fails)
			}
		})
	}
}

// corruptBlob serves the blob with digest d with one byte changed.
func corruptBlob(d v1.Hash) func(http.ResponseWriter, *http.Request, http.Handler) bool {
	return func(w http.ResponseWriter, r *http.Request, next http.Handler) bool {
		if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, "/blobs/"+d.String()) {
			return false
		}
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r)
		body := rec.Body.Bytes()
		if len(body) > 0 {
			body[len(body)/2] ^= 0xff
		}
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		w.Write(body)
		return true
	}
}

func TestPullCorruptBlob(t *testing.T) {
	f := newFakeRegistry(t)
	ref, img := pushFake(t, f, "test/corrupt:1")
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	ld, _ := ls[0].Digest()
	cfgDigest, _ := img.ConfigName()

	t.Run("config", func(t *testing.T) {
		f.setHook(corruptBlob(cfgDigest))
		defer f.setHook(nil)
		_, err := Pull(t.Context(), ref, f.opts())
		if err == nil || !strings.Contains(err.Error(), "pulling "+ref+": ") ||
			!strings.Contains(err.Error(), "error verifying sha256 checksum") {
			t.Fatalf("Pull with a corrupt config: %v", err)
		}
	})

	readers := []struct {
		name string
		open func(v1.Layer) (io.ReadCloser, error)
	}{
		{"compressed", v1.Layer.Compressed},
		{"uncompressed", v1.Layer.Uncompressed},
	}
	for _, rd := range readers {
		t.Run("layer "+rd.name, func(t *testing.T) {
			f.setHook(corruptBlob(ld))
			defer f.setHook(nil)
			got, err := Pull(t.Context(), ref, f.opts())
			if err != nil {
				t.Fatalf("Pull (manifest and config are intact): %v", err)
			}
			gls, err := got.Layers()
			if err != nil {
				t.Fatal(err)
			}
			rc, err := rd.open(gls[0])
			if err == nil {
				_, err = io.Copy(io.Discard, rc)
				rc.Close()
			}
			if err == nil {
				t.Fatal("reading a corrupt layer succeeded")
			}
			prefix := "pulling " + ref + ": layer " + ld.String() + ": "
			if !strings.HasPrefix(err.Error(), prefix) {
				t.Errorf("error %q lacks prefix %q", err, prefix)
			}
			if rd.name == "compressed" && !strings.Contains(err.Error(), "error verifying sha256 checksum") {
				t.Errorf("error %q does not report the digest mismatch", err)
			}
		})
	}

	t.Run("outputs", func(t *testing.T) {
		f.setHook(corruptBlob(ld))
		defer f.setHook(nil)
		got, err := Pull(t.Context(), ref, f.opts())
		if err != nil {
			t.Fatal(err)
		}
		if err := WriteFlatTar(t.Context(), io.Discard, got); err == nil {
			t.Error("WriteFlatTar of a corrupt layer succeeded")
		}
		if err := WriteDockerArchive(t.Context(), io.Discard, []Tagged{{Image: got, Tags: []string{"x:1"}}}); err == nil {
			t.Error("WriteDockerArchive of a corrupt layer succeeded")
		}
		if err := WriteOCILayout(t.Context(), t.TempDir(), []Tagged{{Image: got, Tags: []string{"x:1"}}}); err == nil {
			t.Error("WriteOCILayout of a corrupt layer succeeded")
		}
		if err := ExtractFlat(t.Context(), t.TempDir(), got); err == nil {
			t.Error("ExtractFlat of a corrupt layer succeeded")
		}
	})
}

func TestPullKeychain(t *testing.T) {
	f := newFakeRegistry(t)
	ref, _ := pushFake(t, f, "test/auth:1")
	// Basic auth for user "u" password "p" only.
	f.setHook(func(w http.ResponseWriter, r *http.Request, _ http.Handler) bool {
		if u, p, ok := r.BasicAuth(); ok && u == "u" && p == "p" {
			return false
		}
		w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
		writeRegistryError(w, http.StatusUnauthorized, "UNAUTHORIZED", "authentication required")
		return true
	})
	// The default keychain reads $DOCKER_CONFIG/config.json.
	dir := t.TempDir()
	cfg := `{"auths":{"` + f.host + `":{"auth":"dTpw"}}}` // base64("u:p")
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DOCKER_CONFIG", dir)
	if _, err := Pull(t.Context(), ref, Options{Insecure: []string{f.host}}); err != nil {
		t.Fatalf("Pull with docker config credentials: %v", err)
	}
	wrong := authn.NewKeychainFromHelper(staticHelper{user: "u", secret: "wrong"})
	_, err := Pull(t.Context(), ref, Options{Insecure: []string{f.host}, Keychain: wrong})
	if !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("Pull with a wrong password: %v", err)
	}
}

type staticHelper struct{ user, secret string }

func (h staticHelper) Get(string) (string, string, error) { return h.user, h.secret, nil }

func TestPullContextCanceled(t *testing.T) {
	f := newFakeRegistry(t)
	ref, _ := pushFake(t, f, "test/ctx:1")
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := Pull(ctx, ref, f.opts()); !errors.Is(err, context.Canceled) {
		t.Fatalf("Pull with a canceled context: %v", err)
	}
}

func TestPullInsecureTLS(t *testing.T) {
	// One self-signed TLS registry reached under two names: only the name
	// marked insecure may skip certificate verification.
	srv := httptest.NewUnstartedServer(ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0))))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshake is expected
	srv.StartTLS()
	t.Cleanup(srv.Close)
	addr := strings.TrimPrefix(srv.URL, "https://")
	base := &http.Transport{DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}
	img := registrytest.BusyboxImage(t)
	opts := Options{Insecure: []string{"trusted-by-user.test"}, Keychain: anonymous{}, Transport: base}
	if err := Push(t.Context(), img, []string{"trusted-by-user.test/app:1"}, opts); err != nil {
		t.Fatalf("Push to an insecure TLS registry: %v", err)
	}
	if _, err := Pull(t.Context(), "trusted-by-user.test/app:1", opts); err != nil {
		t.Fatalf("Pull from an insecure TLS registry: %v", err)
	}
	_, err := Pull(t.Context(), "other.test/app:1", opts)
	want := "pulling other.test/app:1: TLS certificate of other.test not trusted"
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("Pull from a host not marked insecure: %v, want prefix %q", err, want)
	}
}
