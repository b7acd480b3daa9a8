package builder

import (
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"strings"
	"time"
)

// isGitSource reports whether an ADD source names a git repository, as
// BuildKit decides: ssh-style and git:// addresses, and http(s) URLs whose
// path ends in ".git".
func isGitSource(src string) bool {
	for _, p := range []string{"git@", "git://", "ssh://"} {
		if strings.HasPrefix(src, p) {
			return true
		}
	}
	if !strings.HasPrefix(src, "http://") && !strings.HasPrefix(src, "https://") {
		return false
	}
	u, err := url.Parse(src)
	return err == nil && strings.HasSuffix(u.Path, ".git")
}

// isHTTPSource reports whether an ADD source is a plain http(s) URL.
func isHTTPSource(src string) bool {
	return (strings.HasPrefix(src, "http://") || strings.HasPrefix(src, "https://")) && !isGitSource(src)
}

// urlFileName is BuildKit's name for a downloaded file: the base of the URL
// path, "__unnamed__" when there is none.
func urlFileName(u *url.URL) string {
	if base := path.Base(u.Path); base != "." && base != "/" && base != "" {
		return base
	}
	return "__unnamed__"
}

// defaultHTTPClient is used when copyOp.HTTPClient is nil: the default
// transport (proxy from the environment) with a bound on the wait for
// response headers; the download itself is bounded by the context.
func defaultHTTPClient() *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.ResponseHeaderTimeout = 2 * time.Minute
	return &http.Client{Transport: t}
}

// parseChecksum parses ADD --checksum: "sha256:<hex>" (BuildKit's
// documented form), or sha384/sha512.
func parseChecksum(s string) (algo string, want []byte, h hash.Hash, err error) {
	algo, hexs, ok := strings.Cut(s, ":")
	if !ok {
		return "", nil, nil, fmt.Errorf("invalid checksum %q: expected sha256:<hex>", s)
	}
	switch algo {
	case "sha256":
		h = sha256.New()
	case "sha384":
		h = sha512.New384()
	case "sha512":
		h = sha512.New()
	default:
		return "", nil, nil, fmt.Errorf("invalid checksum %q: unsupported algorithm %s", s, algo)
	}
	want, err = hex.DecodeString(hexs)
	if err != nil || len(want) != h.Size() || strings.ToLower(hexs) != hexs {
		return "", nil, nil, fmt.Errorf("invalid checksum %q: bad %s hex digest", s, algo)
	}
	return algo, want, h, nil
}

// fetch downloads an ADD URL to a temporary file and returns it as an item:
// mode 0600, mtime from Last-Modified (else now), owner 0:0; checked against
// --checksum before anything is written to the image. Remote archives are
// extracted only with --unpack=true.
func (c *copier) fetch(ctx context.Context, src string) (srcItem, error) {
	u, err := url.Parse(src)
	if err != nil {
		return srcItem{}, fmt.Errorf("ADD %s: %w", src, err)
	}
	var (
		algo string
		want []byte
		h    hash.Hash
	)
	if c.op.Checksum != "" {
		if algo, want, h, err = parseChecksum(c.op.Checksum); err != nil {
			return srcItem{}, err
		}
	}
	client := c.op.HTTPClient
	if client == nil {
		client = defaultHTTPClient()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, src, nil)
	if err != nil {
		return srcItem{}, fmt.Errorf("ADD %s: %w", src, err)
	}
	req.Header.Set("User-Agent", "imgbuild")
	resp, err := client.Do(req)
	if err != nil {
		return srcItem{}, fmt.Errorf("ADD %s: %w", src, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return srcItem{}, fmt.Errorf("ADD %s: invalid response status %s", src, resp.Status)
	}
	f, err := os.CreateTemp("", "imgbuild-add-")
	if err != nil {
		return srcItem{}, err
	}
	c.tmp = append(c.tmp, f.Name())
	w := io.Writer(f)
	if h != nil {
		w = io.MultiWriter(f, h)
	}
	_, err = io.Copy(w, resp.Body)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return srcItem{}, fmt.Errorf("ADD %s: downloading: %w", src, err)
	}
	if h != nil {
		if got := h.Sum(nil); !equalBytes(got, want) {
			return srcItem{}, fmt.Errorf("ADD %s: digest mismatch %s:%x: %s:%x", src, algo, want, algo, got)
		}
	}
	if err := os.Chmod(f.Name(), 0o600); err != nil {
		return srcItem{}, err
	}
	mtime := time.Now()
	if lm, err := http.ParseTime(resp.Header.Get("Last-Modified")); err == nil {
		mtime = lm
	}
	if err := os.Chtimes(f.Name(), mtime, mtime); err != nil {
		return srcItem{}, err
	}
	it := srcItem{name: urlFileName(u), path: f.Name(), shown: src}
	if c.op.Unpack != nil && *c.op.Unpack {
		it.unpack = isArchive(f.Name())
	}
	return it, nil
}

func equalBytes(a, b []byte) bool {
	return len(a) == len(b) && string(a) == string(b)
}
