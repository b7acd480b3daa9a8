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

// fetchedURL is a downloaded ADD URL: the item to copy and what the
// step's cache key needs of it (see prefetch).
type fetchedURL struct {
	item         srcItem // item.path is "" when the server answered 304 (see fetchCached)
	sha256       string  // hex digest of the content
	size         int64
	lastModified string // the file's mtime from Last-Modified (RFC 1123), "" without one
	etag         string // the response's ETag, "" without one
}

// prefetch downloads the http(s) sources of an ADD without --checksum into
// op.Fetched before the step's cache lookup: as BuildKit's HTTP source,
// their cache key is their content, known only once fetched. The copy then
// uses these files: each is downloaded once, not again for the copy. With --checksum
// nothing is fetched: the key is the checksum, and the copy downloads only
// on a miss. The caller calls cleanup once the step is over.
func prefetch(ctx context.Context, op *copyOp) (cleanup func(), err error) {
	c, err := newSourceCopier(op)
	if err != nil {
		return nil, err
	}
	if op.Checksum != "" {
		return c.cleanup, nil
	}
	if err := checkKeepGitDir(op); err != nil {
		return nil, err
	}
	for _, src := range op.Sources { // a refused source fails before any download
		if _, err := checkSource(op, src); err != nil {
			return nil, err
		}
	}
	for _, src := range op.Sources {
		if !isHTTPSource(src) || op.Fetched[src] != nil {
			continue
		}
		f, err := c.fetchCached(ctx, src)
		if err != nil {
			c.cleanup()
			return nil, err
		}
		if op.Fetched == nil {
			op.Fetched = map[string]*fetchedURL{}
		}
		op.Fetched[src] = f
	}
	return c.cleanup, nil
}

// remoteItem is the item of an ADD URL: the file prefetch downloaded, else
// a download now.
func (c *copier) remoteItem(ctx context.Context, src string) (srcItem, error) {
	if f := c.op.Fetched[src]; f != nil && f.item.path == "" {
		return c.refetch(ctx, src, f) // keyed from a 304, and the step missed
	} else if f != nil {
		return f.item, nil
	}
	f, err := c.fetch(ctx, src)
	if err != nil {
		return srcItem{}, err
	}
	return f.item, nil
}

// fetch downloads an ADD URL to a temporary file and returns it as an item:
// mode 0600, mtime from Last-Modified (else the Unix epoch, as BuildKit), owner 0:0; checked against
// --checksum before anything is written to the image. Remote archives are
// extracted only with --unpack=true.
func (c *copier) fetch(ctx context.Context, src string) (*fetchedURL, error) {
	return c.fetchIf(ctx, src, "")
}

// fetchIf is fetch with If-None-Match: etag (when not ""); a 304 answer
// returns a fetchedURL without a file (item.path "").
func (c *copier) fetchIf(ctx context.Context, src, etag string) (*fetchedURL, error) {
	u, err := url.Parse(src)
	if err != nil {
		return nil, fmt.Errorf("ADD %s: %w", src, err)
	}
	var (
		algo string
		want []byte
		h    hash.Hash
	)
	if c.op.Checksum != "" {
		if algo, want, h, err = parseChecksum(c.op.Checksum); err != nil {
			return nil, err
		}
	}
	resp, err := c.get(ctx, src, etag)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	f := &fetchedURL{item: srcItem{name: urlFileName(u), shown: src}, etag: resp.Header.Get("ETag")}
	if resp.StatusCode == http.StatusNotModified {
		return f, nil // path "": the caller knows the content
	}
	if err := c.save(resp.Body, f, h); err != nil {
		return nil, fmt.Errorf("ADD %s: downloading: %w", src, err)
	}
	if h != nil {
		if got := h.Sum(nil); !equalBytes(got, want) {
			return nil, fmt.Errorf("ADD %s: digest mismatch %s:%x: %s:%x", src, algo, want, algo, got)
		}
	}
	p := f.item.path
	if err := os.Chmod(p, 0o600); err != nil {
		return nil, err
	}
	mtime := time.Unix(0, 0)
	if lm, err := http.ParseTime(resp.Header.Get("Last-Modified")); err == nil {
		mtime = lm
		f.lastModified = lm.UTC().Format(http.TimeFormat)
	}
	if err := os.Chtimes(p, mtime, mtime); err != nil {
		return nil, err
	}
	if c.op.Unpack != nil && *c.op.Unpack {
		f.item.unpack = isArchive(p)
	}
	return f, nil
}

// get requests src (with If-None-Match: etag when not "") and checks that
// the answer is a success, or 304 to a conditional request.
func (c *copier) get(ctx context.Context, src, etag string) (*http.Response, error) {
	client := c.op.HTTPClient
	if client == nil {
		client = defaultHTTPClient()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, src, nil)
	if err != nil {
		return nil, fmt.Errorf("ADD %s: %w", src, err)
	}
	req.Header.Set("User-Agent", "imgbuild")
	if etag != "" {
		req.Header.Set("If-None-Match", etag)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("ADD %s: %w", src, err)
	}
	if etag != "" && resp.StatusCode == http.StatusNotModified {
		return resp, nil
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		resp.Body.Close()
		return nil, fmt.Errorf("ADD %s: invalid response status %s", src, resp.Status)
	}
	return resp, nil
}

// save writes body to a temporary file (removed with the copier), hashing
// it with sha256 for the cache key and with h (--checksum) when set.
func (c *copier) save(body io.Reader, f *fetchedURL, h hash.Hash) error {
	tmp, err := os.CreateTemp(c.op.TempDir, "imgbuild-add-")
	if err != nil {
		return err
	}
	c.tmp = append(c.tmp, tmp.Name())
	f.item.path = tmp.Name()
	sum := sha256.New()
	w := io.MultiWriter(tmp, sum)
	if h != nil {
		w = io.MultiWriter(tmp, sum, h)
	}
	f.size, err = io.Copy(w, body)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	f.sha256 = hex.EncodeToString(sum.Sum(nil))
	return err
}

func equalBytes(a, b []byte) bool {
	return len(a) == len(b) && string(a) == string(b)
}
