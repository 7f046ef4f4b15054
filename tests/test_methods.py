"""Peer methods on the tiny generator: budgets, invariants, determinism."""

import numpy as np
import pytest
import torch

from scoremix_ray.config import Config
from scoremix_ray.core.generation import render_unit
from scoremix_ray.core.methods import METHODS, PlanContext, RenderContext, get_method
from scoremix_ray.core.methods.common import half_split
from scoremix_ray.core.methods.diffii import invert, regenerate, slerp
from scoremix_ray.core.selection.strategies import Selection
from scoremix_ray.foundations.errors import ScoreMixError

SEL = Selection("t", np.array([[0, 3], [1, 2]]), np.zeros(2))


def _cfg(**generation):
    return Config.model_validate(
        {
            "data": {"image_size": 8},
            "sampler": {"steps": 12},
            "selection": {"count": 2},
            "generation": {"per_tuple": 6, **generation},
        }
    )


def _ctx(tiny_generator, cfg, recognizer_dir=None):
    net, guide, split, _ = tiny_generator
    return RenderContext(cfg, net, guide, _split=split, recognizer_dir=recognizer_dir)


def test_every_method_has_the_same_budget_and_is_deterministic(tiny_generator, tiny_recognizer, tmp_path, monkeypatch):
    """... and a label-preserving method reads only the source rows it renders, never the whole store."""
    from scoremix_ray.core.data import ImageStore, Split

    get_method("scoremix")
    assert set(METHODS) == {"scoremix", "plain", "mixup", "cutmix", "diffusemix", "diffcoremix", "diffii"}
    tiny_generator[2].save(tmp_path / "data" / "split.npz")
    net, guide, _, _ = tiny_generator
    split = Split.load(tmp_path / "data" / "split.npz")  # images on disk, as the generation actors see them
    taken = []
    monkeypatch.setattr(ImageStore, "__array__", lambda *a, **k: pytest.fail("a method read the whole store"))
    monkeypatch.setattr(ImageStore, "_read_range", lambda *a, **k: pytest.fail("a method read a range of the store"))
    real_take = ImageStore.take
    monkeypatch.setattr(ImageStore, "take", lambda self, rows: taken.append(len(rows)) or real_take(self, rows))
    cfg = _cfg()
    for name, method in METHODS.items():
        plan = method.plan(PlanContext(cfg, 5, SEL, split))
        assert len(plan) == 12, name  # selection.count x per_tuple, whatever the method
        labels = plan.column("label").to_numpy()
        assert (labels >= 5).all() if method.new_classes else (labels < 5).all()
        needs = method.needs  # the context holds only what the method declares: the declaration is complete
        ctx = RenderContext(
            cfg,
            net if "generator" in needs else None,
            guide if "guide" in needs else None,
            tmp_path / "data" / "split.npz" if "real_images" in needs else None,
            tiny_recognizer if "recognizer" in needs else None,
        )
        taken.clear()
        a = render_unit(ctx, method, plan, 0, 0, 4, tmp_path / f"{name}-a")
        assert sum(taken) <= 2 * 4, (name, taken)  # a unit of 4 rows reads at most each row and its partner
        b = render_unit(ctx, method, plan, 0, 0, 4, tmp_path / f"{name}-b")
        assert a["rows"] == b["rows"] == 4
        assert (tmp_path / f"{name}-a/shards/unit-000000.parquet").read_bytes() == (
            tmp_path / f"{name}-b/shards/unit-000000.parquet"
        ).read_bytes(), name


def test_actors_load_only_what_the_method_declares(tiny_generator, tiny_recognizer, tmp_path):
    """The generation actor (Ray Data's callable class, built here without Ray) reads `Method.needs`: mixup
    loads no network (its generator folder does not even exist), ScoreMix no real images or recognizer."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from scoremix_ray.runtime.generate import UnitRenderer

    _, _, split, gen_dir = tiny_generator
    split.save(tmp_path / "split.npz")
    cfg = Config.model_validate(
        {"data": {"image_size": 8}, "sampler": {"guidance": "autoguidance"}, "generation": {"actor_gpus": 0}}
    )
    loaded = {}
    for name in ("mixup", "scoremix", "diffcoremix"):
        (tmp_path / name).mkdir()
        pq.write_table(pa.table({"label": [0]}), tmp_path / name / "plan.parquet")
        conf = {
            "config": cfg.model_dump(mode="json"),
            "method": name,
            "out_dir": str(tmp_path / name),
            "generator_dir": str(gen_dir if name != "mixup" else tmp_path / "no-generator"),
            "split_path": str(tmp_path / "split.npz"),
            "recognizer_dir": str(tiny_recognizer),
        }
        ctx = UnitRenderer(conf).ctx
        loaded[name] = [
            k
            for k, v in (
                ("generator", ctx.net),
                ("guide", ctx.guide),
                ("real_images", ctx.split_path),
                ("recognizer", ctx.recognizer_dir),
            )
            if v is not None
        ]
    assert loaded == {
        "mixup": ["real_images"],
        "scoremix": ["generator", "guide"],
        "diffcoremix": ["generator", "guide", "real_images", "recognizer"],
    }
    with pytest.raises(ScoreMixError, match="uses 'real_images' but was not given it"):
        _ = RenderContext(cfg, None).split


def test_cutmix_records_the_share_of_the_box_it_pasted():
    """On 7x7 images (boxes of whole pixels cannot match lambda exactly) with one grey level per class, the
    labelled image's share of pixels is the weight the plan recorded, and it is the larger share."""
    from types import SimpleNamespace

    labels = np.repeat(np.arange(4), 6)
    images = np.broadcast_to(((labels + 1) * 50).astype(np.uint8)[:, None, None, None], (24, 7, 7, 1)).copy()
    split = SimpleNamespace(train=SimpleNamespace(images=images, labels=labels))
    method, cfg = get_method("cutmix"), _cfg()
    plan = method.plan(PlanContext(cfg, 4, None, split))
    out = method.render(RenderContext(cfg, None, _split=split), plan)
    own = (out == images[plan.column("source").to_numpy()]).mean((1, 2, 3))
    kept = np.array(plan.column("weights").to_pylist())[:, 0]
    assert np.allclose(own, kept, rtol=0, atol=1e-12) and (kept >= 0.5).all() and (kept < 1).any()
    assert (plan.column("label").to_numpy() == labels[plan.column("source").to_numpy()]).all()


def test_half_split_keeps_each_half():
    a, b = np.full((8, 8, 1), 200, np.uint8), np.full((8, 8, 1), 10, np.uint8)
    out = half_split(a, b, vertical=True, a_first=True, ramp=2)
    assert (out[:, :3] == 200).all() and (out[:, 5:] == 10).all() and 10 < out[0, 4, 0] < 200
    out = half_split(a, b, vertical=False, a_first=False, ramp=2)
    assert (out[:3] == 10).all() and (out[5:] == 200).all()


def test_diffusemix_halves_come_from_original_and_counterpart(tiny_generator):
    from scoremix_ray.core.methods.common import images_of, renoise_and_denoise

    cfg = _cfg(fractal_weight=0.0)  # no fractal: the two halves are visible as they are
    method = get_method("diffusemix")
    plan = method.plan(PlanContext(cfg, 5, None, tiny_generator[2])).slice(0, 6)
    ctx = _ctx(tiny_generator, cfg)
    out = method.render(ctx, plan)
    orig = images_of(ctx, plan, "source")
    gen = renoise_and_denoise(ctx, orig, plan.column("label").to_numpy(), plan.column("seed").to_pylist(), 0.5)
    for o, g, y in zip(orig, gen, out):
        halves = [
            (y[:, :3], y[:, 5:], o[:, :3], g[:, 5:]),
            (y[:, :3], y[:, 5:], g[:, :3], o[:, 5:]),
            (y[:3], y[5:], o[:3], g[5:]),
            (y[:3], y[5:], g[:3], o[5:]),
        ]
        assert any(np.array_equal(p, q) and np.array_equal(r, t) for p, r, q, t in halves)
    assert not np.array_equal(gen, orig)


def test_diffcoremix_filter_drops_off_class_images(tiny_generator, tiny_recognizer):
    from scoremix_ray.core.methods.diffcoremix import keep_mask

    split = tiny_generator[2]
    ctx = _ctx(tiny_generator, _cfg(filter_tau=0.6), tiny_recognizer)
    zeros = split.train.images[split.train.labels == 0][:20]
    cos_in, kept_in = keep_mask(ctx, zeros, np.zeros(20, int))
    cos_off, kept_off = keep_mask(ctx, zeros, np.ones(20, int))  # class-0 images claimed as class 1
    assert kept_in.mean() > 0.8 and kept_off.mean() < 0.2 and cos_in.mean() > cos_off.mean()


def test_diffcoremix_redraws_before_it_settles(tiny_generator, tiny_recognizer):
    """Rows whose candidates all fail the filter get fresh ones (filter_rounds); none is ever the real image
    itself, and the stats give the effective budget (rows whose candidate passed)."""
    method = get_method("diffcoremix")
    rows = method.plan(PlanContext(_cfg(), 5, None, tiny_generator[2])).slice(0, 4)
    stats = {}
    for tau, rounds in ((-1.0, 3), (1.0, 1), (1.0, 3)):  # all pass at once; none passes (cosine < 1), 1 or 3 rounds
        cfg = _cfg(filter_tau=tau, filter_rounds=rounds, filter_candidates=2)
        out, stats[tau, rounds] = method.render(_ctx(tiny_generator, cfg, tiny_recognizer), rows)
        assert len(out) == 4
    assert stats[-1.0, 3] == {"candidates": 8, "discarded": 0, "rows_passing_filter": 4, "rows_below_tau": 0}
    assert stats[1.0, 1]["candidates"] == 8 and stats[1.0, 3] == {
        "candidates": 24,
        "discarded": 24,
        "rows_passing_filter": 0,
        "rows_below_tau": 4,
    }


def test_slerp_endpoints_and_inversion_round_trip(tiny_generator):
    a, b = torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8)
    assert torch.allclose(slerp(a, b, torch.zeros(3)), a, atol=1e-6)
    assert torch.allclose(slerp(a, b, torch.ones(3)), b, atol=1e-6)
    mid = slerp(a, b, torch.full((3,), 0.5))
    assert torch.allclose(mid.flatten(1).norm(dim=1), a.flatten(1).norm(dim=1), rtol=0.2)  # stays on the shell
    split = tiny_generator[2]
    cfg = _cfg(guided_fraction=0.0)
    cfg.sampler.steps = 32
    ctx = _ctx(tiny_generator, cfg)
    images, labels = split.train.images[:8], split.train.labels[:8]
    k = 16  # about half-way up the trajectory
    back = regenerate(ctx, invert(ctx, images, labels, k), labels, k)
    err = np.abs(back.astype(float) - images.astype(float)).mean()
    other = np.abs(images[::-1].astype(float) - images.astype(float)).mean()
    assert err < 0.25 * other, (err, other)  # ODE inversion then regeneration comes back close


def test_partner_draws_are_uniform_over_the_right_pool():
    from collections import Counter

    from scoremix_ray.core.methods.common import draw_partner

    labels = np.array([2, 0, 1, 0, 2, 0, 1, 3])
    by_class = np.argsort(labels, kind="stable")
    grouped = labels[by_class]
    same = Counter(draw_partner(grouped, by_class, 3, 0, seed, "same") for seed in range(3000))
    assert set(same) == {1, 5} and min(same.values()) > 1350  # the other two 0s, ~1500 each, never itself
    other = Counter(draw_partner(grouped, by_class, 3, 0, seed, "other") for seed in range(5000))
    assert set(other) == {0, 2, 4, 6, 7} and min(other.values()) > 880  # every non-0 image, ~1000 each
    assert draw_partner(grouped, by_class, 7, 3, 1, "same") == 7  # alone in its class: itself
