"""How small can a sync's new file contents get, whatever the wire format?

    python3 bench/new_content_bound.py OCI_LAYOUT HELD_TAG NEW_TAG [BUDGET_BYTES] [--list N]

Reads both images' layers with Python's `tarfile` (independently of the
registry; `modified_files.image_files`), keeps the regular-file contents of
NEW that HELD does not hold (by sha256, each once) and prints their size
compressed: each alone with `zstd -19` at the archive window (what
layerlink splices for a whole file), all concatenated (solid) with
`zstd --ultra -22 --long=27`, and solid with `xz -9e` with and without the
x86 BCJ filter. Metadata (paths, modes, the references to held files) and
the savings of deltas for modified files come on top / off these.

Used for issue 11's sibling target (≤ 0.80× layerlink before wire v2 =
0.80 × 1.92 MiB): pass that budget as BUDGET_BYTES and each figure is
printed with its ratio to it. A figure above the budget means no encoding
of that family reaches the target, whatever it does with the metadata.

`--list N` also prints the N largest new contents (zstd -19 each) with
their path and whether HELD has a file at that path (only those can
travel as patches against an old version).
"""

import subprocess
import sys

from modified_files import image_files


def size(cmd, data):
    return len(subprocess.run(cmd, input=data, capture_output=True, check=True).stdout)


def main():
    args = sys.argv[1:]
    listing = 0
    if "--list" in args:
        i = args.index("--list")
        listing = int(args[i + 1])
        del args[i : i + 2]
    layout, held_tag, new_tag = args[0:3]
    budget = int(float(args[3])) if len(args) > 3 else None
    held_files = image_files(layout, held_tag)
    held = {h for h, _ in held_files.values()}
    seen, contents, paths = set(), [], []
    for path, (h, data) in sorted(image_files(layout, new_tag).items()):
        if h not in held and h not in seen:
            seen.add(h)
            contents.append(data)
            paths.append(path)
    if listing:
        sizes = sorted(
            ((size(["zstd", "-q", "-c", "-19"], d), len(d), p) for d, p in zip(contents, paths)),
            reverse=True,
        )
        print(f"{'zstd -19':>10} {'raw':>10}  held path?  path")
        for z, n, p in sizes[:listing]:
            print(f"{z:10d} {n:10d}  {'yes' if p in held_files else 'no ':9}  {p}")
    solid = b"".join(contents)
    rows = [
        ("raw", len(solid)),
        ("each alone, zstd -19 wlog 18", sum(size(["zstd", "-q", "-c", "-19", "--zstd=wlog=18"], d) for d in contents)),
        ("solid, zstd --ultra -22 --long=27", size(["zstd", "-q", "-c", "--ultra", "-22", "--long=27"], solid)),
        ("solid, xz -9e", size(["xz", "-9e", "-c"], solid)),
        ("solid, xz x86 BCJ + lzma2 9e", size(["xz", "--x86", "--lzma2=preset=9e", "-c"], solid)),
    ]
    print(f"{len(contents)} new contents of {new_tag} not held with {held_tag}")
    for name, n in rows:
        vs = f"  {n / budget:.3f}× the budget {budget} B" if budget else ""
        print(f"{name:36} {n:10d} B{vs}")


if __name__ == "__main__":
    main()
