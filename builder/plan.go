package builder

import (
	"fmt"
	"strconv"
	"strings"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/shell"

	"github.com/imgbuild/imgbuild/builder/dockerfile"
	"github.com/imgbuild/imgbuild/registry"
)

const scratchName = "scratch"

// stage is one FROM section of the Dockerfile and, once built, its result.
type stage struct {
	index int
	name  string // lower-cased stage name, "" when unnamed
	ins   instructions.Stage
	base  *stage   // FROM <earlier stage>, nil otherwise
	deps  []*stage // stages this one needs: base and COPY --from

	once sync.Once
	done chan struct{}
	res  *stageResult
	err  error
}

// matches reports whether name (as given to --no-cache-filter or
// --target) is this stage: its name, or its index.
func (s *stage) matches(name string) bool {
	return (s.name != "" && strings.EqualFold(name, s.name)) || name == fmt.Sprint(s.index)
}

// label is how progress output names the stage.
func (s *stage) label() string {
	if s.name != "" {
		return s.ins.Name
	}
	return fmt.Sprintf("stage-%d", s.index)
}

// plan is the stage graph of one Dockerfile with the global ARG scope.
type plan struct {
	file       *dockerfile.File
	stages     []*stage
	target     *stage
	globalArgs []string // KEY=VALUE: predefined platform args, then meta ARGs
	steps      int      // number of steps the target needs
}

// newPlan resolves FROM names and ARGs before FROM, stage references and the
// target, and counts the steps the target needs.
func newPlan(f *dockerfile.File, o *Options, target, buildPlat v1.Platform) (*plan, error) {
	p := &plan{file: f}
	p.globalArgs = predefinedArgs(buildPlat, target, o.Target, f)
	lex := shell.NewLex(f.Escape)
	for _, cmd := range f.MetaArgs {
		for _, kv := range cmd.Args {
			if v, ok := o.BuildArgs[kv.Key]; ok {
				p.globalArgs = setEnv(p.globalArgs, kv.Key, v)
				continue
			}
			if kv.Value == nil {
				continue
			}
			v, _, err := lex.ProcessWord(*kv.Value, shell.EnvsFromSlice(p.globalArgs))
			if err != nil {
				return nil, dockerfile.WithLocation(f.Name, cmd.Location(), err)
			}
			p.globalArgs = setEnv(p.globalArgs, kv.Key, v)
		}
	}
	byName := map[string]*stage{}
	for i, ins := range f.Stages {
		st := &stage{index: i, name: strings.ToLower(ins.Name), ins: ins, done: make(chan struct{})}
		base, _, err := lex.ProcessWord(ins.BaseName, shell.EnvsFromSlice(p.globalArgs))
		if err != nil {
			return nil, dockerfile.WithLocation(f.Name, ins.Location, err)
		}
		if base == "" {
			return nil, dockerfile.WithLocation(f.Name, ins.Location, fmt.Errorf("base name (%s) should not be blank", ins.BaseName))
		}
		st.ins.BaseName = base
		if b, ok := byName[strings.ToLower(base)]; ok {
			st.base = b
			st.deps = append(st.deps, b)
		}
		if ins.Platform != "" {
			plat, _, err := lex.ProcessWord(ins.Platform, shell.EnvsFromSlice(p.globalArgs))
			if err != nil || plat == "" {
				return nil, dockerfile.WithLocation(f.Name, ins.Location, fmt.Errorf("empty platform value from expression %s", ins.Platform))
			}
			st.ins.Platform = plat
		}
		p.stages = append(p.stages, st)
		if st.name != "" {
			byName[st.name] = st
		}
	}
	for _, st := range p.stages {
		for _, cmd := range st.ins.Commands {
			switch c := cmd.(type) {
			case *instructions.CopyCommand:
				if c.From == "" {
					continue
				}
				src, err := p.lookupStage(c.From, st)
				if err != nil {
					return nil, dockerfile.WithLocation(f.Name, c.Location(), err)
				}
				if src != nil {
					st.deps = append(st.deps, src)
				}
			case *instructions.RunCommand:
				// Stages mounted with from= start early too; a bad name is
				// reported by the step itself.
				for _, m := range instructions.GetMounts(c) {
					if src, err := p.lookupStage(m.From, st); m.From != "" && err == nil && src != nil {
						st.deps = append(st.deps, src)
					}
				}
			}
		}
	}
	if err := p.selectTarget(o.Target); err != nil {
		return nil, err
	}
	return p, nil
}

// lookupStage resolves a --from value to an earlier stage; nil means the value
// names an image.
func (p *plan) lookupStage(from string, cur *stage) (*stage, error) {
	if strings.ContainsAny(from, "$") {
		return nil, fmt.Errorf("variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround")
	}
	if n, err := strconv.Atoi(from); err == nil {
		if n < 0 || n >= len(p.stages) {
			return nil, fmt.Errorf("invalid stage index %d", n)
		}
		if n >= cur.index {
			return nil, fmt.Errorf("cannot copy from stage %d, it needs to be defined before current stage", n)
		}
		return p.stages[n], nil
	}
	for _, s := range p.stages {
		if s.name != "" && s.name == strings.ToLower(from) {
			if s.index >= cur.index {
				return nil, fmt.Errorf("cannot copy from stage %q, it needs to be defined before current stage %q", from, cur.label())
			}
			return s, nil
		}
	}
	return nil, nil
}

func (p *plan) selectTarget(name string) error {
	if name == "" {
		p.target = p.stages[len(p.stages)-1]
	} else {
		for _, s := range p.stages {
			if s.name == strings.ToLower(name) {
				p.target = s
			}
		}
		if p.target == nil {
			return fmt.Errorf("target stage %q could not be found", name)
		}
	}
	seen := map[*stage]bool{}
	var count func(s *stage)
	count = func(s *stage) {
		if seen[s] {
			return
		}
		seen[s] = true
		p.steps += len(s.ins.Commands) + 1
		for _, d := range s.deps {
			count(d)
		}
	}
	count(p.target)
	return nil
}

// predefinedArgs are BuildKit's platform ARGs of the global scope.
func predefinedArgs(build, target v1.Platform, targetStage string, f *dockerfile.File) []string {
	if targetStage == "" {
		targetStage = f.Stages[len(f.Stages)-1].Name
	}
	if targetStage == "" {
		targetStage = "default"
	}
	return []string{
		"BUILDPLATFORM=" + formatPlatform(build),
		"BUILDOS=" + build.OS,
		"BUILDOSVERSION=" + build.OSVersion,
		"BUILDARCH=" + build.Architecture,
		"BUILDVARIANT=" + build.Variant,
		"TARGETPLATFORM=" + formatPlatform(target),
		"TARGETOS=" + target.OS,
		"TARGETOSVERSION=" + target.OSVersion,
		"TARGETARCH=" + target.Architecture,
		"TARGETVARIANT=" + target.Variant,
		"TARGETSTAGE=" + targetStage,
	}
}

// parsePlatform parses "os/arch[/variant]"; "" means the host's platform.
func parsePlatform(s string) (v1.Platform, error) {
	p, err := registry.ParsePlatform(s)
	if err != nil {
		return v1.Platform{}, err
	}
	return *p, nil
}

func formatPlatform(p v1.Platform) string {
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

// setEnv sets KEY=value in an ordered KEY=VALUE list, replacing an existing key.
func setEnv(env []string, key, value string) []string {
	for i, kv := range env {
		if k, _, _ := strings.Cut(kv, "="); k == key {
			out := append([]string(nil), env...)
			out[i] = key + "=" + value
			return out
		}
	}
	return append(append([]string(nil), env...), key+"="+value)
}

func getEnv(env []string, key string) (string, bool) {
	for _, kv := range env {
		if k, v, _ := strings.Cut(kv, "="); k == key {
			return v, true
		}
	}
	return "", false
}
