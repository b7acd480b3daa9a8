package run_test

import (
	"errors"
	"os"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/imgbuild/imgbuild/builder/run"
)

// hostDevNodes lists the /dev nodes the sandbox binds from the host, as ls
// -A /dev shows them with the links and directories.
func hostDevNodes() []string {
	names := []string{"core", "fd", "mqueue", "ptmx", "pts", "shm", "stderr", "stdin", "stdout"}
	for _, n := range []string{"null", "zero", "full", "random", "urandom", "tty"} {
		if _, err := os.Lstat("/dev/" + n); err == nil {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	return names
}

func TestRunCommands(t *testing.T) {
	ex, _ := newExecutor(t)
	root := busyboxRootfs(t)
	tests := []struct {
		name   string
		spec   func(*run.Spec)
		script string // run with sh -c unless spec sets Args
		want   string // exact stdout
	}{
		{name: "echo", script: "echo hello; echo err >&2", want: "hello\n"},
		{name: "exec form with PATH lookup", spec: func(s *run.Spec) { s.Args = []string{"echo", "a b", "c"} }, want: "a b c\n"},
		{name: "env is exactly Spec.Env", spec: func(s *run.Spec) {
			s.Args = []string{"/bin/env"}
			s.Env = []string{"PATH=/bin", "A=1", "EMPTY="}
		}, want: "PATH=/bin\nA=1\nEMPTY=\n"},
		{name: "no env at all", spec: func(s *run.Spec) { s.Args, s.Env = []string{"/bin/env"}, nil }, want: ""},
		{name: "root id", script: "id", want: "uid=0(root) gid=0(root)\n"},
		{name: "user, group and supplementary groups", spec: func(s *run.Spec) {
			s.UID, s.GID, s.ExtraGIDs = 1000, 1000, []int{10, 100}
		}, script: "id; id -G", want: "uid=1000(app) gid=1000(app) groups=10(wheel),100(users)\n1000 10 100\n"},
		{name: "numeric user without passwd entry", spec: func(s *run.Spec) { s.UID, s.GID = 4242, 4343 },
			script: "id -u; id -g; id -G", want: "4242\n4343\n4343\n"},
		{name: "cwd is created and owned by the user", spec: func(s *run.Spec) {
			s.Cwd, s.UID, s.GID = "/work/a/b", 1000, 1000
		}, script: "pwd; stat -c '%n %u:%g %a' /work /work/a /work/a/b", want: "/work/a/b\n/work 1000:1000 755\n/work/a 1000:1000 755\n/work/a/b 1000:1000 755\n"},
		{name: "existing cwd keeps its owner", spec: func(s *run.Spec) { s.Cwd, s.UID = "/tmp", 1000 },
			script: "pwd; stat -c '%u:%g %a' .", want: "/tmp\n0:0 1777\n"},
		{name: "cwd through a relative path", spec: func(s *run.Spec) { s.Cwd = "/usr/../var/./x" }, script: "pwd", want: "/var/x\n"},
		{name: "umask", script: "umask", want: "0022\n"},
		{name: "default hostname", script: "hostname; cat /etc/hostname; cat /etc/hosts",
			want: "imgbuild\nimgbuild\n127.0.0.1\tlocalhost imgbuild\n::1\tlocalhost ip6-localhost ip6-loopback\n"},
		{name: "custom hostname, hosts and resolv.conf", spec: func(s *run.Spec) {
			s.Hostname, s.Hosts, s.ResolvConf = "step-1", []byte("10.0.0.1 db\n"), []byte("nameserver 10.0.0.53\n")
		}, script: "hostname; cat /etc/hostname /etc/hosts /etc/resolv.conf", want: "step-1\nstep-1\n10.0.0.1 db\nnameserver 10.0.0.53\n"},
		{name: "etc files are read-only", script: "echo x >> /etc/hosts || echo ro; echo x > /etc/resolv.conf || echo ro; rm /etc/hostname || echo busy",
			want: "ro\nro\nbusy\n"},
		// The init's threads use pids too, so only pid 1 is predictable.
		{name: "only the sandbox's processes", script: "ps -o pid,comm > /tmp/ps; awk 'NR>1 {print ($1==1 ? 1 : \"n\"), $2}' /tmp/ps; rm /tmp/ps",
			want: "1 imgbuild-init\nn sh\nn ps\n"},
		{name: "proc pid dirs", script: "cd /proc && ls -d [0-9]* > /tmp/p; wc -l < /tmp/p; head -1 /tmp/p; rm /tmp/p", want: "2\n1\n"}, // the glob sees init and sh
		{name: "dev contents", script: "ls -A /dev", want: strings.Join(hostDevNodes(), "\n") + "\n"},
		{name: "dev nodes work", script: "echo x > /dev/null && head -c 4 /dev/zero | wc -c && head -c 4 /dev/urandom | wc -c && ls /dev/fd/ | head -1 && echo done > /dev/stdout",
			want: "4\n4\n0\ndone\n"},
		{name: "devpts, shm and mqueue", script: "grep -E ' /dev/(pts|shm|mqueue) ' /proc/mounts | cut -d' ' -f1-3; touch /dev/shm/x && echo shm-ok",
			want: "devpts /dev/pts devpts\nshm /dev/shm tmpfs\nmqueue /dev/mqueue mqueue\nshm-ok\n"},
		{name: "sys is read-only", script: "grep ' /sys ' /proc/mounts | cut -d' ' -f3,4 | cut -d, -f1; touch /sys/x 2>/dev/null || echo cannot-write; ls /sys/class >/dev/null && echo readable",
			want: "sysfs ro\ncannot-write\nreadable\n"},
		{name: "root capabilities are docker's defaults", script: "grep Cap /proc/self/status",
			want: "CapInh:\t0000000000000000\nCapPrm:\t00000000a80425fb\nCapEff:\t00000000a80425fb\nCapBnd:\t00000000a80425fb\nCapAmb:\t0000000000000000\n"},
		{name: "user capabilities", spec: func(s *run.Spec) { s.UID, s.GID = 1000, 1000 }, script: "grep Cap /proc/self/status",
			want: "CapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\nCapBnd:\t00000000a80425fb\nCapAmb:\t0000000000000000\n"},
		{name: "default signal dispositions", spec: func(s *run.Spec) { s.Args = []string{"grep", "-E", "Sig(Blk|Ign)", "/proc/self/status"} },
			want: "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n"},
		{name: "init ignores signals from the sandbox", script: "kill -TERM 1; kill -ABRT 1; kill -KILL 1; kill -INT 1; sleep 0.1; echo alive",
			want: "alive\n"},
		{name: "no_new_privs is off", script: "grep NoNewPrivs /proc/self/status", want: "NoNewPrivs:\t0\n"},
		{name: "only fds 0-2 (3 is ls's directory)", spec: func(s *run.Spec) { s.Args = []string{"/bin/ls", "/proc/self/fd"} }, want: "0\n1\n2\n3\n"},
		{name: "stdin is /dev/null", script: "cat; readlink /proc/self/fd/0; echo done", want: "/dev/null\ndone\n"},
		{name: "setuid bit works (no nosuid on the root)", script: "grep ' / ' /proc/mounts | grep -c nosuid || true", want: "0\n"},
		{name: "device nodes of the root cannot be opened", script: "mknod /tmp/null c 1 3 && (echo x > /tmp/null) 2>/dev/null || echo denied; rm /tmp/null",
			want: "denied\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := sh(root, tt.script)
			if tt.spec != nil {
				tt.spec(&spec)
			}
			if got := mustRun(t, ex, spec); got != tt.want {
				t.Errorf("stdout:\n%s\nwant:\n%s", got, tt.want)
			}
		})
	}
}

func TestRunErrors(t *testing.T) {
	ex, _ := newExecutor(t)
	root := busyboxRootfs(t)
	tests := []struct {
		name       string
		spec       func(*run.Spec)
		script     string
		wantCode   int
		wantSignal syscall.Signal
		wantErr    string // substring of a non-ExitError error
	}{
		{name: "exit 3", script: "exit 3", wantCode: 3},
		{name: "exit 255", script: "exit 255", wantCode: 255},
		{name: "false", spec: func(s *run.Spec) { s.Args = []string{"false"} }, wantCode: 1},
		{name: "missing command in sh", script: "nosuchcommand", wantCode: 127},
		{name: "killed by a signal", script: "kill -9 $$", wantCode: 137, wantSignal: syscall.SIGKILL},
		{name: "missing executable", spec: func(s *run.Spec) { s.Args = []string{"nosuchcommand"} }, wantErr: `"nosuchcommand": executable file not found in $PATH`},
		{name: "missing absolute executable", spec: func(s *run.Spec) { s.Args = []string{"/no/such"} }, wantErr: "exec /no/such: no such file or directory"},
		{name: "not executable by the user", spec: func(s *run.Spec) { s.Args, s.UID = []string{"/etc/passwd"}, 1000 }, wantErr: "exec /etc/passwd: permission denied"},
		{name: "no args", spec: func(s *run.Spec) { s.Args = nil }, wantErr: "no command"},
		{name: "relative cwd", spec: func(s *run.Spec) { s.Cwd = "tmp" }, wantErr: `working directory "tmp" is not absolute`},
		{name: "cwd is a file", spec: func(s *run.Spec) { s.Cwd = "/etc/passwd" }, wantErr: "working directory /etc/passwd"},
		{name: "unknown network", spec: func(s *run.Spec) { s.Network = "bridge" }, wantErr: `unknown network mode "bridge"`},
		{name: "missing rootfs", spec: func(s *run.Spec) { s.Rootfs = root + "/nonexistent" }, wantErr: "root filesystem"},
		{name: "no rootfs", spec: func(s *run.Spec) { s.Rootfs = "" }, wantErr: "no root filesystem"},
		{name: "bad hostname", spec: func(s *run.Spec) { s.Hostname = "a/b" }, wantErr: "invalid hostname"},
		{name: "tiny pids limit", spec: func(s *run.Spec) { s.PidsLimit = 3 }, wantErr: "pids limit 3 is below the minimum 16"},
		{name: "tiny memory limit", spec: func(s *run.Spec) { s.Memory = 1 << 20 }, wantErr: "memory limit 1048576 bytes is below the minimum"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := sh(root, tt.script)
			if tt.spec != nil {
				tt.spec(&spec)
			}
			_, _, err := runSpec(t, ex, spec)
			var exit *run.ExitError
			switch {
			case err == nil:
				t.Fatal("Run succeeded")
			case tt.wantErr != "":
				if errors.As(err, &exit) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %q (%T), want one containing %q", err, err, tt.wantErr)
				}
			case !errors.As(err, &exit):
				t.Fatalf("error %v (%T), want an *ExitError", err, err)
			case exit.Code != tt.wantCode || exit.Signal != tt.wantSignal:
				t.Fatalf("exit code %d signal %v, want %d %v", exit.Code, exit.Signal, tt.wantCode, tt.wantSignal)
			}
		})
	}
	if e := (&run.ExitError{Code: 2}).Error(); e != "exit status 2" {
		t.Errorf("ExitError text %q", e)
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestExecutorMisuse(t *testing.T) {
	_, state := newExecutor(t)
	root := busyboxRootfs(t)
	for _, exe := range []string{"/bin/true", "/bin/false"} {
		ex, err := run.New(run.Options{Executable: exe, StateDir: state})
		if err != nil {
			t.Fatal(err)
		}
		err = ex.Run(t.Context(), sh(root, "true"))
		if err == nil || !strings.Contains(err.Error(), "does the program call run.Init") {
			t.Errorf("init %s: error %v, want a hint about run.Init", exe, err)
		}
	}
	ex, err := run.New(run.Options{StateDir: state})
	if err != nil {
		t.Fatal(err)
	}
	spec := sh(root, "echo output")
	spec.Stdout = failingWriter{}
	if err := ex.Run(t.Context(), spec); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Errorf("failing Stdout: error %v, want the writer's error", err)
	}
}

func TestSharedOutput(t *testing.T) {
	ex, _ := newExecutor(t)
	var buf strings.Builder
	spec := sh(busyboxRootfs(t), "echo a; echo b >&2; echo c")
	spec.Stdout, spec.Stderr = &buf, &buf
	if err := ex.Run(t.Context(), spec); err != nil {
		t.Fatal(err)
	}
	if buf.String() != "a\nb\nc\n" {
		t.Errorf("output %q", buf.String())
	}
}
