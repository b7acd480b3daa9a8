package main

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/imgbuild/imgbuild/layers"
)

// TestPruneOptions checks which build cache records each combination of
// prune flags selects, with docker builder prune's semantics: nothing
// without options, everything with --all alone, and --filter and
// --keep-storage selecting with or without --all.
func TestPruneOptions(t *testing.T) {
	tests := []struct {
		args []string
		want layers.CachePruneOptions
	}{
		{nil, layers.CachePruneOptions{}},
		{[]string{"--all"}, layers.CachePruneOptions{All: true}},
		{[]string{"-a"}, layers.CachePruneOptions{All: true}},
		{[]string{"--filter", "until=24h"}, layers.CachePruneOptions{Until: 24 * time.Hour}},
		{[]string{"--filter=until=7d"}, layers.CachePruneOptions{Until: 7 * 24 * time.Hour}},
		{[]string{"--all", "--filter", "until=1d12h"}, layers.CachePruneOptions{Until: 36 * time.Hour}},
		{[]string{"--filter", "until=1h", "--filter", "until=90m"}, layers.CachePruneOptions{Until: 90 * time.Minute}},
		{[]string{"--keep-storage", "10GB"}, layers.CachePruneOptions{KeepStorage: 10 << 30}},
		{[]string{"--keep-storage", "512mb"}, layers.CachePruneOptions{KeepStorage: 512 << 20}},
		{[]string{"--keep-storage", "1048576"}, layers.CachePruneOptions{KeepStorage: 1 << 20}},
		{[]string{"--keep-storage", "0"}, layers.CachePruneOptions{}},
		{[]string{"--all", "--keep-storage", "0"}, layers.CachePruneOptions{All: true}},
		{[]string{"--all", "--keep-storage", "1g", "--filter", "until=30m"},
			layers.CachePruneOptions{Until: 30 * time.Minute, KeepStorage: 1 << 30}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			app := newApp(&streams{stdout: io.Discard, stderr: io.Discard})
			var got layers.CachePruneOptions
			app.Command("prune").Action = func(c *cli.Context) error {
				var err error
				got, err = pruneOptions(c)
				return err
			}
			args := append([]string{"imgbuild", "prune"}, tt.args...)
			if err := app.RunContext(context.Background(), normalizeArgs(app, args)); err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("pruneOptions = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestParseAge(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"24h": 24 * time.Hour, "90m": 90 * time.Minute, "1.5h": 90 * time.Minute, "10s": 10 * time.Second,
		"7d": 7 * 24 * time.Hour, "1d12h": 36 * time.Hour, "0.5d": 12 * time.Hour, "0d1m": time.Minute,
	} {
		if got, err := parseAge(in); err != nil || got != want {
			t.Errorf("parseAge(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0", "0d", "d", "1", "-1h", "-1d", "1w", "1dd", "1d-1h", "24 h", "1e9d"} {
		if got, err := parseAge(in); err == nil {
			t.Errorf("parseAge(%q) = %v, want an error", in, got)
		}
	}
}

func TestPruneDuHelp(t *testing.T) {
	for cmd, flags := range map[string][]string{
		"prune": {"--all, -a", "--filter until=DURATION", "--keep-storage SIZE", "7d", "docker builder prune"},
		"du":    {"--verbose, -v", "RECLAIMABLE", "prune --all"},
	} {
		stdout, _ := mustRun(t, 0, cmd, "--help")
		for _, f := range flags {
			if !strings.Contains(stdout, f) {
				t.Errorf("%s --help lacks %q:\n%s", cmd, f, stdout)
			}
		}
	}
}
