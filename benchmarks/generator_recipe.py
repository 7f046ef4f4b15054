"""The generator's training recipe at equal wall time (issue 30): EDM2's choices (Karras et al. 2024) that apply
to this network, one at a time and together, judged by the generator diagnostics beside their real references.

Variants (same network, steps, batch and data; so the same training time, measured):
  now           EDM (2022): ln(sigma) ~ N(-1.2, 1.2^2), constant lr after warm-up, EMA decay 0.999 (warmed up)
  lr-decay      + inverse-square-root decay from generator.lr_decay_steps on (EDM2 eq. 9)
  noise         + EDM2's pixel-space noise levels: ln(sigma) ~ N(-0.8, 1.6^2) (its ImageNet-64 models)
  ema-0.05      + power-function EMA of relative std 0.05 (EDM2 sec. 3): shorter than today's, whose 0.999 decay
                warmed up over 1500 steps has a relative std of 0.091 (computed from its betas)
  ema-0.15      + power-function EMA of relative std 0.15: longer
  edm2          all three (the EMA length that did better)
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
VARIANTS = {
    "now": [],
    "lr-decay": [f"generator.lr_decay_steps={DECAY_FROM}"],
    "noise": ["generator.p_mean=-0.8", "generator.p_std=1.6"],
    "ema-0.05": ["generator.ema_std=0.05"],
    "ema-0.15": ["generator.ema_std=0.15"],
    "edm2": [
        f"generator.lr_decay_steps={DECAY_FROM}",
        "generator.p_mean=-0.8",
        "generator.p_std=1.6",
        "generator.ema_std=0.10",
    ],
}
SHOWN = ("class_accuracy", "identity_accuracy", "fd", "precision", "recall")


def measure(config: Path, fold: int, out: Path, sets: list[str]) -> dict:
    """One variant on one fold: its diagnostics and the generator stage's seconds (training + quality check)."""
    from scoremix_ray import pipeline
    from scoremix_ray.config import load_config
    from scoremix_ray.context import RunContext

    cfg = load_config(config, [f"out_dir={out.resolve()}", f"data.split_seed={fold}", *sets])
    ctx = RunContext(executor="process")
    cfg = ctx.devices(cfg)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=Path("configs/study-glyphs-dose.yaml"))
    ap.add_argument("--folds", default="0", help="data.split_seed values, comma-separated")
    ap.add_argument("--out", type=Path, default=Path("runs"))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    folds = [int(f) for f in args.folds.split(",")]
    results: dict = {}
    for name in args.variants.split(","):
        for fold in folds:
            r = measure(args.config, fold, args.out, VARIANTS[name])
            results.setdefault(name, {})[fold] = r
            print(
                f"{name:9s} fold {fold}: "
                + "  ".join(f"{k} {r[k]:.3f} (real {r[k + '_real']:.3f})" for k in SHOWN)
                + f"  train {r['train_s']:.0f} s",
                flush=True,
            )
    base = results.get("now", {})
    for by_fold in results.values():  # ratios to today's recipe, fold by fold
        for fold, r in by_fold.items():
            if fold in base:
                r["precision_vs_now"] = round(r["precision"] / max(base[fold]["precision"], 1e-9), 2)
                r["fd_vs_now"] = round(r["fd"] / base[fold]["fd"], 2)
                r["time_vs_now"] = round(r["train_s"] / base[fold]["train_s"], 2)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
