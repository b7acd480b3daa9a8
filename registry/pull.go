package registry

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Pull resolves ref (a tag or a digest; a manifest list is resolved for
// opts.Platform) and returns the image. The manifest and config are fetched
// now, so a missing tag, refused credentials or an unknown host fail here;
// layers are fetched lazily when read, and every blob is verified against
// its digest as it is read: a layer reader returns an error naming the
// reference and the layer when the bytes do not match. Read each layer to
// io.EOF to get that verification. ctx also bounds those later reads.
func Pull(ctx context.Context, ref string, opts Options) (v1.Image, error) {
	r, err := opts.parseRef(ref)
	if err != nil {
		return nil, &Error{Op: "pulling", Ref: ref, Cause: "invalid reference: " + oneLine(err.Error()), Err: err}
	}
	img, err := pull(ctx, r, opts)
	if err != nil {
		return nil, wrapErr("pulling", ref, r, err)
	}
	// Fetch and verify the config now so that errors surface at Pull.
	if _, err := img.ConfigFile(); err != nil {
		return nil, wrapErr("pulling", ref, r, fmt.Errorf("config: %w", err))
	}
	return &pulledImage{Image: img, ref: ref}, nil
}

func pull(ctx context.Context, r name.Reference, opts Options) (v1.Image, error) {
	desc, err := remote.Get(r, opts.remoteOptions(ctx)...)
	if err != nil {
		return nil, err
	}
	if !desc.MediaType.IsIndex() {
		return desc.Image()
	}
	idx, err := desc.ImageIndex()
	if err != nil {
		return nil, err
	}
	return imageForPlatform(idx, opts.platform())
}

func (o Options) platform() v1.Platform {
	if o.Platform != nil {
		return *o.Platform
	}
	return HostPlatform()
}

// imageForPlatform resolves a (possibly nested) index to the image for want.
func imageForPlatform(idx v1.ImageIndex, want v1.Platform) (v1.Image, error) {
	for depth := 0; depth < 4; depth++ {
		im, err := idx.IndexManifest()
		if err != nil {
			return nil, err
		}
		d, ok := selectManifest(im.Manifests, want)
		if !ok {
			d, ok = onlyManifest(im.Manifests)
		}
		if !ok {
			return nil, &platformError{want: want, available: platformList(im.Manifests)}
		}
		if !d.MediaType.IsIndex() {
			return idx.Image(d.Digest)
		}
		if idx, err = idx.ImageIndex(d.Digest); err != nil {
			return nil, err
		}
	}
	return nil, errors.New("manifest lists nested too deeply")
}

// onlyManifest accepts an index holding one image without any platform (as
// some OCI layouts are written).
func onlyManifest(ds []v1.Descriptor) (v1.Descriptor, bool) {
	if len(ds) == 1 && ds[0].Platform == nil && ds[0].MediaType.IsImage() {
		return ds[0], true
	}
	return v1.Descriptor{}, false
}

type platformError struct {
	want      v1.Platform
	available string
}

func (e *platformError) Error() string {
	return fmt.Sprintf("no image for platform %s in the manifest list (available: %s)",
		normalizePlatform(e.want), e.available)
}

func (e *platformError) Is(target error) bool { return target == ErrPlatformNotFound }

// pulledImage wraps a remote image so that errors from reading its layers
// (network failures, digest mismatches) name the reference and the layer.
// Layers stay remote.MountableLayer so that pushes can mount them.
type pulledImage struct {
	v1.Image
	ref string
}

// Descriptor keeps the index descriptor of the image (see partial.Descriptor).
func (p *pulledImage) Descriptor() (*v1.Descriptor, error) { return partial.Descriptor(p.Image) }

// ConfigLayer keeps the config blob mountable by pushes (see
// partial.ConfigLayer).
func (p *pulledImage) ConfigLayer() (v1.Layer, error) { return partial.ConfigLayer(p.Image) }

// Layers implements v1.Image.
func (p *pulledImage) Layers() ([]v1.Layer, error) {
	ls, err := p.Image.Layers()
	if err != nil {
		return nil, err
	}
	out := make([]v1.Layer, len(ls))
	for i, l := range ls {
		out[i] = p.wrap(l)
	}
	return out, nil
}

// LayerByDigest implements v1.Image.
func (p *pulledImage) LayerByDigest(h v1.Hash) (v1.Layer, error) {
	l, err := p.Image.LayerByDigest(h)
	if err != nil {
		return nil, err
	}
	return p.wrap(l), nil
}

// LayerByDiffID implements v1.Image.
func (p *pulledImage) LayerByDiffID(h v1.Hash) (v1.Layer, error) {
	l, err := p.Image.LayerByDiffID(h)
	if err != nil {
		return nil, err
	}
	return p.wrap(l), nil
}

func (p *pulledImage) wrap(l v1.Layer) v1.Layer {
	if ml, ok := l.(*remote.MountableLayer); ok {
		return &remote.MountableLayer{Layer: &pulledLayer{Layer: ml.Layer, ref: p.ref}, Reference: ml.Reference}
	}
	return &pulledLayer{Layer: l, ref: p.ref}
}

type pulledLayer struct {
	v1.Layer
	ref string
}

// Descriptor keeps the manifest's layer descriptor (see partial.Descriptor).
func (l *pulledLayer) Descriptor() (*v1.Descriptor, error) { return partial.Descriptor(l.Layer) }

// Exists forwards partial.Exists.
func (l *pulledLayer) Exists() (bool, error) { return partial.Exists(l.Layer) }

// Compressed implements v1.Layer.
func (l *pulledLayer) Compressed() (io.ReadCloser, error) {
	return l.reader(l.Layer.Compressed())
}

// Uncompressed implements v1.Layer.
func (l *pulledLayer) Uncompressed() (io.ReadCloser, error) {
	return l.reader(l.Layer.Uncompressed())
}

func (l *pulledLayer) reader(rc io.ReadCloser, err error) (io.ReadCloser, error) {
	if err != nil {
		return nil, l.wrapErr(err)
	}
	return &errReader{rc: rc, wrap: l.wrapErr}, nil
}

func (l *pulledLayer) wrapErr(err error) error {
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	kind, cause := classify(nil, err)
	if d, derr := l.Layer.Digest(); derr == nil {
		cause = fmt.Sprintf("layer %s: %s", d, cause)
	}
	return &Error{Op: "pulling", Ref: l.ref, Cause: cause, Kind: kind, Err: err}
}

// errReader wraps every error but io.EOF.
type errReader struct {
	rc   io.ReadCloser
	wrap func(error) error
}

func (r *errReader) Read(b []byte) (int, error) {
	n, err := r.rc.Read(b)
	if err != nil && err != io.EOF {
		err = r.wrap(err)
	}
	return n, err
}

func (r *errReader) Close() error { return r.rc.Close() }
