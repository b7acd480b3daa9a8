package builder

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"path"
	"slices"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"

	"github.com/imgbuild/imgbuild/builder/run"
)

// sandboxHostname is the hostname RUN steps see, BuildKit's.
const sandboxHostname = "buildkitsandbox"

// argValue is an ARG declared in a stage's scope, as BuildKit records it
// for RUN's history.
type argValue struct {
	Key, Value string
}

// run executes a RUN step in the sandbox on a writable view of the stage's
// filesystem and commits what it changed.
func (r *stageRun) run(ctx context.Context, c *instructions.RunCommand) error {
	if err := checkRunFlags(c); err != nil {
		return err
	}
	network, err := r.runNetwork(c)
	if err != nil {
		return err
	}
	args, scripts, err := r.runArgs(c)
	if err != nil {
		return err
	}
	exec, err := r.b.executor()
	if err != nil {
		return err
	}
	env := r.runProcessEnv()
	msg := "RUN " + runCommandString(args, r.args, env) + " # buildkit"
	input, err := r.runInput(ctx, c, args, env, network, scripts)
	if err != nil {
		return err
	}
	return r.fsStep(ctx, "run", input, msg, func() (v1.Layer, error) {
		mounts, err := r.runMounts(ctx, c)
		if err != nil {
			return nil, err
		}
		defer mounts.release()
		return r.onMount(ctx, func(root string) error {
			return r.runIn(ctx, root, exec, args, env, network, scripts, mounts)
		})
	})
}

// runIn runs the step's process in root.
func (r *stageRun) runIn(ctx context.Context, root string, exec run.Executor, args, env []string, network string, scripts []run.Script, mounts *stepMounts) error {
	u, err := lookupUser(root, r.cfg.Config.User)
	if err != nil {
		return err
	}
	if _, ok := getEnv(env, "HOME"); !ok {
		env = append(env, "HOME="+u.Home)
	}
	env = mounts.withEnv(env) // after the history text: secrets stay out of it
	// The primary group is a supplementary group too, as BuildKit's
	// ensureAdditionalGids (CVE-2023-25173).
	groups := append([]int{u.GID}, slices.DeleteFunc(u.ExtraGIDs, func(g int) bool { return g == u.GID })...)
	out := newStepOutput(r.b, r.ev)
	spec := run.Spec{
		Rootfs: root, Args: args, Env: env, Cwd: r.workdirOrRoot(),
		UID: u.UID, GID: u.GID, ExtraGIDs: groups,
		Hostname: sandboxHostname, Network: network, Scripts: scripts,
		Stdout: out, Stderr: out,
		Memory: r.b.opts.Memory, PidsLimit: r.b.opts.PidsLimit,
		Mounts: mounts.mounts,
	}
	err = exec.Run(ctx, spec)
	out.flush()
	var exitErr *run.ExitError
	if errors.As(err, &exitErr) {
		return &runError{err: exitErr, tail: out.tail()}
	}
	return err
}

// runInput is the cache input of a RUN step (see stepKey): with its
// mounts, the keys of the stages and images mounted from= and, for each
// bind mount of the build context, the digest of what it shows the step
// (contextMountDigest), so that only a change below the mounted source
// invalidates the step.
func (r *stageRun) runInput(ctx context.Context, c *instructions.RunCommand, args, env []string, network string, scripts []run.Script) (any, error) {
	ms := instructions.GetMounts(c)
	var from, bound []string // keys of the stages and images mounted from; context digests
	for _, m := range ms {
		if m.Type == instructions.MountTypeBind && m.From == "" {
			d, err := r.contextMountInput(ctx, m)
			if err != nil {
				return nil, fmt.Errorf("--mount=type=%s: %w", m.Type, err)
			}
			bound = append(bound, d)
			continue
		}
		if m.From != "" {
			res, err := r.fromResult(ctx, m.From)
			if err != nil {
				return nil, fmt.Errorf("--mount=type=%s: %w", m.Type, err)
			}
			from = append(from, res.key.String())
		}
	}
	return struct {
		Args, Env              []string
		User, Workdir, Network string
		Scripts                []run.Script
		Mounts                 []*instructions.Mount
		From                   []string
		Memory, Pids           int64
		Context                []string `json:",omitempty"` // absent: the keys of steps without context mounts stay as they were
	}{args, env, r.cfg.Config.User, r.workdirOrRoot(), network, scripts, ms, from, r.b.opts.Memory, r.b.opts.PidsLimit, bound}, nil
}

// contextMountInput is the digest of the build context path a bind mount
// without from= shows the step, through the store's stat index.
func (r *stageRun) contextMountInput(ctx context.Context, m *instructions.Mount) (string, error) {
	idx, err := r.b.statIndex(ctx)
	if err != nil {
		return "", err
	}
	d, err := contextMountDigest(ctx, r.b.bctx, m.Source, idx)
	if err != nil {
		return "", err
	}
	return d.String(), nil
}

// checkRunFlags fails for RUN flags imgbuild does not implement, rather than
// ignoring them.
func checkRunFlags(c *instructions.RunCommand) error {
	if devs := instructions.GetDevices(c); len(devs) > 0 {
		return fmt.Errorf("RUN --device is not supported")
	}
	if sec := instructions.GetSecurity(c); sec != "" && sec != instructions.SecuritySandbox {
		return fmt.Errorf("RUN --security=%s is not supported: steps always run sandboxed", sec)
	}
	return nil
}

// runNetwork is the step's network: its --network flag, else the build's.
func (r *stageRun) runNetwork(c *instructions.RunCommand) (string, error) {
	mode := instructions.GetNetwork(c)
	if mode == "" || mode == instructions.NetworkDefault {
		mode = r.b.opts.Network
	}
	switch mode {
	case "", instructions.NetworkDefault, instructions.NetworkHost:
		return run.NetworkHost, nil
	case instructions.NetworkNone:
		return run.NetworkNone, nil
	}
	return "", fmt.Errorf("unknown network mode %q (want default, host or none)", mode)
}

// runArgs is the process's argv, as BuildKit's dispatchRun builds it: the
// shell form goes through SHELL; a lone heredoc is the shell's script, or
// with a #! line an executable file in /dev/pipes; other heredocs are
// handed to the shell as written.
func (r *stageRun) runArgs(c *instructions.RunCommand) ([]string, []run.Script, error) {
	args := slices.Clone(c.CmdLine)
	var scripts []run.Script
	if len(c.Files) > 0 {
		if len(args) != 1 || !c.PrependShell {
			return nil, nil, fmt.Errorf("parsing produced an invalid run command: %v", args)
		}
		if h := parser.MustParseHeredoc(args[0]); h != nil {
			data := c.Files[0].Data
			if c.Files[0].Chomp {
				data = parser.ChompHeredocContent(data)
			}
			if strings.HasPrefix(data, "#!") {
				name := path.Base(c.Files[0].Name)
				scripts = append(scripts, run.Script{Name: name, Data: []byte(data)})
				args = []string{"/dev/pipes/" + name} // still through the shell, as BuildKit
			} else {
				args = []string{data}
			}
		} else {
			var b strings.Builder
			b.WriteString(args[0])
			for _, f := range c.Files {
				b.WriteByte('\n')
				b.WriteString(f.Data)
				b.WriteString(f.Name)
			}
			args = []string{b.String()}
		}
	}
	if c.PrependShell {
		sh := slices.Clone(r.cfg.Config.Shell)
		if len(sh) == 0 {
			sh = []string{"/bin/sh", "-c"}
		}
		args = append(sh, strings.Join(args, " "))
	}
	if len(args) == 0 || args[0] == "" {
		return nil, nil, errors.New("no command given")
	}
	return args, scripts, nil
}

// runProcessEnv is the environment of a RUN process: the stage's ENV and
// ARGs in scope, plus proxy build args (declared or not, as BuildKit).
func (r *stageRun) runProcessEnv() []string {
	env := slices.Clone(r.runEnv)
	for _, k := range slices.Sorted(maps.Keys(r.b.opts.BuildArgs)) {
		if !isProxyArg(k) {
			continue
		}
		v := r.b.opts.BuildArgs[k]
		for _, name := range []string{strings.ToUpper(k), strings.ToLower(k)} {
			if _, ok := getEnv(env, name); !ok {
				env = append(env, name+"="+v)
			}
		}
	}
	return env
}

func isProxyArg(k string) bool {
	switch strings.ToLower(k) {
	case "http_proxy", "https_proxy", "ftp_proxy", "no_proxy", "all_proxy":
		return true
	}
	return false
}

// runCommandString is BuildKit's history text of a RUN: "|N K=V ..." for
// the N build args in scope, then argv.
func runCommandString(args []string, buildArgs []argValue, env []string) string {
	var kvs []string
	idx := map[string]int{}
	for _, a := range buildArgs {
		v, ok := getEnv(env, a.Key)
		if !ok {
			v = a.Value
		}
		if i, ok := idx[a.Key]; ok {
			kvs[i] = a.Key + "=" + v
			continue
		}
		idx[a.Key] = len(kvs)
		kvs = append(kvs, a.Key+"="+v)
	}
	if len(kvs) > 0 {
		kvs = append([]string{fmt.Sprintf("|%d", len(kvs))}, kvs...)
	}
	return strings.Join(append(kvs, args...), " ")
}

// runError is a RUN step whose process failed: "exit status 2" followed by
// the last lines of its output.
type runError struct {
	err  *run.ExitError
	tail []string
}

func (e *runError) Error() string {
	if len(e.tail) == 0 {
		return e.err.Error()
	}
	return e.err.Error() + "\n" + strings.Join(e.tail, "\n")
}

func (e *runError) Unwrap() error { return e.err }
