#!/usr/bin/env bash
# hack/slow.sh CORES COMMAND...: runs COMMAND (and everything it starts) on CORES CPUs' worth of
# time in all, through a cgroup-v1 CPU quota: a slower machine of the same kind, to check that
# nothing depends on this one's speed. `hack/slow.sh 0.67 make test` gives a 2-core machine's
# work two thirds of one core: about 3x slower. Needs root and the cgroup-v1 `cpu` controller.
set -euo pipefail
[[ $# -ge 2 ]] || { echo "usage: hack/slow.sh CORES COMMAND..." >&2; exit 2; }
cores=$1; shift
root=/sys/fs/cgroup/cpu
[[ -w $root/cgroup.procs && -f $root/cpu.cfs_quota_us ]] || { echo "hack/slow.sh: needs root and the cgroup-v1 cpu controller at $root" >&2; exit 2; }
group=$root/zeroth-slow-$$
mkdir "$group"
period=100000
quota=$(python3 -c "print(int($cores * $period))")
echo "$period" > "$group/cpu.cfs_period_us"
echo "$quota" > "$group/cpu.cfs_quota_us"
cleanup() {
  # whatever is left goes back to the root group, so the cgroup can be removed
  while read -r pid; do echo "$pid" > "$root/cgroup.procs" 2>/dev/null || true; done < "$group/cgroup.procs"
  rmdir "$group" 2>/dev/null || true
}
trap cleanup EXIT
echo "hack/slow.sh: $cores CPUs for: $*" >&2
echo $$ > "$group/cgroup.procs"   # this shell, and so everything it starts from here on
"$@"
