package builder

import (
	"context"
	"encoding/json"
	"fmt"
)

// urlCache keeps small records across builds (layers.Store's build cache
// metadata).
type urlCache interface {
	CacheMeta(ctx context.Context, kind, key string) ([]byte, error)
	PutCacheMeta(ctx context.Context, kind, key string, b []byte) error
}

// urlMetaKind is the kind of the records of urlCache for ADD URLs.
const urlMetaKind = "url"

// urlMeta is what an ADD URL answered last: enough to key the step again
// when the server says the content has not changed.
type urlMeta struct {
	ETag         string `json:"etag"`
	Name         string `json:"name"`
	SHA256       string `json:"sha256"`
	Size         int64  `json:"size"`
	LastModified string `json:"lastModified,omitempty"`
}

// fetchCached is fetch for prefetch, as BuildKit's HTTP source: when the
// URL answered with an ETag before, the request carries If-None-Match, and
// a 304 answer gives the recorded name, size, digest and Last-Modified
// without a download (the copy downloads only if the step then misses:
// see refetch). A new answer with an ETag is recorded.
func (c *copier) fetchCached(ctx context.Context, src string) (*fetchedURL, error) {
	uc := c.op.URLCache
	if uc == nil {
		return c.fetch(ctx, src)
	}
	var m urlMeta
	if c.op.Revalidate {
		if b, err := uc.CacheMeta(ctx, urlMetaKind, src); err != nil || json.Unmarshal(b, &m) != nil || m.SHA256 == "" {
			m = urlMeta{}
		}
	}
	f, err := c.fetchIf(ctx, src, m.ETag)
	if err != nil {
		return nil, err
	}
	if f.item.path == "" { // 304: the content is the recorded one
		f.item.name, f.size, f.sha256, f.lastModified = m.Name, m.Size, m.SHA256, m.LastModified
		return f, nil
	}
	if f.etag != "" {
		b, err := json.Marshal(urlMeta{ETag: f.etag, Name: f.item.name, SHA256: f.sha256, Size: f.size, LastModified: f.lastModified})
		if err == nil {
			err = uc.PutCacheMeta(ctx, urlMetaKind, src, b)
		}
		if err != nil {
			return nil, fmt.Errorf("ADD %s: recording its ETag: %w", src, err)
		}
	}
	return f, nil
}

// refetch downloads an ADD URL that was keyed from a 304 answer and whose
// step missed: the content must be the one the key covers.
func (c *copier) refetch(ctx context.Context, src string, want *fetchedURL) (srcItem, error) {
	f, err := c.fetch(ctx, src)
	if err != nil {
		return srcItem{}, err
	}
	if f.sha256 != want.sha256 || f.size != want.size || f.lastModified != want.lastModified || f.item.name != want.item.name {
		return srcItem{}, fmt.Errorf("ADD %s: the content changed during the build (sha256 %s, the server said %s was current); build again",
			src, f.sha256, want.sha256)
	}
	return f.item, nil
}
