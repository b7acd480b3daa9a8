// Package registrytest holds test support shared by imgbuild's packages: a real
// registry (Debian's docker-registry) started on a loopback port, busybox-based
// base images, and the root-only test gate.
package registrytest

import (
	"os"
	"testing"
)

// RequireRootEnv is the environment variable CI sets so that root-only tests
// fail instead of skipping when they cannot run.
const RequireRootEnv = "IMGBUILD_REQUIRE_ROOT"

// RequireRoot skips t unless the process runs as root. When RequireRootEnv is
// "1" (as in CI) it fails t instead, so root-only tests never skip silently.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv(RequireRootEnv) == "1" {
		t.Fatalf("test needs root and %s=1 forbids skipping", RequireRootEnv)
	}
	t.Skip("test needs root")
}
