package dockerfile

import (
	"strings"
	"testing"
)

func TestParseErrorsNameFileAndLine(t *testing.T) {
	tests := []struct {
		name, file, src, want string
	}{
		{"copy one arg", "Dockerfile.prod", "FROM scratch\n\n\n\n\n\nCOPY onlyone\n", "Dockerfile.prod:7: COPY requires at least two arguments"},
		{"unknown instruction", "Dockerfile", "FROM scratch\nFOO bar\n", "Dockerfile:2: unknown instruction: FOO"},
		{"no from", "Dockerfile", "COPY a b\n", "Dockerfile:1: "},
		{"empty", "Dockerfile", " \n", "Dockerfile: the Dockerfile cannot be empty"},
		{"comments only", "Dockerfile", "\n# just a comment\n", "Dockerfile:2: file with no instructions"},
		{"custom frontend", "Dockerfile", "# syntax=example.com/my/frontend:2\nFROM scratch\n", "Dockerfile:1: syntax \"example.com/my/frontend:2\": custom Dockerfile frontends are not supported"},
		{"bad healthcheck", "df", "FROM scratch\nHEALTHCHECK --interval=xx CMD true\n", "df:2: "},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.src), tc.file)
			if err == nil {
				t.Fatal("expected an error")
			}
			if !strings.HasPrefix(err.Error(), tc.want) {
				t.Fatalf("error %q does not start with %q", err, tc.want)
			}
		})
	}
}

func TestParseStagesAndMetaArgs(t *testing.T) {
	src := "ARG BASE=scratch\nFROM ${BASE} AS one\nCOPY a /a\nFROM one\nLABEL x=y\n"
	f, err := Parse([]byte(src), "")
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Stages) != 2 || f.Stages[0].Name != "one" || f.Stages[1].BaseName != "one" {
		t.Fatalf("unexpected stages: %+v", f.Stages)
	}
	if len(f.MetaArgs) != 1 || f.MetaArgs[0].Args[0].Key != "BASE" {
		t.Fatalf("unexpected meta args: %+v", f.MetaArgs)
	}
	if f.Name != "Dockerfile" || f.Escape != '\\' {
		t.Fatalf("name %q escape %q", f.Name, f.Escape)
	}
}

func TestParseAcceptsDockerfileSyntax(t *testing.T) {
	for _, syntax := range []string{"docker/dockerfile:1", "docker/dockerfile:1.7-labs", "docker.io/docker/dockerfile:1@sha256:abc", "docker/dockerfile-upstream:master"} {
		if _, err := Parse([]byte("# syntax="+syntax+"\nFROM scratch\n"), ""); err != nil {
			t.Errorf("%s: %v", syntax, err)
		}
	}
}
