package caddymodule

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/bridge"
	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore"
)

func init() {
	caddy.RegisterModule(AdminAPI{})
}

// liveBridges holds the bridges of the loaded configurations, by handler,
// for the admin API.
var liveBridges = caddy.NewUsagePool()

type pooledBridge struct{ *bridge.Bridge }

func (pooledBridge) Destruct() error { return nil }

// AdminAPI serves the bridge's sessions on Caddy's admin endpoint:
//
//	GET    /mcp_sse_bridge/sessions[?limit=N]  the sessions of every store in use (default limit 1000 per store)
//	DELETE /mcp_sse_bridge/sessions/<id>       end a session: its stream closes, the upstream gets DELETE
//
// With a shared store (Redis), every replica lists and ends the same
// sessions.
type AdminAPI struct{}

// CaddyModule returns the Caddy module information.
func (AdminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.mcp_sse_bridge",
		New: func() caddy.Module { return new(AdminAPI) },
	}
}

// Routes returns the admin routes.
func (a *AdminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: "/mcp_sse_bridge/sessions", Handler: caddy.AdminHandlerFunc(a.serveSessions)},
		{Pattern: "/mcp_sse_bridge/sessions/", Handler: caddy.AdminHandlerFunc(a.serveSessions)}}
}

const defaultAdminListLimit = 1000

func (a *AdminAPI) serveSessions(w http.ResponseWriter, r *http.Request) error {
	id := strings.TrimPrefix(strings.TrimPrefix(r.URL.Path, "/mcp_sse_bridge/sessions"), "/")
	switch {
	case r.Method == http.MethodGet && id == "":
		return a.list(w, r)
	case r.Method == http.MethodDelete && id != "":
		return a.end(w, r, id)
	default:
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed,
			Err: fmt.Errorf("GET /mcp_sse_bridge/sessions or DELETE /mcp_sse_bridge/sessions/<id>")}
	}
}

// list describes the sessions of every store a bridge uses, each store once.
func (a *AdminAPI) list(w http.ResponseWriter, r *http.Request) error {
	limit := defaultAdminListLimit
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf("limit must be a positive number, got %q", v)}
		}
		limit = n
	}
	sessions := []bridge.SessionInfo{}
	seen := map[sessionstore.Store]bool{}
	for _, b := range bridges() {
		st := b.Store()
		if seen[st] {
			continue
		}
		seen[st] = true
		list, err := bridge.ListSessions(r.Context(), st, limit, time.Now())
		if err != nil {
			return caddy.APIError{HTTPStatus: http.StatusServiceUnavailable, Err: err}
		}
		sessions = append(sessions, list...)
	}
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(map[string]any{"sessions": sessions})
}

// end ends the session through the first bridge whose store holds it.
func (a *AdminAPI) end(w http.ResponseWriter, r *http.Request, id string) error {
	for _, b := range bridges() {
		ended, err := b.EndSession(r.Context(), id)
		if err != nil {
			return caddy.APIError{HTTPStatus: http.StatusServiceUnavailable, Err: err}
		}
		if ended {
			w.Header().Set("Content-Type", "application/json")
			return json.NewEncoder(w).Encode(map[string]string{"deleted": id})
		}
	}
	return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("no session %s", sessionstore.ShortID(id))}
}

// bridges lists the bridges of the loaded configurations.
func bridges() []*bridge.Bridge {
	var out []*bridge.Bridge
	liveBridges.Range(func(_, v any) bool {
		out = append(out, v.(pooledBridge).Bridge)
		return true
	})
	return out
}

// Interface guards
var (
	_ caddy.AdminRouter = (*AdminAPI)(nil)
)
