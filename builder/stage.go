package builder

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/buildkit/frontend/dockerfile/shell"

	"github.com/imgbuild/imgbuild/builder/dockerfile"
)

// stageResult is a built stage (or a pulled image): its config, its layers
// and its filesystem.
type stageResult struct {
	cfg      *v1.ConfigFile
	layers   []v1.Layer
	runEnv   []string   // ENV plus ARG values in scope, inherited by FROM <stage>
	args     []argValue // ARGs declared in scope, for RUN's history
	key      v1.Hash    // cache key of the last filesystem step (or the base)
	platform v1.Platform
	// startInterval is HEALTHCHECK --start-interval, which go-containerregistry's
	// config type does not carry; it is written into the final config.
	startInterval time.Duration
}

// stageRun is the mutable state while a stage's instructions are dispatched.
type stageRun struct {
	b      *build
	st     *stage
	lex    *shell.Lex
	cfg    *v1.ConfigFile
	layers []v1.Layer
	runEnv []string
	args   []argValue
	plat   v1.Platform
	cmdSet bool    // CMD given in this stage (ENTRYPOINT then keeps it)
	ev     Event   // the running step's, for its output
	key    v1.Hash // cache key of the filesystem so far
	hit    bool    // the running step came from the cache

	startInterval time.Duration
}

func (b *build) runStage(ctx context.Context, st *stage) (*stageResult, error) {
	r := &stageRun{b: b, st: st, lex: shell.NewLex(b.plan.file.Escape)}
	started := time.Now()
	ev := Event{Step: int(b.step.Add(1)), Total: b.plan.steps, Stage: st.label(), Instruction: st.ins.SourceCode, Started: started}
	b.progress(ev)
	base, err := b.resolveBase(ctx, st)
	ev.Done, ev.Err = time.Now(), err
	b.progress(ev)
	if err != nil {
		return nil, dockerfile.WithLocation(b.plan.file.Name, st.ins.Location, fmt.Errorf("%s: %w", st.ins.SourceCode, err))
	}
	r.cfg = cloneConfig(base.cfg)
	r.layers = append([]v1.Layer(nil), base.layers...)
	r.runEnv = append([]string(nil), base.runEnv...)
	r.args = append([]argValue(nil), base.args...)
	r.key = base.key
	r.plat = base.platform
	r.startInterval = base.startInterval
	if _, ok := getEnv(r.cfg.Config.Env, "PATH"); !ok {
		r.cfg.Config.Env = append(r.cfg.Config.Env, "PATH="+defaultPath)
	}
	for _, kv := range r.cfg.Config.Env {
		k, v, _ := strings.Cut(kv, "=")
		r.runEnv = setEnv(r.runEnv, k, v)
	}
	triggers := r.cfg.Config.OnBuild
	r.cfg.Config.OnBuild = nil
	for _, t := range triggers {
		if err := r.onbuild(ctx, t); err != nil {
			return nil, err
		}
	}
	for _, cmd := range st.ins.Commands {
		if err := r.step(ctx, cmd, ""); err != nil {
			return nil, err
		}
	}
	return &stageResult{cfg: r.cfg, layers: r.layers, runEnv: r.runEnv, args: r.args, key: r.key,
		platform: r.plat, startInterval: r.startInterval}, nil
}

// onbuild parses and runs one ONBUILD trigger inherited from the base.
func (r *stageRun) onbuild(ctx context.Context, trigger string) error {
	name := r.b.plan.file.Name
	ast, err := parser.Parse(strings.NewReader(trigger))
	if err != nil {
		return dockerfile.WithLocation(name, r.st.ins.Location, fmt.Errorf("ONBUILD %s: %w", trigger, err))
	}
	if len(ast.AST.Children) != 1 {
		return dockerfile.WithLocation(name, r.st.ins.Location, errors.New("onbuild trigger should be a single expression"))
	}
	node := ast.AST.Children[0]
	line := dockerfile.Line(r.st.ins.Location)
	node.StartLine, node.EndLine = line, line
	cmd, err := instructions.ParseCommand(node)
	if err != nil {
		return dockerfile.WithLocation(name, r.st.ins.Location, fmt.Errorf("ONBUILD %s: %w", trigger, err))
	}
	return r.step(ctx, cmd, "ONBUILD ")
}

// step expands and dispatches one instruction, reporting progress and
// wrapping errors as "Dockerfile:LINE: INSTRUCTION: cause".
func (r *stageRun) step(ctx context.Context, cmd instructions.Command, prefix string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b := r.b
	text := prefix + commandText(cmd)
	ev := Event{Step: int(b.step.Add(1)), Total: b.plan.steps, Stage: r.st.label(), Instruction: text, Started: time.Now()}
	b.progress(ev)
	r.ev, r.hit = ev, false
	err := r.expand(cmd)
	if err == nil {
		err = r.dispatch(ctx, cmd)
	}
	ev.Done, ev.Err, ev.Cached = time.Now(), err, r.hit && err == nil
	b.progress(ev)
	if err != nil {
		loc := cmd.Location()
		if len(loc) == 0 {
			loc = r.st.ins.Location
		}
		return dockerfile.WithLocation(b.plan.file.Name, loc, fmt.Errorf("%s: %w", text, err))
	}
	return nil
}

// expand applies BuildKit's word expansion with the stage's ENV and ARGs.
func (r *stageRun) expand(cmd instructions.Command) error {
	env := shell.EnvsFromSlice(r.runEnv)
	if _, isArg := cmd.(*instructions.ArgCommand); !isArg {
		if ex, ok := cmd.(instructions.SupportsSingleWordExpansion); ok {
			if err := ex.Expand(func(w string) (string, error) {
				out, _, err := r.lex.ProcessWord(w, env)
				return out, err
			}); err != nil {
				return err
			}
		}
	}
	if ex, ok := cmd.(instructions.SupportsSingleWordExpansionRaw); ok {
		return ex.ExpandRaw(func(w string) (string, error) {
			lex := shell.NewLex('\\')
			lex.SkipProcessQuotes = true
			out, _, err := lex.ProcessWord(w, env)
			return out, err
		})
	}
	return nil
}

// commandText is the instruction as written, on one line.
func commandText(cmd instructions.Command) string {
	if s, ok := cmd.(fmt.Stringer); ok {
		text := s.String()
		if i := strings.IndexByte(text, '\n'); i >= 0 {
			text = text[:i]
		}
		return text
	}
	return strings.ToUpper(cmd.Name())
}

func cloneConfig(c *v1.ConfigFile) *v1.ConfigFile {
	if c == nil {
		return &v1.ConfigFile{}
	}
	return c.DeepCopy()
}

const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
