package builder_test

import (
	"os"
	"path/filepath"
	"testing"
)

// TestCacheMetadataInstructions: as in BuildKit, instructions that only
// change the image config (LABEL, EXPOSE, CMD, ...) do not invalidate the
// RUN after them; those that change what a RUN sees (ENV, USER, WORKDIR,
// SHELL) do. Each case rebuilds the Dockerfile with one line before the
// RUN changed.
func TestCacheMetadataInstructions(t *testing.T) {
	const run = "RUN echo ran > /tmp/ran"
	f := newCacheFixture(t, map[string]string{"Dockerfile": "FROM busybox\n" + run + "\n"})
	cases := []struct {
		name, before, after string
		hit                 bool
	}{
		{"LABEL", "LABEL a=1", "LABEL a=2", true},
		{"EXPOSE", "EXPOSE 80", "EXPOSE 81", true},
		{"CMD", `CMD ["a"]`, `CMD ["b"]`, true},
		{"ENTRYPOINT", `ENTRYPOINT ["a"]`, `ENTRYPOINT ["b"]`, true},
		{"STOPSIGNAL", "STOPSIGNAL SIGTERM", "STOPSIGNAL SIGINT", true},
		{"HEALTHCHECK", "HEALTHCHECK CMD true", "HEALTHCHECK CMD false", true},
		{"VOLUME", "VOLUME /v1", "VOLUME /v2", true},
		{"ENV", "ENV A=1", "ENV A=2", false},
		{"USER", "USER 0", "USER 1", false},
		{"WORKDIR", "WORKDIR /w1", "WORKDIR /w2", false},
		{"SHELL", `SHELL ["/bin/sh", "-c"]`, `SHELL ["/bin/sh", "-e", "-c"]`, false},
	}
	df := filepath.Join(f.dir, "Dockerfile")
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for i, line := range []string{tc.before, tc.after} {
				if err := os.WriteFile(df, []byte("FROM busybox\n"+line+"\n"+run+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
				_, runs, cached := f.build(nil)
				if i == 0 {
					continue // primes the cache for this line
				}
				if cached[run] != tc.hit || (runs == 0) != tc.hit {
					t.Errorf("after %q -> %q: RUN CACHED %v, %d RUNs; want CACHED %v", tc.before, tc.after, cached[run], runs, tc.hit)
				}
			}
		})
	}
}
