//go:build !linux

package registrytest

import "syscall"

func childAttr() *syscall.SysProcAttr { return nil }
