"""The fused mixed layer of the FBNet-style spaces: every candidate of a site in a handful of kernels.

A per-op supernet layer runs each candidate as its own small module (about 50 kernels per layer forward on the
FBNet space); on a CPU the time goes to them. :class:`FusedMixedOp` computes the same function with one kernel per
stage:

* the candidates' 1x1 expansions are one convolution over the concatenated outputs; a grouped 1x1 is a dense block
  with a fixed block-diagonal mask, and the channel shuffle after it is a permutation of that op's rows;
* the depthwise k3 and k5 kernels are one depthwise convolution; a k3 kernel sits inside a 5x5 one behind a fixed
  zero ring (a mask, so the ring gets no gradient);
* BatchNorm stays per op and per channel: one ``batch_norm`` call over the concatenated channels of a stage;
* the projections are one grouped convolution per expansion width (ops of equal width side by side), their
  per-op BatchNorm one call, and the op weights one reduction over the stacked outputs. The weighted sum cannot be
  folded into the projection itself while the BatchNorm after it uses batch statistics: each op's statistics need
  that op's own projection output.

The function, its gradients and the BatchNorm running statistics equal those of the per-op layer
(``search.supernet.MixedOp``) up to float rounding; :meth:`FusedMixedOp.per_op` maps the fused tensors back to the
per-op names, so a test compares the two directly. Parameters are initialised by building the per-op modules and
copying them, so both layouts start from the same weights for a seed.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from profiler.spaces.ops import ChannelShuffle, InvertedResidual, build_op, get_op
from profiler.spaces.space import Site

BN_MOMENTUM = 0.1
BN_EPS = 1e-5


def fusable(choices: tuple[str, ...]) -> bool:
    """Whether every candidate is an FBNet inverted residual or the FBNet skip (and at least one is a block).

    DARTS edges are not: a fused sep 3x3-in-5x5 edge measured 1.07x over the per-op edges of ``darts:C=8,cells=5``
    (``bench/darts_edge_probe.py``, README *Fused supernet*), too little for a second exact layer."""
    fams = [get_op(op) for op in choices]
    return all(s.family == "fbnet" for s in fams) and any(s.kind == "conv" for s in fams)


def _dense(w: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A grouped 1x1 weight [out, in/g, 1, 1] as a dense [out, in, 1, 1] weight and its block-diagonal mask."""
    out, in_g = w.shape[:2]
    dense = w.new_zeros(out, in_g * groups, 1, 1)
    mask = torch.zeros_like(dense)
    og = out // groups
    for g in range(groups):
        dense[g * og:(g + 1) * og, g * in_g:(g + 1) * in_g] = w[g * og:(g + 1) * og]
        mask[g * og:(g + 1) * og, g * in_g:(g + 1) * in_g] = 1.0
    return dense, mask


def _grouped(dense: torch.Tensor, groups: int) -> torch.Tensor:
    """The inverse of :func:`_dense`: the diagonal blocks of a dense [out, in, 1, 1] tensor, stacked."""
    out, c_in = dense.shape[:2]
    og, ig = out // groups, c_in // groups
    return torch.cat([dense[g * og:(g + 1) * og, g * ig:(g + 1) * ig] for g in range(groups)])


def _shuffle_perm(channels: int, groups: int) -> torch.Tensor:
    """``perm`` with ``ChannelShuffle(groups)(x) == x[:, perm]``."""
    return torch.arange(channels).reshape(groups, channels // groups).t().reshape(-1)


class _Block:
    """What the fused layer needs to know of one inverted residual: its modules, in the reference's order."""

    def __init__(self, index: int, m: InvertedResidual):
        body = list(m.body)
        self.index = index
        self.shuffle = isinstance(body[1], ChannelShuffle)
        self.names = [f"ops.{index}.body.{i}" for i in ((0, 2, 3) if self.shuffle else (0, 1, 2))]
        self.expand, self.dw, self.proj = (body[0], body[2], body[3]) if self.shuffle else (body[0], body[1], body[2])
        self.mid = self.dw[0].weight.shape[0]
        self.kernel = self.dw[0].kernel_size[0]
        self.g_in, self.g_out = self.expand[0].groups, self.proj[0].groups
        self.perm = _shuffle_perm(self.mid, self.g_in) if self.shuffle else torch.arange(self.mid)


def _cat_bn(bns: list[nn.BatchNorm2d], perms: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: torch.cat([getattr(b, n).detach()[p] for b, p in zip(bns, perms)])
            for n in ("weight", "bias", "running_mean", "running_var")}


class FusedMixedOp(nn.Module):
    """All candidates of one FBNet site, fused. ``forward(x, w)``: ``w`` [ops] or per-sample [N, ops].

    With ``lean`` set (and ``w`` of one row), only the op with the largest weight runs, from slices of the fused
    tensors, scaled by its weight -- as :class:`search.supernet.MixedOp` does.
    """

    def __init__(self, site: Site, choices: tuple[str, ...]):
        super().__init__()
        ops = [build_op(op, site.c_in, site.c_out, site.stride, **dict(site.params)) for op in choices]
        self.n_ops, self.c_out, self.stride = len(ops), site.c_out, site.stride
        self.lean = False
        self.channels_last = True
        blocks = sorted((_Block(k, m) for k, m in enumerate(ops) if isinstance(m, InvertedResidual)),
                        key=lambda b: b.mid)  # equal widths side by side: one grouped projection per width
        self.blocks = blocks
        self.residual = bool(ops[blocks[0].index].residual)
        others = [k for k, m in enumerate(ops) if not isinstance(m, InvertedResidual)]
        self.identity = [k for k in others if isinstance(ops[k], nn.Identity)]
        skips = [k for k in others if k not in self.identity]
        self.skip_index = skips[0] if skips else None
        self.skip = ops[skips[0]] if skips else None
        if len(skips) > 1:
            raise ValueError(f"site {site.name}: at most one non-identity skip can be fused, got {choices}")
        self.register_buffer("order", torch.tensor([b.index for b in blocks]), persistent=False)
        self.kmax = max(b.kernel for b in blocks)
        self.offsets = [0]
        for b in blocks:
            self.offsets.append(self.offsets[-1] + b.mid)
        self._init_expand(blocks)
        self._init_dw(blocks)
        self._init_proj(blocks)
        for b in blocks:  # keep only the metadata: the per-op modules are dropped
            b.expand = b.dw = b.proj = None

    # ------------------------------------------------------------------------------------------- building

    def _init_expand(self, blocks: list[_Block]) -> None:
        dense = [_dense(b.expand[0].weight.detach(), b.g_in) for b in blocks]
        w = torch.cat([d[p] for (d, _), p in zip(dense, (b.perm for b in blocks))])
        mask = torch.cat([m[b.perm] for (_, m), b in zip(dense, blocks)])
        self.exp_w = nn.Parameter(w)
        self.register_buffer("exp_mask", None if bool(mask.all()) else mask, persistent=False)
        self._init_bn("exp", [b.expand[1] for b in blocks], [b.perm for b in blocks])

    def _init_dw(self, blocks: list[_Block]) -> None:
        ws, masks = [], []
        for b in blocks:
            pad = (self.kmax - b.kernel) // 2
            w = b.dw[0].weight.detach()
            ws.append(F.pad(w, (pad,) * 4))
            masks.append(F.pad(torch.ones_like(w), (pad,) * 4))
        mask = torch.cat(masks)
        self.dw_w = nn.Parameter(torch.cat(ws))
        self.register_buffer("dw_mask", None if bool(mask.all()) else mask, persistent=False)
        ident = [torch.arange(b.mid) for b in blocks]
        self._init_bn("dw", [b.dw[1] for b in blocks], ident)

    def _init_proj(self, blocks: list[_Block]) -> None:
        self.buckets: list[tuple[int, int, int]] = []  # (first block, number of blocks, width)
        for i, b in enumerate(blocks):
            if self.buckets and self.buckets[-1][2] == b.mid:
                first, n, mid = self.buckets[-1]
                self.buckets[-1] = (first, n + 1, mid)
            else:
                self.buckets.append((i, 1, b.mid))
        self.proj_w = nn.ParameterList()
        masks = []
        for first, n, _ in self.buckets:
            dense = [_dense(b.proj[0].weight.detach(), b.g_out) for b in blocks[first:first + n]]
            self.proj_w.append(nn.Parameter(torch.cat([d for d, _ in dense])))
            mask = torch.cat([m for _, m in dense])
            masks.append(None if bool(mask.all()) else mask)
        for i, m in enumerate(masks):
            self.register_buffer(f"proj_mask{i}", m, persistent=False)
        ident = [torch.arange(self.c_out)] * len(blocks)
        self._init_bn("proj", [b.proj[1] for b in blocks], ident)

    def _init_bn(self, stage: str, bns: list[nn.BatchNorm2d], perms: list[torch.Tensor]) -> None:
        t = _cat_bn(bns, perms)
        setattr(self, f"{stage}_bn_w", nn.Parameter(t["weight"]))
        setattr(self, f"{stage}_bn_b", nn.Parameter(t["bias"]))
        self.register_buffer(f"{stage}_rm", t["running_mean"])
        self.register_buffer(f"{stage}_rv", t["running_var"])

    # -------------------------------------------------------------------------------------------- forward

    def _bn(self, x: torch.Tensor, stage: str, sl: slice = slice(None)) -> torch.Tensor:
        return F.batch_norm(x, getattr(self, f"{stage}_rm")[sl], getattr(self, f"{stage}_rv")[sl],
                            getattr(self, f"{stage}_bn_w")[sl], getattr(self, f"{stage}_bn_b")[sl],
                            self.training, BN_MOMENTUM, BN_EPS)

    def _proj_weight(self, i: int) -> torch.Tensor:
        m = getattr(self, f"proj_mask{i}")
        return self.proj_w[i] if m is None else self.proj_w[i] * m

    def _layout(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` channels-last where the layer runs so: a channel slice of a channels-last tensor is neither layout,
        and a convolution on it would answer (and take its gradient) in NCHW."""
        return t.contiguous(memory_format=torch.channels_last) if self.channels_last else t

    def _masked(self, w: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return w if mask is None else w * mask

    def _depthwise(self, e: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Depthwise ``w`` ('same' padding) on ``e``. Taps farther than the input's extent from the centre only ever
        see padding, so they are cropped (exact: a 5x5 kernel on a 1x1 input is a per-channel scale), and the input
        is channels-last (see :meth:`forward`)."""
        k = w.shape[-1]
        ph, pw = min(k // 2, e.shape[2] - 1), min(k // 2, e.shape[3] - 1)
        ch, cw = k // 2 - ph, k // 2 - pw
        w = w[:, :, ch:k - ch, cw:k - cw]
        return F.conv2d(e, w, stride=self.stride, padding=(ph, pw), groups=e.shape[1])

    def _all(self, x: torch.Tensor, wb: torch.Tensor | None = None) -> torch.Tensor:
        """Every block's BatchNormed projection, stacked: [N, H', W', blocks, c_out]; with op weights ``wb``
        [blocks], each scaled by its weight inside the projection BatchNorm's affine (w * BN(z) = BN with w*gamma,
        w*beta), which saves a pass over the stacked outputs."""
        # ReLU in place on the BatchNorm outputs (BatchNorm's backward does not need its output): one tensor fewer
        e = F.relu(self._bn(F.conv2d(x, self._masked(self.exp_w, self.exp_mask)), "exp"), inplace=True)
        d = F.relu(self._bn(self._depthwise(e, self._masked(self.dw_w, self.dw_mask)), "dw"), inplace=True)
        # one split, not a slice per bucket: a slice's backward is a zero-filled full-size (NCHW) gradient per
        # bucket, and a gradient in another layout than its channels-last activation slows every kernel after it
        parts = d.split([n * mid for _, n, mid in self.buckets], dim=1)
        z = [F.conv2d(self._layout(p), self._proj_weight(i), groups=n)
             for i, (p, (_, n, _)) in enumerate(zip(parts, self.buckets))]
        z = torch.cat(z, dim=1) if len(z) > 1 else z[0]
        if wb is None:
            z = self._bn(z, "proj")
        else:
            scale = wb.repeat_interleave(self.c_out)
            z = F.batch_norm(z, self.proj_rm, self.proj_rv, self.proj_bn_w * scale, self.proj_bn_b * scale,
                             self.training, BN_MOMENTUM, BN_EPS)
        # [N, H', W', blocks, c_out]: a view of the channels-last z, so the sum over blocks (and its gradient) stays
        # channels-last too; a sum over dim 1 of the [N, blocks, c_out, H', W'] view would hand every kernel of the
        # backward pass an NCHW gradient against its channels-last activation (several times slower)
        return z.permute(0, 2, 3, 1).unflatten(3, (len(self.blocks), self.c_out))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = self._layout(x)  # oneDNN's depthwise kernels are several times faster channels-last on a CPU; the
        # whole block stays so (mixed layouts are slow)
        if w.dim() == 1 and self.lean:
            k = int(w.detach().argmax())
            return self.single(x, k) * w[k]
        wb = w.index_select(-1, self.order)  # [blocks] or [N, blocks]
        if wb.dim() == 1:
            out = self._all(x, wb).sum(dim=3).permute(0, 3, 1, 2)
        else:
            out = (self._all(x) * wb.view(-1, 1, 1, len(self.blocks), 1)).sum(dim=3).permute(0, 3, 1, 2)
        coef = wb.sum(-1) if self.residual else None
        for k in self.identity:
            coef = w[..., k] if coef is None else coef + w[..., k]
        if coef is not None:
            out = out + coef.view(-1, 1, 1, 1) * x
        if self.skip is not None:
            out = out + w[..., self.skip_index].view(-1, 1, 1, 1) * self.skip(x)
        return out

    def single(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Op ``k`` alone (the per-op module's output), computed from slices of the fused tensors."""
        if k in self.identity:
            return x
        if k == self.skip_index:
            return self.skip(x)
        i = next(j for j, b in enumerate(self.blocks) if b.index == k)
        b, sl = self.blocks[i], slice(self.offsets[i], self.offsets[i + 1])
        ew = self.exp_w[sl] if self.exp_mask is None else self.exp_w[sl] * self.exp_mask[sl]
        e = F.relu(self._bn(F.conv2d(x, ew), "exp", sl), inplace=True)
        c = (self.kmax - b.kernel) // 2
        d = F.relu(self._bn(self._depthwise(e, self.dw_w[sl, :, c:self.kmax - c, c:self.kmax - c]), "dw", sl),
                   inplace=True)
        bi = next(j for j, (first, n, _) in enumerate(self.buckets) if first <= i < first + n)
        r = slice((i - self.buckets[bi][0]) * self.c_out, (i - self.buckets[bi][0] + 1) * self.c_out)
        y = self._bn(F.conv2d(d, self._proj_weight(bi)[r]), "proj", slice(i * self.c_out, (i + 1) * self.c_out))
        return x + y if self.residual else y

    # ------------------------------------------------------------------------------------ per-op view

    def per_op(self, field: str = "data") -> dict[str, torch.Tensor]:
        """The fused tensors (``data``, or ``grad`` of the parameters: zeros where none) under the per-op layer's
        state_dict names (``num_batches_tracked`` left out: BatchNorm here uses a fixed momentum)."""
        def get(t: torch.Tensor) -> torch.Tensor:
            if field == "data":
                return t.detach()
            return torch.zeros_like(t) if t.grad is None else t.grad

        out: dict[str, torch.Tensor] = {}
        for i, b in enumerate(self.blocks):
            sl = slice(self.offsets[i], self.offsets[i + 1])
            inv = torch.argsort(b.perm).to(self.exp_w.device)
            ex, dw, pj = b.names
            out[f"{ex}.0.weight"] = _grouped(get(self.exp_w)[sl][inv], b.g_in)
            c = (self.kmax - b.kernel) // 2
            out[f"{dw}.0.weight"] = get(self.dw_w)[sl, :, c:self.kmax - c, c:self.kmax - c]
            bi = next(j for j, (first, n, _) in enumerate(self.buckets) if first <= i < first + n)
            r = slice((i - self.buckets[bi][0]) * self.c_out, (i - self.buckets[bi][0] + 1) * self.c_out)
            out[f"{pj}.0.weight"] = _grouped(get(self.proj_w[bi])[r], b.g_out)
            psl = slice(i * self.c_out, (i + 1) * self.c_out)
            for name, stage, s, p in ((ex, "exp", sl, inv), (dw, "dw", sl, None), (pj, "proj", psl, None)):
                for key, attr in (("weight", "bn_w"), ("bias", "bn_b"), ("running_mean", "rm"),
                                  ("running_var", "rv")):
                    t = getattr(self, f"{stage}_{attr}")
                    t = (get(t) if attr.startswith("bn") else t.detach())[s]
                    out[f"{name}.1.{key}"] = t if p is None else t[p]  # (inv is on the device already)
        if self.skip is not None:
            for name, t in [*self.skip.named_parameters(), *self.skip.named_buffers()]:
                if "num_batches" not in name:
                    out[f"ops.{self.skip_index}.{name}"] = get(t) if isinstance(t, nn.Parameter) else t.detach()
        return out


def reference_state(net: nn.Module, field: str = "data") -> dict[str, torch.Tensor]:
    """``net``'s parameters (``data`` or ``grad``) and buffers under the names the per-op supernet gives them: each
    :class:`FusedMixedOp` mapped back with :meth:`FusedMixedOp.per_op`, everything else as it is."""
    out: dict[str, torch.Tensor] = {}
    fused = {n: m for n, m in net.named_modules() if isinstance(m, FusedMixedOp)}
    for n, m in fused.items():
        out.update({f"{n}.{k}": v for k, v in m.per_op(field).items()})

    def inside(name: str) -> bool:
        return any(name.startswith(f + ".") for f in fused)

    for n, p in net.named_parameters():
        if not inside(n):
            out[n] = p.detach() if field == "data" else (torch.zeros_like(p) if p.grad is None else p.grad)
    for n, b in net.named_buffers():
        if not inside(n) and "num_batches" not in n:
            out[n] = b.detach()
    return out
