#!/usr/bin/env python3
"""Writes small valid inputs into fuzz/seeds/<target>/ (run from fuzz/)."""
import hashlib, io, os, tarfile

def add(t, name, kind=tarfile.REGTYPE, data=b"", link="", pax=None, mode=0o644):
    i = tarfile.TarInfo(name)
    i.type, i.size, i.linkname, i.mode, i.mtime = kind, len(data), link, mode, 1600000000
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        i.devmajor, i.devminor = 1, 3
    if pax:
        i.pax_headers = pax
    t.addfile(i, io.BytesIO(data) if data else None)

def layer_entries(t, dedup):
    files = [("etc/hosts", b"127.0.0.1 localhost\n"), ("bin/tool", b"#!/bin/sh\necho hi\n")]
    add(t, "etc/", tarfile.DIRTYPE, mode=0o755)
    add(t, "bin/", tarfile.DIRTYPE, mode=0o755)
    for n, d in files:
        add(t, n, data=d, pax={"LAYERLINK.digest": hashlib.sha256(d).hexdigest()} if dedup else None)
    add(t, "bin/sh", tarfile.SYMTYPE, link="/bin/busybox")
    add(t, "bin/tool2", tarfile.LNKTYPE, link="bin/tool")
    add(t, "dev/null", tarfile.CHRTYPE)
    add(t, "run/fifo", tarfile.FIFOTYPE)
    add(t, "etc/.wh.old", data=b"")
    n = 9
    if dedup:
        d = hashlib.sha256(files[0][1]).hexdigest()
        add(t, "etc/hosts2", tarfile.LNKTYPE, link="layerlink:sha256:" + d)
        n += 1
    return n

def marker(t, kind, **keys):
    pax = {"LAYERLINK.marker": kind}
    pax.update({"LAYERLINK." + k: v for k, v in keys.items()})
    add(t, ".layerlink/" + kind, pax=pax)

for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w", format=fmt) as t:
        layer_entries(t, False)
    open(f"seeds/registry_ingest/plain-{fmt}", "wb").write(b"\x00" + b.getvalue())

b = io.BytesIO()
with tarfile.open(fileobj=b, mode="w", format=tarfile.PAX_FORMAT) as t:
    did = "sha256:" + hashlib.sha256(b"layer").hexdigest()
    marker(t, "layer", diff_id=did)
    n = layer_entries(t, True)
    marker(t, "layer-end", diff_id=did, entries=str(n))
    marker(t, "end")
# odd first byte: the fuzz target gzips the rest
open("seeds/archive_apply/layer", "wb").write(b"\x01" + b.getvalue())
open("seeds/archive_apply/layer-nodev", "wb").write(b"\x03" + b.getvalue())
# Mode bit 2: the harness zstd-compresses the tar (frames of 509 bytes).
# raw-zstd (first byte 0, the rest a zstd stream) is made with the zstd CLI:
#   tail -c +2 seeds/archive_apply/layer | zstd -19 --zstd=wlog=18 (window <= 256 KiB)
open("seeds/archive_apply/layer-zstd", "wb").write(b"\x05" + b.getvalue())

open("seeds/postcard_msgs/plan", "wb").write(
    bytes([5]) + b"linux" + bytes([5]) + b"amd64" + b"\x00" + b"\x01" + bytes([3]) + b"app" + bytes([2]) + b"v1" + b"\x00\x00\x00")

# compact_meta: first byte = announced record count, then the records
# (nodes of the target's held layer: 0 a, 1 a/f, 2 a/l, 3 e, 4 w).
os.makedirs("seeds/compact_meta", exist_ok=True)
open("seeds/compact_meta/mtime-two", "wb").write(b"\x02\x21\x00\x01\x00")  # a/l, e: mtime 0
open("seeds/compact_meta/mode", "wb").write(b"\x01\x12\xed\x03")  # a/f: mode 0755
open("seeds/compact_meta/whiteout", "wb").write(b"\x01\x41\x02")  # w: rejected

# layer_framing: first byte = mode (bit 0 set: the whole framing follows;
# clear: magic + diff_id are prepended), then the framing records of the
# harness's layer (d/, a = "hello"); see fuzz/harness/layer_framing.rs.
import hashlib


def ustar(name, kind, size):
    h = bytearray(512)
    h[: len(name)] = name.encode()
    def octal(at, w, v):
        s = ("%0" + str(w - 1) + "o") % v
        h[at : at + w - 1] = s.encode()
    octal(100, 8, 0o755 if kind == b"5" else 0o644)
    octal(108, 8, 0)
    octal(116, 8, 0)
    octal(124, 12, size)
    octal(136, 12, 1_600_000_000)
    h[156] = kind[0]
    h[257:263] = b"ustar\0"
    h[263:265] = b"00"
    h[148:156] = b"        "
    h[148:156] = ("%06o\0 " % sum(h)).encode()
    return bytes(h)


def varint(v):
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v == 0:
            out.append(b)
            return bytes(out)
        out.append(b | 0x80)


d, a = ustar("d/", b"5", 0), ustar("a", b"0", 5)
tar = d + a + b"hello" + bytes(507 + 1024)
diff_id = hashlib.sha256(tar).digest()
records = (
    b"\x01" + varint(len(d)) + d
    + b"\x01" + varint(len(a)) + a
    + b"\x02" + varint(5) + b"\x00"
    + b"\x03" + varint(1024) + b"\x00"
)
os.makedirs("seeds/layer_framing", exist_ok=True)
open("seeds/layer_framing/honest-records", "wb").write(b"\x00" + records)
open("seeds/layer_framing/honest-whole", "wb").write(b"\x01" + b"LLFRAME1" + diff_id + records)
shadowed = records.replace(b"\x02\x05\x00", b"\x02\x05\x03" + hashlib.sha256(b"hello").digest())
open("seeds/layer_framing/shadowed", "wb").write(b"\x00" + shadowed)
