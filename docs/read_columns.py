#!/usr/bin/env python3
"""Reads a columnar block (StoredBatch.columns, format 1; docs/sinks.md, "Columnar batches") from
a file or stdin and prints its records as JSON lines. A zstd body (byte 1 = 1) is decompressed
with the `zstd` command. Standard library only: a sketch of a downstream reader, and the proof
that the format is as documented (tests/tests/columns.rs runs it against the Rust decoder)."""

import base64, hashlib, json, struct, subprocess, sys

COLUMNS = ("start_unix_nanos end_unix_nanos src_addr dst_addr src_port dst_port ip_protocol "
           "bytes_from_src packets_from_src bytes_from_dst packets_from_dst source rtt_micros "
           "interface exporter_addr sampling_rate server tx_errors rx_errors tx_drops rx_drops pid "
           "process_name cgroup container_id pod_uid systemd_unit community_id "
           "ip_bytes_from_src ip_bytes_from_dst").split()
ADDRESSES = {"src_addr", "dst_addr", "exporter_addr"}
TEXTS = {"interface", "process_name", "cgroup", "container_id", "pod_uid", "systemd_unit"}
ENUMS = {"source", "server"}
M64 = (1 << 64) - 1


def community_id(r):
    """community_id's value 0: the Community ID v1 (seed 0) of a TCP, UDP or SCTP record's tuple."""
    src, dst = bytes.fromhex(r["src_addr"]), bytes.fromhex(r["dst_addr"])
    if r["ip_protocol"] not in (6, 17, 132) or len(src) not in (4, 16) or len(src) != len(dst):
        return ""
    (a, pa), (b, pb) = sorted([(src, r["src_port"]), (dst, r["dst_port"])])
    digest = hashlib.sha1(bytes(2) + a + b + bytes([r["ip_protocol"], 0]) + struct.pack(">HH", pa, pb))
    return "1:" + base64.b64encode(digest.digest()).decode()


def read(block):
    assert block[0] == 1, f"format {block[0]}, this reader knows 1"
    body = block[2:]
    if block[1] == 1:
        body = subprocess.run(["zstd", "-dc"], input=body, capture_output=True, check=True).stdout
    pos = 0

    def varint():
        nonlocal pos
        value = shift = 0
        while True:
            b = body[pos]
            pos += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return value

    def unzigzag(u):
        return (u >> 1) ^ -(u & 1)

    n, present, d = varint(), varint(), varint()
    dictionary = []
    for _ in range(d):
        length = varint()
        dictionary.append(body[pos:pos + length])
        pos += length
    # A column left out is its field's default in every record.
    records = [{c: "" if c in ADDRESSES | TEXTS | {"community_id"} else 0 for c in COLUMNS} for _ in range(n)]
    for k, name in enumerate(COLUMNS):
        if not present >> k & 1:
            continue
        previous = 0
        for r in records:
            v = varint()
            if name == "start_unix_nanos":
                previous = (previous + unzigzag(v)) & M64
                r[name] = previous
            elif name == "end_unix_nanos":
                r[name] = (r["start_unix_nanos"] + unzigzag(v)) & M64
            elif name in ADDRESSES:
                r[name] = dictionary[v].hex()
            elif name in TEXTS:
                r[name] = dictionary[v].decode("utf-8")
            elif name == "community_id":  # 0: derived from the tuple; else 1 + a text's index
                r[name] = dictionary[v - 1].decode("utf-8") if v else community_id(r)
            elif name in ENUMS:
                r[name] = unzigzag(v)
            else:
                r[name] = v
    assert pos == len(body), "bytes left after the last column"
    return records


if __name__ == "__main__":
    data = open(sys.argv[1], "rb").read() if len(sys.argv) > 1 else sys.stdin.buffer.read()
    for record in read(data):
        print(json.dumps(record, sort_keys=True))
