"""Write the peer LUT fixtures of tests/data in the grammar of the published files.

These are NOT the published files (this project has no copy of them): they are written to their grammar, key by key,
from the published networks' shape arithmetic, with made-up latencies. Nothing here imports hwnas, so the fixtures
do not inherit a mistake of our exporter or of our spaces.

- ``ofa_note10_224_lookup_table.yaml``: the grammar of OFA's ``224_lookup_table.yaml`` (MBv3LatencyTable, Note10):
  the shapes follow ``MBv3LatencyTable.predict_network_latency_given_spec`` (width 1.2: stem 24, first block 24,
  stages 32/48/96/136/192 with strides 2/2/2/1/2, SE in stages 2, 4, 5, h-swish from stage 3, final expand 1152,
  feature mix 1536, 1000 classes), every (kernel 3/5/7, expand 3/4/6) at every depth position.
  ``expand`` is the middle width round(in * e). Entries carry ``count``, ``mean``, ``var`` in varying order.
- ``proxyless_mobile_lookup_table.yaml``: the grammar of ProxylessNAS' ``mobile_lookup_table.yaml``
  (LatencyEstimator): shapes of the ProxylessNAS mobile supernet (``SuperProxylessNASNets``: stem 32, first
  MBConv1 to 16, stages 24/40/80/96/192/320 x 4/4/4/4/4/1 blocks, strides 2/2/2/1/2/1, feature mix 1280), every
  3x3/5x5/7x7 MBConv3/MBConv6 candidate; ``expand`` is the ratio. Entries carry ``mean`` and ``var``.

Run ``python tests/data/make_peer_luts.py`` to rewrite them (deterministic).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent


def shape(h: int, w: int, c: int) -> str:
    return f"{h}x{w}x{c}"


def fake_ms(rng: random.Random, macs: float) -> float:
    """A made-up but plausible phone latency: ~1 ms per 100 M multiply-accumulates, +-20 %, plus 0.05 ms."""
    return round(0.05 + macs / 1e8 * rng.uniform(0.8, 1.2), 5)


def mbconv_macs(h: int, c_in: int, mid: int, c_out: int, k: int, s: int) -> float:
    ho = (h - 1) // s + 1
    expand = h * h * c_in * mid if mid != c_in else 0
    return expand + ho * ho * mid * k * k + ho * ho * mid * c_out


def lut(seed: int, **extra: float) -> tuple[dict[str, dict[str, float]], Callable[[str, float], None]]:
    """A fresh LUT and its ``add(key, macs)``: a new key gets ``extra``, then a made-up ``mean`` and ``var`` drawn
    from ``random.Random(seed)``; a key already there is kept."""
    rng = random.Random(seed)
    out: dict[str, dict[str, float]] = {}

    def add(key: str, macs: float) -> None:
        if key not in out:
            mean = fake_ms(rng, macs)
            out[key] = {**extra, "mean": mean, "var": round((mean * rng.uniform(0.005, 0.03)) ** 2, 10)}

    return out, add


def ofa_entries() -> list[tuple[str, dict[str, float]]]:
    out, add = lut(224, count=1000)
    image_size = 224
    fsize = (image_size + 1) // 2
    add(f"Conv-input:{shape(image_size, image_size, 3)}-output:{shape(fsize, fsize, 24)}", fsize * fsize * 27 * 24)
    add(f"expanded_conv-input:{shape(fsize, fsize, 24)}-output:{shape(fsize, fsize, 24)}-expand:24-kernel:3-"
        f"stride:1-idskip:1-se:0-hs:0", mbconv_macs(fsize, 24, 24, 24, 3, 1))
    in_channel = 24
    stride_stages = [2, 2, 2, 1, 2]
    width_stages = [32, 48, 96, 136, 192]
    act_stages = ["relu", "relu", "h_swish", "h_swish", "h_swish"]
    se_stages = [False, True, False, True, True]
    for i in range(20):  # every depth position; each of the 9 (ks, e) choices there
        stage, depth = i // 4, i % 4
        stride, idskip = (stride_stages[stage], 0) if depth == 0 else (1, 1)
        out_channel = width_stages[stage]
        out_fz = int((fsize - 1) / stride + 1)
        for ks in (3, 5, 7):
            for e in (3, 4, 6):
                mid = round(in_channel * e)
                add(f"expanded_conv-input:{shape(fsize, fsize, in_channel)}-output:{shape(out_fz, out_fz, out_channel)}"
                    f"-expand:{mid}-kernel:{ks}-stride:{stride}-idskip:{idskip}-se:{int(se_stages[stage])}"
                    f"-hs:{int(act_stages[stage] == 'h_swish')}",
                    mbconv_macs(fsize, in_channel, mid, out_channel, ks, stride))
        in_channel, fsize = out_channel, out_fz
    add(f"Conv_1-input:{shape(fsize, fsize, 192)}-output:{shape(fsize, fsize, 1152)}", fsize * fsize * 192 * 1152)
    add(f"AvgPool2D-input:{shape(fsize, fsize, 1152)}-output:{shape(1, 1, 1152)}", fsize * fsize * 1152)
    add(f"Conv_2-input:{shape(1, 1, 1152)}-output:{shape(1, 1, 1536)}", 1152 * 1536)
    add(f"Logits-input:{shape(1, 1, 1536)}-output:1000", 1536 * 1000)
    return list(out.items())


def proxyless_entries() -> list[tuple[str, dict[str, float]]]:
    out, add = lut(7)
    add("Conv-input:224x224x3-output:112x112x32", 112 * 112 * 27 * 32)
    add("expanded_conv-input:112x112x32-output:112x112x16-expand:1-kernel:3-stride:1-idskip:0",
        mbconv_macs(112, 32, 32, 16, 3, 1))
    fsize, input_channel = 112, 16
    for width, n_cell, s in zip([24, 40, 80, 96, 192, 320], [4, 4, 4, 4, 4, 1], [2, 2, 2, 1, 2, 1]):
        for i in range(n_cell):
            stride = s if i == 0 else 1
            idskip = int(stride == 1 and input_channel == width)
            out_fz = fsize // stride
            for k in (3, 5, 7):
                for e in (3, 6):
                    add(f"expanded_conv-input:{shape(fsize, fsize, input_channel)}-output:"
                        f"{shape(out_fz, out_fz, width)}"
                        f"-expand:{e}-kernel:{k}-stride:{stride}-idskip:{idskip}",
                        mbconv_macs(fsize, input_channel, input_channel * e, width, k, stride))
            fsize, input_channel = out_fz, width
    add(f"Conv_1-input:7x7x{input_channel}-output:7x7x1280", 49 * input_channel * 1280)
    add("Logits-input:7x7x1280-output:1000", 1280 * 1000 + 49 * 1280)
    return list(out.items())


def write_yaml(path: Path, title: str, entries: list[tuple[str, dict[str, float]]],
               orders: list[tuple[str, ...]]) -> None:
    lines = [f"# {title}", "# written to the published grammar by tests/data/make_peer_luts.py; latencies are made up"]
    for i, (key, v) in enumerate(entries):
        order = orders[i % len(orders)]
        lines.append(f"{key}:")
        lines += [f"  {f}: {v[f]}" for f in order if f in v]
    path.write_text("\n".join(lines) + "\n")


def main(out_dir: Path = HERE) -> None:
    write_yaml(out_dir / "ofa_note10_224_lookup_table.yaml", "OFA MobileNetV3 latency LUT, Note10, resolution 224 (ms)",
               ofa_entries(), [("count", "mean", "var"), ("mean", "var", "count"), ("var", "count", "mean")])
    write_yaml(out_dir / "proxyless_mobile_lookup_table.yaml", "ProxylessNAS mobile latency LUT (ms)",
               proxyless_entries(), [("mean", "var"), ("var", "mean")])


if __name__ == "__main__":
    main()
