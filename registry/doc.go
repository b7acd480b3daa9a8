// Package registry moves images between imgbuild and the outside world.
//
// Pull and Push talk to registries through go-containerregistry's remote
// package: credentials come from the docker config keychain (config.json and
// credential helpers) unless Options.Keychain says otherwise, registries listed
// in Options.Insecure are reached over plain HTTP or TLS without verification,
// transient failures (429, 5xx, connection resets) are retried with a bounded
// backoff, and manifest lists are resolved for Options.Platform.
//
// Errors from Pull and Push are one line that names the reference and the
// cause ("pulling 127.0.0.1:5000/app:1: manifest unknown: tag \"1\" not found
// in 127.0.0.1:5000/app"); the causes users meet most are classified so that
// errors.Is works with ErrUnknownHost, ErrUnauthorized, ErrNotFound and
// ErrPlatformNotFound.
//
// The other outputs are written from any v1.Image: WriteDockerArchive (the
// format of `docker save`, read by `docker load` and `podman load`),
// WriteOCILayout (an OCI image layout directory), WriteFlatTar and ExtractFlat
// (the image's flattened filesystem, whiteouts applied).
package registry
