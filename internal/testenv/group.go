package testenv

import (
	"sync"
	"time"
)

// Group collects the processes a program started so that it can end them
// all on the way out, in any order and at once. A test does not need one:
// the Must functions tie each process to its test. Its Add fits
// Command.OnStart and the OnStart fields of the servers' options.
type Group struct {
	mu    sync.Mutex
	procs []*Process
}

// Add puts p in the group.
func (g *Group) Add(p *Process) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.procs = append(g.procs, p)
}

// Kill kills every process of the group still running.
func (g *Group) Kill() { g.each(func(p *Process) { p.Kill() }) }

// Stop stops every process of the group still running, politely first
// (see Process.Stop).
func (g *Group) Stop(grace time.Duration) {
	g.each(func(p *Process) { _ = p.Stop(grace) })
}

func (g *Group) each(f func(*Process)) {
	g.mu.Lock()
	procs := append([]*Process(nil), g.procs...)
	g.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Go(func() { f(p) })
	}
	wg.Wait()
}
