package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/urfave/cli/v2"

	"github.com/imgbuild/imgbuild/builder"
	"github.com/imgbuild/imgbuild/layers"
	"github.com/imgbuild/imgbuild/registry"
)

func buildCommand(s *streams) *cli.Command {
	return &cli.Command{
		Name:      "build",
		Usage:     "build an image from a Dockerfile (the default command)",
		ArgsUsage: "CONTEXT",
		Description: "CONTEXT is a directory, or - to read a tar stream of the context from stdin.\n" +
			"The image digest (sha256:...) is printed on stdout; progress goes to stderr.\n" +
			"SOURCE_DATE_EPOCH in the environment (seconds) clamps every timestamp.",
		Flags: append([]cli.Flag{
			&cli.StringSliceFlag{Name: "tag", Aliases: []string{"t"}, Usage: "name and tag the image (`NAME[:TAG]`, repeatable)"},
			&cli.StringFlag{Name: "file", Aliases: []string{"f"}, Usage: "Dockerfile `PATH` (- reads stdin; default CONTEXT/Dockerfile)"},
			&cli.StringSliceFlag{Name: "build-arg", Usage: "set a build argument (`K=V`, repeatable; K alone takes it from the environment)"},
			&cli.StringFlag{Name: "target", Usage: "build this `STAGE` (default the last one)"},
			&cli.StringSliceFlag{Name: "label", Usage: "add a label to the image (`K=V`, repeatable)"},
			&cli.StringFlag{Name: "platform", Usage: "target platform `os/arch[/variant]` (default the host's)"},
			&cli.BoolFlag{Name: "push", Usage: "push every tag to its registry (same as -o type=registry)"},
			&cli.StringSliceFlag{Name: "output", Aliases: []string{"o"}, Usage: "export the image (`SPEC`, repeatable): type=oci,dest=DIR | type=docker,dest=FILE | " +
				"type=tar,dest=FILE | type=local,dest=DIR | type=registry | DIR (local) | - (tar to stdout)"},
			&cli.StringSliceFlag{Name: "insecure-registry", Usage: "use plain HTTP or unverified TLS for `HOST[:PORT]` (repeatable)"},
			&cli.StringFlag{Name: "iidfile", Usage: "write the image digest to `FILE`"},
			&cli.StringFlag{Name: "metadata-file", Usage: "write build metadata as JSON to `FILE`"},
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "print only the image digest"},
			&cli.StringFlag{Name: "progress", Value: "auto", Usage: "progress `MODE`: auto, plain or json (auto is plain for now, terminal or not)"},
			&cli.StringFlag{Name: "compression", Value: "gzip", Usage: "layer compression `CODEC`: gzip, zstd or uncompressed"},
			&cli.IntFlag{Name: "compression-level", Usage: "compression `LEVEL`: 1-9 for gzip, 1-22 for zstd", DefaultText: "the compressor's"},
		}, append(append(cacheFlags(), runFlags()...), secretFlag())...),
		Action: func(c *cli.Context) error { return buildAction(c, s) },
	}
}

// buildConfig is everything the build command takes from its flags.
type buildConfig struct {
	opts         builder.Options  // Store and Progress are set by buildAction
	outputs      []builder.Output // exported by buildAction, which owns stdout
	iidFile      string
	metadataFile string
	quiet        bool
	progress     string // plain or json, ignored when quiet
}

// buildOptions turns the build command's flags and arguments into a
// buildConfig. It reads stdin only for `-f -`; every error is a usage error
// except a failure to read stdin.
func buildOptions(c *cli.Context, s *streams) (*buildConfig, error) {
	if err := needArgs(c, 1, 1); err != nil {
		return nil, err
	}
	cfg := &buildConfig{
		iidFile:      c.String("iidfile"),
		metadataFile: c.String("metadata-file"),
		quiet:        c.Bool("quiet"),
	}
	o := &cfg.opts
	o.Target = c.String("target")
	o.Registry.Insecure = c.StringSlice("insecure-registry")

	if err := contextAndDockerfile(c, s, o); err != nil {
		return nil, err
	}
	var err error
	if o.Tags, err = parseTags(c.StringSlice("tag")); err != nil {
		return nil, usagef(c, "%v", err)
	}
	if o.BuildArgs, err = parseBuildArgs(c.StringSlice("build-arg"), s.lookupEnv); err != nil {
		return nil, usagef(c, "%v", err)
	}
	if o.Labels, err = parseKV("label", c.StringSlice("label")); err != nil {
		return nil, usagef(c, "%v", err)
	}
	if o.Platform, err = parsePlatform(c.String("platform")); err != nil {
		return nil, usagef(c, "%v", err)
	}
	if cfg.outputs, err = parseOutputs(c.StringSlice("output"), c.Bool("push")); err != nil {
		return nil, usagef(c, "%v", err)
	}
	for _, out := range cfg.outputs {
		if _, named := out.Attrs["name"]; out.Type == builder.OutputRegistry && !named && len(o.Tags) == 0 {
			return nil, usagef(c, "nothing to push to: give -t NAME[:TAG] (or -o type=registry,name=...)")
		}
	}
	if err := checkInsecure(o.Registry.Insecure); err != nil {
		return nil, usagef(c, "%v", err)
	}
	if o.Layer, err = layerOptions(c.String("compression"), c.Int("compression-level"), c.IsSet("compression-level")); err != nil {
		return nil, usagef(c, "%v", err)
	}
	if cfg.progress, err = progressMode(c.String("progress")); err != nil {
		return nil, usagef(c, "%v", err)
	}
	if o.SourceDateEpoch, err = sourceDateEpoch(s.lookupEnv); err != nil {
		return nil, usagef(c, "%v", err)
	}
	if err := cacheOptions(c, o); err != nil {
		return nil, err
	}
	if err := secretOptions(c, s, o); err != nil {
		return nil, err
	}
	if err := runOptions(c, s, o); err != nil {
		return nil, err
	}
	return cfg, nil
}

// contextAndDockerfile sets the context and Dockerfile options from the
// CONTEXT argument and -f.
func contextAndDockerfile(c *cli.Context, s *streams, o *builder.Options) error {
	ctxArg, file := c.Args().First(), c.String("file")
	if ctxArg == "" {
		return usagef(c, "empty CONTEXT")
	}
	if ctxArg == "-" && file == "-" {
		return usagef(c, "CONTEXT and -f cannot both be - (stdin)")
	}
	for _, p := range []string{"http://", "https://", "git://", "git@", "ssh://"} {
		if strings.HasPrefix(ctxArg, p) {
			return usagef(c, "remote build contexts (%s) are not supported yet", ctxArg)
		}
	}
	if ctxArg == "-" {
		o.ContextTar = s.stdin
	} else {
		o.ContextDir = ctxArg
	}
	if file == "-" {
		b, err := io.ReadAll(s.stdin)
		if err != nil {
			return fmt.Errorf("reading Dockerfile from stdin: %w", err)
		}
		o.DockerfileContent = b
	} else {
		o.Dockerfile = file
	}
	return nil
}

// parseTags checks that every -t value is a valid tag reference.
func parseTags(tags []string) ([]string, error) {
	for _, t := range tags {
		if _, err := name.NewTag(t); err != nil {
			return nil, fmt.Errorf("invalid tag %q: %w", t, err)
		}
	}
	return tags, nil
}

// parseBuildArgs parses --build-arg values. As in docker, `K` alone takes
// K's value from the environment and is skipped when K is not set there.
func parseBuildArgs(args []string, lookupEnv func(string) (string, bool)) (map[string]string, error) {
	if len(args) == 0 {
		return nil, nil
	}
	m := make(map[string]string, len(args))
	for _, a := range args {
		k, v, ok := strings.Cut(a, "=")
		if k == "" {
			return nil, fmt.Errorf("invalid --build-arg %q: empty name", a)
		}
		if !ok {
			if v, ok = lookupEnv(k); !ok {
				continue
			}
		}
		m[k] = v
	}
	return m, nil
}

// parseKV parses K=V values; K alone means an empty value, as in docker.
func parseKV(flag string, vals []string) (map[string]string, error) {
	if len(vals) == 0 {
		return nil, nil
	}
	m := make(map[string]string, len(vals))
	for _, a := range vals {
		k, v, _ := strings.Cut(a, "=")
		if k == "" {
			return nil, fmt.Errorf("invalid --%s %q: empty name", flag, a)
		}
		m[k] = v
	}
	return m, nil
}

// parsePlatform checks the os/arch[/variant] form of --platform ("local"
// is the host's, as in buildx).
func parsePlatform(p string) (string, error) {
	if p == "" {
		return "", nil
	}
	if strings.Contains(p, ",") {
		return "", fmt.Errorf("invalid --platform %q: building for several platforms is not supported yet", p)
	}
	if _, err := registry.ParsePlatform(p); err != nil {
		return "", err
	}
	return p, nil
}

// parseOutputs parses the -o values; --push adds a registry output unless
// one is given.
func parseOutputs(vals []string, push bool) ([]builder.Output, error) {
	var outs []builder.Output
	hasRegistry, toStdout := false, 0
	for _, v := range vals {
		out, err := builder.ParseOutput(v)
		if err != nil {
			return nil, err
		}
		hasRegistry = hasRegistry || out.Type == builder.OutputRegistry
		if out.Dest == "-" {
			toStdout++
		}
		outs = append(outs, out)
	}
	if toStdout > 1 {
		return nil, fmt.Errorf("only one output can go to stdout")
	}
	if push && !hasRegistry {
		outs = append(outs, builder.Output{Type: builder.OutputRegistry})
	}
	return outs, nil
}

// checkInsecure checks the HOST[:PORT] form of --insecure-registry.
func checkInsecure(hosts []string) error {
	for _, h := range hosts {
		if h == "" || strings.Contains(h, "://") || strings.ContainsAny(strings.TrimSuffix(h, "/"), "/ @") {
			return fmt.Errorf("invalid --insecure-registry %q: want HOST[:PORT]", h)
		}
	}
	return nil
}

// layerOptions checks --compression and --compression-level.
func layerOptions(comp string, level int, levelSet bool) (layers.LayerOptions, error) {
	c, err := layers.ParseCompression(comp)
	if err != nil {
		return layers.LayerOptions{}, err
	}
	if !levelSet {
		return layers.LayerOptions{Compression: c}, nil
	}
	lo, hi := 0, 0
	switch c {
	case layers.Gzip:
		lo, hi = 1, 9
	case layers.Zstd:
		lo, hi = 1, 22
	default:
		return layers.LayerOptions{}, fmt.Errorf("--compression-level does not apply to --compression=%s", c)
	}
	if level < lo || level > hi {
		return layers.LayerOptions{}, fmt.Errorf("--compression-level %d out of range %d-%d for %s", level, lo, hi, c)
	}
	return layers.LayerOptions{Compression: c, Level: level}, nil
}

// progressMode checks --progress; auto is plain as long as there is no
// terminal UI.
func progressMode(p string) (string, error) {
	switch p {
	case "auto", "plain":
		return "plain", nil
	case "json":
		return "json", nil
	}
	return "", fmt.Errorf("invalid --progress %q: want auto, plain or json", p)
}

// sourceDateEpoch reads SOURCE_DATE_EPOCH (integer seconds) from the
// environment.
func sourceDateEpoch(lookupEnv func(string) (string, bool)) (*time.Time, error) {
	v, ok := lookupEnv("SOURCE_DATE_EPOCH")
	if !ok || v == "" {
		return nil, nil
	}
	sec, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return nil, fmt.Errorf("invalid SOURCE_DATE_EPOCH %q in the environment: want integer seconds", v)
	}
	t := time.Unix(sec, 0).UTC()
	return &t, nil
}

func buildAction(c *cli.Context, s *streams) error {
	cfg, err := buildOptions(c, s)
	if err != nil {
		return err
	}
	o := &cfg.opts
	if o.ContextDir != "" {
		fi, err := os.Stat(o.ContextDir)
		if err != nil {
			return fmt.Errorf("build context: %w", err)
		}
		if !fi.IsDir() {
			return fmt.Errorf("build context %s is not a directory", o.ContextDir)
		}
	}
	stdoutUsed := false
	for _, out := range cfg.outputs {
		if out.Dest == "-" {
			stdoutUsed = true
			if isTerminal(s.stdout) {
				return usagef(c, "refusing to write a tar to a terminal: redirect stdout or give -o type=...,dest=FILE")
			}
		}
	}
	if o.Store, err = openStore(c, s); err != nil {
		return err
	}
	stderr := &syncWriter{w: s.stderr}
	o.Warn = warner(stderr)
	if !cfg.quiet {
		o.Progress = newRenderer(stderr, cfg.progress).event
	}
	// The build writes the outputs itself: a build whose only outputs are
	// pushes then keeps lazy layers unread (the push mounts them).
	o.Outputs, o.Stdout = cfg.outputs, s.stdout
	res, err := builder.Build(c.Context, *o)
	if err != nil {
		return err
	}
	if err := writeBuildFiles(cfg, res); err != nil {
		return err
	}
	printCacheSummary(stderr, cfg, res.Cache)
	digest := res.Digest.String()
	if stdoutUsed {
		// stdout carries the exported tar: the digest goes to stderr.
		if !cfg.quiet {
			fmt.Fprintln(s.stderr, digest)
		}
		return nil
	}
	fmt.Fprintln(s.stdout, digest)
	return nil
}

// writeBuildFiles writes --iidfile and --metadata-file.
func writeBuildFiles(cfg *buildConfig, res *builder.Result) error {
	if cfg.iidFile != "" {
		if err := os.WriteFile(cfg.iidFile, []byte(res.Digest.String()), 0o644); err != nil {
			return fmt.Errorf("writing --iidfile: %w", err)
		}
	}
	if cfg.metadataFile != "" {
		b, err := buildMetadata(res, usesRemoteCache(&cfg.opts))
		if err != nil {
			return err
		}
		if err := os.WriteFile(cfg.metadataFile, b, 0o644); err != nil {
			return fmt.Errorf("writing --metadata-file: %w", err)
		}
	}
	return nil
}

// buildMetadata is the --metadata-file JSON, with buildx's key names, and
// "imgbuild.cache" (res.Cache) when the build used a remote cache.
func buildMetadata(res *builder.Result, remoteCache bool) ([]byte, error) {
	m := map[string]any{
		"containerimage.digest":        res.Digest.String(),
		"containerimage.config.digest": res.ConfigDigest.String(),
		"containerimage.descriptor":    res.Descriptor,
	}
	if len(res.Tags) > 0 {
		m["image.name"] = strings.Join(res.Tags, ",")
	}
	if remoteCache {
		m["imgbuild.cache"] = newCacheMetadata(res.Cache)
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encoding metadata: %w", err)
	}
	return append(b, '\n'), nil
}
