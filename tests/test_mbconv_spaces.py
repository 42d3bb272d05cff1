"""The ProxylessNAS and OFA MobileNetV3 spaces: shapes as published, built from the one registry and key, measured
like every other space (a reduced variant, on cpu-1t)."""

import dataclasses

import pytest
from typer.testing import CliRunner

from profiler.cli import app
from profiler.latency.formats import peer_key
from profiler.spaces.keys import parse_key
from profiler.spaces.space import get_space

OFA_SMALL = "ofa-mbv3:input_size=32,width=0.25,num_classes=10"
PROXYLESS_SMALL = "proxyless:input_size=32,width=0.25,num_classes=10"


def test_proxyless_follows_the_mobile_space():
    s = get_space("proxyless")
    assert len(s.layers) == 21 and s.ops[-1] == "zero" and len(s.ops) == 7
    assert [l.sites[0].c_out for l in s.layers] == [24] * 4 + [40] * 4 + [80] * 4 + [96] * 4 + [192] * 4 + [320]
    assert [l.sites[0].stride for l in s.layers if l.sites[0].stride != 1] == [2, 2, 2, 2]
    assert [site.name for site in s.fixed] == ["stem", "first_block", "feature_mix", "classifier"]
    assert peer_key(s.fixed[0].key(), "proxyless") == "Conv-input:224x224x3-output:112x112x32"
    assert peer_key(s.fixed[2].key(), "proxyless") == "Conv_1-input:7x7x320-output:7x7x1280"
    for layer in s.layers:  # zero only where the block has its residual; elsewhere the column holds mb_k3_e3
        site = layer.sites[0]
        residual = site.stride == 1 and site.c_in == site.c_out
        assert ("zero" in layer.choices) == residual
        assert layer.choices[-1] == ("zero" if residual else "mb_k3_e3")


def test_ofa_mbv3_follows_the_note10_network():
    s = get_space("ofa-mbv3")
    assert len(s.layers) == 20 and len(s.ops) == 10 and s.ops[-1] == "skip"
    assert [l.sites[0].c_out for l in s.layers[::4]] == [32, 48, 96, 136, 192]
    assert [l.sites[0].stride for l in s.layers[::4]] == [2, 2, 2, 1, 2]
    for i, layer in enumerate(s.layers):
        assert ("skip" in layer.choices) == (i % 4 >= 2)  # depth 2..4: only the 3rd and 4th block skip
        p = parse_key(layer.sites[0].key("mb_k5_e4")).params_dict()
        assert p == {"act": "hswish" if i // 4 >= 2 else "relu", "se": int(i // 4 in (1, 3, 4))}
        assert parse_key(layer.sites[0].key("skip")).params == ()  # the identity has no style params
    assert [peer_key(site.key(), "ofa").split("-")[0] for site in s.fixed] == \
        ["Conv", "expanded_conv", "Conv_1", "AvgPool2D", "Conv_2", "Logits"]


def test_cli_lists_the_new_spaces():
    r = CliRunner().invoke(app, ["spaces"])
    assert r.exit_code == 0 and "proxyless" in r.output and "ofa-mbv3" in r.output


@pytest.mark.slow
def test_small_variants_measure_on_cpu_1t(tmp_path, monkeypatch):
    from profiler.latency.tables import load_table
    from profiler.measuring.devices import get_device
    from profiler.measuring.measure import measure_space
    from profiler.measuring.model_measure import measure_network
    from profiler.measuring.protocol import Protocol
    from profiler.measuring.runners import make_runner

    monkeypatch.setenv("HWNAS_CACHE", str(tmp_path / "cache"))
    fast = Protocol(warmup_s=0.02, min_samples=3, min_seconds=0.02, retries=0)
    dev = dataclasses.replace(get_device("cpu-1t"), protocol=fast)
    with make_runner(dev) as runner:
        space = get_space(OFA_SMALL)
        summary = measure_space(dev, space, runner, tmp_path / "ofa.csv")
        assert summary.errors == 0 and summary.measured == len(space.candidate_keys())
        table = load_table(tmp_path / "ofa.csv")
        assert table.missing(space.candidate_keys()) == []
        choices = [layer.choices[(3 * i) % len(layer.choices)] for i, layer in enumerate(space.layers)]
        res, info = measure_network(space, choices, runner, fast, tmp_path / "nets")
        assert res.ok and info["max_abs_err"] < 1e-3 and min(res.samples_ms) > 0
        assert table.predict_ms(space.arch_keys(choices)) > 0
        prox = get_space(PROXYLESS_SMALL)  # ProxylessNAS: the k7 blocks and the fixed layers, to keep CI short
        summary = measure_space(dev, prox, runner, tmp_path / "prox.csv", only="*mb_k7*")
        assert summary.errors == 0 and summary.measured == sum("|mb_k7_" in k for k in prox.candidate_keys())
