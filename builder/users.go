package builder

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"

	securejoin "github.com/cyphar/filepath-securejoin"
	"golang.org/x/sys/unix"
)

// maxUserFileBytes bounds how much of an image's /etc/passwd or /etc/group
// is read: the files come from untrusted images.
const maxUserFileBytes = 16 << 20

// passwdEntry is one line of /etc/passwd.
type passwdEntry struct {
	Name     string
	UID, GID int
	Home     string
}

// groupEntry is one line of /etc/group.
type groupEntry struct {
	Name    string
	GID     int
	Members []string
}

// execUser is the identity a RUN step executes as.
type execUser struct {
	UID, GID  int
	ExtraGIDs []int  // supplementary groups (membership in /etc/group)
	Home      string // home directory from /etc/passwd, "/" when unknown
}

// lookupChown resolves a COPY/ADD --chown value ("user", "user:group",
// "uid:gid", "user:", ":group", ...) with BuildKit's rules: "root" and
// numeric ids need no lookup; a numeric user without a group uses the same
// number as gid; a user name without a group uses its primary gid from
// root's /etc/passwd; names are looked up in root's /etc/passwd and
// /etc/group and an unknown name is an error. "" means 0:0.
func lookupChown(root, spec string) (uid, gid int, err error) {
	userPart, groupPart, _ := strings.Cut(spec, ":")
	switch id, numeric, err := parseID(userPart); {
	case err != nil:
		return 0, 0, fmt.Errorf("--chown=%s: %w", spec, err)
	case numeric:
		uid, gid = id, id
	case userPart == "":
		// ":group" leaves the user at 0, as BuildKit does.
	default:
		users, err := readPasswd(root)
		if err != nil {
			return 0, 0, fmt.Errorf("--chown=%s: %w", spec, err)
		}
		i := slices.IndexFunc(users, func(u passwdEntry) bool { return u.Name == userPart })
		if i < 0 {
			return 0, 0, fmt.Errorf("--chown=%s: unable to find user %s: no matching entries in /etc/passwd", spec, userPart)
		}
		uid, gid = users[i].UID, users[i].GID
	}
	if groupPart == "" {
		return uid, gid, nil
	}
	switch id, numeric, err := parseID(groupPart); {
	case err != nil:
		return 0, 0, fmt.Errorf("--chown=%s: %w", spec, err)
	case numeric:
		return uid, id, nil
	}
	groups, err := readGroup(root)
	if err != nil {
		return 0, 0, fmt.Errorf("--chown=%s: %w", spec, err)
	}
	i := slices.IndexFunc(groups, func(g groupEntry) bool { return g.Name == groupPart })
	if i < 0 {
		return 0, 0, fmt.Errorf("--chown=%s: unable to find group %s: no matching entries in /etc/group", spec, groupPart)
	}
	return uid, groups[i].GID, nil
}

// lookupUser resolves a USER value ("name", "uid", "name:group", ...) for
// RUN the way runc and BuildKit do (moby/sys/user.GetExecUser): a passwd
// entry matching the name or uid gives uid, primary gid and home; a numeric
// user without an entry runs with gid 0 and home "/"; an unknown name is an
// error. An explicit group (name or gid) replaces the primary gid; without
// one the user's supplementary groups are the /etc/group entries listing
// its name.
func lookupUser(root, spec string) (execUser, error) {
	u := execUser{Home: "/"}
	userPart, groupPart, _ := strings.Cut(spec, ":")
	uid, numeric, err := parseID(userPart)
	if err != nil {
		return u, fmt.Errorf("user %s: %w", spec, err)
	}
	users, err := readPasswd(root)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return u, fmt.Errorf("user %s: %w", spec, err)
	}
	matched := ""
	if i := slices.IndexFunc(users, func(p passwdEntry) bool {
		return (userPart != "" && p.Name == userPart) || (numeric && p.UID == uid) || (userPart == "" && p.UID == 0)
	}); i >= 0 {
		matched = users[i].Name
		u.UID, u.GID, u.Home = users[i].UID, users[i].GID, users[i].Home
	} else if userPart != "" {
		if !numeric {
			return u, fmt.Errorf("unable to find user %s: no matching entries in passwd file", userPart)
		}
		u.UID = uid
	}
	if groupPart == "" && matched == "" {
		return u, nil
	}
	groups, err := readGroup(root)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return u, fmt.Errorf("user %s: %w", spec, err)
	}
	if groupPart == "" {
		for _, g := range groups {
			if slices.Contains(g.Members, matched) {
				u.ExtraGIDs = append(u.ExtraGIDs, g.GID)
			}
		}
		return u, nil
	}
	gid, gnumeric, err := parseID(groupPart)
	if err != nil {
		return u, fmt.Errorf("user %s: %w", spec, err)
	}
	i := slices.IndexFunc(groups, func(g groupEntry) bool {
		return g.Name == groupPart || (gnumeric && g.GID == gid)
	})
	switch {
	case i >= 0:
		u.GID = groups[i].GID
	case gnumeric:
		u.GID = gid
	default:
		return u, fmt.Errorf("unable to find group %s: no matching entries in group file", groupPart)
	}
	return u, nil
}

// parseID reports whether s is a numeric id ("root" counts as 0, as in
// BuildKit's --chown parsing). Numbers out of the uint32 range are errors.
func parseID(s string) (id int, numeric bool, err error) {
	if s == "root" {
		return 0, true, nil
	}
	if s == "" || strings.TrimLeft(s, "0123456789") != "" {
		return 0, false, nil
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n > 1<<31-1 {
		return 0, false, fmt.Errorf("id %s out of range", s)
	}
	return int(n), true, nil
}

func readPasswd(root string) ([]passwdEntry, error) {
	data, err := readUserFile(root, "/etc/passwd")
	if err != nil {
		return nil, err
	}
	var out []passwdEntry
	for _, f := range userFileLines(data) {
		e := passwdEntry{Name: f[0]}
		if len(f) > 2 {
			e.UID, _ = strconv.Atoi(f[2])
		}
		if len(f) > 3 {
			e.GID, _ = strconv.Atoi(f[3])
		}
		if len(f) > 5 {
			e.Home = f[5]
		}
		out = append(out, e)
	}
	return out, nil
}

func readGroup(root string) ([]groupEntry, error) {
	data, err := readUserFile(root, "/etc/group")
	if err != nil {
		return nil, err
	}
	var out []groupEntry
	for _, f := range userFileLines(data) {
		e := groupEntry{Name: f[0]}
		if len(f) > 2 {
			e.GID, _ = strconv.Atoi(f[2])
		}
		if len(f) > 3 && f[3] != "" {
			e.Members = strings.Split(f[3], ",")
		}
		out = append(out, e)
	}
	return out, nil
}

// userFileLines splits passwd/group data into colon-separated fields,
// skipping blank lines and comments.
func userFileLines(data []byte) [][]string {
	var out [][]string
	s := bufio.NewScanner(bytes.NewReader(data))
	s.Buffer(nil, 1<<20)
	for s.Scan() {
		line := strings.TrimSpace(s.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		out = append(out, strings.Split(line, ":"))
	}
	return out
}

// readUserFile reads name inside root with chroot semantics. Only regular
// files are read (a device planted as /etc/passwd must not be opened).
func readUserFile(root, name string) ([]byte, error) {
	if root == "" {
		return nil, fmt.Errorf("reading %s: %w", name, os.ErrNotExist)
	}
	p, err := securejoin.SecureJoin(root, name)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", name, err)
	}
	f, err := os.OpenFile(p, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", name, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", name, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("reading %s: not a regular file", name)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxUserFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", name, err)
	}
	if len(data) > maxUserFileBytes {
		return nil, fmt.Errorf("reading %s: larger than %d bytes", name, maxUserFileBytes)
	}
	return data, nil
}
