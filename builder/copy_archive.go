package builder

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/bzip2"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	securejoin "github.com/cyphar/filepath-securejoin"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/imgbuild/imgbuild/layers"
)

// Magic numbers of the compression formats BuildKit recognises for ADD and
// for a tar build context (detected by content, never by file name).
var (
	magicGzip  = []byte{0x1f, 0x8b, 0x08}
	magicBzip2 = []byte{'B', 'Z', 'h'}
	magicXz    = []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}
	magicZstd  = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

// decompress returns r decompressed if it starts with the gzip, bzip2, xz or
// zstd magic number, and r itself otherwise. Close releases decoder state;
// it does not close r.
func decompress(r io.Reader) (io.ReadCloser, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	head, err := br.Peek(6)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	switch {
	case bytes.HasPrefix(head, magicGzip):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("gzip: %w", err)
		}
		return zr, nil
	case bytes.HasPrefix(head, magicBzip2):
		return io.NopCloser(bzip2.NewReader(br)), nil
	case bytes.HasPrefix(head, magicXz):
		xr, err := xz.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("xz: %w", err)
		}
		return io.NopCloser(xr), nil
	case bytes.HasPrefix(head, magicZstd):
		zr, err := zstd.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("zstd: %w", err)
		}
		return zr.IOReadCloser(), nil
	}
	return io.NopCloser(br), nil
}

// isArchive reports whether the regular file p is a (possibly compressed)
// tar archive: BuildKit's test is that the first tar header reads cleanly.
// Anything else (including an empty file) is copied as is.
func isArchive(p string) bool {
	f, err := os.Open(p)
	if err != nil {
		return false
	}
	defer f.Close()
	r, err := decompress(f)
	if err != nil {
		return false
	}
	defer r.Close()
	_, err = tar.NewReader(r).Next()
	return err == nil
}

// extractArchive extracts the archive file src into the directory dir (a
// resolved path inside the destination root) with layers.Apply and records
// the entries written. With --chown every entry is then owned by that user
// (BuildKit's ADD --chown on archives); otherwise the archive's owners are
// kept when running as root. Whiteout names are ordinary files here.
func (c *copier) extractArchive(ctx context.Context, src, dir string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	r, err := decompress(f)
	if err != nil {
		return err
	}
	defer r.Close()

	// Apply consumes the stream; a tee feeds a second tar reader that lists
	// the entry names, so the archive is read and decompressed once.
	pr, pw := io.Pipe()
	names := make(chan []string, 1)
	go func() {
		list, err := archiveEntryNames(pr)
		if err != nil {
			pr.CloseWithError(err)
		}
		_, _ = io.Copy(io.Discard, pr)
		names <- list
	}()
	applyErr := layers.Apply(ctx, dir, io.TeeReader(r, pw), layers.ApplyOptions{
		NoChown: c.euid != 0, NoWhiteouts: true,
	})
	if applyErr == nil {
		_, applyErr = io.Copy(pw, r) // let the lister see the end of the stream
	}
	pw.CloseWithError(applyErr)
	list := <-names
	if applyErr != nil {
		return fmt.Errorf("extracting %s: %w", filepath.Base(src), applyErr)
	}
	for _, name := range list {
		p, err := resolveEntry(dir, name)
		if err != nil || p == dir {
			continue
		}
		if _, err := os.Lstat(p); err != nil {
			continue // e.g. a whiteout-looking name or an entry Apply refused
		}
		if c.own != nil {
			if err := c.chownKeepMode(p); err != nil {
				return err
			}
		}
		if err := c.record(p); err != nil {
			return err
		}
	}
	return nil
}

// archiveEntryNames lists the entry names of a tar stream.
func archiveEntryNames(r io.Reader) ([]string, error) {
	var out []string
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, h.Name)
	}
}

// resolveEntry is where an archive entry name lands under dir with chroot
// semantics: its parent resolved inside dir, its last component kept (the
// entry itself may be a symlink).
func resolveEntry(dir, name string) (string, error) {
	clean := path.Clean("/" + strings.TrimPrefix(filepath.ToSlash(name), "./"))
	if clean == "/" {
		return dir, nil
	}
	parent, err := securejoin.SecureJoin(dir, path.Dir(clean))
	if err != nil {
		return "", err
	}
	return filepath.Join(parent, path.Base(clean)), nil
}

// chownKeepMode gives an extracted entry the --chown owner, restoring the
// setuid/setgid bits that chown clears.
func (c *copier) chownKeepMode(p string) error {
	fi, err := os.Lstat(p)
	if err != nil {
		return err
	}
	if err := c.lchown(p, c.own.uid, c.own.gid); err != nil {
		return err
	}
	if fi.Mode()&os.ModeSymlink != 0 {
		return nil
	}
	return os.Chmod(p, fi.Mode()&(os.ModePerm|os.ModeSetuid|os.ModeSetgid|os.ModeSticky))
}
