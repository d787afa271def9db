"""An independent count of what OCI layer blobs hold: Python's `tarfile`
(not the `tar` crate the registry and the Rust harness use).

    python3 tar_count.py [--digests] BLOB...

Each BLOB is a layer (gzip or uncompressed tar, detected by its magic
bytes; zstd through the `zstd` CLI). Prints one JSON object over all of
them: tar entries (extension headers excluded, as tarfile reports
members), regular files (tarfile's isreg: `0`, `\\0`, `7`), the sum of
their sizes, and the number and bytes of distinct non-empty contents by
sha256 (with `--digests`, also their sorted list: `digests`).
"""

import hashlib
import json
import subprocess
import sys
import tarfile

EMPTY = hashlib.sha256(b"").hexdigest()


def open_layer(path):
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic[:2] == b"\x1f\x8b":
        return tarfile.open(path, mode="r|gz"), None
    if magic == b"\x28\xb5\x2f\xfd":
        p = subprocess.Popen(["zstd", "-dc", path], stdout=subprocess.PIPE)
        return tarfile.open(fileobj=p.stdout, mode="r|"), p
    return tarfile.open(path, mode="r|"), None


def main(paths, with_digests=False):
    entries = regular = logical = 0
    digests = {}
    for path in paths:
        tf, proc = open_layer(path)
        with tf:
            for m in tf:
                entries += 1
                if m.isreg():
                    regular += 1
                    logical += m.size
                    h = hashlib.sha256()
                    f = tf.extractfile(m)
                    while True:
                        chunk = f.read(1 << 20)
                        if not chunk:
                            break
                        h.update(chunk)
                    digests[h.hexdigest()] = m.size
        if proc is not None and proc.wait() != 0:
            sys.exit(f"zstd -dc {path} failed")
    print(
        json.dumps(
            {
                "entries": entries,
                "regular_files": regular,
                "logical_bytes": logical,
                "distinct_nonempty": len(set(digests) - {EMPTY}),
                "distinct_bytes": sum(digests.values()),
                "has_empty_file": EMPTY in digests,
                **(
                    {"digests": sorted(set(digests) - {EMPTY})}
                    if with_digests
                    else {}
                ),
            }
        )
    )


if __name__ == "__main__":
    args = sys.argv[1:]
    flag = "--digests" in args
    main([a for a in args if a != "--digests"], flag)
