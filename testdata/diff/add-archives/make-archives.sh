#!/bin/sh
# Regenerates the archives of this case (they are committed as they are).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
mkdir -p "$src/tree/sub"
printf 'in tar\n' > "$src/tree/a.txt"
printf 'deep\n' > "$src/tree/sub/b.txt"
ln -s a.txt "$src/tree/link"
chmod 0755 "$src/tree"
chmod 0751 "$src/tree/sub"
chmod 0600 "$src/tree/a.txt"
chmod 0644 "$src/tree/sub/b.txt"
t() {
	tar --sort=name --mtime=@1700000000 --owner=1000 --group=1000 --numeric-owner \
		--format=pax --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
		-C "$src" -cf - tree
}
cd "$here"
t > tree.tar
t | gzip -n -9 > tree.tar.gz
t | bzip2 -9 > tree.tar.bz2
t | xz -9 > tree.tar.xz
cp tree.tar.gz by-content.bin
printf 'not a tar\n' | gzip -n > notatar.gz
