"""Kernel program: written by compile, read and patched without Amaranth, encoded exactly as the
kernel decodes it; the capabilities agree with the kernel the generator builds."""

import json

import numpy as np
import pytest
from amaranth.hdl import Const
from amaranth.lib import data

from recfabric.host.compiler.compiled import CompileError, load_compiled
from recfabric.host.compiler.kernel_program import (
    PROGRAM_BIN,
    PROGRAM_JSON,
    FieldEncoder,
    _kernel_formats,
    engine_assignment,
    engine_layers,
    read_program,
)
from recfabric.host.compiler.steps import compile_model
from recfabric.host.model.spec import ModelSpec, SparseFeature
from recfabric.host.model.weights import random_weights
from recfabric.host.model.zoo import get_model
from recfabric.host.numerics import FixedFormat
from recfabric.host.reference.golden import QLayer, mlp_layer
from recfabric.host.runtime import reference
from recfabric.hw.config import PRESETS, get_preset
from recfabric.hw.kernel import PROGRAM_FORMAT, PROGRAM_MAGIC, kernel_for_formats


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    spec = get_model("tiny")
    compile_model(spec, random_weights(spec, 5), get_preset("tiny"), d, calib_batch=64)
    return d


def _random_fields(layout, rng):
    out = {}
    for name, f in layout:
        if isinstance(f.shape, data.StructLayout):
            out[name] = _random_fields(f.shape, rng)
        elif isinstance(f.shape, data.ArrayLayout) and isinstance(f.shape.elem_shape,
                                                                  data.StructLayout):
            out[name] = [_random_fields(f.shape.elem_shape, rng) for _ in range(f.shape.length)]
        elif isinstance(f.shape, data.ArrayLayout):
            out[name] = [int(rng.integers(0, 1 << min(f.shape.elem_shape.width, 62)))
                         if hasattr(f.shape.elem_shape, "width") else 0
                         for _ in range(f.shape.length)]
        else:
            width = f.width
            enum = getattr(f.shape, "__members__", None)
            out[name] = (list(enum.values())[int(rng.integers(0, len(enum)))] if enum
                         else int(rng.integers(0, 1 << min(width, 62))))
    return out


@pytest.mark.parametrize("cname", ["tiny", "small", "u280-int8"])
def test_field_encoder_equals_amaranth(cname):
    fm = _kernel_formats(get_preset(cname))
    layouts = [fm.parser, fm.place, fm.concat, fm.mlp, fm.mlp_block_sel, fm.block,
               *fm.unit_desc, *fm.onchip_desc, *fm.onchip_load]
    rng = np.random.default_rng(1)
    for layout in layouts:
        enc = FieldEncoder(layout)
        for _ in range(50):
            fields = _random_fields(layout, rng)
            assert enc(fields) == Const.cast(layout.const(fields)).value
    # a negative (signed) value and a missing field encode as Amaranth encodes them
    enc = FieldEncoder(fm.mlp)
    for f in ({"data": -5, "addr": 3}, {"engine": 1}):
        assert enc(f) == Const.cast(fm.mlp.const(f)).value


@pytest.mark.parametrize("cname", list(PRESETS))
def test_capabilities_agree_with_the_generated_kernel(cname):
    config = get_preset(cname)
    caps = config.capabilities()
    _check_capabilities(caps, kernel_for_formats(config))


def _check_capabilities(caps, k):
    assert caps.mem_channels == len(k.units) and caps.onchip_units == len(k.onchip)
    for t in k.onchip:
        assert (t.word_bits, t.depth) == (caps.onchip_word_bits, caps.onchip_words)
        assert t.n_desc == caps.descriptors_per_unit
    for u in k.units:
        assert u.n_desc == caps.descriptors_per_unit
    # the dispatcher holds one placement per feature; its fields reach every unit, descriptor
    # and slot the capabilities promise
    d = k.dispatcher
    assert d.max_features >= caps.max_features and d.n_units == len(k.units) + len(k.onchip)
    assert 1 << d.desc_bits >= caps.descriptors_per_unit
    assert 1 << d.slot_bits >= caps.max_features
    assert tuple(k.mlp.shapes) == caps.top_engines
    assert k.concat.max_slots == caps.max_features and k.concat.max_concat == caps.max_concat
    # only engines whose output store holds logits may pass them on
    kw = k.mlp.engine_kwargs()
    holds = tuple(i for i, e in enumerate(kw) if e["out_bits"] >= caps.logit_bits)
    assert set(caps.logit_engines) <= set(holds) and len(kw) - 1 in caps.logit_engines
    assert caps.onchip_bytes == caps.onchip_words * caps.onchip_word_bits // 8
    assert json.loads(json.dumps(caps.to_json()))["max_top_layers"] == len(kw)


def test_written_by_compile_and_read_back(tiny_dir):
    meta = json.loads((tiny_dir / PROGRAM_JSON).read_text())
    raw = (tiny_dir / PROGRAM_BIN).read_bytes()
    assert meta["words"] == meta["commands"] + meta["beats"] + 1 == len(raw) // 64
    assert meta["beats"] > 0
    assert meta["config_hash"] == get_preset("tiny").config_hash
    assert int.from_bytes(raw[:4], "little") == PROGRAM_MAGIC
    assert int.from_bytes(raw[4:8], "little") == meta["words"] - 1
    assert int.from_bytes(raw[8:12], "little") == PROGRAM_FORMAT == meta["version"]
    assert sum(meta["counts"].values()) == meta["words"] - 1
    cm = load_compiled(tiny_dir)
    assert cm.program.data == raw
    assert cm.manifest["kernel_program"]["commands"] == meta["commands"]
    # the reference backend checks the header as the kernel does
    assert (reference.PROGRAM_MAGIC, reference.PROGRAM_FORMAT) == (PROGRAM_MAGIC, PROGRAM_FORMAT)


def test_patch_adds_buffer_addresses_to_table_bases(tiny_dir):
    cm = load_compiled(tiny_dir)
    fields = cm.program.meta["table_addresses"]
    channels = {t["location"] for t in cm.descriptors["tables"] if t["memory"] == 0}
    assert {f["channel"] for f in fields} == channels and len(fields) == sum(
        t["memory"] == 0 for t in cm.descriptors["tables"])
    addrs = {ch: 0x1_2340_0000 + 0x10_0000 * ch for ch in range(2)}
    patched = cm.program.patched(addrs)
    assert len(patched) == len(cm.program.data)
    fm = _kernel_formats(get_preset("tiny"))
    by_word = {f["word"]: f for f in fields}
    for w in range(len(patched) // 64):
        a = int.from_bytes(cm.program.data[64 * w:64 * w + 64], "little")
        b = int.from_bytes(patched[64 * w:64 * w + 64], "little")
        if w not in by_word:
            assert a == b, f"word {w} changed"
            continue
        f = by_word[w]
        lay = fm.unit_desc[f["channel"]]
        view = lay(Const(b >> 8, lay.size))  # decode with the kernel's own payload layout
        orig = lay(Const(a >> 8, lay.size))
        assert Const.cast(view.desc.base).value == \
            Const.cast(orig.desc.base).value + addrs[f["channel"]]
        assert Const.cast(view.desc.rows).value == Const.cast(orig.desc.rows).value
    with pytest.raises(ValueError, match="no buffer address"):
        cm.program.patched({})


def test_tampered_program_is_refused(tiny_dir, tmp_path):
    import shutil
    d = tmp_path / "copy"
    shutil.copytree(tiny_dir, d)
    raw = bytearray((d / PROGRAM_BIN).read_bytes())
    raw[100] ^= 1
    (d / PROGRAM_BIN).unlink()  # a hard link: write a new file, not through the link
    (d / PROGRAM_BIN).write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="kernel_program.bin"):
        read_program(d)


def _caps(**kw):
    return get_preset("tiny").replace(**kw).capabilities()


def test_engine_assignment_rules():
    int16, int8 = _caps(), _caps(data_bits=8, acc_bits=32)
    assert engine_assignment([(18, 8), (8, 1)], int16) == [0, 1, None]
    assert engine_assignment([(18, 8), (8, 1)], int8) == [0, None, 1]
    assert engine_assignment([(10, 1)], int8) == [None, None, 0]
    assert engine_assignment([(18, 8), (8, 4), (4, 1)], int8) == [0, 1, 2]
    with pytest.raises(CompileError, match="4 layers; the kernel has 3"):
        engine_assignment([(4, 4)] * 3 + [(4, 1)], int8)
    with pytest.raises(CompileError, match="max_width 16"):
        engine_assignment([(30, 1)], int8)


def test_identity_padding_is_exact():
    """Identity layers keep every value of their input, in int8 and at the logit width."""
    rng = np.random.default_rng(0)
    f8 = FixedFormat(8, 4)
    l0 = QLayer(rng.integers(-128, 128, (6, 5)), rng.integers(-999, 999, 6), f8,
                FixedFormat(8, 6), f8, True)
    l1 = QLayer(rng.integers(-128, 128, (1, 6)), rng.integers(-999, 999, 1), f8,
                FixedFormat(8, 6), FixedFormat(11, 7), False)
    caps = _caps(data_bits=8, acc_bits=32)
    layers = engine_layers([l0, l1], caps)
    assert len(layers) == 3 and layers[0] is l0 and layers[2] is l1
    x = rng.integers(-128, 128, (50, 5))
    want = mlp_layer(l1, mlp_layer(l0, x, 32), 32)
    got = x
    for layer in layers:
        got = mlp_layer(layer, got, 32)
    assert np.array_equal(got, want)


def test_int8_model_with_fewer_layers_than_engines_compiles(tmp_path):
    """Issue 10.7: this used to compile and then fail at load ("Cannot pad")."""
    cfg = get_preset("tiny").replace(name="tiny-int8", data_bits=8, acc_bits=32)
    for spec in (get_model("tiny"),
                 ModelSpec("one", sparse=(SparseFeature("a", 16, 4),), dense=2, top_mlp=(1,))):
        r = compile_model(spec, random_weights(spec, 0), cfg, tmp_path / spec.name,
                          calib_batch=64)
        assert r.manifest["kernel_program"]["counts"]["MLP weights"] > 0
    wide = ModelSpec("wide", sparse=(SparseFeature("a", 16, 16), SparseFeature("b", 16, 8)),
                     dense=2, top_mlp=(1,))
    with pytest.raises(CompileError, match="identity layer"):
        compile_model(wide, random_weights(wide, 0), cfg, tmp_path / "wide", calib_batch=64)


def test_kernel_formats_built_once_per_config():
    """`recfabric soak` compiles hundreds of models: the kernel asked for its formats is built
    once per configuration, and what it hands out cannot be changed by a caller."""
    small = get_preset("small")
    fm = _kernel_formats(small)
    assert _kernel_formats(get_preset("small")) is fm  # an equal config hits the cache
    assert _kernel_formats(small.replace(name="small-int8", data_bits=8, acc_bits=32)) is not fm
    kw = fm.pipeline.engine_kwargs()
    kw[0]["rows"] = -1
    assert fm.pipeline.engine_kwargs()[0]["rows"] != -1
