"""CLIT model behaviour beyond golden parity: neighbourhood padding, chunking, shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from clit.runtime.geometry import coord_grid, nearest_index, plan_cascade  # noqa: E402
from clit.train import CLIT  # noqa: E402

ARGS = {
    "encoder_spec": {"name": "edsr-baseline", "args": {"n_resblocks": 1, "n_feats": 8, "no_upsampling": True}},
    "imnet_spec": {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [16, 16], "act": "gelu"}},
    "pb_spec": {"name": "posenc", "args": {"posenc_type": "sinusoid", "posenc_scale": 10, "enc_dims": 64}},
    "base_dim": 16,
    "head": 4,
    "r": 3,
    "imnet_num": 2,
    "conv_num": 2,
}


def small_model(seed=0, **over):
    torch.manual_seed(seed)
    model = CLIT(**{**ARGS, **over}).eval()
    with torch.no_grad():  # random biases too, so that every path matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_one_branch_model_is_lit_and_limits_scale():
    model = small_model(imnet_num=1, conv_num=1)
    lr = torch.rand(1, 3, 6, 7)
    assert model.upscale(lr, scale=4).shape == (1, 3, 24, 28)
    with pytest.raises(ValueError, match="1 branch"):
        model.upscale(lr, scale=4.5)


def _reference_query(model, k, maps, coord, cell):
    """Independent numpy re-statement of one branch's query, point by point."""
    q_map, k_map, v_map = (m[0].numpy().astype(np.float64) for m in maps)
    c, h, w = v_map.shape
    r, heads = model.r, model.head
    dh = c // heads
    bvals = model.pb_encoder.b_vals.numpy().astype(np.float64)
    pw, pb = (t.detach().numpy().astype(np.float64) for t in (model.pb_encoder.proj.weight, model.pb_encoder.proj.bias))
    out = []
    for y, x in coord:
        # bilinear q, zero outside
        fy, fx = (y + 1) * h / 2 - 0.5, (x + 1) * w / 2 - 0.5
        y0, x0 = math.floor(fy), math.floor(fx)
        q = np.zeros(c)
        for yy, wy in ((y0, 1 - (fy - y0)), (y0 + 1, fy - y0)):
            for xx, wx in ((x0, 1 - (fx - x0)), (x0 + 1, fx - x0)):
                if 0 <= yy < h and 0 <= xx < w:
                    q += wy * wx * q_map[:, yy, xx]
        cy, cx = int(nearest_index(np.float32(y), h)), int(nearest_index(np.float32(x), w))
        feats, keys, rels = [], [], []
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                ny, nx = cy + dy, cx + dx
                inside = 0 <= ny < h and 0 <= nx < w
                keys.append(k_map[:, ny, nx] if inside else np.zeros(c))
                feats.append(v_map[:, ny, nx] if inside else np.zeros(c))
                centre = (-1 + (2 * ny + 1) / h, -1 + (2 * nx + 1) / w)  # also outside the map
                rels.append(((y - centre[0]) * h, (x - centre[1]) * w))
        keys, feats, rels = np.array(keys), np.array(feats), np.array(rels)
        phase = rels @ bvals.T
        bias = np.concatenate([np.sin(phase), np.cos(phase)], -1) @ pw.T + pb  # 49, heads
        logits = np.einsum("hd,nhd->nh", q.reshape(heads, dh), keys.reshape(-1, heads, dh)) / math.sqrt(dh) + bias
        attn = np.exp(logits - logits.max(0))
        attn /= attn.sum(0)
        weighted = (feats.reshape(-1, heads, dh) * attn[:, :, None]).reshape(-1)
        mlp_in = np.concatenate([weighted, cell * np.array([h, w])])
        x_t = torch.from_numpy(mlp_in[None].astype(np.float32))
        with torch.no_grad():
            out.append(model.imnets[k](x_t)[0].numpy())
    return np.array(out)


@pytest.mark.parametrize("k", [0, 1])
def test_query_zero_pads_neighbours_at_corners_and_edges(k):
    model = small_model()
    lr = torch.rand(1, 3, 9, 11)
    plan = plan_cascade((9, 11), scale=6)
    with torch.no_grad():
        feat = model.encode(lr)
        x = feat if k == 0 else model.branch_input(feat, plan.grids[k])
        maps = model.branch_maps(x, k)
    grid = coord_grid(*plan.out_size)
    picks = [(0, 0), (0, -1), (-1, 0), (-1, -1), (0, 20), (30, 0), (27, 33)]  # corners, edges, inside
    coord = np.array([grid[i, j] for i, j in picks], dtype=np.float32)
    cell = plan.cell.astype(np.float64)
    with torch.no_grad():
        got = model.query(k, maps, torch.from_numpy(coord)[None], torch.from_numpy(plan.cell)[None])[0].numpy()
    ref = _reference_query(model, k, maps, coord.astype(np.float64), cell)
    np.testing.assert_allclose(got, ref, atol=2e-5, rtol=0)


def test_chunk_size_does_not_change_result_and_bounds_query_size():
    model = small_model()
    lr = torch.rand(2, 3, 10, 13)
    seen = []
    original = model.query

    def recording_query(k, maps, coord, cell):
        seen.append(coord.shape[1])
        return original(k, maps, coord, cell)

    model.query = recording_query
    full = model.upscale(lr, scale=5.3, chunk=10**9)
    assert max(seen) == 53 * 69
    for chunk in (1013, 64, 7):
        seen.clear()
        out = model.upscale(lr, scale=5.3, chunk=chunk)
        assert max(seen) <= chunk
        assert torch.allclose(out, full, atol=1e-6, rtol=0)


def test_upscale_equals_one_shot_forward_anisotropic():
    model = small_model()
    lr = torch.rand(1, 3, 7, 12)
    plan = model.plan((7, 12), scale=(6.5, 2.25))
    assert plan.n_branches == 2 and plan.out_size == (46, 27)
    out = model.upscale(lr, scale=(6.5, 2.25), chunk=333)
    coord = torch.from_numpy(coord_grid(*plan.out_size)).view(1, -1, 2)
    with torch.no_grad():
        preds = model(lr, plan.grids, coord, torch.from_numpy(plan.cell)[None])
    assert len(preds) == 2
    ref = (preds[-1] * 0.5 + 0.5).view(1, 46, 27, 3).permute(0, 3, 1, 2)
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, atol=1e-6, rtol=0)


def test_isotropic_tuple_equals_scalar_and_exact_size():
    model = small_model()
    lr = torch.rand(1, 3, 8, 9)
    a = model.upscale(lr, scale=3.3)
    b = model.upscale(lr, scale=(3.3, 3.3))
    assert torch.equal(a, b)
    c = model.upscale(lr, size=(40, 17))
    assert c.shape == (1, 3, 40, 17) and torch.isfinite(c).all()


def test_deterministic_and_batch_independent():
    model = small_model()
    lr = torch.rand(3, 3, 8, 10)
    a = model.upscale(lr, scale=7)
    b = model.upscale(lr, scale=7)
    assert torch.equal(a, b)
    single = model.upscale(lr[1:2], scale=7)
    assert torch.allclose(a[1:2], single, atol=1e-6, rtol=0)


def test_zero_decoders_give_the_bilinear_skip_and_output_is_not_clamped():
    model = small_model()
    with torch.no_grad():  # zero the decoders: the output must be the bilinear skip exactly
        for net in model.imnets:
            for p in net.parameters():
                p.zero_()
    lr = torch.rand(1, 3, 6, 6)
    out = model.upscale(lr, scale=2)
    ref = torch.nn.functional.interpolate(lr, size=(12, 12), mode="bilinear", align_corners=False)
    assert torch.allclose(out, ref, atol=1e-6)
    with torch.no_grad():  # a constant residual of +2 (normalised) lifts the output by 1
        model.imnets[0].layers[-1].bias.fill_(2.0)
    lifted = model.upscale(lr, scale=2)
    assert torch.allclose(lifted, ref + 1.0, atol=1e-6)
    assert lifted.max() > 1.0  # not clamped


@pytest.mark.parametrize("bad", [dict(scale=0), dict(scale=float("nan")), dict(scale=-2), dict(scale=70)])
def test_bad_scales(bad):
    model = small_model()
    with pytest.raises(ValueError):
        model.upscale(torch.rand(1, 3, 5, 5), **bad)


def test_bad_inputs():
    model = small_model()
    with pytest.raises(ValueError, match="B, 3"):
        model.upscale(torch.rand(3, 5, 5), scale=2)
    with pytest.raises(TypeError):
        model.upscale(torch.zeros(1, 3, 5, 5, dtype=torch.uint8), scale=2)


def test_swinir_padding_protocol():
    """SwinIR input is mirror-padded to a window multiple (at least one row/column), the
    padded image upscaled, and the top-left output cropped, as the official evaluation."""
    swin = {"name": "swinir", "args": {"no_upsampling": True, "embed_dim": 12, "depths": [2], "num_heads": [3],
                                       "window_size": 4, "img_size": 16, "drop_path_rate": 0.0}}
    model = small_model(encoder_spec=swin, imnet_num=1, conv_num=1)
    lr = torch.rand(1, 3, 7, 8)
    out = model.upscale(lr, scale=2.5)
    assert out.shape == (1, 3, round(7 * 2.5), 20)
    ph, pw = 8, 12  # (7 // 4 + 1) * 4, (8 // 4 + 1) * 4: a multiple of 4 still gets padded
    padded = torch.cat([lr, lr.flip(2)], 2)[..., :ph, :]
    padded = torch.cat([padded, padded.flip(3)], 3)[..., :pw]
    assert torch.equal(padded[..., :7, :8], lr)
    full = model._upscale_plan(padded, plan_cascade((ph, pw), scale=2.5), chunk=1000)
    assert full.shape == (1, 3, 20, 30)
    assert torch.equal(out, full[..., :18, :20])
