// Package testenv starts and stops the real processes the project is tested
// and measured with: Caddy built from this tree, the MCP upstreams (the Go
// demo upstream of cmd/mcp-demo-upstream, @modelcontextprotocol/
// server-everything on node), redis-server, a Redis Cluster and Redis
// Sentinels.
//
// It exists so that the end-to-end tests (tests/), the Redis store's tests
// (sessionstore/redis) and the benchmark (cmd/mcp-bench) share one harness
// instead of three copies of it.
//
// Two layers:
//
//   - The core takes a context and returns errors: StartRedis,
//     StartCluster, StartCaddy, StartDemoUpstream and so on. A program such
//     as the benchmark uses it directly. The context bounds the wait for
//     readiness (DefaultReadyTimeout when it has no deadline), never the
//     life of the process: a process runs until it is stopped or killed.
//   - The Must* functions and methods take a testing.TB: they start the same
//     things, fail the test when that fails, kill the processes when the
//     test ends, and print each process's output when the test has failed.
//
// Readiness is waited for by events, not sleeps: the process's own line on
// its output ("listening on", "Ready to accept connections") or a
// successful connect to its port. Every process runs in a process group of
// its own, which is what Kill and Stop signal, and on Linux it dies with the
// process that started it (Pdeathsig), even when a test binary is killed by
// its timeout before any cleanup runs.
//
// The package holds no mutable state of its own: everything lives in the
// values it returns. Free ports are free "a moment ago" (the kernel may hand
// them out again before the process binds them), as with any harness that
// gives processes their ports in advance.
package testenv
