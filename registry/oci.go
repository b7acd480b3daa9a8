package registry

import (
	"encoding/json"
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// OCIMediaTypes returns img with OCI media types: a Docker schema 2 image
// gets an OCI manifest whose config and layer descriptors carry the OCI
// equivalents of their Docker media types. Blobs (config and layers) are
// untouched, so only the manifest digest changes. An OCI image is returned
// as it is. skopeo's oci: transport and umoci only read OCI media types from
// an OCI image layout.
func OCIMediaTypes(img v1.Image) (v1.Image, error) {
	mt, err := img.MediaType()
	if err != nil {
		return nil, err
	}
	switch mt {
	case types.OCIManifestSchema1:
		return img, nil
	case types.DockerManifestSchema2:
	default:
		return nil, fmt.Errorf("cannot convert an image of media type %s to OCI", mt)
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, err
	}
	m = m.DeepCopy()
	m.MediaType = types.OCIManifestSchema1
	if m.Config.MediaType == types.DockerConfigJSON {
		m.Config.MediaType = types.OCIConfigJSON
	}
	layerTypes := map[v1.Hash]types.MediaType{}
	for i, l := range m.Layers {
		m.Layers[i].MediaType = OCILayerType(l.MediaType)
		layerTypes[l.Digest] = m.Layers[i].MediaType
	}
	raw, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	return partial.CompressedToImage(&ociCore{img: img, raw: raw, layerTypes: layerTypes})
}

// OCILayerType maps a Docker layer media type to its OCI twin; other types
// are returned unchanged.
func OCILayerType(mt types.MediaType) types.MediaType {
	switch mt {
	case types.DockerLayer:
		return types.OCILayer
	case types.DockerUncompressedLayer:
		return types.OCIUncompressedLayer
	case "application/vnd.docker.image.rootfs.diff.tar.zstd":
		return types.OCILayerZStd
	case types.DockerForeignLayer:
		return types.OCIRestrictedLayer
	}
	return mt
}

// ociCore serves img's blobs under a rewritten manifest.
type ociCore struct {
	img        v1.Image
	raw        []byte
	layerTypes map[v1.Hash]types.MediaType
}

func (c *ociCore) RawConfigFile() ([]byte, error)      { return c.img.RawConfigFile() }
func (c *ociCore) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }
func (c *ociCore) RawManifest() ([]byte, error)        { return c.raw, nil }

func (c *ociCore) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	l, err := c.img.LayerByDigest(h)
	if err != nil {
		return nil, err
	}
	mt, ok := c.layerTypes[h]
	if !ok {
		return l, nil
	}
	return &typedLayer{Layer: l, mt: mt}, nil
}

// typedLayer is a layer under another media type.
type typedLayer struct {
	v1.Layer
	mt types.MediaType
}

func (l *typedLayer) MediaType() (types.MediaType, error) { return l.mt, nil }
