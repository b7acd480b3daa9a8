package registry

import (
	"context"
	"io"
	"sync"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/imgbuild/imgbuild/layers"
)

// NewFetcher returns the layers.Fetcher that reads a store's lazy blobs
// (see layers.Store.WithFetcher) from their registries, with opts'
// credentials and insecure registries. count, when not nil, is called
// with the number of bytes of each read.
func NewFetcher(opts Options, count func(repo string, n int)) layers.Fetcher {
	return &fetcher{opts: opts, count: count}
}

type fetcher struct {
	opts  Options
	count func(repo string, n int)

	once      sync.Once // makes puller, whose per-repository auth is reused
	puller    *remote.Puller
	pullerErr error
}

// Fetch implements layers.Fetcher. The reader fails (at the latest at EOF)
// when the bytes do not match desc.
func (f *fetcher) Fetch(ctx context.Context, repo string, desc v1.Descriptor) (io.ReadCloser, error) {
	ref := repo + "@" + desc.Digest.String()
	r, err := f.opts.parseRef(ref)
	if err != nil {
		return nil, &Error{Op: "fetching layer", Ref: ref, Cause: "invalid reference: " + oneLine(err.Error()), Err: err}
	}
	f.once.Do(func() { f.puller, f.pullerErr = remote.NewPuller(f.opts.remoteOptions(ctx)...) })
	if f.pullerErr != nil {
		return nil, wrapErr("fetching layer", ref, r, f.pullerErr)
	}
	rc, err := remoteBlob(ctx, f.puller, r.Context(), desc)
	if err != nil {
		return nil, wrapErr("fetching layer", ref, r, err)
	}
	var body io.ReadCloser = newBlobVerifier(rc, desc)
	if f.count != nil {
		body = &countReader{ReadCloser: body, repo: repo, count: f.count}
	}
	return &errReader{rc: body, wrap: func(err error) error { return wrapErr("fetching layer", ref, r, err) }}, nil
}

type countReader struct {
	io.ReadCloser
	repo  string
	count func(string, int)
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	if n > 0 {
		c.count(c.repo, n)
	}
	return n, err
}

// sourced is a layer that knows the repositories its blob is in (layers
// of the local store, see layers.Store.AddBlobSource).
type sourced interface {
	BlobSources() []string
}

// mountSources returns a function presenting each layer that has a source
// on target's registry (another repository than target) as mountable from
// there, so that a push mounts it rather than uploading it, and without
// reading it: a lazy layer is then never downloaded. A layer that does not
// say its sources is looked up by digest in originals (the layers an image
// was assembled from, which its own layers may wrap).
func (o Options) mountSources(target name.Repository, originals map[v1.Hash]v1.Layer) func(v1.Layer) v1.Layer {
	return func(l v1.Layer) v1.Layer {
		d, err := l.Digest()
		if err != nil {
			return l
		}
		s, ok := l.(sourced)
		if !ok {
			if s, ok = originals[d].(sourced); !ok {
				return l
			}
		}
		for _, repo := range s.BlobSources() {
			r, err := o.parseRef(repo + "@" + d.String())
			if err != nil || r.Context().RegistryStr() != target.RegistryStr() || r.Context().RepositoryStr() == target.RepositoryStr() {
				continue
			}
			return &remote.MountableLayer{Layer: l, Reference: r}
		}
		return l
	}
}

// mountFrom presents img's layers as mountable from ref, a repository on the
// same registry that already holds them.
func mountFrom(ref name.Reference) func(v1.Layer) v1.Layer {
	return func(l v1.Layer) v1.Layer {
		if ml, ok := l.(*remote.MountableLayer); ok {
			l = ml.Layer
		}
		return &remote.MountableLayer{Layer: l, Reference: ref}
	}
}

// mountImage is an image whose layers (and config) mount turns into
// remote.MountableLayer where a push can mount them.
type mountImage struct {
	v1.Image
	mount func(v1.Layer) v1.Layer
}

// Layers implements v1.Image.
func (m *mountImage) Layers() ([]v1.Layer, error) {
	ls, err := m.Image.Layers()
	if err != nil {
		return nil, err
	}
	out := make([]v1.Layer, len(ls))
	for i, l := range ls {
		out[i] = m.mount(l)
	}
	return out, nil
}

// LayerByDigest implements v1.Image.
func (m *mountImage) LayerByDigest(h v1.Hash) (v1.Layer, error) {
	l, err := m.Image.LayerByDigest(h)
	if err != nil {
		return nil, err
	}
	return m.mount(l), nil
}

// LayerByDiffID implements v1.Image.
func (m *mountImage) LayerByDiffID(h v1.Hash) (v1.Layer, error) {
	l, err := m.Image.LayerByDiffID(h)
	if err != nil {
		return nil, err
	}
	return m.mount(l), nil
}

// ConfigLayer makes the config blob mountable too.
func (m *mountImage) ConfigLayer() (v1.Layer, error) {
	l, err := partial.ConfigLayer(m.Image)
	if err != nil {
		return nil, err
	}
	return m.mount(l), nil
}
