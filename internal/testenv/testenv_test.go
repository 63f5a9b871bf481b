package testenv

import (
	"context"
	"errors"
	"net"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

func TestProcessOutputAndKill(t *testing.T) {
	p := MustStart(t, Command{Name: "sh", Path: "sh", Args: []string{"-c", "echo hello; read line; echo got $line; sleep 60"}, Stdin: true})
	p.MustWaitOutput(t, regexp.MustCompile(`hello\n`), 10*time.Second)
	if _, err := p.Stdin().Write([]byte("x\n")); err != nil {
		t.Fatal(err)
	}
	p.MustWaitUntil(t, "the echo", 10*time.Second, func(out string) bool { return strings.Contains(out, "got x") })
	if p.Exited() || p.Err() != nil {
		t.Fatalf("exited early: %v", p.Err())
	}
	p.Kill()
	if !p.Exited() || p.Err() == nil {
		t.Fatalf("after Kill: exited %v, err %v", p.Exited(), p.Err())
	}
}

func TestWaitFailsWhenTheProcessExits(t *testing.T) {
	p := MustStart(t, Command{Path: "sh", Args: []string{"-c", "echo bye; exit 3"}})
	_, err := p.WaitOutput(context.Background(), regexp.MustCompile(`never`))
	if err == nil || !strings.Contains(err.Error(), "exited") {
		t.Fatalf("WaitOutput on a process that exits: %v", err)
	}
	var ee *exec.ExitError
	if err := p.MustWaitExit(t, 10*time.Second); !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Fatalf("exit: %v", err)
	}
	if err := p.WaitTCP(context.Background(), Addr(MustFreePort(t))); err == nil {
		t.Fatal("WaitTCP on an exited process succeeded")
	}
}

func TestWaitTimesOut(t *testing.T) {
	p := MustStart(t, Command{Path: "sleep", Args: []string{"60"}})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := p.WaitOutput(ctx, regexp.MustCompile(`x`)); err == nil {
		t.Fatal("WaitOutput did not time out")
	}
	if err := p.Stop(5 * time.Second); err != nil {
		t.Fatalf("Stop: %v", err)
	}
}

func TestGroup(t *testing.T) {
	var g Group
	for range 3 {
		if _, err := Start(Command{Path: "sleep", Args: []string{"60"}, OnStart: g.Add}); err != nil {
			t.Fatal(err)
		}
	}
	g.Kill()
	for _, p := range g.procs {
		if !p.Exited() {
			t.Errorf("%d still runs", p.Pid())
		}
	}
}

func TestPorts(t *testing.T) {
	port, err := FreeClusterPort()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []int{port, port + clusterBusOffset} {
		ln, err := net.Listen("tcp", Addr(p))
		if err != nil {
			t.Fatalf("port %d: %v", p, err)
		}
		ln.Close()
	}
}

func TestCaddyfile(t *testing.T) {
	cf, err := Caddyfile{Admin: true, Sites: []Site{{Body: "respond ok"}, {Port: 1234, Body: "a\n\tb"}}}.withPorts()
	if err != nil {
		t.Fatal(err)
	}
	if cf.AdminPort == 0 || cf.Sites[0].Port == 0 || cf.Sites[1].Port != 1234 {
		t.Fatalf("ports: %+v", cf)
	}
	want := "{\n\tadmin " + Addr(cf.AdminPort) + "\n\tauto_https off\n\tpersist_config off\n\tgrace_period 1s\n}\n" +
		"\nhttp://" + Addr(cf.Sites[0].Port) + " {\n\tbind 127.0.0.1\n\trespond ok\n}\n" +
		"\nhttp://127.0.0.1:1234 {\n\tbind 127.0.0.1\n\ta\n\tb\n}\n"
	if got := cf.String(); got != want {
		t.Errorf("Caddyfile:\n%s\nwant:\n%s", got, want)
	}
}

// TestRedisRestart: a persistent server stopped and restarted keeps its
// data, and RedisClients counts the connections.
func TestRedisRestart(t *testing.T) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("redis-server not installed")
	}
	r := MustRedis(t, RedisOptions{Persist: true})
	ctx := context.Background()
	c := goredis.NewClient(&goredis.Options{Addr: r.Addr(), PoolSize: 1})
	defer c.Close()
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if n, err := RedisClients(ctx, r.Addr()); err != nil || n != 1 {
		t.Errorf("RedisClients = %d, %v; want 1", n, err)
	}
	if err := r.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	r.MustRestart(t)
	if v, err := c.Get(ctx, "k").Result(); err != nil || v != "v" {
		t.Fatalf("after the restart: %q, %v", v, err)
	}
}
