#!/usr/bin/env python3
"""Make (and check) a dedup archive whose layer holds a file larger than 4 GiB.

    bigarchive.py make OUT.tar.gz        write the archive, print its facts as JSON
    bigarchive.py check FILE INFO.json   check an applied big file (size, markers, sha256)

The archive follows proto/SPEC.md ("Dedup archive"): a gzip'd POSIX tar with

    .layerlink/layer       marker, LAYERLINK.diff_id
    big/                   directory
    big/file.bin           4 GiB + 1 MiB + 123 bytes, LAYERLINK.digest; its size is
                           given by a PAX `size` record AND a GNU base-256 ustar
                           size field (the octal field cannot hold >= 8 GiB; a
                           32-bit reader that truncates either is caught)
    big/file.link          hard link to big/file.bin (same layer)
    big/after.txt          small file AFTER the big one: the stream must still be
                           aligned after 4 GiB of data
    .layerlink/layer-end   marker, LAYERLINK.diff_id, LAYERLINK.entries=4
    .layerlink/end         marker

The big file is zeros (4 GiB of zeros gzip to ~20 MB) except 16-byte
stamps at offsets around 2^31 and 2^32 and at both ends, so a write at an
offset truncated to 32 bits lands in the wrong place and the check finds it.
The diff_id is the sha256 of the same layer as a plain tar without
LAYERLINK keys (what a registry would have ingested).

Used by cross/test.sh to make an ARM agent (32-bit armv7 above all) apply a
>4 GiB entry under QEMU.
"""
import gzip
import hashlib
import json
import os
import sys
import zlib

BIG_SIZE = (4 << 30) + (1 << 20) + 123
MTIME = 1700000000
STAMPS = [0, (1 << 31) - 8, (1 << 32) - 8, (1 << 32) + 4096, BIG_SIZE - 16]
AFTER = b"written after a 4 GiB entry\n"
CHUNK = 1 << 20


def stamp(off):
    return f"@{off:014x}!".encode()  # 16 bytes


def big_chunks():
    """Yield the big file's content in chunks (zeros + stamps)."""
    zero = bytes(CHUNK)
    stamps = {off: stamp(off) for off in STAMPS}
    pos = 0
    while pos < BIG_SIZE:
        n = min(CHUNK, BIG_SIZE - pos)
        hits = [o for o in stamps if pos <= o + 15 and o < pos + n]
        if not hits:
            yield zero if n == CHUNK else bytes(n)
        else:
            buf = bytearray(n)
            for o in hits:
                for i, b in enumerate(stamps[o]):
                    if pos <= o + i < pos + n:
                        buf[o + i - pos] = b
            yield bytes(buf)
        pos += n


def big_sha256():
    h = hashlib.sha256()
    for c in big_chunks():
        h.update(c)
    return h.hexdigest()


def octal(v, width):
    s = oct(v)[2:].encode()
    if len(s) > width - 1:
        raise ValueError(f"{v} does not fit {width} bytes in octal")
    return s.rjust(width - 1, b"0") + b"\0"


def base256(v, width):
    out = bytearray(width)
    for i in range(width - 1, 0, -1):
        out[i] = v & 0xFF
        v >>= 8
    if v:
        raise ValueError("does not fit base-256")
    out[0] = 0x80
    return bytes(out)


def ustar(name, typeflag, size=0, mode=0o644, linkname=b"", size_field=None):
    h = bytearray(512)
    name = name.encode() if isinstance(name, str) else name
    if len(name) > 100:
        raise ValueError("name too long for this generator")
    h[0 : len(name)] = name
    h[100:108] = octal(mode, 8)
    h[108:116] = octal(0, 8)
    h[116:124] = octal(0, 8)
    h[124:136] = size_field if size_field is not None else octal(size, 12)
    h[136:148] = octal(MTIME, 12)
    h[148:156] = b" " * 8
    h[156:157] = typeflag
    h[157 : 157 + len(linkname)] = linkname
    h[257:263] = b"ustar\0"
    h[263:265] = b"00"
    h[265:269] = b"root"
    h[297:301] = b"root"
    h[329:337] = octal(0, 8)
    h[337:345] = octal(0, 8)
    chk = sum(h)
    h[148:156] = oct(chk)[2:].encode().rjust(6, b"0") + b"\0 "
    return bytes(h)


def pax_record(key, value):
    value = value.encode() if isinstance(value, str) else value
    body = b" " + key.encode() + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n).encode()) + len(body) != n:
        n = len(str(n).encode()) + len(body)
    return str(n).encode() + body


def pad(n):
    return bytes((512 - n % 512) % 512)


class Writer:
    """Writes tar blocks into a sink (a hash and/or a gzip stream)."""

    def __init__(self, sink):
        self.sink = sink

    def pax(self, name, records):
        data = b"".join(pax_record(k, v) for k, v in records)
        self.sink(ustar(f"PaxHeaders/{name}"[:100], b"x", len(data)))
        self.sink(data + pad(len(data)))

    def entry(self, name, typeflag, data=b"", mode=0o644, linkname=b"", pax=(), size=None, chunks=None, size_field=None):
        if pax:
            self.pax(name, pax)
        size = len(data) if size is None else size
        self.sink(ustar(name, typeflag, size, mode, linkname, size_field))
        if chunks is not None:
            for c in chunks:
                self.sink(c)
        else:
            self.sink(data)
        self.sink(pad(size))

    def finish(self):
        self.sink(bytes(1024))


def layer_entries(w, ll, big_hex, after_hex):
    """The layer's 4 entries; `ll` adds the LAYERLINK digest keys."""
    w.entry("big/", b"5", mode=0o755)
    pax = [("size", str(BIG_SIZE))]
    if ll:
        pax.append(("LAYERLINK.digest", big_hex))
    w.entry("big/file.bin", b"0", pax=pax, size=BIG_SIZE, chunks=big_chunks(), size_field=base256(BIG_SIZE, 12))
    w.entry("big/file.link", b"1", linkname=b"big/file.bin", size=0)
    w.entry("big/after.txt", b"0", AFTER, pax=[("LAYERLINK.digest", after_hex)] if ll else ())


def make(out):
    big_hex = big_sha256()
    after_hex = hashlib.sha256(AFTER).hexdigest()
    # diff_id: the plain layer tar (what was pushed), without LAYERLINK keys.
    h = hashlib.sha256()
    w = Writer(h.update)
    layer_entries(w, False, big_hex, after_hex)
    w.finish()
    diff_id = "sha256:" + h.hexdigest()

    tmp = out + ".tmp"
    with open(tmp, "wb") as f:
        z = zlib.compressobj(6, zlib.DEFLATED, 31)  # gzip wrapper
        w = Writer(lambda b: f.write(z.compress(b)))
        w.entry(".layerlink/layer", b"0", pax=[("LAYERLINK.marker", "layer"), ("LAYERLINK.diff_id", diff_id)])
        layer_entries(w, True, big_hex, after_hex)
        w.entry(
            ".layerlink/layer-end",
            b"0",
            pax=[("LAYERLINK.marker", "layer-end"), ("LAYERLINK.diff_id", diff_id), ("LAYERLINK.entries", "4")],
        )
        w.entry(".layerlink/end", b"0", pax=[("LAYERLINK.marker", "end")])
        w.finish()
        f.write(z.flush())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out)
    info = {
        "diff_id": diff_id,
        "big_path": "big/file.bin",
        "big_size": BIG_SIZE,
        "big_sha256": big_hex,
        "after_path": "big/after.txt",
        "after_sha256": after_hex,
        "mtime": MTIME,
        "stamps": STAMPS,
    }
    print(json.dumps(info, indent=1))
    return 0


def check(path, info_path):
    with open(info_path) as f:
        info = json.load(f)
    errors = []
    st = os.stat(path)
    if st.st_size != info["big_size"]:
        errors.append(f"size {st.st_size}, want {info['big_size']}")
    if st.st_mtime != info["mtime"]:
        errors.append(f"mtime {st.st_mtime}, want {info['mtime']}")
    with open(path, "rb") as f:
        for off in info["stamps"]:
            f.seek(off)
            got = f.read(16)
            if got != stamp(off):
                errors.append(f"at offset {off}: {got!r}, want {stamp(off)!r}")
        f.seek(0)
        h = hashlib.sha256()
        while True:
            b = f.read(8 << 20)
            if not b:
                break
            h.update(b)
    if h.hexdigest() != info["big_sha256"]:
        errors.append(f"sha256 {h.hexdigest()}, want {info['big_sha256']}")
    if errors:
        print(f"bigarchive: {path} is wrong:\n  " + "\n  ".join(errors))
        return 1
    print(f"bigarchive: {path}: {st.st_size} bytes, stamps and sha256 ok")
    return 0


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "make":
        return make(sys.argv[2])
    if len(sys.argv) == 4 and sys.argv[1] == "check":
        return check(sys.argv[2], sys.argv[3])
    print(__doc__.strip(), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
