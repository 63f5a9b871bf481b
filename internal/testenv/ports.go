package testenv

import (
	"errors"
	"net"
	"strconv"
	"testing"
)

// Processes are given their ports on the command line or in a config file,
// before they start, so that the caller knows where to reach them without
// parsing their output. The ports come from the kernel (bind to port 0).

// Addr is the loopback address of port: 127.0.0.1:port.
func Addr(port int) string { return "127.0.0.1:" + strconv.Itoa(port) }

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// clusterBusOffset is how far above its port a Redis Cluster node listens
// for the cluster bus.
const clusterBusOffset = 10000

// FreeClusterPort returns a free port whose Redis Cluster bus port
// (port+10000) is free too.
func FreeClusterPort() (int, error) {
	for range 50 {
		port, err := FreePort()
		if err != nil {
			return 0, err
		}
		if port+clusterBusOffset > 65535 {
			continue
		}
		ln, err := net.Listen("tcp", Addr(port+clusterBusOffset))
		if err != nil {
			continue
		}
		ln.Close()
		return port, nil
	}
	return 0, errors.New("no free port pair for a Redis Cluster node")
}

// MustFreePort is FreePort for a test.
func MustFreePort(tb testing.TB) int {
	tb.Helper()
	port, err := FreePort()
	if err != nil {
		tb.Fatalf("finding a free port: %v", err)
	}
	return port
}
