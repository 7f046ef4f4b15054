"""The generator's training recipe at equal wall time (issue 30): EDM2's choices (Karras et al. 2024) that apply
to this network, one at a time and together, judged by the generator diagnostics beside their real references.

Variants (same network, steps, batch and data: the same training time, but edm2-x2):
  edm           EDM (2022): ln(sigma) ~ N(-1.2, 1.2^2), constant lr after warm-up, EMA decay 0.999 (warmed up)
  lr-decay      + inverse-square-root decay from generator.lr_decay_steps on (EDM2 eq. 9)
  noise         + EDM2's pixel-space noise levels: ln(sigma) ~ N(-0.8, 1.6^2) (its ImageNet-64 models)
  ema-0.05      + power-function EMA of relative std 0.05 (EDM2 sec. 3): shorter than EDM's, whose 0.999 decay
                warmed up over 1500 steps has a relative std of 0.091 (computed from its betas)
  ema-0.15      + power-function EMA of relative std 0.15: longer
  edm2          lr-decay and noise together (EMA as in edm: both power EMAs did worse)
  edm2-x2       edm2 trained twice as long (3000 steps): not equal time, how much is training length
  edm2-net      edm2's recipe on EDM2's own network (generator.network=edm2, issue 40): same steps and batch, so
                not quite equal time (benchmarks/network_throughput.py: 0.88x unet2d's images/s at 16 px)
  edm2-net-lr   the same at EDM2's learning-rate scale for its normalised weights (lr 1e-2; 2e-3 elsewhere)
  edm2-net-tref EDM2's own schedule too: lr 1e-2 decaying from its t_ref (70k images: ~1100 steps of 64)
  edm2-1970     the unet2d edm2 recipe for 1970 steps: edm2-net-tref's training time on this box (298 s / 227 s)
  edm2-net-tref-x2  edm2-net-tref for 3000 steps: twice the studies' compute, as edm2-x2 is for unet2d
  edm2-net-tref-4000  for 4000 steps: the moonshot's 15 minutes of this box's training
  sampler-18/32 the edm generator, its check made with 18 / 32 Heun steps instead of the config's 8
  <v>-snapguide the finalists (v = edm2-1970, edm2-net-tref at equal time; edm2-x2, edm2-net-tref-x2 at twice
                the compute) sampled with autoguidance (scale 2) by their EMA snapshot at a quarter of training
                (generator.guide.kind=snapshot)
  edm2-1970-snapguide-1.5/3/4  the same at guidance scales 1.5, 3 and 4
  <v>-guidenet  the same by a guide network of their own (kind=network): half their width, a quarter of their
                steps, trained as its own stage (its seconds counted in train_s: EDM2's autoguidance)
Each variant's generator stage is trained in this process on the study config's fold, scored by its quality check
(pixel classifier) and by the baseline recognizer of that fold (trained once, shared): identity accuracy, FD,
precision and recall in its embeddings, each with its real-image reference. Stages are cached in --out: a rerun
reads them. Ends with one JSON line {variant: {fold: figures}}.

    python benchmarks/generator_recipe.py [--config configs/study-glyphs-dose.yaml] [--folds 0] [--out runs]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

DECAY_FROM = 150  # steps: EDM2 decays from ~7% of training on (35k of 512k batches); 10% of 1500 here
# the recipe before issue 30 (EDM 2022), set explicitly: every variant changes it in one place or more
EDM = ["generator.p_mean=-1.2", "generator.p_std=1.2", "generator.lr_decay_steps=null", "generator.ema_std=null"]
LR_DECAY = [f"generator.lr_decay_steps={DECAY_FROM}"]
NOISE = ["generator.p_mean=-0.8", "generator.p_std=1.6"]
VARIANTS = {
    "edm": EDM,
    "lr-decay": [*EDM, *LR_DECAY],
    "noise": [*EDM, *NOISE],
    "ema-0.05": [*EDM, "generator.ema_std=0.05"],
    "ema-0.15": [*EDM, "generator.ema_std=0.15"],
    "edm2": [*EDM, *LR_DECAY, *NOISE],  # the defaults since issue 30
    "edm2-x2": [*EDM, *LR_DECAY, *NOISE, "generator.steps=3000"],  # twice the training: not equal time
    "edm2-net": [*EDM, *LR_DECAY, *NOISE, "generator.network=edm2"],
    "edm2-net-lr": [*EDM, *LR_DECAY, *NOISE, "generator.network=edm2", "generator.lr=0.01"],
    "edm2-1970": [*EDM, *LR_DECAY, *NOISE, "generator.steps=1970"],
    "edm2-net-tref": [*EDM, *NOISE, "generator.network=edm2", "generator.lr=0.01", "generator.lr_decay_steps=1100"],
    "edm2-net-tref-x2": [
        *EDM,
        *NOISE,
        "generator.network=edm2",
        "generator.lr=0.01",
        "generator.lr_decay_steps=1100",
        "generator.steps=3000",
    ],
    "edm2-net-tref-4000": [
        *EDM,
        *NOISE,
        "generator.network=edm2",
        "generator.lr=0.01",
        "generator.lr_decay_steps=1100",
        "generator.steps=4000",
    ],
}
# a trained generator (by default "edm"'s) sampled differently: is a shortfall the training's or the sampler's?
SAMPLER_PROBES = {"sampler-18": ["sampler.steps=18"], "sampler-32": ["sampler.steps=32"]}
GUIDED = ["sampler.guidance=autoguidance", "sampler.guidance_scale=2"]
GUIDE_NET = ["generator.guide.kind=network"]
GUIDE_PROBES = {  # name: (the variant whose generator is sampled, the sampler and guide settings)
    "edm2-1970-snapguide": ("edm2-1970", GUIDED),
    "edm2-1970-guidenet": (
        "edm2-1970",
        [
            *GUIDED,
            *GUIDE_NET,
            "generator.guide.overrides.steps=490",
            "generator.guide.overrides.block_out_channels=16,32,32",
        ],
    ),
    "edm2-net-tref-snapguide": ("edm2-net-tref", GUIDED),
    "edm2-x2-snapguide": ("edm2-x2", GUIDED),
    "edm2-net-tref-x2-snapguide": ("edm2-net-tref-x2", GUIDED),
    "edm2-net-tref-4000-snapguide": ("edm2-net-tref-4000", GUIDED),
    # the guidance scale: stronger guidance trades recall (diversity) for precision
    "edm2-1970-snapguide-1.5": ("edm2-1970", ["sampler.guidance=autoguidance", "sampler.guidance_scale=1.5"]),
    "edm2-1970-snapguide-3": ("edm2-1970", ["sampler.guidance=autoguidance", "sampler.guidance_scale=3"]),
    "edm2-1970-snapguide-4": ("edm2-1970", ["sampler.guidance=autoguidance", "sampler.guidance_scale=4"]),
    "edm2-net-tref-guidenet": (
        "edm2-net-tref",
        [*GUIDED, *GUIDE_NET, "generator.guide.overrides.steps=275", "generator.guide.overrides.edm2.channels=16"],
    ),
}
SHOWN = ("class_accuracy", "identity_accuracy", "fd", "precision", "recall")


def fold_config(config: Path, fold: int, out: Path, sets: list[str]):
    """(context, config) of one fold with `sets` on top, run in this process."""
    from scoremix_ray.config import load_config
    from scoremix_ray.runtime.context import RunContext

    ctx = RunContext(executor="process")
    return ctx, ctx.devices(load_config(config, [f"out_dir={out.resolve()}", f"data.split_seed={fold}", *sets]))


def measure(config: Path, fold: int, out: Path, sets: list[str]) -> dict:
    """One variant on one fold: its diagnostics and the generator stage's seconds (training + quality check)."""
    from scoremix_ray import pipeline

    ctx, cfg = fold_config(config, fold, out, sets)
    split, data_dir = pipeline.data_stage(cfg)
    t0 = time.perf_counter()
    gen_dir, quality = pipeline.generator_stage(ctx, cfg, data_dir)
    seconds = time.perf_counter() - t0
    rec_dir, _ = pipeline.recognizer_stage(ctx, cfg, split, data_dir)
    figures = pipeline.diagnostics_stage(ctx, cfg, data_dir, gen_dir, rec_dir)
    train = quality["train"]
    return {
        **{k: round(v, 4) for k, v in figures.items() if isinstance(v, float)},
        "train_s": round(train["step"] / train["steps_per_s"], 1),  # the last log interval's pace, x steps
        "stage_s": round(seconds, 1),  # 0-ish when the stage was cached
        "final_loss": round(train["loss"], 4),
        "dir": gen_dir.name,
    }


def probe_sampler(config: Path, fold: int, out: Path, sets: list[str], name: str, variant: str = "edm") -> dict:
    """The generator of `fold` trained by `variant` checked again under other sampler settings (with the guide
    network they may name, trained as its own stage), in a copy of its folder (the stage's check stays as it is)."""
    import shutil

    from scoremix_ray import pipeline

    ctx, cfg = fold_config(config, fold, out, VARIANTS[variant])
    split, data_dir = pipeline.data_stage(cfg)
    gen_dir = pipeline.GENERATOR.dir(cfg, {"data": data_dir})
    rec_dir = pipeline.BASELINE.dir(cfg, {"data": data_dir})
    probe = out / "recipe-probes" / f"{name}-fold{fold}"
    if not (probe / "figures.json").is_file():
        shutil.rmtree(probe, ignore_errors=True)
        shutil.copytree(gen_dir, probe, ignore=shutil.ignore_patterns("checkpoints", "ray_train", "mlflow_model"))
        _, probed = fold_config(config, fold, out, [*VARIANTS[variant], *sets])
        guide = pipeline.guide_stage(ctx, probed, data_dir)
        t0 = time.perf_counter()
        pixel = pipeline.generator_quality(probed, data_dir / "split.npz", probe, guide)
        space = pipeline.recognizer_diagnostics(probed, data_dir / "split.npz", probe, rec_dir)
        figures = {**pixel, **space, "check_s": time.perf_counter() - t0}
        if guide:
            train = json.loads((guide / "train.json").read_text())
            figures["guide_train_s"] = train["step"] / train["steps_per_s"]
        (probe / "figures.json").write_text(json.dumps(figures))
    figures = json.loads((probe / "figures.json").read_text())
    main_train = json.loads((gen_dir / "quality.json").read_text())["train"] if variant != "edm" else None
    return {
        **{k: round(v, 4) for k, v in figures.items() if isinstance(v, float)},
        # the sampled generator's training (none for the sampler probes of "edm") and its guide network's
        "train_s": round(
            (main_train["step"] / main_train["steps_per_s"] if main_train else 0.0) + figures.get("guide_train_s", 0.0),
            1,
        ),
        "dir": probe.name,
    }


def plot(results: dict, path: Path) -> Path:
    """Precision and identity accuracy (baseline recognizer's embeddings) against training minutes, one point per
    variant and fold, with the real images' references as lines: where the box's training time goes."""
    from scoremix_ray.foundations.files import new_figure, save_figure

    fig = new_figure(figsize=(11, 4.2), layout="constrained")
    for ax, key, title in zip(
        fig.subplots(1, 2), ("precision", "identity_accuracy"), ("precision", "identity accuracy")
    ):
        for name, by_fold in results.items():
            for fold, r in by_fold.items():
                if r["train_s"] <= 0:  # sampler probes of a generator trained elsewhere
                    continue
                sets = VARIANTS.get(name) or VARIANTS[GUIDE_PROBES[name][0]]
                marker = "s" if "generator.network=edm2" in sets else "o"
                ax.scatter(r["train_s"] / 60, r[key], marker=marker, color="C1" if "guide" in name else "C0")
                ax.annotate(
                    f"{name} f{fold}",
                    (r["train_s"] / 60, r[key]),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
        real = [r[f"{key}_real"] for by_fold in results.values() for r in by_fold.values()]
        ax.axhline(sum(real) / len(real), color="grey", linestyle="--", label="real images")
        ax.set(xlabel="training minutes (generator + guide network)", ylabel=title, title=title)
        ax.legend(loc="lower right")
    fig.suptitle(
        "Generator diagnostics, glyphs, 2-core CPU (circles: unet2d with EDM2's recipe, squares: EDM2's network "
        "(edm2-net-*); blue: unguided, orange: autoguidance)",
        fontsize=10,
    )
    return save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=Path("configs/study-glyphs-dose.yaml"))
    ap.add_argument("--folds", default="0", help="data.split_seed values, comma-separated")
    ap.add_argument("--out", type=Path, default=Path("runs"))
    ap.add_argument("--plot", type=Path, default=None, help="draw the diagnostics against training minutes here")
    ap.add_argument("--variants", default=",".join([*VARIANTS, *SAMPLER_PROBES, *GUIDE_PROBES]))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    folds = [int(f) for f in args.folds.split(",")]
    results: dict = {}
    for name in args.variants.split(","):
        for fold in folds:
            if name in SAMPLER_PROBES:
                r = probe_sampler(args.config, fold, args.out, SAMPLER_PROBES[name], name)
            elif name in GUIDE_PROBES:
                variant, sets = GUIDE_PROBES[name]
                r = probe_sampler(args.config, fold, args.out, sets, name, variant)
            else:
                r = measure(args.config, fold, args.out, VARIANTS[name])
            results.setdefault(name, {})[fold] = r
            print(
                f"{name:9s} fold {fold}: "
                + "  ".join(f"{k} {r[k]:.3f} (real {r[k + '_real']:.3f})" for k in SHOWN)
                + f"  train {r['train_s']:.0f} s",
                flush=True,
            )
    base = results.get("edm", {})
    for by_fold in results.values():  # ratios to the EDM recipe, fold by fold
        for fold, r in by_fold.items():
            if fold in base:
                r["precision_vs_edm"] = round(r["precision"] / max(base[fold]["precision"], 1e-9), 2)
                r["fd_vs_edm"] = round(r["fd"] / base[fold]["fd"], 2)
    if args.plot:
        print(f"plot: {plot(results, args.plot)}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
