package builder_test

// Built images run: an image built with RUN steps is exported as an OCI
// layout, unpacked with umoci and its CMD run with runc, as a user of the
// image would.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/imgbuild/imgbuild/builder"
	"github.com/imgbuild/imgbuild/registry/registrytest"
)

// runcDockerfile writes files in RUN steps as root and as a user, and its
// CMD prints them, the user it runs as, its working directory and an ENV.
const runcDockerfile = `FROM busybox
RUN mkdir -p /srv/app && echo built-by-run > /srv/app/greeting && ln -s greeting /srv/app/link && \
    sed -i 's/^staff:x:50:$/staff:x:50:app/' /etc/group
RUN rm /bin/wget && chown -R app:app /srv/app
USER app
WORKDIR /srv/app
RUN id -un > made-by && chmod 0600 made-by
ENV MESSAGE="from env"
CMD ["sh", "-c", "cat link made-by; id; pwd; echo \"$MESSAGE\"; ls -ln made-by | cut -c1-10; test -e /bin/wget || echo no-wget"]
`

// runcWant is what the CMD of runcDockerfile prints under runc: umoci
// resolves USER from the image's /etc/passwd and /etc/group, as a runtime
// does (supplementary groups from /etc/group; umoci 0.4.7 does not add the
// primary group to them, unlike BuildKit's RUN).
const runcWant = `built-by-run
app
uid=1000(app) gid=1000(app) groups=50(staff)
/srv/app
from env
-rw-------
no-wget
`

// TestBuiltImageRunsWithRunc builds runcDockerfile, exports it as an OCI
// layout (type=oci), unpacks it with `umoci unpack` and runs the bundle
// with `runc run`, comparing the CMD's output.
func TestBuiltImageRunsWithRunc(t *testing.T) {
	registrytest.RequireRoot(t)
	umoci, runc := requireTool(t, "umoci"), requireTool(t, "runc")
	layout := filepath.Join(t.TempDir(), "layout")
	rtBuild(t, runcDockerfile, func(o *builder.Options) {
		o.Tags = []string{"runc-test:1"}
		o.Outputs = []builder.Output{{Type: builder.OutputOCI, Dest: layout}}
	})

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	bundle := filepath.Join(t.TempDir(), "bundle")
	if out, err := exec.CommandContext(ctx, umoci, "unpack", "--image", layout+":1", bundle).CombinedOutput(); err != nil {
		t.Fatalf("umoci unpack --image %s:1: %v\n%s", layout, err, out)
	}
	if err := nonInteractive(filepath.Join(bundle, "config.json")); err != nil {
		t.Fatal(err)
	}

	state := t.TempDir()
	id := fmt.Sprintf("imgbuild-test-%d", os.Getpid())
	t.Cleanup(func() {
		// Normally gone already: runc run deletes the container when its
		// process exits.
		_ = exec.Command(runc, "--root", state, "delete", "--force", id).Run()
	})
	cmd := exec.CommandContext(ctx, runc, "--root", state, "run", "--bundle", bundle, id)
	var stdout, stderr bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("runc run: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.Bytes(), stderr.Bytes())
	}
	if got := stdout.String(); got != runcWant {
		t.Errorf("the CMD printed:\n%s\nwant:\n%s\nstderr:\n%s", got, runcWant, stderr.Bytes())
	}
}

// requireTool returns the path of a Debian tool the test needs; a missing
// one fails the test (CI installs them with .ci/install-deps).
func requireTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s missing (%v): install it with `apt-get install -y %s` (or .ci/install-deps)", name, err, name)
	}
	return p
}

// nonInteractive turns off process.terminal in a runtime spec, so that runc
// runs the process with the test's pipes instead of asking for a console.
func nonInteractive(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var spec map[string]any
	if err := json.Unmarshal(b, &spec); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	proc, ok := spec["process"].(map[string]any)
	if !ok {
		return fmt.Errorf("%s: no process", path)
	}
	proc["terminal"] = false
	if b, err = json.MarshalIndent(spec, "", "\t"); err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}
