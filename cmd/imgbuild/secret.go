package main

import (
	"encoding/csv"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/imgbuild/imgbuild/builder"
)

// maxSecretSize is BuildKit's limit on one secret.
const maxSecretSize = 500 * 1024

// secretFlag is --secret, docker build's (buildx's) syntax.
func secretFlag() cli.Flag {
	return &cli.StringSliceFlag{Name: "secret",
		Usage: "secret for RUN --mount=type=secret (`id=ID[,src=FILE|,env=VAR]`, repeatable): a file, or an environment variable " +
			"(type=env,id=ID[,src=VAR]); id=ID alone reads $ID if set, else the file ID"}
}

// secretOptions sets o.Secrets from the --secret flags. Errors are usage
// errors.
func secretOptions(c *cli.Context, s *streams, o *builder.Options) error {
	for _, spec := range c.StringSlice("secret") {
		id, data, err := parseSecret(spec, s.lookupEnv, os.ReadFile)
		if err != nil {
			return usagef(c, "%v", err)
		}
		if o.Secrets == nil {
			o.Secrets = map[string][]byte{}
		}
		o.Secrets[id] = data
	}
	return nil
}

// parseSecret reads the secret a --secret value describes, as buildx and
// BuildKit's secrets provider do: keys type (file or env), id, src or
// source, env. With type=env, src names the variable. Without src and env,
// the variable named ID is used if set, else the file ID. A variable that
// is not set is an error (BuildKit would give an empty secret).
func parseSecret(spec string, lookupEnv func(string) (string, bool), readFile func(string) ([]byte, error)) (string, []byte, error) {
	fields, err := csv.NewReader(strings.NewReader(spec)).Read()
	if err != nil {
		return "", nil, fmt.Errorf("invalid --secret %q: %w", spec, err)
	}
	var typ, id, src, env string
	for _, f := range fields {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			return "", nil, fmt.Errorf("invalid --secret %q: field %q must be a key=value pair", spec, f)
		}
		switch strings.ToLower(k) {
		case "type":
			if v != "file" && v != "env" {
				return "", nil, fmt.Errorf("invalid --secret %q: unsupported secret type %q (want file or env)", spec, v)
			}
			typ = v
		case "id":
			id = v
		case "src", "source":
			src = v
		case "env":
			env = v
		default:
			return "", nil, fmt.Errorf("invalid --secret %q: unexpected key %q", spec, k)
		}
	}
	if id == "" {
		return "", nil, fmt.Errorf("invalid --secret %q: no id", spec)
	}
	if typ == "env" && env == "" {
		env, src = src, ""
	}
	if env == "" && src == "" {
		if _, ok := lookupEnv(id); ok {
			env = id
		} else {
			src = id
		}
	}
	var data []byte
	if env != "" {
		v, ok := lookupEnv(env)
		if !ok {
			return "", nil, fmt.Errorf("secret %s: environment variable %s is not set", id, env)
		}
		data = []byte(v)
	} else if data, err = readFile(src); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", nil, fmt.Errorf("secret %s: %s: no such file", id, src)
		}
		return "", nil, fmt.Errorf("secret %s: %w", id, err)
	}
	if len(data) > maxSecretSize {
		return "", nil, fmt.Errorf("secret %s is too big: %d bytes, at most %d", id, len(data), maxSecretSize)
	}
	return id, data, nil
}
