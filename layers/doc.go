// Package layers owns everything below an image: deterministic layer tars,
// streaming compression, safe extraction of layer tars into a root directory,
// and the content-addressed local store (an OCI image layout plus imgbuild's
// own data beside it).
package layers
