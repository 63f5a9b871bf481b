//go:build unix && !linux

package testenv

import "syscall"

// sysProcAttr puts the child in a process group of its own (Kill and Stop
// signal the group). There is no parent-death signal outside Linux.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
