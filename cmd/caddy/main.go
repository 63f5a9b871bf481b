// Command caddy is Caddy with the standard modules and the MCP SSE bridge,
// for builds without xcaddy: go build ./cmd/caddy
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/caddymodule"
)

func main() {
	caddycmd.Main()
}
