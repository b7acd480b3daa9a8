package builder

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"syscall"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/imgbuild/imgbuild/layers"
)

// errUncacheable marks a COPY/ADD whose sources cannot be digested without
// fetching them: an ADD of a URL without --checksum that prefetch did not
// download. The step always runs.
var errUncacheable = errors.New("sources cannot be known without fetching them")

// sourcesDigestVersion names the record format below; change it whenever
// what goes into the digest changes, so old cache keys stop matching.
const sourcesDigestVersion = "imgbuild sources v1"

// sourcesDigest is the digest of exactly what copyFiles(ctx, op) reads for
// op, computed without copying anything; with idx, unchanged files are not
// read (a nil idx reads every file). It selects the sources with copyFiles'
// own code (wildcards, .dockerignore, --parents, --exclude, symlink
// resolution of the source arguments) and, for each source item in order,
// records its base name and then each entry the copy would write, in walk
// order: its path below the item, its type and permission bits (setuid,
// setgid and sticky included), and
//   - regular file: size and sha256 of the content, or, for another name
//     of an inode already recorded in the same item, that name (a hard link);
//   - symlink (not followed below a source argument): its target;
//   - device: its device number;
//   - every entry: the digest of its extended attributes
//     (layers.XattrsDigest; for regular files cached in the stat index), and
//     its owner when the copy keeps source owners (COPY --from without
//     --chown);
//   - a directory the copy creates only for an included descendant
//     (--parents, --exclude with "!" exceptions) is recorded as such, and
//     only when it is created.
//
// Times are left out, and so are owners of context sources (the copy sets
// 0:0 or --chown). A heredoc is its name, mode and content; an ADD URL
// with --checksum is its file name and checksum; without one, its name,
// size, content digest and Last-Modified once op.Fetched holds it (see
// prefetch), else the error is errUncacheable. A local archive that ADD
// extracts is its file digest.
// Everything that is spelled in the instruction itself (destination,
// --chown, --chmod, --link, flags) is the caller's to hash.
func sourcesDigest(ctx context.Context, op copyOp, idx *layers.StatIndex) (v1.Hash, error) {
	c, err := newSourceCopier(&op)
	if err != nil {
		return v1.Hash{}, err
	}
	if err := checkKeepGitDir(&op); err != nil {
		return v1.Hash{}, err
	}
	d := &srcDigester{c: c, idx: idx, h: sha256.New(), owners: op.Chown == ""}
	d.str(sourcesDigestVersion)
	for _, src := range op.Sources {
		remote, err := checkSource(&op, src)
		if err != nil {
			return v1.Hash{}, err
		}
		if remote {
			if err := d.url(src); err != nil {
				return v1.Hash{}, err
			}
			continue
		}
		items, err := c.localItems(src)
		if err != nil {
			return v1.Hash{}, err
		}
		for i := range items {
			if err := d.item(ctx, &items[i]); err != nil {
				return v1.Hash{}, err
			}
		}
	}
	for _, h := range op.Heredocs {
		if err := d.heredoc(h); err != nil {
			return v1.Hash{}, err
		}
	}
	return v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", d.h.Sum(nil))}, nil
}

// srcDigester writes the records of sourcesDigest into h.
type srcDigester struct {
	c      *copier
	idx    *layers.StatIndex
	h      hash.Hash
	owners bool // source owners reach the layer (unless the item is from the context)
	buf    []byte

	inodes  map[[2]uint64]string // (dev, inode) -> first path in the item
	pending []pendingRec         // directories on the walk, recorded when needed
}

// pendingRec is a directory of the walk not yet recorded: the copy creates
// it only when something below it is included.
type pendingRec struct {
	src, rel string
	fi       os.FileInfo
	done     bool
}

func (d *srcDigester) str(s string) {
	d.buf = binary.AppendUvarint(d.buf[:0], uint64(len(s)))
	d.buf = append(d.buf, s...)
	d.h.Write(d.buf)
}

func (d *srcDigester) num(n uint64) {
	d.buf = binary.AppendUvarint(d.buf[:0], n)
	d.h.Write(d.buf)
}

// item records one local source item and walks it as copyEntry does.
func (d *srcDigester) item(ctx context.Context, it *srcItem) error {
	d.str("item")
	d.str(it.name)
	d.inodes = map[[2]uint64]string{}
	d.pending = d.pending[:0]
	if err := d.entry(ctx, it, it.path, "", walkState{}); err != nil {
		return err
	}
	d.str("end")
	return nil
}

// entry mirrors copyEntry/copyDir for src at rel below the item.
func (d *srcDigester) entry(ctx context.Context, it *srcItem, src, rel string, parent walkState) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	fi, err := os.Lstat(src)
	if err != nil {
		return fmt.Errorf("copying %s: %w", it.display(rel), err)
	}
	sel, err := d.c.selectEntry(it, rel, fi, parent)
	if err != nil || sel.skip {
		return err
	}
	if sel.include {
		if err := d.flushPending(it); err != nil {
			return err
		}
	}
	if !fi.IsDir() {
		return d.record(it, "entry", src, rel, fi)
	}
	if sel.include {
		if err := d.record(it, "entry", src, rel, fi); err != nil {
			return err
		}
	}
	d.pending = append(d.pending, pendingRec{src: src, rel: rel, fi: fi, done: sel.include})
	defer func() { d.pending = d.pending[:len(d.pending)-1] }()
	if !d.c.walkExcluded(sel.excluded) {
		return nil
	}
	entries, err := os.ReadDir(src)
	if err != nil {
		return fmt.Errorf("copying %s: %w", it.display(rel), err)
	}
	for _, e := range entries {
		if err := d.entry(ctx, it, filepath.Join(src, e.Name()), path.Join(rel, e.Name()), sel.st); err != nil {
			return err
		}
	}
	return nil
}

// flushPending records the directories the copy creates for the entry
// about to be included (createPending).
func (d *srcDigester) flushPending(it *srcItem) error {
	for i := range d.pending {
		p := &d.pending[i]
		if p.done {
			continue
		}
		if err := d.record(it, "parent", p.src, p.rel, p.fi); err != nil {
			return err
		}
		p.done = true
	}
	return nil
}

// record writes one entry: kind, path, type, mode bits, type-specific
// data, owner (when kept) and extended attributes.
func (d *srcDigester) record(it *srcItem, kind, src, rel string, fi os.FileInfo) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("copying %s: no stat information", it.display(rel))
	}
	d.str(kind)
	d.str(rel)
	d.num(uint64(st.Mode)) // file type, permissions, setuid/setgid/sticky
	var xattrs v1.Hash
	switch m := fi.Mode(); {
	case m.IsRegular():
		var err error
		if xattrs, err = d.regular(it, src, rel, fi, st); err != nil {
			return err
		}
	case m&os.ModeSymlink != 0:
		link, err := os.Readlink(src)
		if err != nil {
			return fmt.Errorf("failed to read link %s: %w", it.display(rel), err)
		}
		d.str(link)
	case m&os.ModeDevice != 0:
		d.num(uint64(st.Rdev))
	}
	if it.keepOwner && d.owners {
		d.num(uint64(st.Uid))
		d.num(uint64(st.Gid))
	}
	if xattrs.Hex == "" {
		xattrs = layers.XattrsDigest(src)
	}
	d.str(xattrs.Hex)
	return nil
}

// regular records a file's size and content digest, or the first path of
// its inode in this item (the copy hard-links it there), and returns its
// extended attributes' digest (empty for a link: the caller reads them).
func (d *srcDigester) regular(it *srcItem, src, rel string, fi os.FileInfo, st *syscall.Stat_t) (v1.Hash, error) {
	if st.Nlink > 1 {
		key := [2]uint64{uint64(st.Dev), st.Ino}
		if first, ok := d.inodes[key]; ok {
			d.str("link")
			d.str(first)
			return v1.Hash{}, nil
		}
		d.inodes[key] = rel
	}
	sum, err := d.idx.Sum(src, fi)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("copying %s: %w", it.display(rel), err)
	}
	d.str("data")
	d.num(uint64(st.Size))
	d.str(sum.Content.Hex)
	return sum.Xattrs, nil
}

// url records an ADD URL: with --checksum, its file name and checksum
// (nothing is fetched); else, once prefetch downloaded it, its file name,
// size, content digest and Last-Modified time, as BuildKit's HTTP source
// key; errUncacheable when it was not downloaded.
func (d *srcDigester) url(src string) error {
	if d.c.op.Checksum == "" {
		f := d.c.op.Fetched[src]
		if f == nil {
			return fmt.Errorf("ADD %s: %w", src, errUncacheable)
		}
		d.str("url-content")
		d.str(f.item.name)
		d.num(uint64(f.size))
		d.str(f.sha256)
		d.str(f.lastModified)
		return nil
	}
	if _, _, _, err := parseChecksum(d.c.op.Checksum); err != nil {
		return err
	}
	u, err := url.Parse(src)
	if err != nil {
		return fmt.Errorf("ADD %s: %w", src, err)
	}
	d.str("url")
	d.str(urlFileName(u))
	d.str(d.c.op.Checksum)
	return nil
}

// contextMountDigest is the digest of what a RUN --mount=type=bind of the
// build context path src shows the step, as BuildKit keys such a step by
// the content checksum of the mounted path: src is resolved as the mount
// resolves it (symlinks followed inside the context, no wildcards), and
// the tree below it is recorded as sourcesDigest records a COPY source
// (.dockerignore'd entries left out, stat index for unchanged files),
// owners included, since the step sees them. Times are left out.
func contextMountDigest(ctx context.Context, bc *buildContext, src string, idx *layers.StatIndex) (v1.Hash, error) {
	if bc == nil {
		return v1.Hash{}, errors.New("no build context")
	}
	op := copyOp{Context: bc}
	c, err := newSourceCopier(&op)
	if err != nil {
		return v1.Hash{}, err
	}
	p := path.Join("/", src)
	it, err := c.item(c.sourceFS(), p)
	if errors.Is(err, errNotFound) {
		return v1.Hash{}, fmt.Errorf("source %s not found in the build context", p)
	}
	if err != nil {
		return v1.Hash{}, fmt.Errorf("source %s: %w", p, err)
	}
	it.keepOwner = true
	d := &srcDigester{c: c, idx: idx, h: sha256.New(), owners: true}
	d.str(sourcesDigestVersion)
	d.str("bind")
	if err := d.item(ctx, &it); err != nil {
		return v1.Hash{}, err
	}
	return v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", d.h.Sum(nil))}, nil
}

// heredoc records an inline source as heredocItem writes it.
func (d *srcDigester) heredoc(h heredocSource) error {
	name := path.Base(path.Clean("/" + h.Name))
	if name == "/" {
		return fmt.Errorf("heredoc %q: invalid name", h.Name)
	}
	m := h.Mode
	if m == 0 {
		m = 0o644
	}
	sum := sha256.Sum256(h.Data)
	d.str("heredoc")
	d.str(name)
	d.num(uint64(m))
	d.num(uint64(len(h.Data)))
	d.str(fmt.Sprintf("%x", sum))
	return nil
}
