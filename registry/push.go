package registry

import (
	"context"
	"errors"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Push uploads img once and points every tag at it. Tags are grouped by
// repository; in each repository blobs already present are skipped, the
// others are uploaded once, and the manifest is written after its blobs,
// then put under each further tag. A repository on a registry that already
// received the image mounts the blobs from there instead of uploading them
// again; so do layers whose blob the local store knows to be in another
// repository of the target's registry (a pulled base image, a layer from a
// registry build cache: see layers.Store.AddBlobSource), and those are then
// never read, so a lazy layer is not downloaded. The first failure stops the push and names its tag.
func Push(ctx context.Context, img v1.Image, tags []string, opts Options) error {
	if len(tags) == 0 {
		return errors.New("pushing: no tag given")
	}
	parsed := make([]name.Tag, len(tags))
	for i, t := range tags {
		p, err := opts.parseTag(t)
		if err != nil {
			return &Error{Op: "pushing", Ref: t, Cause: "invalid reference: " + oneLine(err.Error()), Err: err}
		}
		parsed[i] = p
	}
	pusher, err := remote.NewPusher(opts.remoteOptions(ctx)...)
	if err != nil {
		return wrapErr("pushing", tags[0], parsed[0], err)
	}
	pushed := map[string]name.Reference{} // registry -> a repository holding the blobs
	for _, group := range groupByRepo(parsed) {
		var src v1.Image = &mountImage{Image: img, mount: opts.mountSources(group[0].Context(), nil)}
		if from, ok := pushed[group[0].RegistryStr()]; ok {
			src = &mountImage{Image: img, mount: mountFrom(from)}
		}
		for _, t := range group {
			if err := pusher.Push(ctx, t, src); err != nil {
				return wrapErr("pushing", t.String(), t, err)
			}
		}
		pushed[group[0].RegistryStr()] = group[0]
	}
	return nil
}

// groupByRepo groups tags by repository, keeping the order of first use.
func groupByRepo(tags []name.Tag) [][]name.Tag {
	var groups [][]name.Tag
	index := map[string]int{}
	for _, t := range tags {
		key := t.Context().Name()
		i, ok := index[key]
		if !ok {
			i = len(groups)
			index[key] = i
			groups = append(groups, nil)
		}
		groups[i] = append(groups[i], t)
	}
	return groups
}
