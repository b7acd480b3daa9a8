package builder

import (
	"os"
	"testing"

	"github.com/imgbuild/imgbuild/builder/run"
)

// TestMain lets the test binary serve as the RUN sandbox's init.
func TestMain(m *testing.M) {
	if run.Init() {
		return
	}
	os.Exit(m.Run())
}
