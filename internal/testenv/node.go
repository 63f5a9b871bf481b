package testenv

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
)

// The TypeScript side (the official SDK's legacy clients, server-
// everything) runs on node, from a project directory whose node_modules
// npm installs from its lock file.

// FindNode returns the node executable: $NODE, else node on PATH.
func FindNode() (string, error) {
	if n := os.Getenv("NODE"); n != "" {
		return n, nil
	}
	p, err := exec.LookPath("node")
	if err != nil {
		return "", fmt.Errorf("node not found on PATH: %w", err)
	}
	return p, nil
}

// EnsureNodeModules runs `npm ci` in dir unless every path of need exists
// already (files its node_modules must hold).
func EnsureNodeModules(ctx context.Context, dir string, need ...string) error {
	installed := true
	for _, p := range need {
		if _, err := os.Stat(p); err != nil {
			installed = false
		}
	}
	if installed {
		return nil
	}
	npm, err := exec.LookPath("npm")
	if err != nil {
		return fmt.Errorf("%s/node_modules is missing and npm is not on PATH: %w", dir, err)
	}
	cmd := exec.CommandContext(ctx, npm, "ci", "--no-audit", "--no-fund")
	cmd.Dir = dir
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("npm ci in %s: %w\n%s", dir, err, buf.Bytes())
	}
	return nil
}
