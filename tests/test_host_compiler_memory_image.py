"""Memory images: row layout, merged rows, shards, descriptor and MLP program round trips."""

import numpy as np
import pytest

from recfabric.host.compiler.memory_image import (
    HEADER,
    TABLE_RECORD,
    ImageError,
    group_rows,
    pack_descriptors,
    pack_mlp,
    unpack_descriptors,
    unpack_mlp,
    write_table_images,
)
from recfabric.host.compiler.planner import plan, study_capabilities
from recfabric.host.model.spec import ModelSpec, SparseFeature
from recfabric.host.model.synthetic import synthetic_batch
from recfabric.host.model.weights import HashedTable, random_weights
from recfabric.host.numerics import FixedFormat
from recfabric.host.reference.golden import QuantizedTable
from recfabric.host.reference.quantize import quantize_model
from recfabric.hw.config import get_preset

SPEC = ModelSpec("img", sparse=(SparseFeature("a", 10, 4), SparseFeature("b", 12, 4),
                                SparseFeature("c", 40_000, 16), SparseFeature("m", 30, 8, bag=3)),
                 dense=2, top_mlp=(8, 1))
CONFIG = get_preset("tiny").replace(max_features=8, max_concat=64, onchip_units=0)
# The image formats hold shards and copies, which the kernel does not serve yet: plan for the
# study capabilities (a kernel of this size that could) to exercise them.
STUDY = study_capabilities(CONFIG)


def _tables(bits=16):
    fmt = FixedFormat(bits, bits - 3)
    return [QuantizedTable(HashedTable(f.rows, f.dim, i, 0.5), fmt)
            for i, f in enumerate(SPEC.sparse)]


def _read(path, offset, stride, n, dim, dtype="<i2"):
    raw = np.fromfile(path, np.uint8, count=n * stride, offset=offset).reshape(n, stride)
    return raw[:, :dim * np.dtype(dtype).itemsize].copy().view(dtype).astype(np.int64)


def test_images_hold_every_row_merged_and_sharded(tmp_path):
    p = plan(SPEC, STUDY, "microrec")
    assert any(len(g.features) == 2 for g in p.groups)
    assert any(g.shards > 1 for g in p.groups)
    tables = _tables()
    images = write_table_images(p, tables, 16, tmp_path, chunk_rows=777)
    assert [i["size"] for i in images] == [u for u in p.channel_used if u]
    for t in p.tables:
        g = p.groups[t.group]
        got = _read(tmp_path / f"channel{t.location:02d}.bin", t.offset, t.stride, t.rows,
                    g.dim)
        rows = np.arange(t.row_base, t.row_base + t.rows)
        want = np.concatenate([tables[f].gather(ids) for f, ids in
                               zip(g.features, g.split_row(rows))], axis=1)
        assert np.array_equal(got, want)
        pad = np.fromfile(tmp_path / f"channel{t.location:02d}.bin", np.uint8,
                          count=t.rows * t.stride, offset=t.offset).reshape(t.rows, t.stride)
        assert not pad[:, g.dim * 2:].any()


def test_merged_row_is_row_a_then_row_b():
    tables = _tables()
    p = plan(SPEC, STUDY, "microrec")
    g = next(g for g in p.groups if len(g.features) == 2)
    fa, fb = g.features
    rows_b = SPEC.sparse[fb].rows
    for ia, ib in [(0, 0), (3, 7), (SPEC.sparse[fa].rows - 1, rows_b - 1)]:
        row = group_rows(tables, g, ia * rows_b + ib, 1)[0]
        assert np.array_equal(row, np.concatenate([tables[fa].gather([ia])[0],
                                                   tables[fb].gather([ib])[0]]))


def test_int8_rows(tmp_path):
    config = CONFIG.replace(data_bits=8, acc_bits=32)
    p = plan(SPEC, study_capabilities(config), "default")
    tables = _tables(8)
    write_table_images(p, tables, 8, tmp_path)
    t = p.tables[0]
    g = p.groups[t.group]
    got = _read(tmp_path / f"channel{t.location:02d}.bin", t.offset, t.stride, t.rows, g.dim,
                "<i1")
    assert np.array_equal(got, group_rows(tables, g, t.row_base, t.rows))


def test_descriptor_round_trip():
    p = plan(SPEC, STUDY, "microrec")
    data = pack_descriptors(p, SPEC, 0x12345678, 16)
    d = unpack_descriptors(data)
    assert d["header"]["config_hash"] == 0x12345678
    assert len(data) == HEADER.size + len(p.tables) * TABLE_RECORD.size + 16 * (
        len(p.groups) + len(SPEC.sparse))
    assert len(d["tables"]) == len(p.tables)
    for gi, g in enumerate(p.groups):
        rec = d["groups"][gi]
        assert (rec["replicas"], rec["shards"], rec["members"], rec["rows"], rec["dim"]) == (
            g.replicas, g.shards, len(g.features), g.rows, g.dim)
        for k in range(g.replicas * g.shards):
            assert d["tables"][rec["first_table"] + k]["group"] == gi
    for fi, f in enumerate(SPEC.sparse):
        rec = d["features"][fi]
        gi, pos = p.feature_group(fi)
        assert (rec["group"], rec["member"], rec["dim"], rec["rows"]) == (gi, pos, f.dim, f.rows)
        assert rec["radix"] == p.groups[gi].radices[pos]
    by_loc = {}
    for t in d["tables"]:
        by_loc.setdefault((t["memory"], t["location"]), []).append(t["local_index"])
    assert all(v == list(range(len(v))) for v in by_loc.values())


def test_descriptor_errors():
    p = plan(SPEC, STUDY, "default")
    data = pack_descriptors(p, SPEC, 1, 16)
    with pytest.raises(ImageError, match="magic"):
        unpack_descriptors(b"XXXX" + data[4:])
    with pytest.raises(ImageError, match=f"{len(data) - 1} bytes"):
        unpack_descriptors(data[:-1])


def test_mlp_program_round_trip():
    w = random_weights(SPEC, 3)
    cd, cs = synthetic_batch(SPEC, 64, seed=1)
    for bits in (8, 16):
        qm = quantize_model(w, cd, cs, bits=bits)
        back = unpack_mlp(pack_mlp(qm))
        assert (back["bits"], back["acc_bits"], back["rounding"]) == (
            qm.bits, qm.acc_bits, qm.rounding)
        assert len(back["top"]) == len(qm.top) and not back["bottom"]
        for a, b in zip(back["top"], qm.top):
            assert np.array_equal(a.w, b.w) and np.array_equal(a.b, b.b)
            assert (a.in_fmt, a.w_fmt, a.out_fmt, a.relu) == (b.in_fmt, b.w_fmt, b.out_fmt,
                                                              b.relu)
