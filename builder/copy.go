package builder

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/moby/patternmatcher"
)

// copyOp is one COPY or ADD instruction, with ARG/ENV already expanded.
// Semantics follow BuildKit (dockerfile2llb + fsutil copy).
type copyOp struct {
	// Context is the source when SrcRoot is "".
	Context *buildContext
	// SrcRoot, when non-empty, is the root filesystem of a stage or image
	// (COPY --from); Sources are paths inside it, resolved with chroot
	// semantics. Source owners are kept unless Chown is set.
	SrcRoot string
	// Sources are the source arguments: paths (filepath.Match wildcards);
	// for Add also http(s) URLs.
	Sources []string
	// Heredocs are inline sources (COPY <<EOF /dst).
	Heredocs []heredocSource
	// Dest is the destination as written; relative to Workdir unless
	// absolute. A trailing "/" (or "/."), or more than one source item,
	// makes it a directory.
	Dest string
	// Workdir is the image's WORKDIR (absolute; "" means "/").
	Workdir string
	// DestRoot is the root filesystem written into; Dest is resolved inside
	// it with chroot semantics (symlinks followed, confined to DestRoot).
	DestRoot string
	// UserRoot is the root filesystem whose /etc/passwd and /etc/group
	// resolve --chown names.
	UserRoot string
	// Chown is --chown ("" = 0:0 for context files, keep owners for SrcRoot).
	Chown string
	// Chmod is --chmod, octal or symbolic ("" = keep source modes).
	Chmod string
	// Parents is --parents.
	Parents bool
	// Excludes are --exclude patterns, matched inside each source directory.
	Excludes []string
	// Add selects ADD semantics: URLs and extraction of local archives.
	Add bool
	// Checksum is ADD --checksum (sha256:, sha384: or sha512: hex) for a URL.
	Checksum string
	// TempDir receives the files ADD downloads ("": the host's default
	// temporary directory).
	TempDir string
	// Unpack is ADD --unpack; nil means extract local archives only.
	Unpack *bool
	// KeepGitDir is ADD --keep-git-dir (git sources are not supported yet).
	KeepGitDir bool
	// SourceDateEpoch, when set, clamps the mtime of every written entry.
	SourceDateEpoch *time.Time
	// HTTPClient fetches ADD URLs; nil means a default client.
	HTTPClient *http.Client
	// URLCache, when set, keeps what each ADD URL answered (ETag, content
	// digest) across builds: a rebuild asks with If-None-Match, and a 304
	// keys the step without a download (see fetchCached).
	URLCache urlCache
	// Revalidate sends If-None-Match with URLCache's ETag (false when the
	// step runs whatever the key: --no-cache).
	Revalidate bool
	// Fetched holds the ADD URLs already downloaded, by source argument
	// (see prefetch); the copy uses them instead of downloading again, and
	// sourcesDigest keys them by their content.
	Fetched map[string]*fetchedURL
}

// heredocSource is an inline COPY/ADD source.
type heredocSource struct {
	Name string      // file name (the heredoc word), used in a directory destination
	Data []byte      // content, already expanded by the caller
	Mode os.FileMode // 0 means 0644, as BuildKit
}

// errNotFound marks a source that does not exist in the context or rootfs.
var errNotFound = errors.New("not found")

// copyFiles performs op and returns the slash-separated paths, relative to
// op.DestRoot and without a leading "/", of every entry it created or
// modified (parents of Dest it created included), sorted.
func copyFiles(ctx context.Context, op copyOp) ([]string, error) {
	c, err := newCopier(&op)
	if err != nil {
		return nil, err
	}
	defer c.cleanup()
	items, err := c.collect(ctx)
	if err != nil {
		return nil, err
	}
	dest := destPath(op.Workdir, op.Dest)
	destIsDir := strings.HasSuffix(dest, "/") || len(items) > 1
	for i := range items {
		if err := c.copyItem(ctx, &items[i], dest, destIsDir); err != nil {
			return nil, err
		}
	}
	return c.finish()
}

// destPath joins Dest to the working directory as BuildKit does, keeping a
// trailing slash ("" and "." mean the working directory itself, a
// directory; "x/." ends with a slash).
func destPath(workdir, dest string) string {
	if workdir == "" {
		workdir = "/"
	}
	if dest == "" || dest == "." {
		dest = "./"
	}
	slash := strings.HasSuffix(dest, "/") || strings.HasSuffix(dest, "/.")
	p := dest
	if !path.IsAbs(p) {
		p = path.Join(workdir, p)
	}
	p = path.Clean("/" + p)
	if slash && p != "/" {
		p += "/"
	}
	return p
}

// collect turns op's sources into the list of items to copy, downloading
// URLs and expanding wildcards.
func (c *copier) collect(ctx context.Context) ([]srcItem, error) {
	op := c.op
	if err := checkKeepGitDir(op); err != nil {
		return nil, err
	}
	var items []srcItem
	for _, src := range op.Sources {
		remote, err := checkSource(op, src)
		if err != nil {
			return nil, err
		}
		if remote {
			it, err := c.remoteItem(ctx, src)
			if err != nil {
				return nil, err
			}
			items = append(items, it)
			continue
		}
		found, err := c.localItems(src)
		if err != nil {
			return nil, err
		}
		for i := range found {
			found[i].unpack = c.isUnpacked(&found[i])
		}
		items = append(items, found...)
	}
	for _, h := range op.Heredocs {
		it, err := c.heredocItem(h)
		if err != nil {
			return nil, err
		}
		items = append(items, it)
	}
	return items, nil
}

// checkKeepGitDir refuses ADD --keep-git-dir (git sources are not supported).
func checkKeepGitDir(op *copyOp) error {
	if op.KeepGitDir {
		return errors.New("ADD --keep-git-dir: ADD of git repositories is not supported yet")
	}
	return nil
}

// checkSource applies op's rules to one source argument: remote reports an
// http(s) URL to download (ADD only); git sources, URLs in COPY and
// --checksum with a local source are errors.
func checkSource(op *copyOp, src string) (remote bool, err error) {
	switch {
	case isGitSource(src):
		if !op.Add {
			return false, errors.New("source can't be a git ref for COPY")
		}
		return false, fmt.Errorf("ADD %s: ADD of git repositories is not supported yet", src)
	case isHTTPSource(src):
		if !op.Add {
			return false, errors.New("source can't be a URL for COPY")
		}
		return true, nil
	case op.Checksum != "":
		return false, errors.New("checksum requires HTTP(S) or Git sources")
	}
	return false, nil
}

// copyItem copies one source item to dest (fsutil's Copy for one source):
// a file goes inside dest when dest is (or must be) a directory, and
// becomes dest otherwise; a directory's contents are merged into dest.
func (c *copier) copyItem(ctx context.Context, it *srcItem, dest string, destIsDir bool) error {
	// Each source is copied on its own, as in BuildKit: hard links are kept
	// within one source, not across sources.
	c.inodes = map[[2]uint64]string{}
	clean := path.Clean(dest)
	if it.unpack {
		// BuildKit extracts into dest as a directory made with mode 0755
		// whatever --chmod says (archive entries keep their own modes).
		dir, err := c.join(clean)
		if err == nil {
			dir, err = c.mkdirMode(dir, 0o755)
		}
		if err != nil {
			return err
		}
		return c.extractArchive(ctx, it.path, dir)
	}
	ensure := path.Dir(clean)
	if destIsDir {
		ensure = clean
	}
	if _, err := c.mkdirAll(ensure); err != nil {
		return err
	}
	dst, err := c.join(clean)
	if err != nil {
		return err
	}
	fiSrc, err := os.Lstat(it.path)
	if err != nil {
		return err
	}
	fiDest, err := os.Stat(dst)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("destination %s: %w", dest, err)
	}
	if !fiSrc.IsDir() && fiDest != nil && fiDest.IsDir() {
		dst = filepath.Join(dst, it.name)
	}
	target := filepath.Dir(dst)
	if (fiSrc.IsDir() && fiDest == nil) || dst == c.root {
		target = dst
	}
	if _, err := c.mkdirResolved(target); err != nil {
		return err
	}
	return c.copyEntry(ctx, it, it.path, "", dst, false, walkState{})
}

// finish clamps mtimes to SOURCE_DATE_EPOCH and returns the changed paths.
func (c *copier) finish() ([]string, error) {
	out := make([]string, 0, len(c.changed))
	for rel := range c.changed {
		if rel != "" {
			out = append(out, rel)
		}
	}
	slices.Sort(out)
	if c.op.SourceDateEpoch != nil {
		for _, rel := range out {
			if err := clampMtime(filepath.Join(c.root, filepath.FromSlash(rel)), *c.op.SourceDateEpoch); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

// newExcludeMatcher compiles --exclude patterns (nil when there are none).
func newExcludeMatcher(patterns []string) (*patternmatcher.PatternMatcher, error) {
	if len(patterns) == 0 {
		return nil, nil
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		return nil, fmt.Errorf("invalid --exclude patterns %q: %w", patterns, err)
	}
	return pm, nil
}
