// Command library builds a Dockerfile with imgbuild's Go API and prints the
// image digest:
//
//	go run ./examples/library -root /tmp/imgbuild-store -t hello:latest examples/hello
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"

	"github.com/imgbuild/imgbuild/builder"
	"github.com/imgbuild/imgbuild/builder/run"
	"github.com/imgbuild/imgbuild/layers"
)

func main() {
	// RUN steps re-execute this program as their sandbox's init: this must
	// come first.
	if run.Init() {
		return
	}
	root := flag.String("root", os.TempDir()+"/imgbuild-example", "store directory")
	tag := flag.String("t", "example:latest", "tag for the built image")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: library [-root DIR] [-t TAG] CONTEXT")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := build(ctx, *root, *tag, flag.Arg(0)); err != nil {
		fmt.Fprintln(os.Stderr, "library:", err)
		os.Exit(1)
	}
}

func build(ctx context.Context, root, tag, contextDir string) error {
	store, err := layers.OpenStore(ctx, root)
	if err != nil {
		return err
	}
	res, err := builder.Build(ctx, builder.Options{
		ContextDir: contextDir,
		Tags:       []string{tag},
		Store:      store,
		Progress: func(ev builder.Event) {
			if !ev.Done.IsZero() {
				fmt.Fprintf(os.Stderr, "[%d/%d] %s\n", ev.Step, ev.Total, ev.Instruction)
			}
		},
	})
	if err != nil {
		return err
	}
	layersOf, err := res.Image.Layers()
	if err != nil {
		return err
	}
	fmt.Printf("%s (%d layers) tagged %v\n", res.Digest, len(layersOf), res.Tags)
	return nil
}
