#!/usr/bin/env python3
"""Compare two directory trees as a container runtime would see them.

    compare_trees.py LEFT RIGHT

Exit 0 when equal; otherwise print the differences (up to 50) and exit 1.
Compared, without following symlinks: paths, file types, content (sha256),
mode (incl. setuid/setgid/sticky), uid, gid, mtime (whole seconds; a
symlink's own), symlink targets, device numbers and xattrs (every listable
name except security.selinux). Link counts are not compared: a checkout may
share inodes more. Same rules as tests/src/tree.rs (the Rust oracle), for the
cross/ end-to-end run of the ARM agent.
"""
import hashlib
import os
import stat
import sys

IGNORED_XATTRS = {"security.selinux"}


def kind(st):
    m = st.st_mode
    for test, name in (
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISDIR, "dir"),
        (stat.S_ISREG, "file"),
        (stat.S_ISCHR, "char device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(m):
            return name
    return "unknown"


def xattrs(path):
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for n in names:
        if n in IGNORED_XATTRS:
            continue
        try:
            out[n] = os.getxattr(path, n, follow_symlinks=False)
        except OSError as e:
            out[n] = f"<unreadable: {e}>".encode()
    return out


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def compare(left, right):
    diffs = []

    def entry(rel):
        lp, rp = os.path.join(left, rel), os.path.join(right, rel)
        try:
            ls = os.lstat(lp)
        except OSError:
            ls = None
        try:
            rs = os.lstat(rp)
        except OSError:
            rs = None
        if ls is None or rs is None:
            diffs.append((rel, "missing", kind(ls) if ls else "absent", kind(rs) if rs else "absent"))
            return
        lk, rk = kind(ls), kind(rs)
        if lk != rk:
            diffs.append((rel, "type", lk, rk))
            return
        if ls.st_mode != rs.st_mode:
            diffs.append((rel, "mode", oct(ls.st_mode), oct(rs.st_mode)))
        if ls.st_uid != rs.st_uid:
            diffs.append((rel, "uid", ls.st_uid, rs.st_uid))
        if ls.st_gid != rs.st_gid:
            diffs.append((rel, "gid", ls.st_gid, rs.st_gid))
        if int(ls.st_mtime) != int(rs.st_mtime):
            diffs.append((rel, "mtime", int(ls.st_mtime), int(rs.st_mtime)))
        lx, rx = xattrs(lp), xattrs(rp)
        if lx != rx:
            diffs.append((rel, "xattrs", lx, rx))
        if lk == "file":
            if ls.st_size != rs.st_size:
                diffs.append((rel, "content", f"{ls.st_size} bytes", f"{rs.st_size} bytes"))
            else:
                lh, rh = sha256(lp), sha256(rp)
                if lh != rh:
                    diffs.append((rel, "content", lh, rh))
        elif lk == "symlink":
            lt, rt = os.readlink(lp), os.readlink(rp)
            if lt != rt:
                diffs.append((rel, "symlink target", lt, rt))
        elif lk in ("char device", "block device"):
            if ls.st_rdev != rs.st_rdev:
                diffs.append((rel, "device", hex(ls.st_rdev), hex(rs.st_rdev)))
        elif lk == "dir":
            names = sorted(set(os.listdir(lp)) | set(os.listdir(rp)))
            for n in names:
                entry(os.path.normpath(os.path.join(rel, n)))

    entry(".")
    return diffs


def count(root):
    n = 0
    for _dir, dirs, files in os.walk(root):
        n += len(dirs) + len(files)
    return n


def main():
    if len(sys.argv) != 3:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    left, right = sys.argv[1], sys.argv[2]
    for d in (left, right):
        if not os.path.isdir(d):
            print(f"compare_trees: {d} is not a directory", file=sys.stderr)
            return 2
    diffs = compare(left, right)
    if diffs:
        print(f"compare_trees: {left} and {right} differ ({len(diffs)} differences):")
        for rel, what, lv, rv in diffs[:50]:
            print(f"  {rel}: {what}: left {lv!r} / right {rv!r}")
        return 1
    print(f"compare_trees: {left} and {right} are equal ({count(left)} entries)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
