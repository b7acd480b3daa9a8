package run_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/imgbuild/imgbuild/builder/run"
)

func TestNetwork(t *testing.T) {
	ex, _ := newExecutor(t)
	root := busyboxRootfs(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "from the host")
	}))
	defer srv.Close()
	fetch := "wget -q -O - " + srv.URL + " 2>/dev/null || echo unreachable"
	tests := []struct {
		network, script, want string
	}{
		{"", fetch, "from the host"},
		{run.NetworkHost, fetch, "from the host"},
		{run.NetworkNone, fetch, "unreachable\n"},
		{run.NetworkNone, "ls /sys/class/net; ip -o link | wc -l; ip -o link | grep -c '^1: lo: <LOOPBACK,UP'", "lo\n1\n1\n"},
		{run.NetworkNone, "ping -c 1 -W 2 127.0.0.1 >/dev/null && echo lo-works", "lo-works\n"},
		{run.NetworkNone, "nc -l -p 8080 -e echo hi & sleep 0.2; nc 127.0.0.1 8080 </dev/null", "hi\n"},
	}
	for _, tt := range tests {
		t.Run(tt.network+": "+tt.script, func(t *testing.T) {
			spec := sh(root, tt.script)
			spec.Network = tt.network
			if got := mustRun(t, ex, spec); got != tt.want {
				t.Errorf("stdout %q, want %q", got, tt.want)
			}
		})
	}
}
