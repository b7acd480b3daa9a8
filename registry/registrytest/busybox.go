package registrytest

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// BusyboxBinary is Debian's statically linked busybox (package busybox-static).
const BusyboxBinary = "/bin/busybox"

// EpochUnix (2024-01-01T00:00:00Z) is the timestamp of every file, history
// entry and config of the images built here, so that their digests are the
// same on every run.
const EpochUnix = 1704067200

func epoch() time.Time { return time.Unix(EpochUnix, 0).UTC() }

// DefaultPath is the PATH in the config of BusyboxImage.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// App user of BusyboxImage, for USER and --chown tests.
const (
	AppUser = "app"
	AppUID  = 1000
	AppGID  = 1000
)

const passwd = `root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
sync:x:4:100:sync:/bin:/bin/sync
mail:x:8:8:mail:/var/spool/mail:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
operator:x:37:37:Operator:/var:/bin/false
app:x:1000:1000:app:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/home:/bin/false
`

const group = `root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:
tty:x:5:
disk:x:6:
lp:x:7:
mail:x:8:
kmem:x:9:
wheel:x:10:root
cdrom:x:11:
dialout:x:18:
floppy:x:19:
video:x:28:
audio:x:29:
tape:x:32:
www-data:x:33:
operator:x:37:
utmp:x:43:
plugdev:x:46:
staff:x:50:
lock:x:54:
netdev:x:82:
users:x:100:
app:x:1000:
nogroup:x:65534:
nobody:x:65534:
`

// BusyboxImage builds, in process, an image laid out like the public busybox
// image from Debian's busybox-static binary: /bin/busybox and a hard link
// /bin/<applet> for every applet `busybox --list` prints, /etc/passwd and
// /etc/group (root, daemon, bin, sys, ..., nobody, plus user and group "app"
// 1000:1000 with home /home/app), /tmp 1777, /root 0700, and the /dev /proc
// /sys /home /usr/sbin /var/spool/mail /var/www directories. Its config has
// PATH=DefaultPath, Cmd ["sh"], os linux and the host's architecture. All
// timestamps are EpochUnix, so the digest only depends on the busybox binary.
func BusyboxImage(t testing.TB) v1.Image {
	t.Helper()
	bin, err := os.ReadFile(BusyboxBinary)
	if err != nil {
		t.Fatalf("busybox missing (%v): install it with `apt-get install -y busybox-static`", err)
	}
	out, err := exec.Command(BusyboxBinary, "--list").Output()
	if err != nil {
		t.Fatalf("%s --list: %v", BusyboxBinary, err)
	}
	var applets []string
	for _, a := range strings.Fields(string(out)) {
		if a != "busybox" && !strings.Contains(a, "/") {
			applets = append(applets, a)
		}
	}
	files := busyboxFiles(bin, applets)
	return imageFromFiles(t, files, v1.Config{
		Env: []string{"PATH=" + DefaultPath},
		Cmd: []string{"sh"},
	}, v1.Platform{OS: "linux", Architecture: runtime.GOARCH}, "busybox from "+BusyboxBinary)
}

// File is one entry of a test layer; the zero Mode means 0644 for files and
// 0755 for directories.
type File struct {
	Name     string // relative, no leading slash; directories end in "/"
	Mode     int64
	UID, GID int
	Body     []byte
	Link     string // symlink target, or hard-link target when Hard
	Hard     bool
}

func busyboxFiles(bin []byte, applets []string) []File {
	fs := []File{
		{Name: "bin/"},
		{Name: "bin/busybox", Mode: 0o755, Body: bin},
	}
	for _, a := range applets {
		fs = append(fs, File{Name: "bin/" + a, Link: "bin/busybox", Hard: true, Mode: 0o755})
	}
	return append(fs,
		File{Name: "dev/"},
		File{Name: "etc/"},
		File{Name: "etc/group", Body: []byte(group)},
		File{Name: "etc/passwd", Body: []byte(passwd)},
		File{Name: "home/"},
		File{Name: "home/app/", UID: AppUID, GID: AppGID},
		File{Name: "proc/", Mode: 0o555},
		File{Name: "root/", Mode: 0o700},
		File{Name: "sys/", Mode: 0o555},
		File{Name: "tmp/", Mode: 0o1777},
		File{Name: "usr/"},
		File{Name: "usr/sbin/"},
		File{Name: "var/"},
		File{Name: "var/spool/"},
		File{Name: "var/spool/mail/"},
		File{Name: "var/www/"},
	)
}

// LayerTar returns a deterministic PAX tar of files (timestamps EpochUnix).
func LayerTar(t testing.TB, files []File) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		hdr := &tar.Header{
			Name: f.Name, Mode: f.Mode, Uid: f.UID, Gid: f.GID,
			ModTime: epoch(), Format: tar.FormatPAX,
		}
		switch {
		case strings.HasSuffix(f.Name, "/"):
			hdr.Typeflag = tar.TypeDir
			if hdr.Mode == 0 {
				hdr.Mode = 0o755
			}
		case f.Hard:
			hdr.Typeflag, hdr.Linkname = tar.TypeLink, f.Link
		case f.Link != "":
			hdr.Typeflag, hdr.Linkname, hdr.Mode = tar.TypeSymlink, f.Link, 0o777
		default:
			hdr.Typeflag, hdr.Size = tar.TypeReg, int64(len(f.Body))
			if hdr.Mode == 0 {
				hdr.Mode = 0o644
			}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatalf("layer tar: %v", err)
		}
		if hdr.Size > 0 {
			if _, err := tw.Write(f.Body); err != nil {
				t.Fatalf("layer tar: %v", err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatalf("layer tar: %v", err)
	}
	return buf.Bytes()
}

// Layer is a gzip layer (computed lazily by go-containerregistry) holding
// files.
func Layer(t testing.TB, files []File) v1.Layer {
	t.Helper()
	data := LayerTar(t, files)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	})
	if err != nil {
		t.Fatalf("layer: %v", err)
	}
	return plainLayer{l}
}

// plainLayer hides the tarball layer's Descriptor, whose empty but non-nil
// annotations map would make mutate's in-memory manifest differ from its
// marshalled form and fail validate.Image.
type plainLayer struct{ v1.Layer }

// Image is a one-layer image holding files, with cfg as its config and
// platform p; createdBy names the layer in the history.
func Image(t testing.TB, files []File, cfg v1.Config, p v1.Platform) v1.Image {
	t.Helper()
	return imageFromFiles(t, files, cfg, p, "registrytest layer")
}

func imageFromFiles(t testing.TB, files []File, cfg v1.Config, p v1.Platform, createdBy string) v1.Image {
	t.Helper()
	img, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{
		Created:      v1.Time{Time: epoch()},
		OS:           p.OS,
		Architecture: p.Architecture,
		Variant:      p.Variant,
		Config:       cfg,
		RootFS:       v1.RootFS{Type: "layers"},
	})
	if err != nil {
		t.Fatalf("image config: %v", err)
	}
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:   Layer(t, files),
		History: v1.History{Created: v1.Time{Time: epoch()}, CreatedBy: createdBy},
	})
	if err != nil {
		t.Fatalf("image layer: %v", err)
	}
	return img
}
