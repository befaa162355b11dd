#!/usr/bin/env bash
# Runs pjdfstest and xfstests' fsx against a live ckptfs mount and prints per-group pass counts.
# It downloads nothing and builds nothing: give it the already built tools.
#
#   scripts/posix_conformance.sh --pjdfstest DIR --fsx BIN [options] MOUNTPOINT
#
#   --pjdfstest DIR   a built pjdfstest checkout (DIR/pjdfstest and DIR/tests/<group>/*.t)
#   --fsx BIN         a built fsx (xfstests ltp/fsx.c)
#   --groups "A B"    pjdfstest groups to run (default: every directory under DIR/tests)
#   --fsx-ops N       operations per fsx run (default 10000)
#   --fsx-seed S      fsx seed (default 77)
#   --fsx-size BYTES  fsx's largest file size (default 8388608)
#   --out DIR         where the logs go (default: a new directory under /tmp)
#
# Run as root (pjdfstest's chown/chmod tests need it). Either tool can be left out. Everything runs inside
# MOUNTPOINT/posix-conformance-PID, which is removed at the end. Prints, per pjdfstest group, the assertions
# passed and failed and the test files that passed; every failing assertion is listed in OUT/failures.txt;
# then each fsx run's result. Last line: 'posix_conformance: N passed, M failed' over assertions and fsx runs;
# exit status 1 if anything failed. Failures that are by design on ckptfs (mode and owner not stored, no
# hard links, symlinks, FIFOs or device nodes, atime mirrors mtime, fallocate EOPNOTSUPP) count as failures
# here; README's semantics section lists them.
set -uo pipefail

pjd="" fsx="" groups="" fsx_ops=10000 fsx_seed=77 fsx_size=8388608 out="" mp=""
while [ $# -gt 0 ]; do
    case "$1" in
        --pjdfstest) pjd=$2; shift 2 ;;
        --fsx) fsx=$2; shift 2 ;;
        --groups) groups=$2; shift 2 ;;
        --fsx-ops) fsx_ops=$2; shift 2 ;;
        --fsx-seed) fsx_seed=$2; shift 2 ;;
        --fsx-size) fsx_size=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "posix_conformance: unknown option $1" >&2; exit 2 ;;
        *) mp=$1; shift ;;
    esac
done
if [ -z "$mp" ] || { [ -z "$pjd" ] && [ -z "$fsx" ]; }; then
    echo "usage: $0 --pjdfstest DIR --fsx BIN [--groups \"A B\"] [--fsx-ops N] [--fsx-seed S] [--fsx-size BYTES] [--out DIR] MOUNTPOINT" >&2
    exit 2
fi
mp=$(cd "$mp" && pwd) || exit 2
if ! awk -v m="$mp" '$5 == m && / - fuse/ {f=1} END {exit !f}' /proc/self/mountinfo; then
    echo "posix_conformance: $mp is not a FUSE mount" >&2
    exit 2
fi
if [ -n "$pjd" ]; then
    pjd=$(cd "$pjd" && pwd) || exit 2
    [ -x "$pjd/pjdfstest" ] && [ -d "$pjd/tests" ] || { echo "posix_conformance: $pjd has no built pjdfstest and tests/" >&2; exit 2; }
    command -v prove >/dev/null || { echo "posix_conformance: prove (perl) is needed" >&2; exit 2; }
fi
if [ -n "$fsx" ]; then
    fsx=$(realpath "$fsx") && [ -x "$fsx" ] || { echo "posix_conformance: $fsx is not executable" >&2; exit 2; }
fi
out=${out:-$(mktemp -d /tmp/posix-conformance-XXXXXX)}
mkdir -p "$out"
work="$mp/posix-conformance-$$"
mkdir "$work" || exit 1
: > "$out/failures.txt"
total_pass=0 total_fail=0

if [ -n "$pjd" ]; then
    [ -n "$groups" ] || groups=$(cd "$pjd/tests" && for d in */; do echo "${d%/}"; done)
    printf "%-16s %8s %8s %8s %12s\n" "pjdfstest group" passed failed total "files ok"
    for g in $groups; do
        [ -d "$pjd/tests/$g" ] || { echo "posix_conformance: no group $g" >&2; continue; }
        mkdir -p "$work/$g"
        log="$out/pjdfstest-$g.log"
        # Each test file runs inside the mount; prove -v prints every assertion.
        (cd "$work/$g" && timeout 900 prove -v -r "$pjd/tests/$g" > "$log" 2>&1)
        pass=$(grep -cE '^ok [0-9]+' "$log")
        fail=$(grep -cE '^not ok [0-9]+' "$log")
        files=$(find "$pjd/tests/$g" -name '*.t' | wc -l)
        files_bad=$(awk '/^Test Summary Report/{s=1} s && /\.t +\(Wstat|\.t +\(Tests/{n++} END{print n+0}' "$log")
        printf "%-16s %8d %8d %8d %7d/%-4d\n" "$g" "$pass" "$fail" $((pass + fail)) $((files - files_bad)) "$files"
        # Failing assertions, with the file they come from.
        awk -v g="$g" '/^\/.*\.t \.\./{f=$1} /^not ok [0-9]+/{print g ": " f ": " $0}' "$log" >> "$out/failures.txt"
        total_pass=$((total_pass + pass)) total_fail=$((total_fail + fail))
    done
    echo "pjdfstest: $total_pass assertions passed, $total_fail failed; failures in $out/failures.txt"
    # Failing assertions grouped by cause. The first five causes are ckptfs's design (README, semantics);
    # a cascade is a later assertion of the same test file that fails because an earlier step could not be
    # done; anything under "other" needs a look.
    python3 - "$out/failures.txt" <<'PY'
import collections, re, sys
causes = collections.Counter()
special, owner, other = set(), set(), []
for line in open(sys.argv[1]):
    m = re.match(r"(\S+): (\S+): not ok \d+(?: - tried '(.*)', expected (.*), got (.*))?", line.strip())
    if not m or m.group(2) == "fsx":
        continue
    group, f, tried, exp, got = m.groups()
    tried, exp, got = tried or "", exp or "", got or ""
    words = tried.split()
    while words and words[0] in ("-u", "-g", "-U"):
        words = words[2:]
    op = words[1] if words[:1] == ["--"] and len(words) > 1 else (words[0] if words else "")
    nonroot = bool(re.match(r"-[ug] ", tried))
    if re.search(r"[0-9a-f]{60,}", tried) and "ENAMETOOLONG" in (got, exp):
        c = "by design: a path near PATH_MAX is a key over S3's 1,024 bytes (ENAMETOOLONG, and cascades)"
    elif re.search(r"[0-9a-f]{60,}", tried) and got in ("ENOENT", "EINVAL") and op not in ("link", "symlink", "mknod", "mkfifo", "bind") and f not in special:
        c = "BUG? name over 255 bytes or path over S3's 1,024-byte key: ENOENT/EINVAL, not ENAMETOOLONG (and cascades)"
    elif not tried:
        c = "by design: ctime not stored, a directory's times are the mount time (time checks)"
    elif op in ("mknod", "mkfifo", "symlink", "link", "bind") and got in ("EPERM",):
        c = "by design: no hard links, symlinks, FIFOs, sockets or device nodes (EPERM)"; special.add(f)
    elif re.search(r"/utimensat/05\.t$", f):
        c = "by design (cascade): a special file the test could not create"  # made by ln -s, outside pjdfstest
    elif re.search(r"/utimensat/00\.t$", f) and op == "lstat" and got.isdigit():
        c = "by design: atime mirrors mtime; a directory's times are the mount time"  # the dir case of the loop
    elif re.search(r"/(rename/09|rename/10|rmdir/11|unlink/11)\.t$", f):
        c = "by design: mode not stored (sticky directories)"
    elif nonroot and got == "EACCES":
        c = "by design: owner/mode not stored; the fixed owner root and 0755/0644 deny other users"; owner.add(f)
    elif op in ("chmod", "chown", "lchown", "fchmod", "fchown", "lchmod") or re.search(r"\b(mode|uid|gid)\b", tried) \
            or re.search(r"(^|[,(|])0[0-7]{2,4}\b|(^|,)6553[0-9]", exp):
        c = "by design: owner/mode not stored (chmod/chown accepted, mode and owner from mount options)"; owner.add(f)
    elif "nlink" in tried:
        c = "by design: no hard links (nlink stays 1)"
    elif op == "lstat" and "atime" in tried:
        c = "by design: atime mirrors mtime; a directory's times are the mount time"
    elif f in special and (got in ("ENOENT", "EEXIST", "0", "EISDIR", "EADDRINUSE", "ENOTDIR") or "inode" in tried
                           or (op == "lstat" and "type" in tried)
                           or exp in ("ELOOP", "ENXIO", "EEXIST", "ENOTDIR")):
        c = "by design (cascade): a special file the test could not create"
    elif f in owner and got in ("ENOENT", "EEXIST", "0", "EACCES", "EPERM"):
        c = "by design (cascade): owner/mode not stored"
    else:
        c = "other"
        other.append(f"{f}: tried '{tried}', expected {exp}, got {got}")
    causes[c] += 1
print("pjdfstest failures by cause:")
for c, n in causes.most_common():
    print(f"  {n:6d}  {c}")
for o in other[:40]:
    print("    other: " + re.sub(r"pjdfstest_[0-9a-f]+", "P", o)[:200])
PY
fi

if [ -n "$fsx" ]; then
    fsx_runs() {
        # name, extra options
        local name=$1; shift
        local log="$out/fsx-$name.log"
        local start=$SECONDS
        (cd "$work" && timeout 1800 "$fsx" -q -N "$fsx_ops" -S "$fsx_seed" -l "$fsx_size" "$@" "fsx-$name" > "$log" 2>&1)
        local rc=$?
        local last
        last=$(grep -v '^$' "$log" | tail -1)
        if [ $rc -eq 0 ]; then
            total_pass=$((total_pass + 1))
            echo "fsx $name ($*): ok in $((SECONDS - start)) s: $last"
        else
            total_fail=$((total_fail + 1))
            echo "fsx $name ($*): FAILED (exit $rc) in $((SECONDS - start)) s: $last (log: $log)"
            echo "fsx $name: exit $rc: $(grep -m3 -E 'ERROR|error|failed|BAD|bad' "$log" | tr '\n' ' ')" >> "$out/failures.txt"
        fi
    }
    fsx_runs mmap
    fsx_runs nommap -R -W
fi

rm -rf "$work"
echo "logs: $out"
echo "posix_conformance: $total_pass passed, $total_fail failed"
[ "$total_fail" -eq 0 ]
