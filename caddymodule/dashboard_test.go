package caddymodule

import (
	"encoding/json"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/bridge"
)

const dashboardPath = "../docs/grafana-dashboard.json"

// metricToken matches the bridge's metric names in PromQL.
var metricToken = regexp.MustCompile(`caddy_mcp_sse_bridge_[a-z_]+`)

// fqNameOf pulls fqName out of a prometheus.Desc's String(), the only
// public way to read it: Desc{fqName: "…", help: "…", …}.
var fqNameOf = regexp.MustCompile(`fqName: "([^"]+)"`)

// registeredMetrics lists the fully-qualified names of every metric the
// bridge registers, from the collectors' descriptors (no label values
// needed), each with whether it is a histogram.
func registeredMetrics(t *testing.T) map[string]bool {
	t.Helper()
	reg := prometheus.NewRegistry()
	names := map[string]bool{}
	for _, c := range bridge.NewMetrics().Collectors() {
		if err := reg.Register(c); err != nil {
			t.Fatalf("registering a bridge collector: %v", err)
		}
		var histogram bool
		switch c.(type) {
		case prometheus.Histogram, *prometheus.HistogramVec:
			histogram = true
		}
		ch := make(chan *prometheus.Desc, 16)
		go func() { c.Describe(ch); close(ch) }()
		var descs []*prometheus.Desc
		for d := range ch {
			descs = append(descs, d)
		}
		for _, d := range descs {
			m := fqNameOf.FindStringSubmatch(d.String())
			if m == nil {
				t.Fatalf("cannot read the name of descriptor %s", d)
			}
			names[m[1]] = histogram
		}
	}
	if len(names) == 0 {
		t.Fatal("bridge.NewMetrics registers no metrics")
	}
	return names
}

// dashboardPanel is the part of a Grafana panel the test reads; rows nest
// their panels when collapsed.
type dashboardPanel struct {
	ID      int              `json:"id"`
	Type    string           `json:"type"`
	Title   string           `json:"title"`
	Panels  []dashboardPanel `json:"panels"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
}

func flattenPanels(ps []dashboardPanel) []dashboardPanel {
	var out []dashboardPanel
	for _, p := range ps {
		if p.Type == "row" {
			out = append(out, flattenPanels(p.Panels)...)
			continue
		}
		out = append(out, p)
	}
	return out
}

// TestDashboardMetricsExist checks docs/grafana-dashboard.json: valid JSON,
// every panel queries something, and every bridge metric its PromQL names
// (template variables included) is one the code registers.
func TestDashboardMetricsExist(t *testing.T) {
	raw, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title      string           `json:"title"`
		Panels     []dashboardPanel `json:"panels"`
		Templating struct {
			List []struct {
				Name  string          `json:"name"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("%s is not valid JSON: %v", dashboardPath, err)
	}

	var exprs []string // "where: expr"
	panels := flattenPanels(dash.Panels)
	if len(panels) == 0 {
		t.Fatal("the dashboard has no panels")
	}
	for _, p := range panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %d %q has no queries", p.ID, p.Title)
		}
		for _, tg := range p.Targets {
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("panel %d %q, query %s: empty expr", p.ID, p.Title, tg.RefID)
				continue
			}
			exprs = append(exprs, p.Title+": "+tg.Expr)
		}
	}
	for _, v := range dash.Templating.List {
		// The query is a string or {"query": "..."} depending on Grafana's version.
		var q string
		if json.Unmarshal(v.Query, &q) != nil {
			var obj struct {
				Query string `json:"query"`
			}
			_ = json.Unmarshal(v.Query, &obj)
			q = obj.Query
		}
		exprs = append(exprs, "variable "+v.Name+": "+q)
	}

	registered := registeredMetrics(t)
	used := map[string]bool{}
	for _, e := range exprs {
		for _, tok := range metricToken.FindAllString(e, -1) {
			name := tok
			if _, ok := registered[name]; !ok {
				// A histogram's series: <name>_bucket, _sum, _count.
				for _, suffix := range []string{"_bucket", "_sum", "_count"} {
					if base, cut := strings.CutSuffix(tok, suffix); cut && registered[base] {
						name = base
						break
					}
				}
			}
			histogram, ok := registered[name]
			switch {
			case !ok:
				t.Errorf("%s\n\tnames %s, which the bridge does not register", e, tok)
				continue
			case histogram && name == tok:
				t.Errorf("%s\n\tuses histogram %s without _bucket, _sum or _count: no such series", e, tok)
			}
			used[name] = true
		}
	}
	if len(used) == 0 {
		t.Fatal("the dashboard uses none of the bridge's metrics")
	}

	var unused []string
	for n := range registered {
		if !used[n] {
			unused = append(unused, n)
		}
	}
	sort.Strings(unused)
	if len(unused) > 0 {
		t.Logf("registered but not on the dashboard: %s", strings.Join(unused, ", "))
	}
}
