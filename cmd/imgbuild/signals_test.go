package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	sandbox "github.com/imgbuild/imgbuild/builder/run"
)

// TestMain makes the test binary the RUN sandbox init when an Executor
// re-executes it (as main does), the helper process of TestSignals when
// IMGBUILD_SIGNAL_HELPER=1, and imgbuild itself (main, with os.Args) when
// mainEnv is 1.
func TestMain(m *testing.M) {
	if sandbox.Init() {
		return
	}
	if os.Getenv("IMGBUILD_SIGNAL_HELPER") == "1" {
		signalHelper()
		return
	}
	if os.Getenv(mainEnv) == "1" {
		os.Unsetenv(mainEnv)
		main()
		return
	}
	os.Exit(m.Run())
}

// mainEnv makes the test binary run main: tests start it as a subprocess
// (imgbuildCommand) to signal or kill a real imgbuild process.
const mainEnv = "IMGBUILD_TEST_MAIN"

// signalHelper waits on signalContext and says what happens.
func signalHelper() {
	ctx, stop := signalContext(context.Background(), os.Stderr)
	defer stop()
	fmt.Println("ready")
	<-ctx.Done()
	fmt.Println("canceled")
	time.Sleep(time.Minute) // the second signal exits before this ends
	os.Exit(0)
}

func TestSignals(t *testing.T) {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "IMGBUILD_SIGNAL_HELPER=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	lines := bufio.NewScanner(out)
	expect := func(want string) {
		t.Helper()
		if !lines.Scan() || lines.Text() != want {
			t.Fatalf("helper said %q (%v), want %q", lines.Text(), lines.Err(), want)
		}
	}
	expect("ready")
	// The first SIGINT cancels the context; the process goes on.
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	expect("canceled")
	// The second exits at once with 128+SIGINT.
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 130 {
			t.Errorf("after a second SIGINT: %v, want exit status 130", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the second SIGINT did not exit the process")
	}
}
