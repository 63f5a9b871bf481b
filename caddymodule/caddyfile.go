package caddymodule

import (
	"math"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/bridge"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("mcp_sse_bridge", parseCaddyfile)
	// Before reverse_proxy, so that a site can bridge /sse and /messages and
	// proxy everything else (such as /mcp for modern clients) without a
	// global order option.
	httpcaddyfile.RegisterDirectiveOrder("mcp_sse_bridge", httpcaddyfile.Before, "reverse_proxy")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Handler)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	mcp_sse_bridge [<matcher>] [<upstream>] {
//		upstream <url>
//		sse_path <path>
//		message_path <path>
//		keepalive <duration>
//		stream_write_timeout <duration>
//		session_ttl <duration>
//		adopt any|authenticated|off
//		adopt_hold <duration>
//		initialize_ttl <duration>
//		uninitialized_ttl <duration>
//		upstream_header_timeout <duration>
//		input_timeout <duration>
//		new_session_rate <per_second>
//		new_session_burst <n>
//		drain_timeout <duration>
//		max_message_size <size>
//		max_inflight <n>
//		max_upstream_conns <n>
//		upstream_h2c
//		upstream_era auto|legacy|modern
//		allowed_origins <origin...>
//		identity <placeholder>
//		identity_secret <secret>
//		public_url <origin>
//		header_up <field> <value>
//		header_up -<field>
//		store memory {
//			max_sessions <n>
//			max_pending <n>
//			max_sessions_per_caller <n>
//		}
//	}
//
// The upstream may be given inline or in the block, not both.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive name
	if d.NextArg() {
		h.Upstream = d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	seen := map[string]bool{}
	for d.NextBlock(0) {
		opt := d.Val()
		if seen[opt] && opt != "header_up" && opt != "allowed_origins" {
			return d.Errf("%s specified more than once", opt)
		}
		seen[opt] = true
		switch opt {
		case "upstream":
			if h.Upstream != "" {
				return d.Err("upstream already specified")
			}
			if !d.AllArgs(&h.Upstream) {
				return d.ArgErr()
			}
		case "sse_path":
			if !d.AllArgs(&h.SSEPath) {
				return d.ArgErr()
			}
		case "message_path":
			if !d.AllArgs(&h.MessagePath) {
				return d.ArgErr()
			}
		case "identity_secret":
			if !d.AllArgs(&h.IdentitySecret) || h.IdentitySecret == "" {
				return d.ArgErr()
			}
		case "identity":
			if !d.AllArgs(&h.Identity) || h.Identity == "" {
				return d.ArgErr()
			}
		case "public_url":
			if !d.AllArgs(&h.PublicURL) {
				return d.ArgErr()
			}
		case "keepalive", "session_ttl", "adopt_hold", "initialize_ttl", "drain_timeout", "uninitialized_ttl",
			"upstream_header_timeout", "stream_write_timeout", "input_timeout":
			var v string
			if !d.AllArgs(&v) {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(v)
			if err != nil || dur <= 0 {
				return d.Errf("invalid %s duration %q", opt, v)
			}
			*map[string]*caddy.Duration{
				"keepalive": &h.Keepalive, "session_ttl": &h.SessionTTL,
				"adopt_hold": &h.AdoptHold, "initialize_ttl": &h.InitializeTTL,
				"drain_timeout": &h.DrainTimeout, "uninitialized_ttl": &h.UninitializedTTL,
				"upstream_header_timeout": &h.UpstreamHeaderTimeout, "stream_write_timeout": &h.StreamWriteTimeout,
				"input_timeout": &h.InputTimeout,
			}[opt] = caddy.Duration(dur)
		case "adopt":
			if !d.AllArgs(&h.Adopt) {
				return d.ArgErr()
			}
			switch bridge.AdoptMode(h.Adopt) {
			case bridge.AdoptAny, bridge.AdoptAuthenticated, bridge.AdoptOff:
			default:
				return d.Errf("adopt must be any, authenticated or off, not %q", h.Adopt)
			}
		case "max_message_size":
			var v string
			if !d.AllArgs(&v) {
				return d.ArgErr()
			}
			size, err := humanize.ParseBytes(v)
			if err != nil || size == 0 {
				return d.Errf("invalid max_message_size %q", v)
			}
			h.MaxMessageSize = int64(size)
		case "new_session_rate":
			var v string
			if !d.AllArgs(&v) {
				return d.ArgErr()
			}
			f, err := strconv.ParseFloat(v, 64)
			if err != nil || f <= 0 || math.IsInf(f, 0) {
				return d.Errf("invalid new_session_rate %q: a positive number of sessions per second", v)
			}
			h.NewSessionRate = f
		case "new_session_burst":
			if err := parsePositiveInt(d, &h.NewSessionBurst); err != nil {
				return err
			}
		case "max_inflight":
			if err := parsePositiveInt(d, &h.MaxInflight); err != nil {
				return err
			}
		case "max_upstream_conns":
			if err := parsePositiveInt(d, &h.MaxUpstreamConns); err != nil {
				return err
			}
		case "upstream_h2c":
			if d.NextArg() {
				return d.ArgErr()
			}
			h.UpstreamH2C = true
		case "upstream_era":
			if !d.AllArgs(&h.UpstreamEra) {
				return d.ArgErr()
			}
			switch h.UpstreamEra {
			case bridge.EraAuto, bridge.EraLegacy, bridge.EraModern:
			default:
				return d.Errf("upstream_era must be auto, legacy or modern, not %q", h.UpstreamEra)
			}
		case "allowed_origins":
			origins := d.RemainingArgs()
			if len(origins) == 0 {
				return d.ArgErr()
			}
			h.AllowedOrigins = append(h.AllowedOrigins, origins...)
		case "header_up":
			args := d.RemainingArgs()
			if h.HeaderUp == nil {
				h.HeaderUp = map[string]string{}
			}
			switch {
			case len(args) == 1 && len(args[0]) > 1 && args[0][0] == '-':
				h.HeaderUp[args[0]] = ""
			case len(args) == 2:
				h.HeaderUp[args[0]] = args[1]
			default:
				return d.ArgErr()
			}
		case "store":
			if !d.NextArg() {
				return d.ArgErr()
			}
			name := d.Val()
			unm, err := caddyfile.UnmarshalModule(d, "http.handlers.mcp_sse_bridge.stores."+name)
			if err != nil {
				return err
			}
			h.StoreRaw = caddyconfig.JSONModuleObject(unm, "backend", name, nil)
		default:
			return d.Errf("unrecognized mcp_sse_bridge option: %s", opt)
		}
	}
	return nil
}

func parsePositiveInt(d *caddyfile.Dispenser, target *int) error {
	opt := d.Val()
	var v string
	if !d.AllArgs(&v) {
		return d.ArgErr()
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		return d.Errf("%s must be a positive whole number, got %q", opt, v)
	}
	*target = n
	return nil
}

// Interface guards
var (
	_ caddyfile.Unmarshaler = (*Handler)(nil)
)
