"""What an update's new file contents are, by kind, and what they cost whole.

    python3 bench/modified_files.py OCI_LAYOUT OLD_TAG NEW_TAG

Reads both images' layers with Python's `tarfile` (independently of the
registry), keeps the regular-file contents of NEW that OLD does not hold
(by sha256, each once), and prints per kind: count, raw bytes, and the sum
of each content compressed alone with `zstd -19` at the archive window
(`--zstd=wlog=18`: what layerlink sends for a whole file). Kinds:
`compressed` (a name ending in .gz/.xz/.zst/.bz2/.png/.jpg/.deb/.zip/.jar:
no tool's delta pays on these), `small` (< 4 KiB: layerlink sends them
whole), `.pyc`, `ELF`, `other`; and whether the same path exists in OLD
(`modified`) or not (`new path`).

Used for issue 12's "modified files ≤ 0.15× their whole size": with the
benchmark's layerlink and "layerlink, no deltas" bytes for the same pair,
(whole − (no-deltas − deltas)) / whole is what deltas cost per whole byte.
"""

import collections
import hashlib
import json
import re
import subprocess
import sys
import tarfile

COMPRESSED = re.compile(r"\.(gz|xz|zst|bz2|png|jpg|deb|zip|jar)$", re.I)


def image_files(layout, tag):
    index = json.load(open(f"{layout}/index.json"))
    digest = next(
        m["digest"]
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
    )
    blob = lambda d: f"{layout}/blobs/sha256/{d.split(':')[1]}"
    manifest = json.load(open(blob(digest)))
    out = {}
    for layer in manifest["layers"]:
        with tarfile.open(blob(layer["digest"]), "r:*") as t:
            for m in t:
                if m.isreg():
                    data = t.extractfile(m).read()
                    out[m.name.lstrip("./")] = (hashlib.sha256(data).hexdigest(), data)
    return out


def kind(path, data):
    if COMPRESSED.search(path):
        return "compressed"
    if len(data) < 4096:
        return "small (< 4 KiB)"
    if path.endswith(".pyc"):
        return ".pyc"
    if data[:4] == b"\x7fELF":
        return "ELF"
    return "other"


def main(layout, old_tag, new_tag):
    old = image_files(layout, old_tag)
    new = image_files(layout, new_tag)
    held = {d for d, _ in old.values()}
    seen = set()
    rows = collections.defaultdict(lambda: [0, 0, 0])
    for path, (d, data) in sorted(new.items()):
        if d in held or d in seen:
            continue
        seen.add(d)
        z = len(
            subprocess.run(
                ["zstd", "-19", "--zstd=wlog=18", "-q", "-c"],
                input=data,
                capture_output=True,
                check=True,
            ).stdout
        )
        where = "modified" if path in old else "new path"
        for key in ((kind(path, data), where), ("all", where)):
            r = rows[key]
            r[0] += 1
            r[1] += len(data)
            r[2] += z
    print(f"{'kind':18} {'where':9} {'files':>6} {'raw B':>11} {'zstd-19 B':>11}")
    for (k, where), (n, raw, z) in sorted(rows.items()):
        print(f"{k:18} {where:9} {n:6} {raw:11} {z:11}")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
