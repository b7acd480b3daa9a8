package layers

import (
	"context"
	"io"
)

// ApplyOptions control Apply. The zero value applies an OCI layer as a
// privileged extractor would: owners are set from the tar headers and OCI
// whiteouts are honoured.
type ApplyOptions struct {
	// NoChown skips lchown of extracted entries. Set it when extracting as an
	// unprivileged user (or as root in a user namespace without the ids of
	// the layer mapped): without it a failed chown fails Apply. NoChown also
	// marks the extraction as unprivileged for extended attributes: failures
	// to set attributes outside the "user." namespace (trusted.*, security.*)
	// with EPERM or ENOTSUP are then ignored instead of failing Apply.
	NoChown bool
	// NoWhiteouts treats .wh. entries as ordinary files (ADD of a plain
	// archive) instead of OCI whiteouts.
	NoWhiteouts bool
}

// Apply extracts an uncompressed layer tar read from r into root, which is
// created if missing.
//
// Every entry is resolved with chroot semantics: entry names and hardlink
// targets are cleaned as if root were "/" (so "../x" and "/x" both mean
// root/x), and symlinks met on the way, including ones created earlier by the
// same tar, are resolved inside root. The final component of an entry is never
// followed: an existing entry there is replaced (a directory over an existing
// directory is kept and gets the new metadata; anything else is removed first,
// directories recursively). Missing parent directories are created (0755);
// a parent that resolves to a non-directory or to a dangling symlink fails
// Apply, as does a hardlink whose target does not exist inside root.
//
// OCI whiteouts are applied unless opts.NoWhiteouts: ".wh.NAME" removes NAME
// and ".wh..wh..opq" empties its directory. Both only remove what existed
// before this layer; entries written by the layer itself are kept whatever
// the order of entries in the tar. Other ".wh..wh." entries (AUFS metadata)
// are skipped, and whiteouts of "", "." or ".." are rejected.
//
// Metadata: owners via lchown (unless opts.NoChown), xattrs from PAX
// SCHILY.xattr.* records, permission bits including setuid, setgid and sticky
// (after chown, which clears them), access and modification times. Directory
// modes and times are applied at the end, in reverse order of listing, so
// that writing their children neither changes their times nor is prevented
// by a read-only mode. Hardlink entries get no metadata of their own: they share
// the target's inode. Character and block devices are created only when the
// process runs as root, and skipped without error otherwise or when mknod is
// not permitted (root in a user namespace), as rootless builders do; FIFOs are
// always created.
//
// Regular file data is streamed; memory stays bounded whatever the layer
// size. ctx is checked between entries and while copying file data. On error
// root may hold a partially applied layer.
func Apply(ctx context.Context, root string, r io.Reader, opts ApplyOptions) error {
	return applyTar(ctx, root, r, opts)
}
