// Package builder turns a Dockerfile and its build context into an image:
// it parses the Dockerfile into a graph of stages, runs the steps the target
// needs, and returns a go-containerregistry v1.Image stored in a local store.
//
// RUN steps run in a sandbox that is the program itself, re-executed as the
// init of new namespaces. A program that calls Build must therefore call
// run.Init (package github.com/imgbuild/imgbuild/builder/run) first thing
// in main, and in TestMain for its tests:
//
//	func main() {
//		if run.Init() {
//			return // this process was the sandbox init; Init exits it
//		}
//		...
//	}
//
// Without it, every RUN fails with an error that says so. Options.Executor
// replaces the sandbox altogether.
package builder

import (
	"io"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/imgbuild/imgbuild/builder/run"
	"github.com/imgbuild/imgbuild/layers"
	"github.com/imgbuild/imgbuild/registry"
)

// Options configure one Build. The zero value of every field is documented.
type Options struct {
	// ContextDir is the build context directory. Ignored when ContextTar is set.
	ContextDir string
	// ContextTar, when non-nil, is the build context as a tar stream
	// (`imgbuild build -`), optionally gzip/bzip2/xz compressed.
	ContextTar io.Reader
	// Dockerfile is the Dockerfile path; "" means ContextDir/Dockerfile (or the
	// file named Dockerfile inside ContextTar).
	Dockerfile string
	// DockerfileContent, when non-nil, is used instead of reading Dockerfile
	// (`-f -`). Dockerfile then only names it in error messages.
	DockerfileContent []byte
	// Tags are the references the result is tagged with in Store.
	Tags []string
	// BuildArgs are --build-arg values.
	BuildArgs map[string]string
	// Labels are added to the final image config (--label).
	Labels map[string]string
	// Target is the stage to build; "" means the last stage.
	Target string
	// Platform is the target platform "os/arch[/variant]"; "" means the host's.
	Platform string
	// NoCache disables the build cache: every step runs (and is cached
	// again).
	NoCache bool
	// NoCacheFilter names the stages (names or indices) whose steps run
	// even when cached (--no-cache-filter).
	NoCacheFilter []string
	// CacheFrom are remote caches whose steps a build may use when the
	// local cache misses (--cache-from); a missing or broken one is a
	// warning (Options.Warn), not an error.
	CacheFrom []CacheSpec
	// CacheTo are where the build exports its cache (--cache-to).
	CacheTo []CacheSpec
	// Warn, when non-nil, receives warnings (a cache that could not be
	// read or written).
	Warn func(msg string)
	// SourceDateEpoch, when non-nil, clamps every timestamp in the image.
	// When nil, the SOURCE_DATE_EPOCH build arg is used if given.
	SourceDateEpoch *time.Time
	// Store is the local store; required.
	Store *layers.Store
	// Registry configures base image pulls (auth, insecure registries).
	Registry registry.Options
	// Layer configures layer compression.
	Layer layers.LayerOptions
	// Progress, when non-nil, receives an Event as each step starts and ends.
	Progress func(Event)
	// Outputs are exported after a successful build (see ParseOutput).
	Outputs []Output
	// Stdout receives outputs whose Dest is "-"; nil makes such outputs an error.
	Stdout io.Writer

	// Network is the network of RUN steps that do not set --network:
	// "default" ("" is the same) and "host" use the host's network, as
	// docker build does; "none" gives each step only a loopback interface.
	Network string
	// Snapshotter is the kind of layers.Snapshotter the stage filesystems
	// use: "auto" ("" is the same), "overlay" or "copy" (see
	// layers.NewSnapshotter).
	Snapshotter string
	// Memory and PidsLimit limit each RUN step (bytes, tasks); 0 is no
	// limit. See run.Spec.
	Memory, PidsLimit int64
	// Executor runs RUN steps; nil means run.New with its state directory
	// in Store. A program using the default must call run.Init first
	// thing in main (see the package documentation).
	Executor run.Executor
	// Secrets are the values RUN --mount=type=secret mounts, by id
	// (`--secret id=ID,src=FILE|env=VAR`). A step sees one as a read-only
	// file kept in memory (default /run/secrets/ID, mode 0400) or as an
	// environment variable (env=NAME); it never reaches the image, its
	// config, its history or a layer. A secret the Dockerfile marks
	// required=true and that is missing fails the step; an optional one is
	// skipped (its env=NAME is set empty, as BuildKit's). Nil means none.
	Secrets map[string][]byte
}

// Result is a successful build.
type Result struct {
	Image        v1.Image
	Digest       v1.Hash // manifest digest
	ConfigDigest v1.Hash
	Descriptor   v1.Descriptor
	Tags         []string
	Cache        CacheStats // remote cache use (--cache-from, --cache-to)
}

// Event reports the progress of one step.
type Event struct {
	Step, Total int
	Stage       string
	Instruction string // as written, e.g. "COPY . /app"
	Cached      bool
	Started     time.Time
	Done        time.Time // zero while the step runs
	Log         []byte    // output of the step, if any
	Err         error
}

// Output is one export target (`-o type=...`).
type Output struct {
	Type  string            // oci, docker, tar, local, registry
	Dest  string            // file or directory; "-" is stdout for file types
	Attrs map[string]string // remaining key=value attributes
}
