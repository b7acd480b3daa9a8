// Package registry pulls and pushes images with go-containerregistry and
// writes the non-registry outputs (OCI layout, docker-archive, flattened
// filesystem as tar or directory).
package registry

// THIS FILE IS A TEMPORARY API SKETCH, replaced by the registry helper.

import (
	"context"
	"errors"
	"io"
	"net/http"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

var errStub = errors.New("not implemented yet")

// Options are shared by Pull and Push. The zero value uses the docker config
// keychain, TLS everywhere and the host's platform.
type Options struct {
	// Insecure lists registries ("host" or "host:port") reached over plain
	// HTTP or TLS without verification.
	Insecure []string
	// Platform selects the image from a manifest list; nil means the host's.
	Platform *v1.Platform
	// Keychain resolves credentials; nil means authn.DefaultKeychain.
	Keychain authn.Keychain
	// Transport is the base HTTP transport; nil means the default.
	Transport http.RoundTripper
}

// Pull resolves ref (tag or digest, manifest lists resolved for the
// platform) and returns a lazy remote image whose blobs are verified as read.
func Pull(ctx context.Context, ref string, opts Options) (v1.Image, error) { return nil, errStub }

// Push uploads img once and points every tag at it.
func Push(ctx context.Context, img v1.Image, tags []string, opts Options) error { return errStub }

// Tagged is an image with the references it is saved under.
type Tagged struct {
	Image v1.Image
	Tags  []string
}

// WriteDockerArchive writes a docker-archive (docker load / podman load).
func WriteDockerArchive(ctx context.Context, w io.Writer, imgs []Tagged) error { return errStub }

// WriteOCILayout writes imgs into an OCI image layout directory.
func WriteOCILayout(ctx context.Context, dir string, imgs []Tagged) error { return errStub }

// WriteFlatTar writes the flattened filesystem of img as a tar stream.
func WriteFlatTar(ctx context.Context, w io.Writer, img v1.Image) error { return errStub }

// ExtractFlat writes the flattened filesystem of img into dir.
func ExtractFlat(ctx context.Context, dir string, img v1.Image) error { return errStub }
