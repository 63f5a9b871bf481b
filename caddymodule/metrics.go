package caddymodule

import (
	"errors"
	"fmt"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/bridge"
)

// metricsPool holds the process's one set of bridge metrics while any
// handler uses it, so that counters and gauges outlive config reloads (the
// new configuration is provisioned before the old one is cleaned up).
var metricsPool = caddy.NewUsagePool()

const metricsPoolKey = "metrics"

type pooledMetrics struct{ *bridge.Metrics }

func (pooledMetrics) Destruct() error { return nil }

// useMetrics returns the process's bridge metrics, registered into this
// configuration's registry (Caddy makes one per config load, served on
// the admin endpoint's /metrics). Release with releaseMetrics.
func useMetrics(ctx caddy.Context) (*bridge.Metrics, error) {
	v, _, err := metricsPool.LoadOrNew(metricsPoolKey, func() (caddy.Destructor, error) {
		return pooledMetrics{bridge.NewMetrics()}, nil
	})
	if err != nil {
		return nil, err
	}
	m := v.(pooledMetrics).Metrics
	registry := ctx.GetMetricsRegistry()
	if registry == nil {
		return m, nil
	}
	for _, c := range m.Collectors() {
		// Several handlers of one configuration share the registry.
		if err := registry.Register(c); err != nil && !errors.As(err, new(prometheus.AlreadyRegisteredError)) {
			releaseMetrics()
			return nil, fmt.Errorf("registering metrics: %w", err)
		}
	}
	return m, nil
}

func releaseMetrics() { _, _ = metricsPool.Delete(metricsPoolKey) }
