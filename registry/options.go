package registry

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Options are shared by Pull and Push. The zero value uses the docker config
// keychain, TLS with verification everywhere and the host's platform.
type Options struct {
	// Insecure lists registries reached over plain HTTP, or over TLS without
	// certificate verification. An entry "host:port" matches that address
	// only; an entry "host" matches the host on any port. A leading
	// "http://" or "https://" and a trailing "/" are ignored. Every other
	// registry keeps full TLS verification.
	Insecure []string
	// Platform selects the image from a manifest list; nil means the host's
	// (HostPlatform). Pull ignores it for a reference that names a single
	// image.
	Platform *v1.Platform
	// Keychain resolves credentials; nil means authn.DefaultKeychain.
	Keychain authn.Keychain
	// Transport is the base HTTP transport; nil means remote.DefaultTransport.
	// For insecure registries an *http.Transport is cloned with TLS
	// verification turned off; any other RoundTripper is used as it is.
	Transport http.RoundTripper
}

// retryBackoff bounds retries of 429/5xx and transient network errors: five
// attempts, 0.5s, 1s, 2s and 4s apart (plus up to 10% jitter).
func retryBackoff() remote.Backoff {
	return remote.Backoff{
		Duration: 500 * time.Millisecond,
		Factor:   2,
		Jitter:   0.1,
		Steps:    5,
		Cap:      10 * time.Second,
	}
}

// retryStatusCodes are the HTTP answers retried with retryBackoff.
func retryStatusCodes() []int {
	return []int{
		http.StatusRequestTimeout,
		http.StatusTooManyRequests,
		http.StatusInternalServerError,
		http.StatusBadGateway,
		http.StatusServiceUnavailable,
		http.StatusGatewayTimeout,
	}
}

// remoteOptions turns o into go-containerregistry options bound to ctx.
func (o Options) remoteOptions(ctx context.Context) []remote.Option {
	kc := o.Keychain
	if kc == nil {
		kc = authn.DefaultKeychain
	}
	return []remote.Option{
		remote.WithContext(ctx),
		remote.WithAuthFromKeychain(kc),
		remote.WithTransport(o.transport()),
		remote.WithRetryBackoff(retryBackoff()),
		remote.WithRetryStatusCodes(retryStatusCodes()...),
		remote.WithUserAgent("imgbuild"),
	}
}

// transport returns the base transport, switched per request host so that
// only insecure registries skip TLS verification.
func (o Options) transport() http.RoundTripper {
	base := o.Transport
	if base == nil {
		base = remote.DefaultTransport
	}
	if len(o.Insecure) == 0 {
		return base
	}
	insecure := base
	if ht, ok := base.(*http.Transport); ok {
		c := ht.Clone()
		if c.TLSClientConfig == nil {
			c.TLSClientConfig = &tls.Config{}
		}
		c.TLSClientConfig.InsecureSkipVerify = true //nolint:gosec // only for hosts the user marked insecure
		insecure = c
	}
	return &hostSwitch{secure: base, insecure: insecure, hosts: o.Insecure}
}

// isInsecure reports whether the registry address host ("host" or
// "host:port") is one of the user's insecure registries.
func (o Options) isInsecure(host string) bool {
	return matchHost(o.Insecure, host)
}

func matchHost(entries []string, host string) bool {
	h, _, err := net.SplitHostPort(host)
	if err != nil {
		h = host
	}
	for _, e := range entries {
		e = strings.TrimSuffix(e, "/")
		e = strings.TrimPrefix(strings.TrimPrefix(e, "http://"), "https://")
		if e == "" {
			continue
		}
		if strings.EqualFold(e, host) {
			return true
		}
		if _, _, err := net.SplitHostPort(e); err != nil && strings.EqualFold(e, h) {
			return true // entry without a port matches every port
		}
	}
	return false
}

// hostSwitch sends requests for insecure hosts through a transport that
// does not verify TLS certificates and every other request through secure.
type hostSwitch struct {
	secure, insecure http.RoundTripper
	hosts            []string
}

func (s *hostSwitch) RoundTrip(req *http.Request) (*http.Response, error) {
	if matchHost(s.hosts, req.URL.Host) {
		return s.insecure.RoundTrip(req)
	}
	return s.secure.RoundTrip(req)
}

// parseRef parses a pull or push reference, marking it insecure (plain HTTP
// fallback) when its registry is in o.Insecure.
func (o Options) parseRef(ref string) (name.Reference, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		// ParseReference only says "could not parse reference"; the tag or
		// digest parser says what is wrong.
		if strings.Contains(ref, "@") {
			_, err = name.NewDigest(ref)
		} else {
			_, err = name.NewTag(ref)
		}
		if err == nil {
			err = fmt.Errorf("could not parse reference %q", ref)
		}
		return nil, err
	}
	if !o.isInsecure(r.Context().RegistryStr()) {
		return r, nil
	}
	return name.ParseReference(ref, name.Insecure)
}

// parseTag is parseRef for references that must be tags (push targets).
func (o Options) parseTag(ref string) (name.Tag, error) {
	t, err := name.NewTag(ref)
	if err != nil {
		return name.Tag{}, err
	}
	if !o.isInsecure(t.RegistryStr()) {
		return t, nil
	}
	return name.NewTag(ref, name.Insecure)
}
