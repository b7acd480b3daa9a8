package builder

import (
	"context"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/shell"
)

// dispatch applies one expanded instruction to the stage.
func (r *stageRun) dispatch(ctx context.Context, cmd instructions.Command) error {
	c := &r.cfg.Config
	switch cmd := cmd.(type) {
	case *instructions.EnvCommand:
		msg := "ENV"
		for _, kv := range cmd.Env {
			c.Env = setEnv(c.Env, kv.Key, kv.Value)
			r.runEnv = setEnv(r.runEnv, kv.Key, kv.Value)
			msg += " " + kv.Key + "=" + kv.Value
		}
		r.history(msg, false)
	case *instructions.ArgCommand:
		return r.arg(cmd)
	case *instructions.LabelCommand:
		msg := "LABEL"
		if c.Labels == nil {
			c.Labels = map[string]string{}
		}
		for _, kv := range cmd.Labels {
			c.Labels[kv.Key] = kv.Value
			msg += " " + kv.Key + "=" + kv.Value
		}
		r.history(msg, false)
	case *instructions.MaintainerCommand:
		r.cfg.Author = cmd.Maintainer
		r.history("MAINTAINER "+cmd.Maintainer, false)
	case *instructions.OnbuildCommand:
		c.OnBuild = append(c.OnBuild, cmd.Expression)
	case *instructions.CmdCommand:
		c.Cmd = r.withShell(cmd.ShellDependantCmdLine)
		c.ArgsEscaped = true
		r.cmdSet = true
		r.history(fmt.Sprintf("CMD %q", c.Cmd), false)
	case *instructions.EntrypointCommand:
		c.Entrypoint = r.withShell(cmd.ShellDependantCmdLine)
		if !r.cmdSet {
			c.Cmd = nil
		}
		c.ArgsEscaped = true
		r.history(fmt.Sprintf("ENTRYPOINT %q", c.Entrypoint), false)
	case *instructions.HealthCheckCommand:
		return r.healthcheck(cmd)
	case *instructions.ExposeCommand:
		return r.expose(cmd)
	case *instructions.UserCommand:
		c.User = cmd.User
		r.history("USER "+cmd.User, false)
	case *instructions.VolumeCommand:
		if c.Volumes == nil {
			c.Volumes = map[string]struct{}{}
		}
		for _, v := range cmd.Volumes {
			if v == "" {
				return errors.New("VOLUME specified can not be an empty string")
			}
			c.Volumes[v] = struct{}{}
		}
		r.history(fmt.Sprintf("VOLUME %v", cmd.Volumes), false)
	case *instructions.StopSignalCommand:
		if err := validateSignal(cmd.Signal); err != nil {
			return err
		}
		c.StopSignal = cmd.Signal
		r.history("STOPSIGNAL "+cmd.Signal, false)
	case *instructions.ShellCommand:
		c.Shell = slices.Clone(cmd.Shell)
		r.history(fmt.Sprintf("SHELL %v", cmd.Shell), false)
	case *instructions.WorkdirCommand:
		return r.workdir(ctx, cmd)
	case *instructions.CopyCommand:
		return r.copy(ctx, cmd)
	case *instructions.AddCommand:
		return r.add(ctx, cmd)
	case *instructions.RunCommand:
		return r.run(ctx, cmd)
	default:
		return fmt.Errorf("instruction %s is not supported yet", strings.ToUpper(cmd.Name()))
	}
	return nil
}

// arg declares build args in the stage scope, as BuildKit's dispatchArg.
func (r *stageRun) arg(cmd *instructions.ArgCommand) error {
	var parts []string
	for _, kv := range cmd.Args {
		val, hasValue := r.b.opts.BuildArgs[kv.Key]
		switch {
		case hasValue:
		case kv.Value != nil:
			v, _, err := r.lex.ProcessWord(*kv.Value, shell.EnvsFromSlice(r.runEnv))
			if err != nil {
				return err
			}
			val, hasValue = v, true
		default:
			val, hasValue = getEnv(r.b.plan.globalArgs, kv.Key)
		}
		msg := kv.Key
		r.args = append(r.args, argValue{Key: kv.Key, Value: val})
		if hasValue {
			r.runEnv = setEnv(r.runEnv, kv.Key, val)
			msg += "=" + val
		}
		parts = append(parts, msg)
	}
	r.history("ARG "+strings.Join(parts, " "), false)
	return nil
}

// withShell turns a shell-form command line into SHELL + the joined line.
func (r *stageRun) withShell(c instructions.ShellDependantCmdLine) []string {
	if !c.PrependShell {
		return slices.Clone(c.CmdLine)
	}
	sh := slices.Clone(r.cfg.Config.Shell)
	if len(sh) == 0 {
		sh = []string{"/bin/sh", "-c"}
	}
	return append(sh, strings.Join(c.CmdLine, " "))
}

func (r *stageRun) healthcheck(cmd *instructions.HealthCheckCommand) error {
	h := cmd.Health
	hc := &v1.HealthConfig{
		Test:        slices.Clone(h.Test),
		Interval:    h.Interval,
		Timeout:     h.Timeout,
		StartPeriod: h.StartPeriod,
		Retries:     h.Retries,
	}
	r.cfg.Config.Healthcheck = hc
	r.startInterval = h.StartInterval
	r.history(fmt.Sprintf("HEALTHCHECK %+v", *h), false)
	return nil
}

// history appends a history entry for a step.
func (r *stageRun) history(msg string, withLayer bool) {
	t := r.b.createdTime()
	h := v1.History{CreatedBy: msg, Comment: "buildkit.dockerfile.v0", EmptyLayer: !withLayer, Created: v1.Time{Time: t}}
	r.cfg.History = append(r.cfg.History, h)
}

// resolveWorkdir resolves p against the current WORKDIR.
func (r *stageRun) resolveWorkdir(p string) string {
	if path.IsAbs(p) {
		return path.Clean(p)
	}
	return path.Join(r.workdirOrRoot(), p)
}
