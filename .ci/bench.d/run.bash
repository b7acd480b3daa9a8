# shellcheck shell=bash
# .ci/bench.d/run.bash: the RUN benchmarks of issue 4, sourced by .ci/bench
# (which provides GO, RUNS, CACHE, WORK, IMGBUILD, HAVE_BUILDAH, IS_ROOT and
# the helpers die, need_pkg, want, timed, col, median, maxof). Sections:
#
#  3. steps: 20 (BENCH_STEPS) trivial RUN steps (`RUN echo N > /tmpN`) on
#     the Debian bookworm minbase base (.ci/debian-rootfs), no build cache,
#     imgbuild against `buildah bud --layers` (chroot isolation; the vfs
#     driver as in section 1, and overlay, buildah's fast driver, where it
#     can be mounted), alternating, BENCH_RUNS times each; median wall time.
#     Each run starts from a fresh state dir into which the base was pulled
#     (and, for imgbuild, extracted by a warm-up `RUN true` build) untimed:
#     the timings are of the steps, not of the pull. Target: imgbuild/buildah
#     <= 0.3.
#  4. bigbase: per-step overhead on a 1 GiB base of 100,000 files (the Debian
#     base plus a layer made by `COPY` of a generated context) against the
#     Debian base alone: t(1 + N RUNs) - t(1 RUN), divided by N, with the base
#     pulled and extracted beforehand and --no-cache. Target: the two per-step
#     overheads within 20 %. (buildah is not run here: its vfs driver copies
#     the whole 1 GiB rootfs for every step.)
#  5. commit: one RUN writing 10,000 files / 200 MiB (100 directories of 100
#     files cut by `split` from the same 2 MiB of /dev/urandom, which gzip
#     cannot compress either) on the Debian base. The
#     step's duration from --progress=json minus the time the RUN's own
#     command took (it prints it) is the commit time (plus the sandbox's start
#     and stop); imgbuild's peak RSS from /usr/bin/time. Target: RSS < 200 MB.
#     buildah (vfs) builds the same Dockerfile for reference (no target).
#
# The base images reach both builders through Debian's docker-registry,
# started on a free 127.0.0.1 port with its storage in $CACHE/registry
# (kept, so the 1 GiB base is built and pushed once per machine and Debian
# rootfs), and given to imgbuild as --insecure-registry and to buildah as
# --tls-verify=false. Needs root (overlay mounts, debootstrap, buildah).

if ! ((IS_ROOT)); then
	echo
	echo "SKIP RUN benchmarks: they need root (overlay mounts, debootstrap, buildah)"
	return 0
fi
STEPS=${BENCH_STEPS:-20}

# start_registry: docker-registry on a free loopback port, storage in
# $CACHE/registry; sets REG (HOST:PORT) and REG_PID (stopped by cleanup).
start_registry() {
	need_pkg docker-registry docker-registry || die "docker-registry could not be installed"
	need_pkg curl curl || die "curl could not be installed"
	mkdir -p "$CACHE/registry"
	local attempt port i
	for attempt in 1 2 3; do
		port=$((20000 + RANDOM % 40000))
		cat >"$WORK/registry.yml" <<-EOF
			version: 0.1
			log:
			  level: warn
			  accesslog:
			    disabled: true
			storage:
			  filesystem:
			    rootdirectory: $CACHE/registry
			  delete:
			    enabled: true
			  maintenance:
			    uploadpurging:
			      enabled: false
			http:
			  addr: 127.0.0.1:$port
		EOF
		docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
		REG_PID=$!
		for ((i = 0; i < 200; i++)); do
			if curl -sf "http://127.0.0.1:$port/v2/" >/dev/null 2>&1; then
				REG=127.0.0.1:$port
				return 0
			fi
			kill -0 "$REG_PID" 2>/dev/null || break
			sleep 0.1
		done
		kill "$REG_PID" 2>/dev/null || true
		wait "$REG_PID" 2>/dev/null || true
		REG_PID=
	done
	cat "$WORK/registry.log" >&2
	die "docker-registry did not start"
}

# has_manifest REF: whether the registry holds REF (HOST:PORT/REPO:TAG).
has_manifest() {
	local host=${1%%/*} rest=${1#*/}
	curl -sf -o /dev/null -I \
		-H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
		-H 'Accept: application/vnd.oci.image.manifest.v1+json' \
		"http://$host/v2/${rest%:*}/manifests/${rest##*:}"
}

# ctx_of NAME: a context dir $WORK/ctx-NAME whose Dockerfile is read from
# stdin; prints its path.
ctx_of() {
	mkdir -p "$WORK/ctx-$1"
	cat >"$WORK/ctx-$1/Dockerfile"
	echo "$WORK/ctx-$1"
}

# trivial_runs N FROM: a Dockerfile: FROM, then N trivial RUNs.
trivial_runs() {
	local n=$1 i
	echo "FROM $2"
	for ((i = 1; i <= n; i++)); do echo "RUN echo $i > /tmp$i"; done
}

# The builders, without build cache, on the bench registry (state dirs
# come after: --root DIR, or --root DIR/root --runroot DIR/run).
IMGB=("$IMGBUILD" --no-cache)
BUD=(buildah bud --layers --no-cache --format docker --isolation chroot --tls-verify=false)

# new_imgbuild_state BASE: a fresh imgbuild state dir with BASE pulled and
# extracted (by a warm-up `RUN true` build); prints its path.
new_imgbuild_state() {
	local state
	state=$(mktemp -d "$WORK/state.XXXXXX")
	printf 'FROM %s\nRUN true\n' "$1" | ctx_of warmup >/dev/null
	"${IMGB[@]}" --root "$state" -q -t warmup "$WORK/ctx-warmup" >"$WORK/warmup.log" 2>&1 ||
		{ tail -n 20 "$WORK/warmup.log" >&2; die "imgbuild warm-up on $1 failed"; }
	echo "$state"
}

# new_buildah_state DRIVER BASE: a fresh buildah state dir (storage driver
# DRIVER, noted in STATE/driver for drop_state) with BASE pulled; prints its
# path.
new_buildah_state() {
	local state
	state=$(mktemp -d "$WORK/state.XXXXXX")
	echo "$1" >"$state/driver"
	buildah --storage-driver "$1" --root "$state/root" --runroot "$state/run" pull -q --tls-verify=false "$2" \
		>"$WORK/warmup.log" 2>&1 || { tail -n 20 "$WORK/warmup.log" >&2; die "buildah pull $2 ($1) failed"; }
	echo "$state"
}

# drop_state STATE: remove a state dir (for buildah's overlay driver, its
# images first, so that it unmounts what it mounted).
drop_state() {
	if [[ -f $1/driver && $(cat "$1/driver") == overlay ]]; then
		buildah --storage-driver "$(cat "$1/driver")" --root "$1/root" --runroot "$1/run" rm -a >/dev/null 2>&1 || true
		buildah --storage-driver "$(cat "$1/driver")" --root "$1/root" --runroot "$1/run" rmi -a -f >/dev/null 2>&1 || true
	fi
	local m
	while read -r m; do
		umount -l "$m" 2>/dev/null || true
	done < <(findmnt -rn -o TARGET | awk -v d="$1/" 'index($0, d) == 1' | sort -r)
	rm -rf --one-file-system "$1"
}

# layers_in STATE TAG: the number of layers of TAG in an imgbuild store.
layers_in() {
	"$IMGBUILD" --root "$1" inspect "$2" |
		awk '/"diff_ids"/ {on=1; next} on && /\]/ {on=0} on && /sha256:/ {n++} END {print n+0}'
}

# label_of NAME: the builder named in a result file's name.
label_of() {
	case $1 in
	*-imgbuild) echo imgbuild ;;
	*-buildah-*) echo "buildah bud --layers (${1##*-})" ;;
	*) echo "$1" ;;
	esac
}

# pass_if COND-AWK VALUE MESSAGE: PASS or FAIL line.
pass_if() {
	local v=FAIL
	awk -v x="$2" "BEGIN {exit !($1)}" && v=PASS
	echo "$v  $3"
}

echo
echo "== RUN benchmarks: starting docker-registry, pushing the Debian base"
start_registry
IMGB+=(--insecure-registry "$REG")
DEB=$REG/library/debian:bookworm
t0=$(date +%s.%N)
DEB_DIGEST=$("$GO" run .ci/bench.d/pushdebian.go -ref "$DEB") || die "pushing the Debian base failed"
echo "Debian bookworm minbase $DEB_DIGEST at $DEB ($(.ci/debian-rootfs): $(du -sm "$(.ci/debian-rootfs)" | cut -f1) MB," \
	"$(find "$(.ci/debian-rootfs)" | wc -l) entries; rootfs+image+push $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b-a}')s)"

# ---- 3. trivial RUN steps against buildah ----------------------------------
if want steps; then
	CTX_STEPS=$(trivial_runs "$STEPS" "$DEB" | ctx_of steps)
	# Sanity check once, outside the timings: one layer per RUN, /tmpN there.
	s=$(new_imgbuild_state "$DEB")
	"${IMGB[@]}" --root "$s" -q -t bench:steps -o "type=local,dest=$WORK/steps-rootfs" "$CTX_STEPS" >/dev/null ||
		die "imgbuild build of $STEPS RUN steps failed"
	[[ $(layers_in "$s" bench:steps) == $((STEPS + 1)) ]] ||
		die "imgbuild built $(layers_in "$s" bench:steps) layers, want $((STEPS + 1))"
	[[ $(cat "$WORK/steps-rootfs/tmp$STEPS") == "$STEPS" ]] || die "/tmp$STEPS of the built image is not \"$STEPS\""
	drop_state "$s"
	rm -rf "$WORK/steps-rootfs"
	# buildah with the driver of section 1 (vfs), and with overlay, its
	# faster driver, where this machine can mount it.
	names=(steps-imgbuild)
	drivers=()
	if ((HAVE_BUILDAH)); then
		drivers=(vfs)
		s=$(mktemp -d "$WORK/state.XXXXXX")
		if buildah --storage-driver overlay --root "$s/root" --runroot "$s/run" pull -q --tls-verify=false "$DEB" \
			>"$WORK/overlay.log" 2>&1; then
			echo overlay >"$s/driver"
			drivers+=(overlay)
		else
			echo "bench: buildah cannot use overlay here, comparing with vfs only: $(tail -n 1 "$WORK/overlay.log")"
		fi
		drop_state "$s"
	fi
	for d in "${drivers[@]}"; do names+=("steps-buildah-$d"); done
	for ((i = 1; i <= RUNS; i++)); do
		echo "run $i/$RUNS ..."
		s=$(new_imgbuild_state "$DEB")
		timed steps-imgbuild "${IMGB[@]}" --root "$s" -q -t bench:steps "$CTX_STEPS"
		drop_state "$s"
		for d in "${drivers[@]}"; do
			s=$(new_buildah_state "$d" "$DEB")
			timed "steps-buildah-$d" "${BUD[@]}" --storage-driver "$d" --root "$s/root" --runroot "$s/run" \
				-q -t bench:steps "$CTX_STEPS"
			drop_state "$s"
		done
	done
	echo
	echo "== $STEPS trivial RUN steps on Debian bookworm minbase, no cache, base pre-pulled, median of $RUNS runs"
	printf '%-32s %9s %9s %9s %12s %12s\n' builder "time s" "min s" "max s" "per step ms" "RSS MB max"
	for n in "${names[@]}"; do
		printf '%-32s %9s %9s %9s %12.0f %12.1f\n' "$(label_of "$n")" "$(median "$n" 1)" "$(col "$n" 1 | head -n 1)" \
			"$(maxof "$n" 1)" "$(median "$n" 1 | awk -v n="$STEPS" '{print $1*1000/n}')" \
			"$(maxof "$n" 2 | awk '{print $1/1024}')"
	done
	for d in "${drivers[@]}"; do
		a=$(median steps-imgbuild 1) b=$(median "steps-buildah-$d" 1)
		r=$(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.3f", a/b}')
		pass_if 'x <= 0.3' "$r" "$STEPS RUN steps: imgbuild ${a}s vs buildah ($d) ${b}s (ratio $r, target <= 0.3)"
	done
fi

# ---- 4. per-step overhead: 1 GiB / 100k-file base against the Debian base --
if want bigbase; then
	BIG_CTX=$CACHE/context-1g-v1
	if [[ ! -f $BIG_CTX.sha256 ]]; then
		echo "bench: generating the 1 GiB / 100,000-file context in $BIG_CTX"
		rm -rf "$BIG_CTX" "$BIG_CTX.tmp"
		mkdir -p "$CACHE"
		"$GO" run .ci/bench.d/gencontext.go -dir "$BIG_CTX.tmp" -files 100000 -bytes $((1 << 30)) -seed 2 >"$WORK/sum"
		mv "$BIG_CTX.tmp" "$BIG_CTX"
		mv "$WORK/sum" "$BIG_CTX.sha256"
	fi
	# Tagged with the first 12 hex digits of the Debian base's digest.
	BIG=$REG/bench/debian-1g:$(cut -c8-19 <<<"$DEB_DIGEST")
	if ! has_manifest "$BIG"; then
		echo "bench: building and pushing $BIG (once per Debian base)"
		s=$(mktemp -d "$WORK/state.XXXXXX")
		printf 'FROM %s\nCOPY . /big/\n' "$DEB" | ctx_of big-df >/dev/null
		"$IMGBUILD" --root "$s" --insecure-registry "$REG" -q --push -t "$BIG" \
			-f "$WORK/ctx-big-df/Dockerfile" "$BIG_CTX" >"$WORK/big.log" 2>&1 ||
			{ tail -n 20 "$WORK/big.log" >&2; die "building $BIG failed"; }
		drop_state "$s"
	fi
	echo "1 GiB base: $BIG ($(find "$BIG_CTX" -type f -name 'f*' | wc -l) files over the Debian base)"
	trivial_runs 1 "$DEB" | ctx_of one-small >/dev/null
	trivial_runs 1 "$BIG" | ctx_of one-big >/dev/null
	trivial_runs $((STEPS + 1)) "$DEB" | ctx_of many-small >/dev/null
	trivial_runs $((STEPS + 1)) "$BIG" | ctx_of many-big >/dev/null
	s_small=$(new_imgbuild_state "$DEB")
	s_big=$(new_imgbuild_state "$BIG")
	for ((i = 1; i <= RUNS; i++)); do
		echo "run $i/$RUNS ..."
		for base in small big; do
			s=s_$base
			timed "one-$base" "${IMGB[@]}" --root "${!s}" -q -t bench:one "$WORK/ctx-one-$base"
			timed "many-$base" "${IMGB[@]}" --root "${!s}" -q -t bench:many "$WORK/ctx-many-$base"
		done
	done
	drop_state "$s_small"
	drop_state "$s_big"
	echo
	echo "== per-step overhead: 1 vs $((STEPS + 1)) trivial RUN steps, base pulled and extracted, no cache, median of $RUNS runs"
	printf '%-28s %10s %10s %14s\n' base "1 RUN s" "$((STEPS + 1)) RUNs s" "per step ms"
	for base in small big; do
		case $base in
		small) label="Debian minbase" ;;
		big) label="Debian + 1 GiB / 100k files" ;;
		esac
		t1=$(median "one-$base" 1) tn=$(median "many-$base" 1)
		per=$(awk -v a="$t1" -v b="$tn" -v n="$STEPS" 'BEGIN {printf "%.1f", (b-a)*1000/n}')
		eval "per_$base=$per"
		printf '%-28s %10s %10s %14s\n' "$label" "$t1" "$tn" "$per"
	done
	r=$(awk -v a="$per_big" -v b="$per_small" 'BEGIN {printf "%.3f", (b > 0) ? a / b : 99}')
	pass_if 'x >= 0.8 && x <= 1.2' "$r" "per-step overhead on the 1 GiB base ${per_big} ms vs ${per_small} ms on the Debian base (ratio $r, target within 20 %)"
fi

# ---- 5. a RUN writing 10,000 files / 200 MiB --------------------------------
if want commit; then
	gen='s=$(date +%s%N); head -c 2097152 /dev/urandom >/seed; for d in $(seq -w 0 99); do mkdir -p /data/d$d; split -b 20972 -a 2 -d /seed /data/d$d/f; done; rm /seed; e=$(date +%s%N); echo "generate_ms $(( (e - s) / 1000000 ))"; find /data -type f | wc -l'
	CTX_COMMIT=$(printf 'FROM %s\nRUN %s\n' "$DEB" "$gen" | ctx_of commit)
	for ((i = 1; i <= RUNS; i++)); do
		echo "run $i/$RUNS ..."
		s=$(new_imgbuild_state "$DEB")
		timed commit-imgbuild "${IMGB[@]}" --root "$s" --progress=json -t bench:commit "$CTX_COMMIT"
		files=$(grep -o '"log":"[^"]*' "$WORK/log" | grep -o '10000' | head -n 1)
		[[ $files == 10000 ]] || { tail -n 20 "$WORK/log" >&2; die "the RUN did not write 10,000 files"; }
		gen_ms=$(grep -o 'generate_ms [0-9][0-9]*' "$WORK/log" | head -n 1 | cut -d' ' -f2)
		step_s=$(grep '"status":"done"' "$WORK/log" | grep '"instruction":"RUN ' |
			sed 's/.*"duration":\([0-9.e+-]*\).*/\1/' | tail -n 1)
		[[ -n $gen_ms && -n $step_s ]] || { tail -n 20 "$WORK/log" >&2; die "no step duration or generate_ms in the json progress"; }
		echo "$step_s $gen_ms" | awk '{printf "%.3f %.3f %.3f\n", $1, $2/1000, $1-$2/1000}' >>"$WORK/commit-steps"
		drop_state "$s"
		if ((HAVE_BUILDAH)); then
			s=$(new_buildah_state vfs "$DEB")
			timed commit-buildah "${BUD[@]}" --storage-driver vfs --root "$s/root" --runroot "$s/run" -q -t bench:commit "$CTX_COMMIT"
			drop_state "$s"
		fi
	done
	echo
	echo "== one RUN writing 10,000 files / 200 MiB on Debian minbase, base pre-pulled, median of $RUNS runs"
	printf '%-34s %9s %9s\n' "" median max
	printf '%-34s %9s %9s\n' "imgbuild build wall s" "$(median commit-imgbuild 1)" "$(maxof commit-imgbuild 1)"
	printf '%-34s %9s %9s\n' "imgbuild RUN step s" "$(median commit-steps 1)" "$(maxof commit-steps 1)"
	printf '%-34s %9s %9s\n' "  of which the command s" "$(median commit-steps 2)" "$(maxof commit-steps 2)"
	printf '%-34s %9s %9s\n' "  the rest: commit (+sandbox) s" "$(median commit-steps 3)" "$(maxof commit-steps 3)"
	printf '%-34s %9.1f %9.1f\n' "imgbuild peak RSS MB" "$(median commit-imgbuild 2 | awk '{print $1/1024}')" \
		"$(maxof commit-imgbuild 2 | awk '{print $1/1024}')"
	if ((HAVE_BUILDAH)); then
		printf '%-34s %9s %9s\n' "buildah bud (vfs) wall s" "$(median commit-buildah 1)" "$(maxof commit-buildah 1)"
		printf '%-34s %9.1f %9.1f\n' "buildah (vfs) peak RSS MB" "$(median commit-buildah 2 | awk '{print $1/1024}')" \
			"$(maxof commit-buildah 2 | awk '{print $1/1024}')"
		echo "ratio imgbuild/buildah wall time: $(awk -v a="$(median commit-imgbuild 1)" -v b="$(median commit-buildah 1)" 'BEGIN {printf "%.3f", a/b}') (no target)"
	fi
	rss=$(maxof commit-imgbuild 2 | awk '{printf "%.1f", $1/1024}')
	pass_if 'x < 200' "$rss" "imgbuild peak RSS ${rss} MB writing a 10,000-file / 200 MiB layer (max of $RUNS runs, target < 200 MB)"
	echo "INFO  commit time of 10,000 files / 200 MiB: $(median commit-steps 3)s (step $(median commit-steps 1)s minus the command's $(median commit-steps 2)s)"
fi
