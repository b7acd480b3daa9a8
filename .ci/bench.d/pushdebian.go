// Command pushdebian pushes the tests' Debian bookworm minbase image
// (registrytest.MakeDebianImage: .ci/debian-rootfs, built once per machine
// and cached, in one deterministic layer) to a plain-HTTP registry, for the
// RUN benchmarks of .ci/bench. It prints the pushed image's digest.
//
//	go run .ci/bench.d/pushdebian.go -ref 127.0.0.1:5000/library/debian:bookworm
//
// Run it from the repository root (it finds .ci/debian-rootfs from there),
// as root (debootstrap).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/imgbuild/imgbuild/registry/registrytest"
)

func main() {
	ref := flag.String("ref", "", "where to push, HOST:PORT/REPO:TAG (plain HTTP)")
	flag.Parse()
	if *ref == "" || flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "usage: pushdebian -ref HOST:PORT/REPO:TAG")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	digest, err := push(ctx, *ref)
	if err != nil {
		fmt.Fprintln(os.Stderr, "pushdebian:", err)
		os.Exit(1)
	}
	fmt.Println(digest)
}

func push(ctx context.Context, ref string) (string, error) {
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return "", fmt.Errorf("reference %q: %w", ref, err)
	}
	img, err := registrytest.MakeDebianImage(ctx)
	if err != nil {
		return "", err
	}
	if err := remote.Write(r, img, remote.WithContext(ctx)); err != nil {
		return "", fmt.Errorf("pushing %s: %w", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		return "", err
	}
	return d.String(), nil
}
