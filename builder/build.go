package builder

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/imgbuild/imgbuild/builder/dockerfile"
	"github.com/imgbuild/imgbuild/builder/run"
	"github.com/imgbuild/imgbuild/layers"
	"github.com/imgbuild/imgbuild/registry"
)

// build is the state of one Build call shared by its stages.
type build struct {
	opts   Options
	bctx   *buildContext
	plan   *plan
	target v1.Platform
	epoch  *time.Time
	now    time.Time
	tmp    string // scratch directory for this build, removed at the end
	step   atomic.Int64
	stages *sync.WaitGroup // running stage goroutines
	cancel context.CancelFunc
	failMu sync.Mutex
	failed error // the first stage error: it cancels the whole build

	progressMu sync.Mutex
	imagesMu   sync.Mutex
	images     map[string]*stageResult // COPY --from=<image>, by reference
	remote     *remoteCache            // --cache-from, --cache-to (cache_remote.go)
	// outStore is opts.Store fetching lazy layers under the caller's
	// context, for the Result (opts.Store uses the build's).
	outStore *layers.Store

	statOnce sync.Once         // opens stat on the first COPY/ADD
	stat     *layers.StatIndex // digests of context files, kept in the store
	statErr  error
	snapOnce sync.Once          // creates snap on the first filesystem step that runs
	snap     layers.Snapshotter // the stages' filesystems
	snapErr  error
	execOnce sync.Once // creates exec on the first RUN
	exec     run.Executor
	execErr  error
}

// Build builds the Dockerfile in opts and stores the result in opts.Store,
// tagged with opts.Tags, then writes opts.Outputs.
func Build(ctx context.Context, opts Options) (*Result, error) {
	if opts.Store == nil {
		return nil, errors.New("builder: Options.Store is required")
	}
	target, err := parsePlatform(opts.Platform)
	if err != nil {
		return nil, err
	}
	switch opts.Network {
	case "", "default", "host", "none":
	default:
		return nil, fmt.Errorf("unknown network mode %q (want default, host or none)", opts.Network)
	}
	release, err := opts.Store.Lease(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	tmp, removeTmp, err := opts.Store.LockedTempDir(ctx, "build-")
	if err != nil {
		return nil, fmt.Errorf("creating build directory: %w", err)
	}
	// Stages run in goroutines: when Build returns (a failed stage, a
	// cancelled ctx), the others are cancelled and waited for before their
	// directories go.
	switch opts.Snapshotter {
	case "", layers.SnapshotterAuto, layers.SnapshotterOverlay, layers.SnapshotterCopy:
	default:
		removeTmp()
		return nil, fmt.Errorf("unknown snapshotter %q (want auto, overlay or copy)", opts.Snapshotter)
	}
	outer := ctx
	ctx, cancel := context.WithCancel(ctx)
	var stages sync.WaitGroup
	var b *build
	defer func() {
		cancel()
		stages.Wait()
		if b != nil {
			b.closeSnapshotter()
			b.saveStatIndex(ctx)
		}
		removeTmp()
	}()

	bctx, err := loadContext(ctx, contextOptions{
		Dir: opts.ContextDir, Tar: opts.ContextTar, Dockerfile: opts.Dockerfile,
		DockerfileContent: opts.DockerfileContent, TempDir: filepath.Join(tmp, "context"),
	})
	if err != nil {
		return nil, err
	}
	f, err := dockerfile.Parse(bctx.Dockerfile, bctx.DockerfileName)
	if err != nil {
		return nil, err
	}
	p, err := newPlan(f, &opts, target, registry.HostPlatform())
	if err != nil {
		return nil, err
	}
	b = &build{opts: opts, bctx: bctx, plan: p, target: target, now: time.Now().UTC(), tmp: tmp,
		images: map[string]*stageResult{}, stages: &stages, cancel: cancel}
	fetcher := registry.NewFetcher(opts.Registry, b.countFetch)
	b.opts.Store = opts.Store.WithFetcher(ctx, fetcher)
	b.outStore = opts.Store.WithFetcher(outer, fetcher)
	// Creating the sandbox executor cleans what runs of killed processes
	// left; an error surfaces at the first RUN.
	_, _ = b.executor()
	if b.epoch, err = sourceDateEpoch(&opts, p); err != nil {
		return nil, err
	}
	b.remote = b.importCaches(ctx)
	res, err := b.stageResult(ctx, p.target)
	if err != nil {
		return nil, b.firstError(err)
	}
	out, err := b.finish(ctx, res)
	if err != nil {
		return nil, err
	}
	if err := b.exportCaches(ctx, out); err != nil {
		return nil, err
	}
	return out, nil
}

// sourceDateEpoch resolves SOURCE_DATE_EPOCH: the build arg first (as
// BuildKit), then Options.SourceDateEpoch.
func sourceDateEpoch(o *Options, p *plan) (*time.Time, error) {
	v, ok := o.BuildArgs["SOURCE_DATE_EPOCH"]
	if !ok {
		v, ok = getEnv(p.globalArgs, "SOURCE_DATE_EPOCH")
	}
	if ok && v != "" {
		sec, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("invalid SOURCE_DATE_EPOCH %q: %w", v, err)
		}
		t := time.Unix(sec, 0).UTC()
		return &t, nil
	}
	if o.SourceDateEpoch != nil {
		t := o.SourceDateEpoch.UTC()
		return &t, nil
	}
	return nil, nil
}

// stageResult builds st once (starting its dependencies concurrently) and
// waits for its result.
func (b *build) stageResult(ctx context.Context, st *stage) (*stageResult, error) {
	b.start(ctx, st)
	select {
	case <-st.done:
		return st.res, st.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (b *build) start(ctx context.Context, st *stage) {
	st.once.Do(func() {
		for _, d := range st.deps {
			b.start(ctx, d)
		}
		b.stages.Go(func() {
			defer close(st.done)
			st.res, st.err = b.runStage(ctx, st)
			if st.err != nil {
				b.fail(st.err)
			}
		})
	})
}

// createdTime is the timestamp of new history entries and the config.
func (b *build) createdTime() time.Time {
	if b.epoch != nil {
		return *b.epoch
	}
	return b.now
}

// progress reports an event, serialized.
func (b *build) progress(ev Event) {
	if b.opts.Progress == nil {
		return
	}
	b.progressMu.Lock()
	defer b.progressMu.Unlock()
	b.opts.Progress(ev)
}

// fail records the first stage error and cancels the other stages, as
// BuildKit fails a build as soon as any step fails.
func (b *build) fail(err error) {
	b.failMu.Lock()
	defer b.failMu.Unlock()
	if b.failed == nil {
		b.failed = err
		b.cancel()
	}
}

// firstError is the error that stopped the build: the first stage failure
// rather than the cancellations it caused.
func (b *build) firstError(err error) error {
	b.failMu.Lock()
	defer b.failMu.Unlock()
	if b.failed != nil {
		return b.failed
	}
	return err
}

// executor is Options.Executor, or the default sandbox with its state in
// the store, created on first use.
func (b *build) executor() (run.Executor, error) {
	b.execOnce.Do(func() {
		if b.exec = b.opts.Executor; b.exec == nil {
			b.exec, b.execErr = run.New(run.Options{StateDir: RunStateDir(b.opts.Store)})
		}
	})
	return b.exec, b.execErr
}

// RunStateDir is where the default Executor keeps the state of running RUN
// steps (ROOT/run); run.New with it removes what dead processes left there.
func RunStateDir(st *layers.Store) string {
	return filepath.Join(st.Root(), "run")
}

// snapshotter is the build's snapshotter, created on first use: a build
// whose steps all come from the cache mounts nothing.
func (b *build) snapshotter(ctx context.Context) (layers.Snapshotter, error) {
	b.snapOnce.Do(func() {
		b.snap, b.snapErr = layers.NewSnapshotter(ctx, b.opts.Store, b.opts.Snapshotter,
			layers.SnapshotOptions{NoChown: os.Geteuid() != 0})
	})
	return b.snap, b.snapErr
}

func (b *build) closeSnapshotter() {
	b.snapOnce.Do(func() {}) // no snapshotter from now on
	if b.snap != nil {
		b.snap.Close()
	}
}

// statIndex is the store's index of context file digests, opened on first
// use and saved when the build ends.
func (b *build) statIndex(ctx context.Context) (*layers.StatIndex, error) {
	b.statOnce.Do(func() {
		b.stat, b.statErr = layers.OpenStatIndex(ctx, b.opts.Store)
	})
	return b.stat, b.statErr
}

func (b *build) saveStatIndex(ctx context.Context) {
	b.statOnce.Do(func() {}) // none from now on
	if b.stat != nil {
		_ = b.stat.Save(context.WithoutCancel(ctx)) // a lost index only costs hashing again
	}
}
