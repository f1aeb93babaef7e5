import pytest
import torch
from torch import nn

from naslung.ensemble.engine import FastEnsemble, GroupedMembers, architecture_key, fold_bn, fold_conv_bn, plan_conv
from naslung.ensemble.naive import Ensemble


def test_fold_conv_bn_is_exact_in_float64():
    torch.manual_seed(0)
    conv = nn.Conv3d(3, 5, 3, padding=1, bias=True).double()
    bn = nn.BatchNorm3d(5).double().eval()
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.2, 3)
    bn.weight.data.uniform_(0.5, 2)
    bn.bias.data.uniform_(-1, 1)
    x = torch.randn(2, 3, 6, 6, 6, dtype=torch.double)
    torch.testing.assert_close(fold_conv_bn(conv, bn)(x), bn(conv(x)), rtol=0, atol=1e-12)


def test_fold_bn_model_matches_and_removes_every_batchnorm(members, crops16):
    for _, model in members:
        folded = fold_bn(model)
        assert not any(isinstance(m, nn.BatchNorm3d) for m in folded.modules())
        assert any(isinstance(m, nn.BatchNorm3d) for m in model.modules())  # original untouched
        with torch.inference_mode():
            torch.testing.assert_close(folded(crops16), model(crops16), rtol=1e-5, atol=1e-5)


def test_architecture_key_groups_only_identical_networks(members):
    keys = [architecture_key(fold_bn(m)) for _, m in members]
    assert keys[0] == keys[1]
    assert len(set(keys)) == 4


@pytest.mark.parametrize("group", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("rule,weights", [("mean", None), ("vote", None), ("weighted", [.1, .2, .3, .25, .15])])
def test_engine_equals_naive_ensemble_fp32(members, crops16, group, channels_last, rule, weights):
    ens = Ensemble([m for _, m in members], names=[c.name for c, _ in members], rule=rule, weights=weights)
    fast = FastEnsemble(ens, "cpu", group=group, channels_last=channels_last, compile=False)
    assert fast.dtype == torch.float32 and not fast.cuda_graphs
    assert [len(i) for i, _ in fast.groups] == ([2, 1, 1, 1] if group else [1] * 5)
    ref_m, got_m = ens.member_proba(crops16), fast.member_proba(crops16)
    assert got_m.shape == (5, 5, 2) and got_m.dtype == torch.float32
    torch.testing.assert_close(got_m, ref_m, rtol=0, atol=2e-6)
    if rule != "vote":  # votes are a step function; equal member outputs give equal votes anyway
        torch.testing.assert_close(fast.predict_proba(crops16), ens.predict_proba(crops16), rtol=0, atol=2e-6)
    else:
        assert torch.equal(fast.predict_proba(crops16), ens.predict_proba(crops16))


def test_engine_batch_one_and_chunking(members, crops16):
    ens = Ensemble([m for _, m in members])
    fast = FastEnsemble(ens, "cpu", chunk=2)
    torch.testing.assert_close(fast.member_proba(crops16), ens.member_proba(crops16), rtol=0, atol=2e-6)
    torch.testing.assert_close(fast.predict_proba(crops16[:1]), ens.predict_proba(crops16[:1]), rtol=0, atol=2e-6)
    with pytest.raises(ValueError, match="expected input"):
        fast.predict_proba(crops16[:, 0])


def test_engine_bf16_on_cpu_stays_close(members, crops16):
    ens = Ensemble([m for _, m in members])
    fast = FastEnsemble(ens, "cpu", dtype=torch.bfloat16)
    assert (fast.predict_proba(crops16) - ens.predict_proba(crops16)).abs().max() < 1e-2


def test_grouped_members_refuses_mixed_architectures(members):
    with pytest.raises(ValueError, match="cannot group"):
        GroupedMembers([fold_bn(members[0][1]), fold_bn(members[2][1])])
    with pytest.raises(ValueError, match="cannot group"):
        GroupedMembers([members[0][1]])  # BatchNorm not folded


def test_ensemble_fast_shortcut_keeps_metadata(members, crops16):
    ens = Ensemble([m for _, m in members], names=list("abcde"), manifest={"version": "v1"})
    fast = ens.fast("cpu")
    assert fast.member_names == list("abcde") and fast.version == "v1" and len(fast) == 5
    torch.testing.assert_close(fast(crops16), ens.predict_proba(crops16), rtol=0, atol=2e-6)


@pytest.mark.parametrize("stride,cin", [(1, 1), (1, 4), (2, 4), (1, 2)])
def test_direct_conv3d_equals_conv3d(stride, cin):
    from naslung.ensemble.engine import direct_conv3d

    g = torch.Generator().manual_seed(cin)
    x = torch.randn(2, cin, 9, 8, 7, generator=g)
    w = torch.randn(3, cin, 3, 3, 3, generator=g)
    b = torch.randn(3, generator=g)
    ref = torch.nn.functional.conv3d(x, w, b, stride, 1)
    torch.testing.assert_close(direct_conv3d(x, w, b, (stride,) * 3, (1, 1, 1)), ref, rtol=1e-5, atol=1e-5)


def test_engine_direct_small_convs_match(members, crops16):
    ens = Ensemble([m for _, m in members])
    fast = FastEnsemble(ens, "cpu", direct_max_cin=4)
    torch.testing.assert_close(fast.member_proba(crops16), ens.member_proba(crops16), rtol=0, atol=2e-6)


@pytest.mark.parametrize("cin, cout, ks, stride, width, expect", [
    (4, 4, 3, 1, 32, "fold"),  # the stem: few input channels fold at any width
    (4, 4, 3, 2, 32, "fold"),
    (4, 8, 3, 1, 16, "fold"),
    (8, 16, 3, 1, 16, "xrun"),  # 16 output channels: 2-voxel rows beat the fold
    (16, 16, 3, 1, 16, "xrun"),
    (16, 16, 3, 2, 16, "kernel"),  # strided: one-voxel rows
    (16, 32, 3, 1, 8, "xrun"),
    (32, 32, 3, 1, 8, "fold"),  # narrow rows, many channels: the fold wastes little
    (64, 128, 3, 1, 4, "fold"),
    (32, 32, 3, 2, 8, "kernel"),
    (16, 32, 1, 1, 16, "kernel"),  # 1x1 shortcuts
    (16, 16, 3, 1, 32, "kernel"),  # wide rows, many channels
])
def test_plan_conv_picks_the_measured_winner(cin, cout, ks, stride, width, expect):
    assert plan_conv(cin, cout, ks, stride, width) == expect


def test_plan_conv_switches():
    assert plan_conv(8, 16, 3, 1, 16, xrun=False) == "fold"
    assert plan_conv(16, 16, 3, 1, 16, xrun=False) == "kernel"
    assert plan_conv(4, 4, 3, 1, 32, fold_max_cin=0) == "kernel"
    assert plan_conv(64, 64, 3, 1, 4, fold_max_cin=0) == "xrun"
    assert plan_conv(64, 64, 3, 1, 4, fold_max_cin=0, xrun=False) == "kernel"
