package builder

import "os"

// entrySel is what the walk of an item does with one entry: skip it (and
// everything below), or visit it, copying it when include is set (a
// directory not included is still created for an included descendant).
type entrySel struct {
	skip     bool
	include  bool
	excluded bool      // matched --exclude: a directory is walked only if walkExcluded
	st       walkState // passed to the children
}

// selectEntry decides what happens to the entry fi at rel below the item
// (rel "" is the item itself, always included): .dockerignore'd entries do
// not exist, --parents include patterns and --exclude patterns select, as
// in fsutil's copier. copyFiles and sourcesDigest share it.
func (c *copier) selectEntry(it *srcItem, rel string, fi os.FileInfo, parent walkState) (entrySel, error) {
	sel := entrySel{include: true}
	if rel == "" {
		return sel, nil
	}
	skip := entrySel{skip: true}
	if it.ctx != nil && it.ctx.hidden(it.ctxPath(rel), fi.IsDir()) {
		return skip, nil
	}
	var err error
	if it.include != nil {
		if sel.include, sel.st.include, err = it.include.MatchesUsingParentResults(rel, parent.include); err != nil {
			return skip, err
		}
		if !sel.include && fi.IsDir() && !mayContainMatch(it.includePatterns, rel) {
			return skip, nil
		}
	}
	if c.excludes != nil {
		var ex bool
		if ex, sel.st.exclude, err = c.excludes.MatchesUsingParentResults(rel, parent.exclude); err != nil {
			return skip, err
		}
		if ex {
			sel.include, sel.excluded = false, true
			if it.include == nil && !c.excludes.Exclusions() {
				return skip, nil
			}
		}
	}
	if !sel.include && !fi.IsDir() {
		return skip, nil
	}
	return sel, nil
}

// walkExcluded reports whether the children of a directory are visited:
// always, unless the directory matched --exclude and no "!" pattern could
// re-include something below it.
func (c *copier) walkExcluded(excluded bool) bool {
	return !excluded || (c.excludes != nil && c.excludes.Exclusions())
}
