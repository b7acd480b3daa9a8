package main

import (
	"fmt"
	"strconv"

	"github.com/docker/go-units"
	"github.com/urfave/cli/v2"

	"github.com/imgbuild/imgbuild/builder"
	sandbox "github.com/imgbuild/imgbuild/builder/run"
	"github.com/imgbuild/imgbuild/layers"
)

// snapshotterEnv overrides the default of --snapshotter (e.g. "copy" for
// every build of a CI job that runs in an unprivileged container).
const snapshotterEnv = "IMGBUILD_SNAPSHOTTER"

// runFlags are the build flags that shape RUN steps.
func runFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "network", Value: "default",
			Usage: "network `MODE` of RUN steps: default or host (the host's network), none (loopback only); RUN --network=MODE overrides it"},
		&cli.StringFlag{Name: "snapshotter", DefaultText: "$" + snapshotterEnv + ", else auto",
			Usage: "stage filesystem `KIND`: auto (overlay where it can be mounted, else copy), overlay or copy"},
		&cli.StringFlag{Name: "memory", Aliases: []string{"m"}, DefaultText: "no limit",
			Usage: "memory limit of each RUN step in `BYTES` (512m, 1g, 1073741824; at least 6m)"},
		&cli.StringFlag{Name: "pids-limit", DefaultText: "no limit",
			Usage: "maximum `N` of processes and threads in each RUN step (at least 16; 0 or -1 is no limit)"},
	}
}

// runOptions sets o's Network, Snapshotter, Memory and PidsLimit from the
// flags (and $IMGBUILD_SNAPSHOTTER). Errors are usage errors.
func runOptions(c *cli.Context, s *streams, o *builder.Options) error {
	var err error
	if o.Network, err = parseNetwork(c.String("network")); err != nil {
		return usagef(c, "%v", err)
	}
	if o.Snapshotter, err = snapshotter(c, s.lookupEnv); err != nil {
		return usagef(c, "%v", err)
	}
	if o.Memory, err = parseMemory(c.String("memory")); err != nil {
		return usagef(c, "%v", err)
	}
	if o.PidsLimit, err = parsePidsLimit(c.String("pids-limit")); err != nil {
		return usagef(c, "%v", err)
	}
	return nil
}

// parseNetwork checks --network; docker build's default and host both use
// the host's network.
func parseNetwork(n string) (string, error) {
	switch n {
	case "default", sandbox.NetworkHost, sandbox.NetworkNone:
		return n, nil
	}
	return "", fmt.Errorf("invalid --network %q: want default, host or none", n)
}

// snapshotter returns --snapshotter, else a non-empty $IMGBUILD_SNAPSHOTTER,
// else auto, after checking it.
func snapshotter(c *cli.Context, lookupEnv func(string) (string, bool)) (string, error) {
	kind, where := c.String("snapshotter"), "--snapshotter %q"
	if !c.IsSet("snapshotter") {
		kind, where = layers.SnapshotterAuto, ""
		if v, ok := lookupEnv(snapshotterEnv); ok && v != "" {
			kind, where = v, snapshotterEnv+" %q in the environment"
		}
	}
	switch kind {
	case layers.SnapshotterAuto, layers.SnapshotterOverlay, layers.SnapshotterCopy:
		return kind, nil
	}
	return "", fmt.Errorf("invalid "+where+": want auto, overlay or copy", kind)
}

// parseMemory parses --memory in docker's forms (a number of bytes, or
// with a k, m, g, t or p suffix in powers of 1024); "" and 0 are no limit.
func parseMemory(v string) (int64, error) {
	if v == "" {
		return 0, nil
	}
	n, err := units.RAMInBytes(v)
	if err != nil {
		return 0, fmt.Errorf("invalid --memory %q: want BYTES, e.g. 512m, 1g or 1073741824", v)
	}
	if n != 0 && n < sandbox.MinMemory {
		return 0, fmt.Errorf("--memory %s is below the minimum 6m (the limit counts the RUN sandbox's own init process)", v)
	}
	return n, nil
}

// parsePidsLimit parses --pids-limit; "", 0 and -1 (docker's "unlimited")
// are no limit.
func parsePidsLimit(v string) (int64, error) {
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < -1 {
		return 0, fmt.Errorf("invalid --pids-limit %q: want a number of processes, 0 or -1 for no limit", v)
	}
	if n == -1 {
		return 0, nil
	}
	if n != 0 && n < sandbox.MinPidsLimit {
		return 0, fmt.Errorf("--pids-limit %d is below the minimum %d (the limit counts the threads of the RUN sandbox's own init process)", n, sandbox.MinPidsLimit)
	}
	return n, nil
}
