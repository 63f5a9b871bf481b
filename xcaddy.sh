#!/usr/bin/env bash
# Builds and runs Caddy with the MCP SSE bridge, and runs the tests.
#
#   ./xcaddy.sh build   build ./caddy (xcaddy when on PATH, else go build ./cmd/caddy)
#   ./xcaddy.sh run     build, then serve Caddyfile.example; without MCP_UPSTREAM
#                       a demo Streamable HTTP MCP server is started on loopback
#   ./xcaddy.sh test    build, install the test peers, then go vet and all tests,
#                       then each fuzz target for 10s
#   ./xcaddy.sh bench   the benchmarks
#   ./xcaddy.sh fuzz    each fuzz target in turn, for FUZZTIME each (default 2m)
set -euo pipefail
cd "$(dirname "$0")"

MODULE=github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge
CADDY_VERSION=${CADDY_VERSION:-v2.11.9}
# The fuzz targets of ./bridge (bridge/fuzz_test.go), run by test and fuzz.
FUZZ_TARGETS=(FuzzEventReader FuzzPeekEnvelope FuzzMessageBody FuzzSessionID FuzzEventID)

build() {
	if command -v xcaddy >/dev/null 2>&1; then
		echo "building ./caddy with xcaddy ($CADDY_VERSION)" >&2
		xcaddy build "$CADDY_VERSION" --output ./caddy --with "$MODULE=."
	else
		echo "building ./caddy with go build ./cmd/caddy" >&2
		go build -o ./caddy ./cmd/caddy
	fi
}

node_peers() {
	if [[ ! -d tests/node/node_modules ]] || [[ tests/node/package-lock.json -nt tests/node/node_modules ]]; then
		(cd tests/node && npm ci --no-audit --no-fund)
		touch tests/node/node_modules
	fi
}

run() {
	build
	if [[ -z ${MCP_UPSTREAM:-} ]]; then
		mkdir -p .bin
		go build -o .bin/mcp-demo-upstream ./cmd/mcp-demo-upstream
		local fifo
		fifo=$(mktemp -u)
		mkfifo "$fifo"
		.bin/mcp-demo-upstream -addr 127.0.0.1:0 -mode stateful >"$fifo" &
		DEMO_PID=$!
		trap 'kill "$DEMO_PID" 2>/dev/null || true' EXIT
		local line
		read -r line <"$fifo"
		rm -f "$fifo"
		MCP_UPSTREAM=${line#listening on }
		echo "demo upstream (go-sdk, stateful) at $MCP_UPSTREAM" >&2
	fi
	export MCP_UPSTREAM
	if [[ -z ${MCP_UPSTREAM_ADDR:-} ]]; then
		local rest=${MCP_UPSTREAM#*://}
		export MCP_UPSTREAM_ADDR=${rest%%/*}
	fi
	export BRIDGE_SITE=${BRIDGE_SITE:-http://127.0.0.1:8080}
	echo "legacy MCP clients connect to: ${BRIDGE_SITE%/}/sse" >&2
	echo "modern MCP clients connect to: ${BRIDGE_SITE%/}/mcp" >&2
	./caddy run --config Caddyfile.example --adapter caddyfile
}

test_all() {
	build
	node_peers
	go vet ./...
	CADDY_BIN="$PWD/caddy" go test -race -count=1 -timeout 30m ./...
	fuzz 10s
}

# fuzz runs each fuzz target in turn for $1 (two workers, so that the
# machine stays usable); a failing input is written under
# bridge/testdata/fuzz/<target>/.
fuzz() {
	local target
	for target in "${FUZZ_TARGETS[@]}"; do
		echo "---- $target (-fuzztime $1) ----" >&2
		go test -run '^$' -fuzz "^${target}\$" -fuzztime "$1" -parallel 2 ./bridge
	done
}

bench() {
	# End-to-end benchmark (cmd/mcp-bench), then the Go benchmarks of the hot
	# paths. Flags for mcp-bench come from BENCH_FLAGS, for example
	#   BENCH_FLAGS=-quick ./xcaddy.sh bench
	#   BENCH_FLAGS='-duration 5s -sessions 1,4,8 -pprof .bin/pprof' ./xcaddy.sh bench
	# (-quick also shortens the Go benchmarks to -benchtime 100ms).
	build
	mkdir -p .bin
	go build -o .bin/mcp-demo-upstream ./cmd/mcp-demo-upstream
	go build -o .bin/mcp-bench ./cmd/mcp-bench
	local flags=() benchtime=1s status=0
	read -r -a flags <<<"${BENCH_FLAGS:-}"
	if [[ " ${BENCH_FLAGS:-} " == *" -quick "* ]]; then
		benchtime=100ms
	fi
	MCP_BENCH_VIA="BENCH_FLAGS='${BENCH_FLAGS:-}' ./xcaddy.sh bench" \
		.bin/mcp-bench -caddy ./caddy -upstream-bin .bin/mcp-demo-upstream "${flags[@]}" || status=$?
	echo
	echo "---- Go benchmarks of the hot paths (go test -run '^\$' -bench . -benchmem -benchtime $benchtime) ----"
	go test -run '^$' -bench . -benchmem -benchtime "$benchtime" ./bridge/ ./sessionstore/... || status=$?
	return "$status"
}

case ${1:-} in
build) build ;;
run) run ;;
test) test_all ;;
bench) bench ;;
fuzz) fuzz "${FUZZTIME:-2m}" ;;
*)
	echo "usage: $0 build|run|test|bench|fuzz" >&2
	exit 2
	;;
esac
