package builder_test

import (
	"context"
	"fmt"
	"log"

	"github.com/imgbuild/imgbuild/builder"
	"github.com/imgbuild/imgbuild/layers"
)

// Build a Dockerfile into a local store and get a go-containerregistry
// v1.Image back.
func ExampleBuild() {
	ctx := context.Background()
	store, err := layers.OpenStore(ctx, "/tmp/imgbuild-example-store")
	if err != nil {
		log.Fatal(err)
	}
	res, err := builder.Build(ctx, builder.Options{
		ContextDir: "../examples/hello",
		Tags:       []string{"hello:latest"},
		BuildArgs:  map[string]string{"SOURCE_DATE_EPOCH": "0"},
		Store:      store,
	})
	if err != nil {
		log.Fatal(err)
	}
	cfg, err := res.Image.ConfigFile()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(res.Digest, cfg.Config.Cmd)
}
