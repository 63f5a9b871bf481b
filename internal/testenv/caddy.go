package testenv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// Caddyfile is a generated Caddy configuration. Its global options keep
// Caddy to itself and quick: no automatic HTTPS, no config saved to disk,
// a one-second grace period on reloads and stops.
type Caddyfile struct {
	// Admin turns the admin endpoint on, on 127.0.0.1:AdminPort (a free
	// port if 0); without it the Caddyfile says `admin off`.
	Admin     bool
	AdminPort int
	Debug     bool // log at DEBUG
	Sites     []Site
}

// Site is one site of a Caddyfile: http://127.0.0.1:Port, bound to
// 127.0.0.1 only.
type Site struct {
	Port int // 0: a free port, chosen by StartCaddy
	// Body is the content of the site block. It is written after one tab:
	// lines after the first carry their own indentation.
	Body string
}

// String is the Caddyfile's text.
func (cf Caddyfile) String() string {
	var b strings.Builder
	if cf.Admin {
		fmt.Fprintf(&b, "{\n\tadmin %s\n", Addr(cf.AdminPort))
	} else {
		b.WriteString("{\n\tadmin off\n")
	}
	b.WriteString("\tauto_https off\n\tpersist_config off\n\tgrace_period 1s\n")
	if cf.Debug {
		b.WriteString("\tdebug\n")
	}
	b.WriteString("}\n")
	for _, s := range cf.Sites {
		fmt.Fprintf(&b, "\nhttp://127.0.0.1:%d {\n\tbind 127.0.0.1\n\t%s\n}\n", s.Port, s.Body)
	}
	return b.String()
}

// withPorts returns a copy of cf whose free ports are chosen.
func (cf Caddyfile) withPorts() (Caddyfile, error) {
	var err error
	if cf.Admin && cf.AdminPort == 0 {
		if cf.AdminPort, err = FreePort(); err != nil {
			return cf, err
		}
	}
	cf.Sites = append([]Site(nil), cf.Sites...)
	for i := range cf.Sites {
		if cf.Sites[i].Port == 0 {
			if cf.Sites[i].Port, err = FreePort(); err != nil {
				return cf, err
			}
		}
	}
	return cf, nil
}

// CaddyConfig describes a Caddy process.
type CaddyConfig struct {
	// Bin is the caddy binary, built from this tree so that it has the
	// bridge's modules (CADDY_BIN, ./caddy). Required.
	Bin string
	// Dir is Caddy's working directory and HOME (its data and config
	// directories go there, never in the user's), and holds its
	// Caddyfile. Required by StartCaddy; MustCaddy uses a temporary
	// directory of the test if empty.
	Dir       string
	Name      string // "caddy" if empty
	Caddyfile Caddyfile
	Env       []string // added to the environment
	LogFile   string   // see Command.LogFile
	OnStart   func(*Process)
}

// Caddy is a running Caddy.
type Caddy struct {
	bin, dir string
	env      []string
	proc     *Process
	cf       Caddyfile // the configuration running
	reloads  int
}

// CaddyEnv is the environment that keeps a Caddy's files in dir.
func CaddyEnv(dir string) []string {
	return []string{
		"HOME=" + dir,
		"XDG_DATA_HOME=" + filepath.Join(dir, "data"),
		"XDG_CONFIG_HOME=" + filepath.Join(dir, "config"),
	}
}

// StartCaddy writes the Caddyfile to Dir, runs Caddy on it, and waits
// until every site's port and the admin endpoint accept connections.
func StartCaddy(ctx context.Context, cfg CaddyConfig) (*Caddy, error) {
	if cfg.Bin == "" || cfg.Dir == "" {
		return nil, errors.New("testenv: CaddyConfig needs Bin and Dir")
	}
	if cfg.Name == "" {
		cfg.Name = "caddy"
	}
	cf, err := cfg.Caddyfile.withPorts()
	if err != nil {
		return nil, err
	}
	path := filepath.Join(cfg.Dir, "Caddyfile")
	if err := os.WriteFile(path, []byte(cf.String()), 0o600); err != nil {
		return nil, err
	}
	c := &Caddy{bin: cfg.Bin, dir: cfg.Dir, env: append(CaddyEnv(cfg.Dir), cfg.Env...), cf: cf}
	p, err := Start(Command{
		Name: cfg.Name, Path: cfg.Bin, Args: []string{"run", "--config", path, "--adapter", "caddyfile"},
		Dir: cfg.Dir, Env: c.env, LogFile: cfg.LogFile, OnStart: cfg.OnStart,
	})
	if err != nil {
		return nil, err
	}
	ctx, cancel := withReadyTimeout(ctx)
	defer cancel()
	for _, addr := range c.addrs() {
		if err := p.WaitTCP(ctx, addr); err != nil {
			p.Kill()
			return nil, fmt.Errorf("%w\n---- Caddyfile ----\n%s---- last lines of its output ----\n%s", err, cf.String(), p.Tail(30))
		}
	}
	c.proc = p
	return c, nil
}

// addrs are the addresses Caddy listens on.
func (c *Caddy) addrs() []string {
	var addrs []string
	for _, s := range c.cf.Sites {
		addrs = append(addrs, Addr(s.Port))
	}
	if c.cf.Admin {
		addrs = append(addrs, Addr(c.cf.AdminPort))
	}
	return addrs
}

// Proc is Caddy's process.
func (c *Caddy) Proc() *Process { return c.proc }

// Dir is Caddy's directory.
func (c *Caddy) Dir() string { return c.dir }

// Caddyfile is the configuration running, its ports chosen.
func (c *Caddy) Caddyfile() Caddyfile { return c.cf }

// URL is http://127.0.0.1:PORT of site i.
func (c *Caddy) URL(i int) string { return "http://" + Addr(c.cf.Sites[i].Port) }

// AdminURL is the admin endpoint's http://127.0.0.1:PORT, or "" when it is
// off.
func (c *Caddy) AdminURL() string {
	if !c.cf.Admin {
		return ""
	}
	return "http://" + Addr(c.cf.AdminPort)
}

// Reload loads cf with `caddy reload` through the admin endpoint, which
// must be on and stays where it is. It returns the command's output; on
// success cf is the configuration running. Free ports of cf's sites are
// chosen first.
func (c *Caddy) Reload(ctx context.Context, cf Caddyfile) (string, error) {
	if !c.cf.Admin {
		return "", errors.New("testenv: reloading a Caddy whose admin endpoint is off")
	}
	cf.Admin, cf.AdminPort = true, c.cf.AdminPort
	cf, err := cf.withPorts()
	if err != nil {
		return "", err
	}
	c.reloads++
	path := filepath.Join(c.dir, "Caddyfile."+strconv.Itoa(c.reloads))
	if err := os.WriteFile(path, []byte(cf.String()), 0o600); err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, c.bin, "reload", "--config", path, "--adapter", "caddyfile",
		"--address", Addr(c.cf.AdminPort))
	cmd.Dir = c.dir
	cmd.Env = append(os.Environ(), c.env...)
	out, err := cmd.CombinedOutput()
	if err == nil {
		c.cf = cf
	}
	return string(out), err
}

// CaddyModules returns what `caddy list-modules` prints: callers check that
// the binary has the modules they need (the bridge, its Redis store).
func CaddyModules(ctx context.Context, bin string) (string, error) {
	out, err := exec.CommandContext(ctx, bin, "list-modules").CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s list-modules: %w\n%s", bin, err, out)
	}
	return string(out), nil
}

// MustCaddy is StartCaddy for a test. When the test fails, the Caddyfile
// running at its end is printed with Caddy's output.
func MustCaddy(tb testing.TB, cfg CaddyConfig) *Caddy {
	tb.Helper()
	return MustCaddies(tb, cfg)[0]
}

// MustCaddies starts several Caddy processes at once (replicas of the
// bridge) and waits for all.
func MustCaddies(tb testing.TB, cfgs ...CaddyConfig) []*Caddy {
	tb.Helper()
	cs := make([]*Caddy, len(cfgs))
	errs := make([]error, len(cfgs))
	var wg sync.WaitGroup
	for i, cfg := range cfgs {
		if cfg.Dir == "" {
			cfg.Dir = tb.TempDir()
		}
		cfg.OnStart = then(cfg.OnStart, watcher(tb))
		wg.Go(func() {
			ctx, cancel := timeoutCtx(DefaultReadyTimeout)
			defer cancel()
			cs[i], errs[i] = StartCaddy(ctx, cfg)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		tb.Fatalf("starting Caddy: %v", err)
	}
	for _, c := range cs {
		tb.Cleanup(func() {
			if tb.Failed() {
				tb.Logf("---- Caddyfile of %s at the end ----\n%s", c.proc.Name(), c.cf.String())
			}
		})
	}
	return cs
}

// MustReload is Reload for a test: it fails the test unless the reload
// succeeded.
func (c *Caddy) MustReload(tb testing.TB, cf Caddyfile) {
	tb.Helper()
	ctx, cancel := timeoutCtx(DefaultReadyTimeout)
	defer cancel()
	if out, err := c.Reload(ctx, cf); err != nil {
		tb.Fatalf("caddy reload of %s: %v\n%s", c.proc.Name(), err, out)
	}
}
