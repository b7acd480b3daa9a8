package registrytest

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// RegistryBinary is Debian's docker-registry (package docker-registry).
const RegistryBinary = "/usr/bin/docker-registry"

const registryConfig = `version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %s
`

// Start runs Debian's docker-registry on a free loopback port with its
// storage in a temporary directory, waits until it answers /v2/, and stops
// it when t ends. It returns the registry address "127.0.0.1:PORT"; the
// registry speaks plain HTTP (pass it as an insecure registry).
func Start(t testing.TB) string {
	t.Helper()
	if _, err := os.Stat(RegistryBinary); err != nil {
		t.Fatalf("registry binary missing (%v): install it with `apt-get install -y docker-registry`", err)
	}
	dir := t.TempDir()
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		addr, err := startOnce(t, dir, attempt)
		if err == nil {
			return addr
		}
		lastErr = err
	}
	t.Fatalf("starting docker-registry: %v", lastErr)
	return ""
}

func startOnce(t testing.TB, dir string, attempt int) (string, error) {
	addr, err := freeAddr()
	if err != nil {
		return "", err
	}
	storage := filepath.Join(dir, fmt.Sprintf("storage%d", attempt))
	cfg := filepath.Join(dir, fmt.Sprintf("config%d.yml", attempt))
	if err := os.WriteFile(cfg, fmt.Appendf(nil, registryConfig, storage, addr), 0o644); err != nil {
		return "", err
	}
	var logs bytes.Buffer
	cmd := exec.Command(RegistryBinary, "serve", cfg)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=" + dir}
	cmd.Stdout, cmd.Stderr = &logs, &logs
	cmd.SysProcAttr = childAttr()
	exited := make(chan error, 1)
	started := make(chan error, 1)
	go func() {
		// Pdeathsig fires when the thread that started the child ends, so
		// keep this goroutine on its thread for as long as the child lives.
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		exited <- cmd.Wait()
	}()
	if err := <-started; err != nil {
		return "", err
	}
	stop := func() {
		_ = cmd.Process.Kill()
		<-exited
	}
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			return "", fmt.Errorf("docker-registry exited (%v): %s", err, strings.TrimSpace(logs.String()))
		case <-time.After(50 * time.Millisecond):
		}
		resp, err := client.Get("http://" + addr + "/v2/")
		if err != nil {
			continue
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Cleanup(stop)
			return addr, nil
		}
	}
	stop()
	return "", fmt.Errorf("docker-registry on %s did not answer /v2/ within 20s: %s", addr, strings.TrimSpace(logs.String()))
}

// freeAddr picks a free loopback TCP address.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}
