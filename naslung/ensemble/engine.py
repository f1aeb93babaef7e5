"""The fast inference engine: one call runs every member of an ensemble on a batch.

What it does, in order, and why:

1. **BatchNorm folding** -- each Conv3d -> BatchNorm3d pair becomes one conv with a bias (exact in
   real arithmetic; :func:`fold_bn`). Removes a full read+write of every activation.
2. **Members run together** -- members whose architectures match (same module types and parameter
   shapes) are stacked into one :class:`GroupedMembers`: the stem conv, which reads the shared
   single-channel input, becomes one conv with ``M * w`` outputs, every later conv a grouped conv
   (``groups = M``), CBAM and heads batched with ``einsum``. Different architectures become groups
   of one, so the same code path serves every ensemble.
3. **GPU, Triton backend (default)**: :class:`TritonMember` runs each member on padded
   channels-last bf16 buffers -- cuDNN's 3D kernels are slow on these 1-16-channel convs -- as
   our kernels (:mod:`naslung.ensemble.kernels`) plus, for convs with few input channels, 2D
   cuDNN convs on the x-folded buffer (:mod:`naslung.ensemble.fold`); all members' first convs
   as one launch, members on CUDA streams, CUDA-graph replay per batch size.
   **Torch backend**: bf16 activations and weights (heads and gates in fp32),
   ``channels_last_3d``, optionally ``torch.compile`` of the whole multi-member forward *once*
   (one compile per input shape -- never per member), CUDA graphs.
4. **CPU**: fp32, folded and grouped, ``inference_mode``; ``channels_last_3d`` and
   ``torch.compile`` are options (off by default on CPU; ``bench/ensemble.py`` measures them).

The output contract is the reference ensemble's: :meth:`FastEnsemble.member_proba` -> (M, N, 2)
fp32 probabilities in member order, :meth:`FastEnsemble.predict_proba` -> (N, 2) after the rule.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from naslung.ensemble.rules import combine
from naslung.models.blocks import ConvBNReLU, ResidualBlock
from naslung.models.cbam import CBAM3d, spatial_activation
from naslung.models.heads import AMSoftmaxHead, ASoftmaxHead, SoftmaxHead

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- BN folding
def fold_conv_bn(conv: nn.Conv3d, bn: nn.BatchNorm3d) -> nn.Conv3d:
    """A new Conv3d equal to ``bn(conv(x))`` in eval mode (running statistics)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics")
    scale = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    fused = nn.Conv3d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
                      device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        w = conv.weight.double() * scale.double().reshape(-1, 1, 1, 1, 1)
        b = conv.bias.double() if conv.bias is not None else torch.zeros_like(bn.running_mean, dtype=torch.double)
        b = (b - bn.running_mean.double()) * scale.double() + shift.double()
        fused.weight.copy_(w.to(conv.weight.dtype))
        fused.bias.copy_(b.to(conv.weight.dtype))
    return fused


def fold_bn(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` (eval mode) with every Conv3d -> BatchNorm3d pair in a Sequential fused."""
    model = copy.deepcopy(model).eval()
    for module in list(model.modules()):
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = module._modules[a], module._modules[b]
            if isinstance(conv, nn.Conv3d) and isinstance(bn, nn.BatchNorm3d):
                module._modules[a] = fold_conv_bn(conv, bn)
                module._modules[b] = nn.Identity()
    return model


# ----------------------------------------------------------------------------- grouping
def architecture_key(model: nn.Module) -> tuple:
    """Members with equal keys can be stacked: same module types in order, same parameter shapes."""
    types = tuple(type(m).__name__ for m in model.modules())
    shapes = tuple((n, tuple(p.shape)) for n, p in model.named_parameters())
    extra = []
    for m in model.modules():
        if isinstance(m, CBAM3d):
            extra.append((m.variant, m.channel_gate.gate))
        if isinstance(m, (ASoftmaxHead, AMSoftmaxHead, SoftmaxHead)):
            extra.append(m.kind)
    return types + shapes + tuple(extra)


class _Unsupported(Exception):
    pass


def _conv_of(m: nn.Module) -> nn.Conv3d:
    """The (folded) conv inside a ConvBNReLU, checking that nothing but Identity/ReLU follows it."""
    if not isinstance(m, ConvBNReLU):
        raise _Unsupported(type(m).__name__)
    conv, bn, act = m[0], m[1], m[2]
    if not isinstance(conv, nn.Conv3d) or not isinstance(bn, nn.Identity) or not isinstance(act, nn.ReLU):
        raise _Unsupported("ConvBNReLU not folded")
    return conv


def direct_conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: Sequence[int],
                  padding: Sequence[int]) -> torch.Tensor:
    """A conv written as a sum of shifted, strided slices: ``k^3 * C_in`` broadcast multiply-adds.

    Meant for ``torch.compile``: Inductor fuses the whole sum (and the zero padding) into one
    memory-bound kernel. cuDNN's 3D kernels are very slow for the 1-4 channel convs of the stem and
    the CBAM spatial gate (10 ms for a 4->4 conv on 1024 crops of 32^3 on an H100, ~100x its memory
    floor). Measured on an H100 (5 distinct members, batch 1024, bf16, compiled): 14.2k crops/s vs
    5.35k naive -- but Inductor needed ~400 s to compile the unrolled sums, so it is opt-in
    (``direct_max_cin``). An ``unfold`` + ``sum`` formulation compiled in 70 s but ran at 3.1k
    crops/s. In eager mode this form is slow.
    """
    o, c, kd, kh, kw = weight.shape
    sd, sh, sw = stride
    xp = F.pad(x, (padding[2], padding[2], padding[1], padding[1], padding[0], padding[0]))
    d = (xp.shape[2] - kd) // sd + 1
    h = (xp.shape[3] - kh) // sh + 1
    w_ = (xp.shape[4] - kw) // sw + 1
    acc = None
    for ci in range(c):
        for a in range(kd):
            for b_ in range(kh):
                for e in range(kw):
                    sl = xp[:, ci:ci + 1, a:a + sd * (d - 1) + 1:sd, b_:b_ + sh * (h - 1) + 1:sh,
                            e:e + sw * (w_ - 1) + 1:sw]
                    term = sl * weight[:, ci, a, b_, e].view(1, o, 1, 1, 1)
                    acc = term if acc is None else acc + term
    if bias is not None:
        acc = acc + bias.view(1, o, 1, 1, 1)
    return acc


class _GConv(nn.Module):
    """M convs as one: shared input -> plain conv with M*out channels, else a grouped conv."""

    direct_max_cin: int = 0  # set by FastEnsemble: convs with <= this many input channels use direct_conv3d

    def __init__(self, convs: Sequence[nn.Conv3d], shared_input: bool) -> None:
        super().__init__()
        c0 = convs[0]
        if c0.groups != 1 or c0.dilation != (1, 1, 1):
            raise _Unsupported("grouped/dilated member conv")
        self.weight = nn.Parameter(torch.cat([c.weight for c in convs]).detach().clone(), requires_grad=False)
        self.bias = nn.Parameter(torch.cat([c.bias for c in convs]).detach().clone(), requires_grad=False)
        self.stride, self.padding = c0.stride, c0.padding
        self.groups = 1 if shared_input else len(convs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.groups == 1 and self.weight.shape[1] <= self.direct_max_cin:
            return direct_conv3d(x, self.weight, self.bias, self.stride, self.padding)
        return F.conv3d(x, self.weight, self.bias, self.stride, self.padding, 1, self.groups)


class _GConvReLU(_GConv):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(super().forward(x))


class _GResidual(nn.Module):
    def __init__(self, blocks: Sequence[ResidualBlock], shared_input: bool) -> None:
        super().__init__()
        self.conv1 = _GConvReLU([_conv_of(b.conv1) for b in blocks], shared_input)
        self.conv2 = _GConvReLU([_conv_of(b.conv2) for b in blocks], False)
        self.shortcut = _GConvReLU([_conv_of(b.shortcut) for b in blocks], shared_input)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x)) + self.shortcut(x)


class _GCBAM(nn.Module):
    """M CBAMs on (N, M*C, d, h, w); gates computed in fp32, spatial conv grouped."""

    def __init__(self, cbams: Sequence[CBAM3d]) -> None:
        super().__init__()
        self.m = len(cbams)
        self.variant = cbams[0].variant
        self.style = cbams[0].style
        self.gate = cbams[0].channel_gate.gate
        self.hidden_act = not isinstance(cbams[0].channel_gate.act, nn.Identity)
        stack = lambda ts: nn.Parameter(torch.stack([t.detach() for t in ts]).clone(), requires_grad=False)
        self.fc1 = stack([c.channel_gate.fc1.weight for c in cbams])  # (M, hidden, C)
        self.fc2 = stack([c.channel_gate.fc2.weight for c in cbams])  # (M, C, hidden)
        convs = [c.spatial_gate.conv for c in cbams]
        self.sp_weight = nn.Parameter(torch.cat([c.weight for c in convs]).detach().clone(), requires_grad=False)
        self.sp_padding = convs[0].padding
        self.direct = False  # set by FastEnsemble when compiled (see direct_conv3d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, mc, d, h, w = x.shape
        c = mc // self.m
        xv = x.view(n, self.m, c, d, h, w)
        avg = xv.mean(dim=(3, 4, 5), dtype=torch.float32)
        mx = xv.amax(dim=(3, 4, 5)).float()

        def mlp(v: torch.Tensor) -> torch.Tensor:
            z = torch.einsum("nmc,mhc->nmh", v, self.fc1.float())
            if self.hidden_act:
                z = torch.relu(z)
            return torch.einsum("nmh,mch->nmc", z, self.fc2.float())

        z = mlp(avg) + mlp(mx)
        g = torch.softmax(z, dim=2) if self.gate == "softmax" else torch.sigmoid(z)
        xc = xv * g.to(x.dtype)[:, :, :, None, None, None]
        desc = torch.stack([xc.amax(dim=2), xc.mean(dim=2)], dim=2).reshape(n, 2 * self.m, d, h, w)
        if x.is_contiguous(memory_format=torch.channels_last_3d):
            desc = desc.contiguous(memory_format=torch.channels_last_3d)
        if self.m == 1 and self.direct:
            logits = direct_conv3d(desc, self.sp_weight, None, (1, 1, 1), self.sp_padding)
        else:
            logits = F.conv3d(desc, self.sp_weight, None, 1, self.sp_padding, 1, self.m)
        s = spatial_activation(logits.reshape(n * self.m, 1, d, h, w), self.style.spatial_act)
        s = s.view(n, self.m, 1, d, h, w)
        out = s * xv + xv if self.style.residual else s * xc
        return out.reshape(n, mc, d, h, w)


class _GHead(nn.Module):
    """M heads on pooled features (N, M, C) -> logits (N, M, K), always fp32."""

    def __init__(self, heads: Sequence[nn.Module]) -> None:
        super().__init__()
        h0 = heads[0]
        self.kind = h0.kind
        if self.kind == "softmax":
            self.weight = nn.Parameter(torch.stack([h.fc.weight.detach() for h in heads]).float(), requires_grad=False)
            self.bias = nn.Parameter(torch.stack([h.fc.bias.detach() for h in heads]).float(), requires_grad=False)
        else:
            w = torch.stack([F.normalize(h.weight.detach().float(), dim=1) for h in heads])
            self.weight = nn.Parameter(w, requires_grad=False)
            scale = [h.scale for h in heads] if self.kind == "amsoftmax" else [1.0] * len(heads)
            self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32))

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        emb = emb.float()
        if self.kind == "softmax":
            return torch.einsum("nmc,mkc->nmk", emb, self.weight) + self.bias
        norm = emb.norm(dim=2, keepdim=True)
        cos = torch.einsum("nmc,mkc->nmk", emb / norm.clamp_min(1e-12), self.weight).clamp(-1.0, 1.0)
        if self.kind == "asoftmax":
            return cos * norm
        return cos * self.scale[None, :, None]


class GroupedMembers(nn.Module):
    """M BN-folded NASLungNets of one architecture evaluated as one network.

    Input (N, 1, S, S, S) -> probabilities (M, N, K) fp32.
    """

    def __init__(self, nets: Sequence[nn.Module]) -> None:
        super().__init__()
        self.m = len(nets)
        try:
            n0 = nets[0]
            stem = [list(n.stem) for n in nets]
            if len(stem[0]) != 3:
                raise _Unsupported("stem layout")
            layers: list[nn.Module] = [
                _GConvReLU([_conv_of(s[0]) for s in stem], shared_input=True),
                _GConvReLU([_conv_of(s[1]) for s in stem], shared_input=False),
                self._cbam([s[2] for s in stem]),
            ]
            for i in range(len(n0.stages)):
                mods = [list(n.stages[i]) for n in nets]
                for j in range(len(mods[0])):
                    col = [ms[j] for ms in mods]
                    if isinstance(col[0], ResidualBlock):
                        layers.append(_GResidual(col, shared_input=False))
                    elif isinstance(col[0], ConvBNReLU):
                        layers.append(_GConvReLU([_conv_of(c) for c in col], shared_input=False))
                    else:
                        layers.append(self._cbam(col))
            if not isinstance(n0.pool, nn.AdaptiveAvgPool3d) or n0.pool.output_size not in (1, (1, 1, 1)):
                raise _Unsupported("pooling")
            self.body = nn.Sequential(*layers)
            self.head = _GHead([n.head for n in nets])
        except (_Unsupported, AttributeError, TypeError) as e:
            raise ValueError(f"cannot group these members ({e}); use one group per member") from None

    @staticmethod
    def _cbam(mods: Sequence[nn.Module]) -> nn.Module:
        if all(isinstance(m, nn.Identity) for m in mods):
            return nn.Identity()
        if all(isinstance(m, CBAM3d) for m in mods):
            return _GCBAM(mods)
        raise _Unsupported(f"attention module {type(mods[0]).__name__}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        n, mc = y.shape[:2]
        emb = y.mean(dim=(2, 3, 4), dtype=torch.float32).view(n, self.m, mc // self.m)
        return torch.softmax(self.head(emb), dim=2).transpose(0, 1)


# ----------------------------------------------------------------------------- Triton backend
def plan_conv(cin: int, cout: int, ks: int, stride: int, width: int, *, fold_max_cin: int = 8,
              xrun: bool = True) -> str:
    """How the Triton backend runs a conv on inputs ``width`` voxels wide: ``"fold"`` (x-folded
    cuDNN 2D conv + epilogue pass), ``"xrun"`` (our kernel, rows of 2 voxels) or ``"kernel"`` (our
    kernel, rows of one voxel).

    The rules are the per-layer winners of the H200 sweep at batch 1024
    (``bench/gpu/engine_layers.py``; docs/measurements/2026-11-30c/run16): folding pays for few
    input channels at any width, and for any channel count once rows are at most 8 voxels wide
    (the fold's wasted FLOPs grow with the width); 2-voxel rows pay at 16-voxel rows when either
    side has 16+ channels (e.g. 8->16: 0.23 vs 0.35 ms folded; 16->16: 0.43 vs 0.48 ms one-voxel
    rows) and for 16 input channels at 8. ``fold_max_cin=0`` never folds; ``xrun=False`` never
    uses 2-voxel rows.
    """
    if ks != 3:
        return "kernel"
    fold = fold_max_cin > 0
    if fold and stride == 1 and width <= 8 and cin >= 32:
        return "fold"
    if xrun and stride == 1 and width <= 16 and (cin >= 16 or cout >= 16):
        return "xrun"
    return "fold" if fold and cin <= fold_max_cin else "kernel"


class _MemberConv:
    """One BN-folded conv of a member, packed for each input width it meets (the fastest way to run
    it depends on the width: :func:`plan_conv`). Packing happens on first use, i.e. in warm-up,
    before any CUDA-graph capture."""

    def __init__(self, conv: nn.Conv3d, dtype: torch.dtype, *, fold_max_cin: int, xrun: bool,
                 foldable: bool = True) -> None:
        from naslung.ensemble import fold, kernels

        if len(set(conv.stride)) != 1 or len(set(conv.padding)) != 1 or len(set(conv.kernel_size)) != 1:
            raise _Unsupported("anisotropic conv")
        self.k, self.fold, self.dtype = kernels, fold, dtype
        self.weight, self.bias = conv.weight.detach(), conv.bias.detach()
        self.cin, self.cout = conv.in_channels, conv.out_channels
        self.ks, self.stride, self.pad = conv.kernel_size[0], conv.stride[0], conv.padding[0]
        self.fold_max_cin = fold_max_cin if foldable else 0
        self.xrun = xrun and foldable
        self._packed: dict[int, object] = {}
        self._as_shortcut: dict[tuple[int, int], object] = {}
        self.packed(16)  # refuse unsupported shapes now, not at the first batch

    @property
    def fusable_shortcut(self) -> bool:
        """A 1x1 stride-1 conv: can run inside the epilogue of the conv that closes its block."""
        return self.ks == 1 and self.stride == 1

    def as_shortcut_for(self, consumer) -> object:
        """This 1x1 conv packed for the epilogue of ``consumer`` (a packed conv or folded conv)."""
        if isinstance(consumer, self.fold.FoldedConv):
            key = (1, self.k.shortcut_columns(consumer.cout))
        else:
            key = (consumer.xb, consumer.weight.shape[1])
        if key not in self._as_shortcut:
            self._as_shortcut[key] = self.k.pack_shortcut(self.weight, self.bias, key[0], key[1], self.dtype)
        return self._as_shortcut[key]

    def plan(self, width: int) -> str:
        return plan_conv(self.cin, self.cout, self.ks, self.stride, width, fold_max_cin=self.fold_max_cin,
                         xrun=self.xrun)

    def packed(self, width: int):
        """The packed conv (FoldedConv or PackedConv) for inputs ``width`` voxels wide."""
        if width not in self._packed:
            how = self.plan(width)
            try:
                if how == "fold":
                    p = self.fold.pack_folded(self.weight, self.bias, self.stride, self.pad, self.dtype)
                else:
                    p = self.k.pack_conv(self.weight, self.bias, self.stride, self.pad, self.dtype,
                                         xb=2 if how == "xrun" else 1)
            except ValueError as e:
                raise _Unsupported(str(e)) from None
            self._packed[width] = p
        return self._packed[width]


class TritonMember(nn.Module):
    """One BN-folded NASLungNet run as Triton launches on padded channels-last buffers.

    See :mod:`naslung.ensemble.kernels` for the layout and the kernels. Each conv runs as
    :func:`plan_conv` picks for its width: x-folded cuDNN 2D conv plus one epilogue pass
    (:mod:`naslung.ensemble.fold`), or our implicit-GEMM kernel with rows of one or two voxels.
    A residual block is two launches where conv2 is folded or on 2-voxel rows: conv1, then conv2
    with the 1x1 shortcut computed in its epilogue (``fuse_shortcut``); else three (shortcut,
    conv1, conv2 adding the shortcut's buffer). A CBAM is four passes and a conv: channel
    sums/maxima, the gate MLP (one tiny launch), the spatial descriptor, the gate conv (folded),
    then sigmoid and output in one pass; the stem's CBAM reads its folded conv's raw output
    (``raw_cbam``). A buffer read only by a folded conv has no x border (``fold_unbordered``,
    see :meth:`tail`). (Gathering the sums/maxima in the producing conv's
    epilogue with atomics was measured slower on an H200, twice: 40.2k vs 46.9k crops/s at batch
    1024 in our conv kernel, 47.3k vs 51.2k in the folded convs' epilogue pass.)
    Output: (1, N, K) fp32 probabilities, like :class:`GroupedMembers`.
    """

    def __init__(self, net: nn.Module, dtype: torch.dtype, fold_max_cin: int = 8, xrun: bool = True,
                 fuse_shortcut: bool = True, raw_cbam: bool = True, fold_unbordered: bool = True) -> None:
        super().__init__()
        from naslung.ensemble import fold, kernels

        self.k, self.fold, self.dtype = kernels, fold, dtype
        self.fold_max_cin, self.xrun = int(fold_max_cin), bool(xrun)
        self.fuse_shortcut = bool(fuse_shortcut)
        self.raw_cbam, self.fold_unbordered = bool(raw_cbam), bool(fold_unbordered)
        stem = list(net.stem)
        if len(stem) != 3:
            raise _Unsupported("stem layout")
        self.stem0_conv = _conv_of(stem[0])  # kept so an ensemble can run all members' first convs as one
        self.stem = [self._pack(self.stem0_conv, foldable=False), self._pack(_conv_of(stem[1]))]
        self.stem_cbam = self._cbam(stem[2])
        self.stages = []
        for stage in net.stages:
            mods = list(stage)
            if not isinstance(mods[0], ConvBNReLU):
                raise _Unsupported("stage must start with its strided conv")
            blocks = []
            for b in mods[1:-1]:
                if not isinstance(b, ResidualBlock):
                    raise _Unsupported(f"stage module {type(b).__name__}")
                blocks.append((self._pack(_conv_of(b.shortcut)), self._pack(_conv_of(b.conv1)),
                               self._pack(_conv_of(b.conv2))))
            self.stages.append((self._pack(_conv_of(mods[0])), blocks, self._cbam(mods[-1])))
        if not isinstance(net.pool, nn.AdaptiveAvgPool3d) or net.pool.output_size not in (1, (1, 1, 1)):
            raise _Unsupported("pooling")
        self.head = _GHead([net.head])

    def _pack(self, conv: nn.Conv3d, foldable: bool = True) -> _MemberConv:
        return _MemberConv(conv, self.dtype, fold_max_cin=self.fold_max_cin, xrun=self.xrun, foldable=foldable)

    def conv(self, h: torch.Tensor, c: _MemberConv, *, relu: bool = True, residual: torch.Tensor | None = None,
             shortcut: tuple[torch.Tensor, _MemberConv] | None = None, x_border: int = 1,
             out_x_border: int = 1) -> torch.Tensor:
        """One conv on a padded buffer, run the way :func:`plan_conv` picks for its width.
        ``shortcut``: (block input, its 1x1 conv), added as ``relu(shortcut(input))`` -- in the
        epilogue where :meth:`takes_shortcut`, else as a launch of its own and a residual.
        ``x_border`` / ``out_x_border`` = 0: input / output without x border (folded convs only)."""
        p = c.packed(h.shape[3] - 2 * x_border)
        folded = isinstance(p, self.fold.FoldedConv)
        if not folded and (x_border == 0 or out_x_border == 0):
            raise ValueError("only folded convs read or write buffers without x border")
        if shortcut is not None:
            hs, sconv = shortcut
            if not self.takes_shortcut(p, sconv):
                return self.conv(h, c, relu=relu, residual=self.conv(hs, sconv), x_border=x_border,
                                 out_x_border=out_x_border)
            shortcut = (hs, sconv.as_shortcut_for(p))
        if folded:
            return self.k.bias_act_pad(self.fold.folded_conv(h, p, x_border=x_border), p.bias, relu=relu,
                                       residual=residual, shortcut=shortcut, x_border=out_x_border)
        return self.k.conv3d(h, p, relu=relu, residual=residual, shortcut=shortcut)

    def folded(self, c: _MemberConv, width: int) -> bool:
        """Whether ``c`` runs as a folded cuDNN conv on inputs ``width`` voxels wide."""
        return isinstance(c.packed(width), self.fold.FoldedConv)

    def takes_shortcut(self, p, sconv: _MemberConv) -> bool:
        """Whether the packed conv ``p`` can compute the 1x1 shortcut ``sconv`` in its epilogue: the
        folded epilogue and the x-run kernel can (the one-voxel-row kernel faulted on an H200 with it)."""
        return (self.fuse_shortcut and sconv.fusable_shortcut
                and (isinstance(p, self.fold.FoldedConv) or p.xb > 1))

    def _cbam(self, m: nn.Module):
        if isinstance(m, nn.Identity):
            return None
        if not isinstance(m, CBAM3d):
            raise _Unsupported(f"attention module {type(m).__name__}")
        if m.style.spatial_act != "sigmoid":
            raise _Unsupported(f"CBAM variant {m.variant!r}: the kernels gate voxels by sigmoid only")
        cg = m.channel_gate
        spatial = m.spatial_gate.conv.weight.detach().float()
        try:
            gate_conv = self.fold.pack_folded(spatial, None, 1, spatial.shape[-1] // 2, self.dtype)
        except ValueError as e:
            raise _Unsupported(str(e)) from None
        return {"fc1": cg.fc1.weight.detach().float(), "fc2": cg.fc2.weight.detach().float(),
                "relu": not isinstance(cg.act, nn.Identity), "gate": cg.gate,
                "spatial": gate_conv, "naslung": m.style.residual}

    def channel_gate(self, h: torch.Tensor, p: dict, bias: torch.Tensor | None = None) -> torch.Tensor:
        """CBAM's channel weights (N, C) fp32 for the padded buffer ``h`` (or, with ``bias``, for
        ``relu(h + bias)`` of a folded conv's raw output ``h``)."""
        # CBAM inputs are ReLU outputs (>= 0) with a zero border, so reducing over the whole padded
        # buffer gives the interior's max, and its sum over the interior's voxel count the mean.
        total, mx = self.k.channel_stats(h, bias=bias)
        count = h.shape[1] * h.shape[2] * h.shape[3] if bias is not None else math.prod(s - 2 for s in h.shape[1:4])
        return self.k.channel_gate(total, mx, count, p["fc1"], p["fc2"], relu=p["relu"], softmax=p["gate"] == "softmax")

    def apply_cbam(self, h: torch.Tensor, p: dict | None, bias: torch.Tensor | None = None,
                   out_x_border: int = 1) -> torch.Tensor:
        """CBAM on the padded buffer ``h`` -> padded buffer (without x border if ``out_x_border == 0``);
        with ``bias``, on ``relu(h + bias)`` of a folded conv's raw output ``h`` (the passes apply it
        as they load: no epilogue pass)."""
        if p is None:
            if bias is None and out_x_border == 1:
                return h
            if bias is None:
                raise ValueError("no CBAM: a padded buffer is passed on as it is")
            return self.k.bias_act_pad(h, bias, x_border=out_x_border)
        g = self.channel_gate(h, p, bias)
        logits = self.fold.folded_conv(self.k.cbam_desc(h, g, bias=bias), p["spatial"], x_border=0)[..., 0]
        return self.k.cbam_apply(h, logits, g, naslung=p["naslung"], bias=bias, x_border=out_x_border)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.conv(self.k.to_padded(x, self.dtype), self.stem[0]))

    def stem_reads_unbordered(self, width: int) -> bool:
        """Whether the second conv is folded at ``width``, and so can read a first-conv output
        without x border (``x_border=0``: 128 instead of 136 folded channels at 32^3, 0.39 vs
        0.62 ms on an H200)."""
        return self.fold_unbordered and self.folded(self.stem[1], width)

    def tail(self, h: torch.Tensor, x_border: int = 1) -> torch.Tensor:
        """Everything after the first conv, whose padded output is ``h`` (without x border when
        ``x_border == 0``: only where :meth:`stem_reads_unbordered`).

        Where a buffer's only reader is a folded conv -- the second conv reading the first, a
        block's conv2 reading its folded conv1, the first strided conv reading the stem's CBAM --
        it is written without x border (``fold_unbordered``): fewer folded channels, often a
        multiple of 128, which cuDNN runs much faster."""
        width = h.shape[3] - 2 * x_border
        p = self.stem[1].packed(width)  # conv() refuses an unbordered input where it is not folded
        sxb = 0 if (self.fold_unbordered and self.stem_cbam is not None and self.stages
                    and self.folded(self.stages[0][0], width)) else 1
        if self.raw_cbam and self.stem_cbam is not None and isinstance(p, self.fold.FoldedConv) and p.bias is not None:
            h = self.apply_cbam(self.fold.folded_conv(h, p, x_border=x_border), self.stem_cbam, bias=p.bias,
                                out_x_border=sxb)
        else:
            h = self.apply_cbam(self.conv(h, self.stem[1], x_border=x_border), self.stem_cbam, out_x_border=sxb)
        for i, (down, blocks, cbam) in enumerate(self.stages):
            h = self.conv(h, down, x_border=sxb if i == 0 else 1)
            for short, c1, c2 in blocks:
                w = h.shape[3] - 2
                xb = 0 if self.fold_unbordered and self.folded(c1, w) and self.folded(c2, w) else 1
                h = self.conv(self.conv(h, c1, out_x_border=xb), c2, shortcut=(h, short), x_border=xb)
            h = self.apply_cbam(h, cbam)
        emb = self.k.interior(h).mean(dim=(1, 2, 3), dtype=torch.float32)
        return torch.softmax(self.head(emb[:, None, :]), dim=2).transpose(0, 1)


class _SharedStem:
    """All members' first convs (each 1 -> w channels, the same w) as one conv with M * w outputs,
    written as M separate buffers, one per member."""

    def __init__(self, convs: Sequence[nn.Conv3d], dtype: torch.dtype) -> None:
        from naslung.ensemble import kernels

        widths = {c.out_channels for c in convs}
        if len(widths) != 1:
            raise _Unsupported(f"members' stems differ in width {sorted(widths)}")
        self.k, self.dtype, self.width = kernels, dtype, widths.pop()
        weight = torch.cat([c.weight for c in convs])
        bias = torch.cat([c.bias for c in convs])
        self.packed = kernels.pack_conv(weight, bias, 1, convs[0].padding[0], dtype)

    def __call__(self, x: torch.Tensor, x_border: int = 1) -> torch.Tensor:
        """(M, N, D+2, H+2, W+2, w): member i's first-conv output is element i (W instead of W+2
        when ``x_border == 0``)."""
        return self.k.conv3d(self.k.to_padded(x, self.dtype), self.packed, out_split=self.width, x_border=x_border)


def triton_backend_usable(device: torch.device) -> tuple[bool, str]:
    """Whether the Triton backend can run on ``device``, and why not."""
    if not _triton_available():
        return False, "triton is not installed"
    if device.type == "cuda":
        return True, ""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True, ""
    return False, f"the Triton backend needs a CUDA device (or TRITON_INTERPRET=1 for tests), not {device.type}"


# ----------------------------------------------------------------------------- engine
BACKENDS = ("auto", "torch", "triton")


class FastEnsemble:
    """All members of an ensemble in one call; see the module docstring for what is applied where.

    ``dtype``: activation dtype (default bf16 on CUDA, fp32 on CPU). ``channels_last``: use
    ``channels_last_3d`` (default on CUDA). ``group``: stack members of matching architecture
    into grouped convs (default off: on an H100 cuDNN's grouped 3D convs made 5 stacked members
    2x slower than running them in turn). ``compile``: ``torch.compile`` the whole forward once (default off). ``cuda_graphs``: replay a captured graph per input shape (default on CUDA).
    ``chunk``: largest batch handed to the kernels at once (bounds memory; None = whole batch).
    ``backend``: ``"torch"`` (cuDNN / CPU convolutions, the options above), ``"triton"`` (our
    kernels in :mod:`naslung.ensemble.kernels` on padded channels-last buffers; CUDA, or CPU under
    ``TRITON_INTERPRET=1`` for tests) or ``"auto"`` (Triton on CUDA when it is installed).
    ``stream_max_batch``: on CUDA with the Triton backend, batches up to this size run each
    member on its own CUDA stream (small batches leave most of the card idle, so members overlap);
    larger batches run members in turn, which keeps peak memory at one member's (0 = never; default
    1024: streams still gained 6 % at 1024 on an H200 once cuDNN ran the few-channel convs).
    ``fold_max_cin``: with the Triton backend, 3x3x3 convs with at most this many input channels
    run as x-folded cuDNN 2D convs (:mod:`naslung.ensemble.fold`), and so do convs on rows of at
    most 8 voxels with 32+ channels (0 = never fold). ``xrun``: let 3x3x3 stride-1 convs on rows
    of at most 16 voxels use the 2-voxel-row kernel. Which conv runs how: :func:`plan_conv`.
    ``fuse_shortcut``: a residual block's 1x1 shortcut runs in the epilogue of the conv closing
    the block when that conv is folded or on 2-voxel rows (no launch, no buffer of its own).
    ``raw_cbam``: the stem's CBAM reads its folded conv's raw output, adding bias and ReLU as it
    loads (the conv's epilogue pass is skipped). ``fold_unbordered``: a buffer read only by a
    folded conv is written without x border (:meth:`TritonMember.tail`).
    """

    def __init__(self, ensemble: nn.Module, device: str | torch.device | None = None, *,
                 dtype: torch.dtype | None = None, channels_last: bool | None = None, group: bool = False,
                 compile: bool | None = None, cuda_graphs: bool | None = None,
                 compile_mode: str | None = None, chunk: int | None = None,
                 direct_max_cin: int | None = None, backend: str = "auto",
                 stream_max_batch: int = 1024, fold_max_cin: int = 8, xrun: bool = True,
                 fuse_shortcut: bool = True, raw_cbam: bool = True, fold_unbordered: bool = True) -> None:
        if device is None:
            device = next(ensemble.parameters()).device
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        if chunk is not None and chunk < 1:
            raise ValueError(f"chunk must be positive, got {chunk}")
        self.chunk = chunk
        self.dtype = dtype or (torch.bfloat16 if cuda else torch.float32)
        self.channels_last = cuda if channels_last is None else bool(channels_last)
        self.rule, self.weights = ensemble.rule, ensemble.weights
        self.member_names, self.spec = list(ensemble.member_names), ensemble.spec
        self.manifest, self.configs = ensemble.manifest, list(getattr(ensemble, "configs", []))

        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        auto = backend == "auto"
        if auto:
            backend = "triton" if cuda and triton_backend_usable(self.device)[0] else "torch"
        elif backend == "triton":
            ok, why = triton_backend_usable(self.device)
            if not ok:
                raise ValueError(why)
        self.fold_max_cin, self.xrun = int(fold_max_cin), bool(xrun)
        self.fuse_shortcut = bool(fuse_shortcut)
        self.raw_cbam, self.fold_unbordered = bool(raw_cbam), bool(fold_unbordered)
        folded = [fold_bn(m).to(self.device) for m in ensemble.models]
        self._shared_stem: _SharedStem | None = None
        if backend == "triton":
            try:
                self.groups = self._triton_groups(folded)
            except _Unsupported as e:
                if not auto:
                    raise ValueError(f"the Triton backend cannot run these members ({e})") from None
                log.info("Triton backend unsupported for these members (%s): using the torch backend", e)
                backend = "torch"
        if backend == "torch":
            self.groups = self._torch_groups(folded, group)
        else:
            self.channels_last = False
        self.backend = backend
        order = [i for idx, _ in self.groups for i in idx]
        self._inverse = torch.tensor([order.index(i) for i in range(len(order))], device=self.device)
        log.info("fast ensemble: %d members in %d group(s) %s on %s (%s backend, %s, channels_last=%s)", len(order),
                 len(self.groups), [len(i) for i, _ in self.groups], self.device, backend, self.dtype,
                 self.channels_last)

        if compile is None:
            # Off by default: on an H100 compiling (without direct small convs) gained only ~9% at
            # batch 1024, and the compiled + CUDA-graph path is not yet validated there.
            compile = False
        self.compiled = bool(compile)
        # Tiny-channel convs as fused slice sums: opt-in (fast once compiled, but slow to compile).
        self.direct_max_cin = 0 if direct_max_cin is None else int(direct_max_cin)
        for _, net in self.groups:  # torch-backend modules only; Triton members have none
            for mod in net.modules():
                if isinstance(mod, _GConv):
                    mod.direct_max_cin = self.direct_max_cin
                elif isinstance(mod, _GCBAM):
                    mod.direct = self.direct_max_cin >= 2
        self._fn = self._forward
        if self.compiled:
            self._fn = torch.compile(self._forward, mode=compile_mode, dynamic=False)
        self.cuda_graphs = cuda if cuda_graphs is None else bool(cuda_graphs and cuda)
        self.stream_max_batch = int(stream_max_batch)
        self._streams = ([torch.cuda.Stream(self.device) for _ in self.groups]
                         if cuda and self._shared_stem is not None and self.stream_max_batch > 0 else [])
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}

    def _triton_groups(self, folded: list[nn.Module]) -> list[tuple[list[int], nn.Module]]:
        """One member per group (the kernels fill the card at any useful batch size); with several
        members, their first convs -- all reading the one input channel -- run as one."""
        groups = [([i], TritonMember(m, self.dtype, self.fold_max_cin, self.xrun, self.fuse_shortcut, self.raw_cbam,
                                     self.fold_unbordered))
                  for i, m in enumerate(folded)]
        if len(groups) > 1:
            try:
                self._shared_stem = _SharedStem([net.stem0_conv for _, net in groups], self.dtype)
            except _Unsupported as e:
                log.info("first convs run per member: %s", e)
        return groups

    def _torch_groups(self, folded: list[nn.Module], group: bool) -> list[tuple[list[int], nn.Module]]:
        """Members of one architecture stacked when ``group``, else one per group; cast and laid out."""
        keys: dict[tuple, list[int]] = {}
        for i, m in enumerate(folded):
            keys.setdefault(architecture_key(m) if group else (i,), []).append(i)
        groups = []
        for idx in keys.values():
            net = GroupedMembers([folded[i] for i in idx])
            net = net.to(device=self.device, dtype=self.dtype).eval()
            net.head.float()  # heads (and CBAM gate MLPs, cast in forward) stay fp32
            if self.channels_last:
                for p in net.parameters():
                    if p.dim() == 5:
                        p.data = p.data.contiguous(memory_format=torch.channels_last_3d)
            groups.append((idx, net))
        return groups

    def __len__(self) -> int:
        return len(self.member_names)

    @property
    def version(self) -> str:
        return str(self.manifest.get("version", "unsaved"))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend == "triton":
            with _cudnn_benchmark():  # folded convs: fixed shapes per captured graph, so tune once
                return self._forward_members(x)
        return self._forward_members(x)

    def _forward_members(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        if self._shared_stem is not None:
            nets = [net for _, net in self.groups]
            xb = 0 if all(net.stem_reads_unbordered(x.shape[-1]) for net in nets) else 1
            members = list(zip(nets, self._shared_stem(x, xb)))
            if self._streams and x.shape[0] <= self.stream_max_batch:
                outs = self._on_streams(members, xb)
            else:
                outs = [net.tail(h0, xb) for net, h0 in members]
        else:
            outs = [net(x) for _, net in self.groups]
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)
        return out.index_select(0, self._inverse)

    def _on_streams(self, members: list, x_border: int) -> list[torch.Tensor]:
        """Each member's tail on its own stream, forked from and joined back into the current one
        (the pattern CUDA-graph capture accepts)."""
        main = torch.cuda.current_stream(self.device)
        outs = []
        for stream, (net, h0) in zip(self._streams, members):
            stream.wait_stream(main)
            with torch.cuda.stream(stream):
                out = net.tail(h0, x_border)
            if not torch.cuda.is_current_stream_capturing():  # a captured graph keeps its own pool
                out.record_stream(main)  # freed only after the main stream has used it
            outs.append(out)
        for stream in self._streams:
            main.wait_stream(stream)
        return outs

    def _graph_call(self, x: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), x.dtype)
        if key not in self._graphs:
            static_x = x.clone()
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm up (compiles / autotunes) outside the capture
                    self._fn(static_x)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._fn(static_x)
            self._graphs[key] = (graph, static_x, static_out)
        graph, static_x, static_out = self._graphs[key]
        static_x.copy_(x)
        graph.replay()
        return static_out.clone()

    @torch.inference_mode()
    def member_proba(self, x: torch.Tensor) -> torch.Tensor:
        """(M, N, 2) fp32 member probabilities on normalised input (N, 1, S, S, S)."""
        x = x.to(self.device)
        if x.dim() != 5 or x.shape[1] != 1:
            raise ValueError(f"expected input (N, 1, D, H, W), got {tuple(x.shape)}")
        call = self._graph_call if self.cuda_graphs else self._fn
        if self.chunk is None or x.shape[0] <= self.chunk:
            return call(x)
        return torch.cat([call(part) for part in x.split(self.chunk)], dim=1)

    @torch.inference_mode()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 2) probabilities after the ensemble's combination rule."""
        return combine(self.member_proba(x), self.rule, self.weights)

    __call__ = predict_proba


@contextlib.contextmanager
def _cudnn_benchmark():
    """cuDNN algorithm search on, for the duration (restores the caller's setting)."""
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True
