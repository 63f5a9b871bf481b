package testenv

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"
)

// The test layer: the same processes, tied to a test. A process started
// through a Must function is killed when the test (or subtest) that started
// it ends; if that test failed, its whole output is printed then, and a
// data race the race detector reported in it fails the test.

// watcher returns the OnStart hook that ties a process to tb.
func watcher(tb testing.TB) func(*Process) {
	return func(p *Process) {
		tb.Cleanup(func() {
			p.Kill()
			out := p.Output()
			if strings.Contains(out, "WARNING: DATA RACE") {
				tb.Errorf("%s reported a data race (see its output below)", p.Name())
			}
			if tb.Failed() {
				tb.Logf("---- output of %s (%s) ----\n%s---- end of %s ----", p.Name(), strings.Join(p.Args(), " "), out, p.Name())
			}
		})
	}
}

// then chains OnStart hooks.
func then(first, second func(*Process)) func(*Process) {
	if first == nil {
		return second
	}
	return func(p *Process) {
		first(p)
		second(p)
	}
}

// timeoutCtx is a context for one wait of a test.
func timeoutCtx(timeout time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), timeout)
}

// mustReady starts what (a server, by start, whose processes opts'
// OnStart tied to tb already) and waits for it to be ready, failing tb if
// it is not within DefaultReadyTimeout.
func mustReady[T any](tb testing.TB, what string, start func(context.Context) (T, error)) T {
	tb.Helper()
	ctx, cancel := timeoutCtx(DefaultReadyTimeout)
	defer cancel()
	v, err := start(ctx)
	if err != nil {
		tb.Fatalf("starting %s: %v", what, err)
	}
	return v
}

// MustStart is Start for a test.
func MustStart(tb testing.TB, c Command) *Process {
	tb.Helper()
	c.OnStart = then(c.OnStart, watcher(tb))
	p, err := Start(c)
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// MustWaitUntil is WaitUntil with a timeout, failing the test.
func (p *Process) MustWaitUntil(tb testing.TB, what string, timeout time.Duration, cond func(out string) bool) {
	tb.Helper()
	ctx, cancel := timeoutCtx(timeout)
	defer cancel()
	if err := p.WaitUntil(ctx, what, cond); err != nil {
		tb.Fatal(err)
	}
}

// MustWaitOutput is WaitOutput with a timeout, failing the test.
func (p *Process) MustWaitOutput(tb testing.TB, re *regexp.Regexp, timeout time.Duration) []string {
	tb.Helper()
	ctx, cancel := timeoutCtx(timeout)
	defer cancel()
	m, err := p.WaitOutput(ctx, re)
	if err != nil {
		tb.Fatal(err)
	}
	return m
}

// MustWaitTCP is WaitTCP with a timeout, failing the test.
func (p *Process) MustWaitTCP(tb testing.TB, addr string, timeout time.Duration) {
	tb.Helper()
	ctx, cancel := timeoutCtx(timeout)
	defer cancel()
	if err := p.WaitTCP(ctx, addr); err != nil {
		tb.Fatal(err)
	}
}

// MustWaitExit waits for the process to exit on its own and returns how it
// ended; it fails the test if the process still runs after timeout.
func (p *Process) MustWaitExit(tb testing.TB, timeout time.Duration) error {
	tb.Helper()
	ctx, cancel := timeoutCtx(timeout)
	defer cancel()
	err := p.Wait(ctx)
	if !p.Exited() {
		tb.Fatalf("%s did not exit within %v", p.Name(), timeout)
	}
	return err
}
