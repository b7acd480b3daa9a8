package registry

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"syscall"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// Causes of Pull and Push errors that callers may test with errors.Is.
var (
	// ErrUnknownHost: the registry's host name does not resolve.
	ErrUnknownHost = errors.New("unknown host")
	// ErrUnauthorized: the registry refused the credentials (HTTP 401/403).
	ErrUnauthorized = errors.New("authentication refused")
	// ErrNotFound: the repository, tag or digest does not exist.
	ErrNotFound = errors.New("not found")
	// ErrPlatformNotFound: a manifest list has no image for the platform.
	ErrPlatformNotFound = errors.New("platform not found")
)

// Error is the error of a Pull or Push: one line naming the operation, the
// reference and the cause.
type Error struct {
	Op    string // "pulling" or "pushing"
	Ref   string // the reference as the user gave it
	Cause string // one line
	Kind  error  // one of the Err* causes, or nil
	Err   error  // the underlying error
}

func (e *Error) Error() string { return e.Op + " " + e.Ref + ": " + e.Cause }

// Unwrap returns the classified cause and the underlying error.
func (e *Error) Unwrap() []error {
	if e.Kind == nil {
		return []error{e.Err}
	}
	return []error{e.Kind, e.Err}
}

// wrapErr classifies err from an operation on ref (whose parsed form, when
// known, is r) into an *Error.
func wrapErr(op, ref string, r name.Reference, err error) error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	kind, cause := classify(r, err)
	return &Error{Op: op, Ref: ref, Cause: cause, Kind: kind, Err: err}
}

// classify turns err into one line for a user, with its Err* kind.
func classify(r name.Reference, err error) (error, string) {
	host := ""
	if r != nil {
		host = r.Context().RegistryStr()
	}
	var terr *transport.Error
	if errors.As(err, &terr) {
		return classifyHTTP(r, terr)
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		if dnsErr.IsNotFound {
			return ErrUnknownHost, fmt.Sprintf("unknown host %q", dnsErr.Name)
		}
		return ErrUnknownHost, fmt.Sprintf("cannot resolve host %q: %s", dnsErr.Name, dnsErr.Err)
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return nil, fmt.Sprintf("connection refused by %s", host)
	}
	var uaErr x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var invErr x509.CertificateInvalidError
	var recErr tls.RecordHeaderError
	switch {
	case errors.As(err, &uaErr), errors.As(err, &hostErr), errors.As(err, &invErr):
		return nil, fmt.Sprintf("TLS certificate of %s not trusted (%s); mark the registry insecure to skip verification",
			host, oneLine(err.Error()))
	case errors.As(err, &recErr):
		return nil, fmt.Sprintf("%s does not speak TLS; mark the registry insecure to use plain HTTP", host)
	}
	return nil, oneLine(err.Error())
}

// classifyHTTP describes a registry's error answer.
func classifyHTTP(r name.Reference, terr *transport.Error) (error, string) {
	codes := map[transport.ErrorCode]string{}
	for _, d := range terr.Errors {
		codes[d.Code] = d.Message
	}
	status := fmt.Sprintf("HTTP %d", terr.StatusCode)
	detail := status + " " + http.StatusText(terr.StatusCode)
	if len(terr.Errors) > 0 {
		detail = fmt.Sprintf("%s %s", status, oneLine(terr.Errors[0].String()))
	}
	switch {
	case terr.StatusCode == http.StatusUnauthorized || terr.StatusCode == http.StatusForbidden,
		hasCode(codes, transport.UnauthorizedErrorCode, transport.DeniedErrorCode):
		return ErrUnauthorized, fmt.Sprintf("authentication refused by %s (%s)", registryOf(r), detail)
	case hasCode(codes, transport.ManifestUnknownErrorCode):
		return ErrNotFound, "manifest unknown: " + missingWhat(r)
	case hasCode(codes, transport.NameUnknownErrorCode):
		return ErrNotFound, "repository unknown: " + repoOf(r) + " does not exist"
	case hasCode(codes, transport.BlobUnknownErrorCode):
		return ErrNotFound, "blob unknown: " + detail
	case terr.StatusCode == http.StatusNotFound:
		return ErrNotFound, "not found (HTTP 404): " + missingWhat(r)
	}
	return nil, "registry answered " + detail
}

func hasCode(codes map[transport.ErrorCode]string, want ...transport.ErrorCode) bool {
	for _, c := range want {
		if _, ok := codes[c]; ok {
			return true
		}
	}
	return false
}

func missingWhat(r name.Reference) string {
	switch r := r.(type) {
	case name.Tag:
		return fmt.Sprintf("tag %q not found in %s", r.TagStr(), repoOf(r))
	case name.Digest:
		return fmt.Sprintf("digest %s not found in %s", r.DigestStr(), repoOf(r))
	}
	return "no such manifest"
}

func repoOf(r name.Reference) string {
	if r == nil {
		return "the repository"
	}
	return r.Context().Name()
}

func registryOf(r name.Reference) string {
	if r == nil {
		return "the registry"
	}
	return r.Context().RegistryStr()
}

// oneLine collapses a multi-line message.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
