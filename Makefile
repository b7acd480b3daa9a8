# imgbuild: build, test, lint, benchmark.
#
#   make build     static binary bin/imgbuild
#   make test      install test dependencies (as root, Debian) and run every test
#   make example   build examples/hello into the local store
#   make lint      gofmt + go vet
#   make bench     Go benchmarks, then .ci/bench (side-by-side with buildah) if present

# Go from PATH, else the usual install location.
GO ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
GOFMT ?= $(dir $(GO))gofmt

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)

# TESTFLAGS are extra `go test` flags (.ci/run passes -json; try -v or -run=X).
TESTFLAGS ?=
TEST_TIMEOUT ?= 20m
PKGS ?= ./...

.PHONY: all build test deps example lint bench clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/imgbuild ./cmd/imgbuild

# Installing needs root; as another user the tests needing the tools fail and say so.
deps:
	@if [ "$$(id -u)" = 0 ]; then .ci/install-deps; \
	else echo "make: not root, skipping .ci/install-deps" >&2; fi

test: deps
	$(GO) test $(TESTFLAGS) -count=1 -timeout $(TEST_TIMEOUT) $(PKGS)

example: build
	./bin/imgbuild -t hello:latest examples/hello

lint:
	@out=$$($(GOFMT) -l $$(find . -name '*.go' -not -path './.git/*' -not -path '*/testdata/*')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet .ci/testreport.go

bench: deps
	$(GO) test -run='^$$' -skip='^BenchmarkLayers$$' -bench=. -benchmem -timeout $(TEST_TIMEOUT) $(PKGS)
	@if [ -x .ci/bench ]; then .ci/bench; fi

clean:
	rm -rf bin
