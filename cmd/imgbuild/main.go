// Command imgbuild builds OCI and Docker images from Dockerfiles without a
// daemon. `imgbuild -t app:1.0 .` builds the Dockerfile in the current
// directory into the local store; `imgbuild --help` lists the commands.
package main

import (
	"context"
	"os"

	sandbox "github.com/imgbuild/imgbuild/builder/run"
)

func main() {
	// The RUN sandbox re-executes this program as its init: in that mode
	// Init runs the init and exits, before anything else happens.
	if sandbox.Init() {
		return
	}
	ctx, stop := signalContext(context.Background(), os.Stderr)
	code := run(ctx, os.Args, os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
