# shellcheck shell=bash
# .ci/bench.d/cache.bash: the build cache benchmarks of issue 5, sourced by
# .ci/bench (BENCH_ONLY=cache, or all). It reuses the helpers of .ci/bench
# (die, need_pkg, timed, col, median, maxof; GO, RUNS, CACHE, WORK,
# IMGBUILD, HAVE_BUILDAH, IS_ROOT) and of .ci/bench.d/run.bash (start_registry,
# new_buildah_state, drop_state, pass_if; REG, DEB: the Debian bookworm
# minbase base on a loopback docker-registry), sourcing run.bash for its
# setup alone when the RUN sections did not run. Sections:
#
#  6. noop: a no-op rebuild of a 20-step Dockerfile (FROM the Debian base,
#     then COPY dN/ /data/dN/ and a RUN counting its files, for N = 0..9) on
#     a 2,000-file / 20 MiB context. imgbuild and `buildah bud --layers`
#     (chroot isolation; vfs, and overlay where it can be mounted) each build
#     it once untimed, then rebuild it, alternating, BENCH_RUNS times; median
#     wall time (each timed run after a `sync`, as in sections 7 and 8). The
#     imgbuild rebuild resolves the base's tag at the registry, as BuildKit
#     does; buildah's default pull policy (missing) does not. A check rebuild with --progress=json must show all 20 steps
#     cached. Targets: imgbuild/buildah <= 0.5, and imgbuild < 0.2 s (a warm
#     BuildKit daemon's no-op rebuild on these machines).
#  7. change: one source file changed in a 5,000-file / 50 MiB context (the
#     context of section 1) with `COPY . .` and 3 RUNs after it (and a RUN
#     and a WORKDIR before it). Before each run the same file gets new
#     bytes; both builders then rebuild, alternating; median wall time.
#     Every imgbuild run's --progress=json must show exactly the COPY and
#     the 3 RUNs run and the 2 steps before them cached. No target in the
#     issue beyond "time against buildah"; printed as INFO.
#  8. remote: an empty --root with --cache-from (the registry, mode=max,
#     pushed by a first build of section 6's Dockerfile and context) against
#     the full cold build in an empty --root without cache, alternating,
#     BENCH_RUNS times; both pull the base from the loopback registry. The
#     --cache-from build must show all 20 steps cached and give the cold
#     build's digest (SOURCE_DATE_EPOCH is set); its bytes downloaded
#     (imgbuild.cache.bytesDownloaded of --metadata-file) against the image's
#     compressed size and against its layers above the base. A third build,
#     also in an empty --root with --cache-from, pushes to the same registry
#     (--push): it must push the cold build's digest, and what it downloads
#     (the blobs its store holds) is only manifests and configs, since the
#     push mounts the base's and the steps' layers. No target in the issue;
#     printed as INFO.
#
# Needs root (RUN steps, buildah, overlay mounts).

if ! ((IS_ROOT)); then
	echo
	echo "SKIP build cache benchmarks: they need root (RUN steps, buildah)"
	return 0
fi
if [[ -z ${REG:-} ]]; then
	# run.bash's setup only: its sections are not selected (.ci/bench
	# sources it when one is, before this file).
	# shellcheck source=run.bash
	source .ci/bench.d/run.bash
fi

# cache_ctx NAME FILES MIB SEED: a generated context in $CACHE (made once,
# kept); prints its path.
cache_ctx() {
	local dir=$CACHE/context-$1
	if [[ ! -f $dir.sha256 ]]; then
		echo "bench: generating the $2-file / $3 MiB context in $dir" >&2
		rm -rf "$dir" "$dir.tmp"
		mkdir -p "$CACHE"
		"$GO" run .ci/bench.d/gencontext.go -dir "$dir.tmp" -files "$2" -bytes $(($3 << 20)) -seed "$4" >"$WORK/sum" ||
			die "generating $dir failed"
		mv "$dir.tmp" "$dir"
		mv "$WORK/sum" "$dir.sha256"
	fi
	echo "$dir"
}

# json_steps STATUS LOG: the instructions of the steps of a --progress=json
# log that ended with STATUS (done, cached), one a line, FROM excluded.
json_steps() {
	grep -o "\"instruction\":\"[^\"]*\",\"status\":\"$1\"" "$2" |
		sed 's/^"instruction":"//; s/","status":.*//' | grep -v '^FROM ' || true
}

# meta_field FILE KEY: a number of the imgbuild.cache object of a
# --metadata-file.
meta_field() {
	grep -o "\"$2\": *[0-9]*" "$1" | grep -o '[0-9]*$' || die "no $2 in $1: $(cat "$1")"
}

# image_sizes STATE TAG: "total above-base" compressed layer bytes of TAG in
# an imgbuild store (the base is its first layer).
image_sizes() {
	"$IMGBUILD" --root "$1" inspect "$2" |
		awk '/^  "Layers": \[/ {on=1; next} on && /"size":/ {gsub(/[^0-9]/, "", $2); s[++n]=$2}
			END {for (i=1; i<=n; i++) t+=s[i]; print t+0, t-s[1]}'
}

# mb BYTES: bytes in MB (10^6), one decimal.
mb() { awk -v b="$1" 'BEGIN {printf "%.2f", b/1e6}'; }

# ratio A B: A/B with 3 decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", (b > 0) ? a / b : 99}'; }

# The builders, with their build caches.
CIMG=("$IMGBUILD" --insecure-registry "$REG")
CBUD=(buildah bud --layers --format docker --isolation chroot --tls-verify=false)

# buildah's storage drivers here: vfs, and overlay where it can be mounted.
CDRIVERS=()
if ((HAVE_BUILDAH)); then
	CDRIVERS=(vfs)
	s=$(mktemp -d "$WORK/state.XXXXXX")
	if buildah --storage-driver overlay --root "$s/root" --runroot "$s/run" pull -q --tls-verify=false "$DEB" \
		>"$WORK/overlay.log" 2>&1; then
		echo overlay >"$s/driver"
		CDRIVERS+=(overlay)
	else
		echo "bench: buildah cannot use overlay here, comparing with vfs only: $(tail -n 1 "$WORK/overlay.log")"
	fi
	drop_state "$s"
fi

# The 20-step Dockerfile of sections 6 and 8 and its 2,000-file context.
CTX_NOOP=$(cache_ctx 2k-v1 2000 20 3)
DF_NOOP=$WORK/Dockerfile.noop
{
	echo "FROM $DEB"
	for n in 0 1 2 3 4 5 6 7 8 9; do
		echo "COPY d$n/ /data/d$n/"
		echo "RUN find /data/d$n -type f | wc -l > /count$n"
	done
} >"$DF_NOOP"

# imgbuild_state: a fresh imgbuild state dir; prints its path.
imgbuild_state() { mktemp -d "$WORK/state.XXXXXX"; }

# buildah_warm DRIVER DOCKERFILE CTX TAG: a fresh buildah state dir (driver
# DRIVER) with the base pulled and DOCKERFILE built once; prints its path.
buildah_warm() {
	local s
	s=$(new_buildah_state "$1" "$DEB")
	"${CBUD[@]}" --storage-driver "$1" --root "$s/root" --runroot "$s/run" -q -t "$4" -f "$2" "$3" \
		>"$WORK/warm.log" 2>&1 || { tail -n 20 "$WORK/warm.log" >&2; die "buildah ($1) build of $2 failed"; }
	echo "$s"
}

# imgbuild_warm STATE DOCKERFILE CTX TAG [FLAGS...]: build DOCKERFILE once
# in STATE.
imgbuild_warm() {
	local s=$1 df=$2 ctx=$3 tag=$4
	shift 4
	"${CIMG[@]}" --root "$s" -q -t "$tag" -f "$df" "$@" "$ctx" >"$WORK/warm.log" 2>&1 ||
		{ tail -n 20 "$WORK/warm.log" >&2; die "imgbuild build of $df failed"; }
}

# blob_bytes ROOT: the bytes of the blobs in ROOT's store (what a build in
# an empty ROOT downloaded or made).
blob_bytes() {
	find "$1/oci/blobs" -type f -printf '%s\n' | awk '{n += $1} END {print n + 0}'
}

# cache_label NAME: the builder named in a result file's name.
cache_label() {
	case $1 in
	remote-cold) echo "imgbuild cold, no cache" ;;
	remote-cachefrom) echo "imgbuild --cache-from (registry)" ;;
	remote-push) echo "imgbuild --cache-from --push" ;;
	*-imgbuild) echo imgbuild ;;
	*-buildah-*) echo "buildah bud --layers (${1##*-})" ;;
	*) echo "$1" ;;
	esac
}

# stimed NAME CMD...: timed, after writing back the file systems' dirty
# data (sync, untimed), so that no run pays for the writeback of the run
# before it (buildah's vfs driver writes gigabytes).
stimed() {
	sync
	timed "$@"
}

# print_rows TITLE NAME...: a table of median, min, max wall time.
print_rows() {
	echo
	echo "== $1, median of $RUNS runs"
	shift
	printf '%-36s %9s %9s %9s %12s\n' builder "time s" "min s" "max s" "RSS MB max"
	local n
	for n in "$@"; do
		printf '%-36s %9s %9s %9s %12.1f\n' "$(cache_label "$n")" "$(median "$n" 1)" "$(col "$n" 1 | head -n 1)" \
			"$(maxof "$n" 1)" "$(maxof "$n" 2 | awk '{print $1/1024}')"
	done
}

echo
echo "== build cache benchmarks (issue 5): 2,000-file context $CTX_NOOP ($(cat "$CTX_NOOP.sha256"))"

# ---- 6. no-op rebuild of 20 steps ---------------------------------------------
echo "noop: building once (untimed) ..."
S_IMG=$(imgbuild_state)
imgbuild_warm "$S_IMG" "$DF_NOOP" "$CTX_NOOP" bench:noop
declare -A S_BUD=()
for d in "${CDRIVERS[@]}"; do S_BUD[$d]=$(buildah_warm "$d" "$DF_NOOP" "$CTX_NOOP" bench:noop); done
# Check once, outside the timings: a rebuild runs nothing.
"${CIMG[@]}" --root "$S_IMG" --progress=json -t bench:noop -f "$DF_NOOP" "$CTX_NOOP" >/dev/null 2>"$WORK/noop.json" ||
	{ tail -n 20 "$WORK/noop.json" >&2; die "imgbuild no-op rebuild failed"; }
[[ $(json_steps cached "$WORK/noop.json" | wc -l) == 20 && -z $(json_steps done "$WORK/noop.json") ]] ||
	die "the no-op rebuild did not take all 20 steps from the cache: ran $(json_steps done "$WORK/noop.json" | tr '\n' ';')"
names=(noop-imgbuild)
for d in "${CDRIVERS[@]}"; do names+=("noop-buildah-$d"); done
for ((i = 1; i <= RUNS; i++)); do
	echo "run $i/$RUNS ..."
	stimed noop-imgbuild "${CIMG[@]}" --root "$S_IMG" -q -t bench:noop -f "$DF_NOOP" "$CTX_NOOP"
	for d in "${CDRIVERS[@]}"; do
		s=${S_BUD[$d]}
		stimed "noop-buildah-$d" "${CBUD[@]}" --storage-driver "$d" --root "$s/root" --runroot "$s/run" \
			-q -t bench:noop -f "$DF_NOOP" "$CTX_NOOP"
	done
done
drop_state "$S_IMG"
for d in "${CDRIVERS[@]}"; do drop_state "${S_BUD[$d]}"; done
print_rows "no-op rebuild, 20 steps (10 COPY, 10 RUN) on Debian minbase, 2,000 files / 20 MiB, warm" "${names[@]}"
a=$(median noop-imgbuild 1)
for d in "${CDRIVERS[@]}"; do
	b=$(median "noop-buildah-$d" 1)
	r=$(ratio "$a" "$b")
	pass_if 'x <= 0.5' "$r" "no-op rebuild: imgbuild ${a}s vs buildah ($d) ${b}s (ratio $r, target <= 0.5)"
done
pass_if 'x < 0.2' "$a" "no-op rebuild: imgbuild ${a}s (target < 0.2 s, a warm BuildKit daemon's)"

# ---- 7. one file changed under COPY . . ----------------------------------------
SRC_CTX=$CACHE/context-v1
[[ -f $SRC_CTX.sha256 ]] || SRC_CTX=$(cache_ctx v1 5000 50 1)
CTX_CHG=$WORK/ctx-change
rm -rf "$CTX_CHG"
cp -a "$SRC_CTX" "$CTX_CHG"
rm -f "$CTX_CHG/Dockerfile"
CHANGED=$(cd "$CTX_CHG" && find d3/s1/t2 -type f | sort | head -n 1)
[[ -n $CHANGED ]] || die "no file under $CTX_CHG/d3/s1/t2"
DF_CHG=$WORK/Dockerfile.change
cat >"$DF_CHG" <<EOF
FROM $DEB
RUN echo base > /base
WORKDIR /src
COPY . .
RUN find . -type f | wc -l > /count
RUN md5sum $CHANGED > /changed.md5
RUN du -sk . > /size
EOF
echo
echo "change: $(find "$CTX_CHG" -type f | wc -l) files, changing $CHANGED; building once (untimed) ..."
S_IMG=$(imgbuild_state)
imgbuild_warm "$S_IMG" "$DF_CHG" "$CTX_CHG" bench:change
for d in "${CDRIVERS[@]}"; do S_BUD[$d]=$(buildah_warm "$d" "$DF_CHG" "$CTX_CHG" bench:change); done
names=(change-imgbuild)
for d in "${CDRIVERS[@]}"; do names+=("change-buildah-$d"); done
want_ran=$'COPY . .\nRUN find . -type f | wc -l \\u003e /count\nRUN md5sum '"$CHANGED"$' \\u003e /changed.md5\nRUN du -sk . \\u003e /size'
want_cached=$'RUN echo base \\u003e /base\nWORKDIR /src'
for ((i = 1; i <= RUNS; i++)); do
	echo "run $i/$RUNS ..."
	head -c 4096 /dev/urandom >"$CTX_CHG/$CHANGED"
	stimed change-imgbuild "${CIMG[@]}" --root "$S_IMG" --progress=json -t bench:change -f "$DF_CHG" "$CTX_CHG"
	ran=$(json_steps done "$WORK/log") cached=$(json_steps cached "$WORK/log")
	if [[ $ran != "$want_ran" || $cached != "$want_cached" ]]; then
		printf 'ran:\n%s\ncached:\n%s\n' "$ran" "$cached" >&2
		die "run $i: imgbuild did not run exactly the COPY and the 3 RUNs after it"
	fi
	for d in "${CDRIVERS[@]}"; do
		s=${S_BUD[$d]}
		stimed "change-buildah-$d" "${CBUD[@]}" --storage-driver "$d" --root "$s/root" --runroot "$s/run" \
			-q -t bench:change -f "$DF_CHG" "$CTX_CHG"
	done
done
echo "checked in each run: imgbuild ran only the COPY and the 3 RUNs (--progress=json)"
drop_state "$S_IMG"
for d in "${CDRIVERS[@]}"; do drop_state "${S_BUD[$d]}"; done
print_rows "one file changed, 5,000 files / 50 MiB, COPY . . and 3 RUNs after it" "${names[@]}"
a=$(median change-imgbuild 1)
for d in "${CDRIVERS[@]}"; do
	b=$(median "change-buildah-$d" 1)
	echo "INFO  one file changed: imgbuild ${a}s vs buildah ($d) ${b}s (ratio $(ratio "$a" "$b"))"
done

# ---- 8. empty root with --cache-from against the cold build -------------------
CREF=$REG/bench/cache-noop:buildcache
echo
echo "remote: pushing the cache of section 6's build to $CREF (mode=max, untimed) ..."
export SOURCE_DATE_EPOCH=1700000000
S_IMG=$(imgbuild_state)
imgbuild_warm "$S_IMG" "$DF_NOOP" "$CTX_NOOP" bench:remote --cache-to "type=registry,ref=$CREF,mode=max"
first=$("$IMGBUILD" --root "$S_IMG" inspect bench:remote | awk -F'"' '/^  "Digest"/ {print $4}')
read -r img_total img_steps < <(image_sizes "$S_IMG" bench:remote)
drop_state "$S_IMG"
for ((i = 1; i <= RUNS; i++)); do
	echo "run $i/$RUNS ..."
	s=$(imgbuild_state)
	stimed remote-cold "${CIMG[@]}" --root "$s" -q -t bench:remote -f "$DF_NOOP" "$CTX_NOOP"
	cold=$(tail -n 1 "$WORK/log")
	drop_state "$s"
	s=$(imgbuild_state)
	stimed remote-cachefrom "${CIMG[@]}" --root "$s" --progress=json --metadata-file "$WORK/meta.json" \
		--cache-from "type=registry,ref=$CREF" -t bench:remote -f "$DF_NOOP" "$CTX_NOOP"
	[[ $(json_steps cached "$WORK/log" | wc -l) == 20 && -z $(json_steps done "$WORK/log") ]] ||
		die "run $i: the --cache-from build ran $(json_steps done "$WORK/log" | tr '\n' ';')"
	warm=$(grep -o '^sha256:[0-9a-f]*' "$WORK/log" | tail -n 1)
	[[ $cold == "$first" && $warm == "$first" ]] ||
		die "run $i: digests differ: first $first, cold $cold, --cache-from $warm"
	echo "$(meta_field "$WORK/meta.json" bytesDownloaded) $(meta_field "$WORK/meta.json" hits) $(blob_bytes "$s")" >>"$WORK/remote-bytes"
	drop_state "$s"
	s=$(imgbuild_state)
	stimed remote-push "${CIMG[@]}" --root "$s" --progress=json --metadata-file "$WORK/meta.json" \
		--cache-from "type=registry,ref=$CREF" --push -t "$REG/bench/pushed:$i" -f "$DF_NOOP" "$CTX_NOOP"
	[[ $(json_steps cached "$WORK/log" | wc -l) == 20 && -z $(json_steps done "$WORK/log") ]] ||
		die "run $i: the --cache-from --push build ran $(json_steps done "$WORK/log" | tr '\n' ';')"
	pushed=$(curl -fsS -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://$REG/v2/bench/pushed/manifests/$i" |
		sha256sum | cut -d' ' -f1)
	[[ sha256:$pushed == "$first" ]] || die "run $i: pushed sha256:$pushed, want $first"
	echo "$(meta_field "$WORK/meta.json" bytesDownloaded) $(blob_bytes "$s")" >>"$WORK/remote-push-bytes"
	drop_state "$s"
done
unset SOURCE_DATE_EPOCH
print_rows "empty --root: cold build vs --cache-from (mode=max), 20 steps, 2,000 files" remote-cold remote-cachefrom remote-push
a=$(median remote-cachefrom 1) b=$(median remote-cold 1) dl=$(median remote-bytes 1)
echo "checked in each run: all 20 steps from the cache ($(median remote-bytes 2) hits), digest $first as the cold build's"
echo "INFO  empty root with --cache-from: ${a}s vs cold ${b}s (ratio $(ratio "$a" "$b"))"
echo "INFO  bytes downloaded from the cache: $(mb "$dl") MB; image $(mb "$img_total") MB compressed," \
	"of which the 20 steps' layers $(mb "$img_steps") MB (ratio $(ratio "$dl" "$img_steps"); the base comes from its own pull)"
echo "INFO  blobs the --cache-from build stored (everything it downloaded, base included): $(mb "$(median remote-bytes 3)") MB"
p=$(median remote-push 1)
echo "checked in each run: the --cache-from --push build took all 20 steps from the cache and pushed $first"
echo "INFO  empty root with --cache-from and --push to the same registry: ${p}s vs cold ${b}s (ratio $(ratio "$p" "$b"))," \
	"downloaded from the cache $(mb "$(median remote-push-bytes 1)") MB; blobs stored (all it downloaded) $(mb "$(median remote-push-bytes 2)") MB:" \
	"layers are mounted, not downloaded"
