package testenv

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"time"
)

// Command describes a process to start.
type Command struct {
	// Name identifies the process in errors and logs; the base name of
	// Path if empty.
	Name string
	Path string // the executable (looked up on PATH if it has no slash)
	Args []string
	Dir  string   // the working directory; the caller's if empty
	Env  []string // added to the caller's environment
	// Stdin keeps a pipe to the process's standard input (Process.Stdin):
	// the node client scripts read their commands there.
	Stdin bool
	// LogFile, if set, receives the output too (appended), for a program
	// that reads it afterwards (the benchmark's log summary).
	LogFile string
	// OnStart is called with the process as soon as it runs, before any
	// wait for readiness: the test wrappers use it to tie the process to
	// the test, a program to add it to a Group, so that it is ended even
	// when the wait fails.
	OnStart func(*Process)
}

// Process is a running (or ended) child process in its own process group,
// whose output (stdout and stderr together) is kept.
type Process struct {
	name  string
	cmd   *exec.Cmd
	out   *output
	stdin io.WriteCloser
	done  chan struct{} // closed once the process has been waited for
	err   error         // cmd.Wait's result, valid after done
}

// waitDelay bounds how long waiting for a process that has exited may take
// when something it started still holds its output open.
const waitDelay = 5 * time.Second

// Start starts a process. It does not wait for anything: see WaitOutput,
// WaitTCP and the Start functions of the servers.
func Start(c Command) (*Process, error) {
	name := c.Name
	if name == "" {
		name = filepath.Base(c.Path)
	}
	p := &Process{name: name, out: newOutput(), done: make(chan struct{})}
	cmd := exec.Command(c.Path, c.Args...)
	cmd.Dir = c.Dir
	cmd.Env = append(os.Environ(), c.Env...)
	var w io.Writer = p.out
	var logf *os.File
	if c.LogFile != "" {
		f, err := os.OpenFile(c.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return nil, fmt.Errorf("%s: log file: %w", name, err)
		}
		logf = f
		w = io.MultiWriter(p.out, f)
	}
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = sysProcAttr()
	cmd.WaitDelay = waitDelay
	if c.Stdin {
		in, err := cmd.StdinPipe()
		if err != nil {
			closeFile(logf)
			return nil, fmt.Errorf("%s: stdin: %w", name, err)
		}
		p.stdin = in
	}
	p.cmd = cmd
	started := make(chan error, 1)
	go func() {
		// The parent-death signal is tied to the thread that started the
		// process (see sysProcAttr): this goroutine keeps that thread for
		// itself until the process has ended.
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		p.err = cmd.Wait()
		closeFile(logf)
		close(p.done)
	}()
	if err := <-started; err != nil {
		closeFile(logf)
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	if c.OnStart != nil {
		c.OnStart(p)
	}
	return p, nil
}

func closeFile(f *os.File) {
	if f != nil {
		f.Close()
	}
}

// Name is the process's name in errors and logs.
func (p *Process) Name() string { return p.name }

// Args is the command line the process was started with.
func (p *Process) Args() []string { return p.cmd.Args }

// Pid is the process id (and its process group's).
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Output returns everything the process has written so far.
func (p *Process) Output() string { return p.out.String() }

// Snapshot returns the output so far and a channel closed on the next
// write, for callers that wait on the output in their own way.
func (p *Process) Snapshot() (string, <-chan struct{}) { return p.out.snapshot() }

// Tail returns the last n lines of the output, for error messages.
func (p *Process) Tail(n int) string { return p.out.tail(n) }

// Stdin is the write end of the process's standard input; nil unless
// Command.Stdin was set.
func (p *Process) Stdin() io.WriteCloser { return p.stdin }

// Done is closed once the process has ended.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has ended.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Err is how the process ended (exec.Cmd.Wait's result); nil while it
// runs.
func (p *Process) Err() error {
	if !p.Exited() {
		return nil
	}
	return p.err
}

// Signal sends sig to the process itself (not its group), as an
// orchestrator would.
func (p *Process) Signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }

// Kill ends the process group at once (SIGKILL), as a crash would, and
// waits for the process.
func (p *Process) Kill() {
	if p.Exited() {
		return
	}
	_ = syscall.Kill(-p.Pid(), syscall.SIGKILL)
	<-p.done
}

// Stop asks the process group to terminate (SIGTERM: Redis writes its
// append-only file, Caddy drains) and kills it if it has not exited within
// grace, which it then reports as an error.
func (p *Process) Stop(grace time.Duration) error {
	if p.Exited() {
		return nil
	}
	_ = syscall.Kill(-p.Pid(), syscall.SIGTERM)
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case <-p.done:
		return nil
	case <-timer.C:
	}
	p.Kill()
	return fmt.Errorf("%s did not exit within %v of SIGTERM: killed", p.name, grace)
}
