package testenv

import (
	"context"
	"fmt"
	"net"
	"regexp"
	"time"
)

// A process is ready when it says so (a line on its output) or when its
// port accepts a connection; either wait ends early, with an error, when
// the process exits. Nothing here sleeps for a fixed time.

// DefaultReadyTimeout bounds a wait for readiness whose context has no
// deadline.
const DefaultReadyTimeout = 30 * time.Second

// withReadyTimeout gives ctx a deadline if it has none.
func withReadyTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, DefaultReadyTimeout)
}

// WaitUntil waits until cond holds for the process's output so far; cond is
// called again on every write. It fails if the process exits first (and
// cond does not hold for its last output) or ctx ends.
func (p *Process) WaitUntil(ctx context.Context, what string, cond func(out string) bool) error {
	ctx, cancel := withReadyTimeout(ctx)
	defer cancel()
	start := time.Now()
	for {
		s, changed := p.out.snapshot()
		if cond(s) {
			return nil
		}
		select {
		case <-changed:
		case <-p.done:
			if cond(p.out.String()) {
				return nil
			}
			return fmt.Errorf("%s exited (%v) before its output showed %s", p.name, p.err, what)
		case <-ctx.Done():
			return fmt.Errorf("%s: no %s within %v (%w)", p.name, what, time.Since(start).Round(time.Millisecond), ctx.Err())
		}
	}
}

// WaitOutput waits until re matches the process's output and returns the
// submatches.
func (p *Process) WaitOutput(ctx context.Context, re *regexp.Regexp) ([]string, error) {
	var m []string
	err := p.WaitUntil(ctx, fmt.Sprintf("output matching %q", re), func(s string) bool {
		m = re.FindStringSubmatch(s)
		return m != nil
	})
	return m, err
}

// tcpPollInterval is how often WaitTCP tries to connect.
const tcpPollInterval = 20 * time.Millisecond

// WaitTCP waits until a TCP connect to addr succeeds: for processes that
// print nothing when they listen (Caddy prints its logs, but not one line
// per listener it is sure of).
func (p *Process) WaitTCP(ctx context.Context, addr string) error {
	ctx, cancel := withReadyTimeout(ctx)
	defer cancel()
	start := time.Now()
	tick := time.NewTicker(tcpPollInterval)
	defer tick.Stop()
	var d net.Dialer
	for {
		dctx, dcancel := context.WithTimeout(ctx, time.Second)
		c, err := d.DialContext(dctx, "tcp", addr)
		dcancel()
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-tick.C:
		case <-p.done:
			return fmt.Errorf("%s exited (%v) before %s accepted connections", p.name, p.err, addr)
		case <-ctx.Done():
			return fmt.Errorf("%s: %s did not accept connections within %v: %v", p.name, addr, time.Since(start).Round(time.Millisecond), err)
		}
	}
}

// Wait waits for the process to exit on its own and returns how it ended,
// or ctx's error if ctx ends first. It applies no deadline of its own.
func (p *Process) Wait(ctx context.Context) error {
	select {
	case <-p.done:
		return p.err
	case <-ctx.Done():
		return ctx.Err()
	}
}
