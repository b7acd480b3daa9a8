package builder_test

// Helpers that read the layers of built images.

import (
	"archive/tar"
	"errors"
	"io"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// walkLayer calls fn with each entry of the tar of l in order, the entry's
// content readable from tr, until fn returns false.
func walkLayer(t *testing.T, l v1.Layer, fn func(h *tar.Header, tr *tar.Reader) bool) {
	t.Helper()
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		if !fn(h, tr) {
			return
		}
	}
}

// lastLayer is the image's last layer.
func lastLayer(t *testing.T, img v1.Image) v1.Layer {
	t.Helper()
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(ls) == 0 {
		t.Fatal("the image has no layer")
	}
	return ls[len(ls)-1]
}

// lastLayerEntries lists the entries of the image's last layer.
func lastLayerEntries(t *testing.T, img v1.Image) []string {
	t.Helper()
	var names []string
	walkLayer(t, lastLayer(t, img), func(h *tar.Header, _ *tar.Reader) bool {
		names = append(names, h.Name)
		return true
	})
	return names
}

// lastLayerHeader returns the tar header of name in the image's last layer,
// or nil.
func lastLayerHeader(t *testing.T, img v1.Image, name string) *tar.Header {
	t.Helper()
	var found *tar.Header
	walkLayer(t, lastLayer(t, img), func(h *tar.Header, _ *tar.Reader) bool {
		if strings.TrimPrefix(h.Name, "./") == name {
			found = h
		}
		return found == nil
	})
	return found
}
