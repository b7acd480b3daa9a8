package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/sys/unix"
)

// signalError is the cause of a context canceled by a signal.
type signalError struct{ sig syscall.Signal }

func (e signalError) Error() string { return "canceled by " + unix.SignalName(e.sig) }

// exitCode is the shell's status of a process killed by the signal.
func (e signalError) exitCode() int { return 128 + int(e.sig) }

// signalContext returns a context canceled by the first SIGINT or SIGTERM,
// with a signalError as its cause. A second signal exits the process at
// once with status 128+signal. stop releases the signal handler.
func signalContext(parent context.Context, stderr io.Writer) (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancelCause(parent)
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		select {
		case s := <-sigs:
			fmt.Fprintln(stderr, "imgbuild: canceling (signal again to exit now)")
			cancel(signalError{s.(syscall.Signal)})
		case <-done:
			return
		}
		select {
		case s := <-sigs:
			os.Exit(signalError{s.(syscall.Signal)}.exitCode())
		case <-done:
		}
	}()
	return ctx, func() {
		signal.Stop(sigs)
		close(done)
		cancel(nil)
	}
}
