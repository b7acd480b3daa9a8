package registry

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
)

// fakeRegistry is go-containerregistry's in-process registry on a loopback
// httptest server, behind a hook that can inject faults, and a log of the
// requests it saw.
type fakeRegistry struct {
	host string // "127.0.0.1:PORT"

	mu   sync.Mutex
	reqs []string // "METHOD /path?query"
	hook func(w http.ResponseWriter, r *http.Request, next http.Handler) bool
}

func newFakeRegistry(t *testing.T) *fakeRegistry {
	t.Helper()
	f := &fakeRegistry{}
	reg := ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.reqs = append(f.reqs, r.Method+" "+r.URL.RequestURI())
		hook := f.hook
		f.mu.Unlock()
		if hook != nil && hook(w, r, reg) {
			return
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	f.host = strings.TrimPrefix(srv.URL, "http://")
	return f
}

// setHook installs h (nil removes it) and clears the request log.
func (f *fakeRegistry) setHook(h func(w http.ResponseWriter, r *http.Request, next http.Handler) bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hook = h
	f.reqs = nil
}

// count returns how many logged requests match the pattern "METHOD path-regexp".
func (f *fakeRegistry) count(t *testing.T, method, pathRE string) int {
	t.Helper()
	re := regexp.MustCompile(pathRE)
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, r := range f.reqs {
		m, p, _ := strings.Cut(r, " ")
		if m == method && re.MatchString(p) {
			n++
		}
	}
	return n
}

// opts are Options for the fake registry: insecure, no credentials.
func (f *fakeRegistry) opts() Options {
	return Options{Insecure: []string{f.host}, Keychain: anonymous{}}
}

// anonymous is a keychain without credentials, so tests never read the
// machine's docker config.
type anonymous struct{}

func (anonymous) Resolve(authn.Resource) (authn.Authenticator, error) { return authn.Anonymous, nil }

// failN answers the first n requests matching method and pathRE with status.
func failN(n int, status int, method, pathRE string) func(http.ResponseWriter, *http.Request, http.Handler) bool {
	return firstN(n, method, pathRE, func(w http.ResponseWriter) {
		writeRegistryError(w, status, "UNAVAILABLE", "injected failure")
	})
}

// dropN closes the connection without an answer for the first n requests
// matching method and pathRE, as a flaky network does.
func dropN(n int, method, pathRE string) func(http.ResponseWriter, *http.Request, http.Handler) bool {
	return firstN(n, method, pathRE, func(w http.ResponseWriter) {
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			panic(err)
		}
		conn.Close()
	})
}

// firstN answers the first n requests matching method and pathRE with act;
// later ones, and others, go on to the registry.
func firstN(n int, method, pathRE string, act func(http.ResponseWriter)) func(http.ResponseWriter, *http.Request, http.Handler) bool {
	re := regexp.MustCompile(pathRE)
	var mu sync.Mutex
	return func(w http.ResponseWriter, r *http.Request, _ http.Handler) bool {
		if r.Method != method || !re.MatchString(r.URL.Path) {
			return false
		}
		mu.Lock()
		defer mu.Unlock()
		if n == 0 {
			return false
		}
		n--
		act(w)
		return true
	}
}

func writeRegistryError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	fmt.Fprintf(w, `{"errors":[{"code":%q,"message":%q}]}`, code, msg)
}

// dnsFailDialer is a transport whose every dial fails as resolving an
// unknown host does: tests stay on loopback while exercising that path.
func dnsFailTransport() http.RoundTripper {
	return &http.Transport{
		DialContext: func(_ context.Context, _, addr string) (net.Conn, error) {
			host, _, _ := net.SplitHostPort(addr)
			return nil, &net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{
				Err: "no such host", Name: host, IsNotFound: true,
			}}
		},
	}
}
