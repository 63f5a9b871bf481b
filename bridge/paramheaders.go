package bridge

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore"
)

// Argument headers of MCP 2026-07-28. A tool may mark arguments in its
// inputSchema with "x-mcp-header": <name>; a client must then repeat each
// such argument it sends in an Mcp-Param-<name> header, and servers refuse
// a call without them. Legacy clients know nothing of it, so the bridge
// learns the marks from the tools/list answers it relays to translated
// sessions (or asks tools/list itself for a tool it has not seen, at most
// every toolsRefresh) and adds the headers to each tools/call.

// maxToolSchemas bounds the tools whose marks are kept.
const maxToolSchemas = 4096

// toolsRefresh is how often the bridge may ask tools/list itself.
const toolsRefresh = 30 * time.Second

// paramHeaders holds, per tool name, its marked arguments: the property
// path and the header's name.
type paramHeaders struct {
	mu      sync.Mutex
	tools   map[string][]paramHeader
	fetched time.Time
}

type paramHeader struct {
	path []string
	name string
}

func newParamHeaders() *paramHeaders {
	return &paramHeaders{tools: map[string][]paramHeader{}}
}

// learn records the marks of the tools a tools/list response lists.
func (p *paramHeaders) learn(msg []byte) {
	var resp struct {
		Result struct {
			Tools []struct {
				Name        string          `json:"name"`
				InputSchema json.RawMessage `json:"inputSchema"`
			} `json:"tools"`
		} `json:"result"`
	}
	if json.Unmarshal(msg, &resp) != nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, tool := range resp.Result.Tools {
		if _, ok := p.tools[tool.Name]; !ok && len(p.tools) >= maxToolSchemas {
			continue
		}
		p.tools[tool.Name] = markedArguments(tool.InputSchema, nil, nil)
	}
}

// markedArguments collects the x-mcp-header marks of a schema's
// properties, nested objects' included.
func markedArguments(schema json.RawMessage, prefix []string, out []paramHeader) []paramHeader {
	var s struct {
		Properties map[string]json.RawMessage `json:"properties"`
	}
	if json.Unmarshal(schema, &s) != nil {
		return out
	}
	for name, prop := range s.Properties {
		path := append(append([]string(nil), prefix...), name)
		var mark struct {
			Header string `json:"x-mcp-header"`
		}
		if json.Unmarshal(prop, &mark) == nil && mark.Header != "" {
			out = append(out, paramHeader{path: path, name: mark.Header})
		}
		out = markedArguments(prop, path, out)
	}
	return out
}

// of returns the marks of a tool, and whether the tool is known.
func (p *paramHeaders) of(tool string) ([]paramHeader, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	marks, ok := p.tools[tool]
	return marks, ok
}

// mayFetch reports whether the bridge may ask tools/list now, and if so
// counts it.
func (p *paramHeaders) mayFetch(now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if now.Sub(p.fetched) < toolsRefresh {
		return false
	}
	p.fetched = now
	return true
}

// addParamHeaders adds the Mcp-Param-* headers a translated tools/call
// needs.
func (b *Bridge) addParamHeaders(ctx context.Context, c *call, sess *sessionstore.Session, header http.Header) {
	var call struct {
		Params struct {
			Name      string                     `json:"name"`
			Arguments map[string]json.RawMessage `json:"arguments"`
		} `json:"params"`
	}
	if json.Unmarshal(c.msg, &call) != nil || call.Params.Name == "" {
		return
	}
	marks, known := b.params.of(call.Params.Name)
	if !known && b.params.mayFetch(time.Now()) {
		b.fetchTools(ctx, c, sess)
		marks, _ = b.params.of(call.Params.Name)
	}
	for _, m := range marks {
		if v, ok := headerValue(argumentAt(call.Params.Arguments, m.path)); ok {
			header.Set("Mcp-Param-"+m.name, v)
		}
	}
}

// fetchTools asks the upstream's tools/list (every page, up to ten) with the
// caller's credentials, to learn its marks.
func (b *Bridge) fetchTools(ctx context.Context, c *call, sess *sessionstore.Session) {
	cursor := ""
	for range 10 {
		params := `{}`
		if cursor != "" {
			params = fmt.Sprintf(`{"cursor":%q}`, cursor)
		}
		msg := fmt.Appendf(nil, `{"jsonrpc":"2.0","id":"mcp-sse-bridge-tools","method":"tools/list","params":%s}`, params)
		env, err := PeekEnvelope(msg)
		if err != nil {
			return
		}
		body, header, err := modernRequest(msg, env, sess)
		if err != nil {
			return
		}
		for k, v := range c.client {
			header[k] = v
		}
		resp, err := b.do(ctx, "tools/list", http.MethodPost, sess, header, body, "")
		if err != nil {
			return
		}
		answer, err := b.firstResponse(resp)
		resp.Body.Close()
		if err != nil {
			return
		}
		b.params.learn(answer)
		var page struct {
			Result struct {
				NextCursor string `json:"nextCursor"`
			} `json:"result"`
		}
		if json.Unmarshal(answer, &page) != nil || page.Result.NextCursor == "" {
			return
		}
		cursor = page.Result.NextCursor
	}
}

// argumentAt is the argument at a property path, nil if absent.
func argumentAt(args map[string]json.RawMessage, path []string) json.RawMessage {
	for i, name := range path {
		v, ok := args[name]
		if !ok {
			return nil
		}
		if i == len(path)-1 {
			return v
		}
		if json.Unmarshal(v, &args) != nil {
			return nil
		}
	}
	return nil
}

// headerValue is an argument as its header carries it: a string as it is
// (base64 in the =?base64?…?= form when it is not plain visible ASCII, has
// blanks at either end or looks like that form), a boolean as true or
// false, an integer in decimal; other values (null, fractions, objects)
// get no header.
func headerValue(raw json.RawMessage) (string, bool) {
	var v any
	if len(raw) == 0 || json.Unmarshal(raw, &v) != nil {
		return "", false
	}
	switch v := v.(type) {
	case bool:
		return strconv.FormatBool(v), true
	case float64:
		if v != math.Trunc(v) || math.Abs(v) > 1<<53-1 {
			return "", false
		}
		return strconv.FormatInt(int64(v), 10), true
	case string:
		if plainHeaderText(v) {
			return v, true
		}
		return "=?base64?" + base64.StdEncoding.EncodeToString([]byte(v)) + "?=", true
	}
	return "", false
}

func plainHeaderText(s string) bool {
	if s == "" {
		return true
	}
	if s[0] == ' ' || s[0] == '\t' || s[len(s)-1] == ' ' || s[len(s)-1] == '\t' {
		return false
	}
	for i := range len(s) {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return !(strings.HasPrefix(s, "=?base64?") && strings.HasSuffix(s, "?="))
}
