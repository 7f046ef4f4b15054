"""One typed config for every setting.

Load order: pydantic defaults < YAML file (`--config`) < `--set a.b=value` overrides. Validation happens
once, here; every error is a single line naming the key (``ConfigError``). Stage cache keys hash only the
sections that feed a stage, less the run-only settings (``section_hash``, ``RUN_ONLY``), so a sweep over
selection strategies reuses data, generator and baseline recognizer.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from scoremix_ray.foundations.errors import ScoreMixError


class ConfigError(ScoreMixError):
    """A bad config key or value; the message names the key."""


Precision = Literal["fp32", "bf16"]  # bf16: autocast of the network's forward pass (CUDA; CPU works, slower)
Auto = Literal["auto"]
Seed = Annotated[int, Field(ge=0)]  # numpy's seed sequences take non-negative integers only


def _scalar_kinds(annotation: Any) -> set:
    """The scalar types a field's annotation admits (through Optional, Annotated, tuples and Literals)."""
    from typing import get_args, get_origin

    if annotation in (bool, int, float, str):
        return {annotation}
    if get_origin(annotation) is Literal:
        return {type(v) for v in get_args(annotation)}
    return set().union(*(_scalar_kinds(a) for a in get_args(annotation) if a is not Ellipsis))


class _Section(BaseModel):
    # Unknown keys are errors, not silently ignored typos.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _strict_numbers_and_booleans(cls, value: Any, info) -> Any:
        """pydantic's lax mode reads `true` as 1 and `1` or "yes" as true; a typo must not train 1 step."""
        kinds = _scalar_kinds(cls.model_fields[info.field_name].annotation)
        for v in value if isinstance(value, (list, tuple)) else (value,):
            if isinstance(v, bool) and bool not in kinds and kinds & {int, float}:
                raise PydanticCustomError("strict", "expects a number, not a boolean")
            if kinds == {bool} and not isinstance(v, bool):
                raise PydanticCustomError("strict", "expects true or false")
            if bool in kinds and not isinstance(v, (bool, str)):  # bool | "auto"
                raise PydanticCustomError("strict", "expects true, false or auto")
        return value


EMBEDDED = ("digits", "glyphs")  # sources shipped with the package: 16x16 grey by default (minutes on 2 cores)


class DataConfig(_Section):
    # embedded (nothing to download): "digits" (sklearn's 1797 8x8 handwritten digits, 10 classes) or "glyphs"
    # (142 Latin, Greek and Cyrillic characters x 24 font-and-pose images, 32x32: scoremix_ray/data/glyphs.py)
    source: Literal["digits", "glyphs", "folder", "parquet", "recordio"] = "digits"
    path: Path | None = None  # image folder root, Parquet file/dir, or the train.rec of a RecordIO pair
    image_size: int | None = Field(None, ge=8, le=512)  # None: 16 for the embedded digits (minutes on 2 CPU
    # cores), else the data's own (the first image's shorter side)
    channels: Literal[1, 3] | None = None  # images are converted to this many; None: 1 for digits, else the data's
    per_class: int | None = Field(None, ge=1)  # K training images per class (limited-data regime); None = all
    protocol: Literal["open-set", "closed-set"] = "open-set"
    unseen_fraction: float = Field(0.5, gt=0.0, lt=1.0)  # open-set: share of classes held out entirely
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)  # closed-set: share of each class's images held out
    num_pairs: int = Field(3000, ge=20)  # verification pairs, half same, half different (1500 different
    # pairs make TAR at FAR 1e-3 measurable)
    split_seed: Seed = 0  # which classes are unseen / which images are held out (the "fold")
    # An image that does not decode: "error" stops the data stage naming its file; "skip" first decodes every
    # image once (a second pass over the data), leaves the bad ones out and logs how many and which
    on_bad_image: Literal["error", "skip"] = "error"

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, values: Any) -> Any:
        if isinstance(values, dict) and "verification_bin" in values:
            raise ValueError(
                "data.verification_bin moved to evaluation.benchmarks: a list of {name, kind: bin, path} "
                "(any number of .bin sets, IJB-B/C, TinyFace)"
            )
        return values

    @model_validator(mode="after")
    def _path_needed(self) -> DataConfig:
        if self.source not in EMBEDDED and self.path is None:
            raise ValueError(f"data.path is required when data.source is '{self.source}'")
        if self.source in EMBEDDED:  # known without reading: the same stage hash whether set or left out
            for key, value in (("image_size", 16), ("channels", 1)):
                if getattr(self, key) is None:
                    object.__setattr__(self, key, value)  # not a validated assignment: that would re-run this
        return self


class GuideConfig(_Section):
    """Autoguidance's guide (`sampler.guidance: autoguidance`; D = D_guide + g (D - D_guide), arXiv 2406.02507).
    "snapshot": the main network's EMA at `generator.guide_checkpoint_step`, saved in the generator's stage.
    "network": a generator of its own, a smaller and/or shorter-trained model as EDM2's autoguidance uses: the
    main generator's settings with `overrides` (generator keys, e.g. {"steps": 200, "edm2.channels": 16}), trained
    as its own cached stage, so changing the guide never retrains the main network (and a guide with the
    settings of an earlier main generator is that generator's stage, reused)."""

    kind: Literal["snapshot", "network"] = "snapshot"
    overrides: dict[str, Any] = Field(default_factory=dict)


class EDM2Config(_Section):
    """EDM2's magnitude-preserving UNet (`generator.network: edm2`, core/diffusion/edm2.py). Its paper's EDM2-S
    at 64 px is channels 192, channel_mult 1,2,3,4, num_blocks 3, attention at 16 and 8 px; these defaults are
    sized for 16-32 px on a CPU."""

    channels: int = Field(32, ge=1)  # of the first level; level i has channels x channel_mult[i]
    channel_mult: tuple[Annotated[int, Field(ge=1)], ...] = (1, 2, 2)
    num_blocks: int = Field(1, ge=1)  # residual blocks per level (the decoder has one more)
    attn_resolutions: tuple[int, ...] = ()  # resolutions (px) with self-attention (64 channels a head)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)  # in the residual branches, while training


class GeneratorConfig(_Section):
    # unet2d: diffusers' UNet2DModel inside the EDM preconditioning (block_out_channels ... attention below);
    # edm2: EDM2's magnitude-preserving UNet with its learned loss weighting (the `edm2` section)
    network: Literal["unet2d", "edm2"] = "unet2d"
    edm2: EDM2Config = EDM2Config()
    # Architecture of the diffusers UNet2DModel inside the EDM preconditioning.
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = Field(1, ge=1)
    attention: bool = False  # attention blocks at the lowest resolution (off: small images, CPU)
    sigma_data: float = Field(0.5, gt=0)
    # log-normal training sigmas: ln(sigma) ~ N(P_mean, P_std^2); EDM2's pixel-space values (its ImageNet-64
    # models; EDM's -1.2, 1.2 gave lower identity accuracy and precision: benchmarks/generator_recipe.py)
    p_mean: float = -0.8
    p_std: float = Field(1.6, gt=0)
    label_dropout: float = Field(0.0, ge=0.0, lt=1.0)  # > 0 trains a null label for classifier-free guidance
    steps: int = Field(800, ge=1)  # ~3 min on 2 CPU cores at 16x16; digits are recognisable from ~600
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-3, gt=0)
    warmup_steps: int = Field(100, ge=0)
    # EDM2's inverse-square-root decay: lr / sqrt(max(step / lr_decay_steps, 1)); None keeps lr constant (the
    # recipe before it: lower identity accuracy, precision and FD on glyphs, benchmarks/generator_recipe.py)
    lr_decay_steps: int | None = Field(150, ge=1)
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0)
    # EDM2's power-function EMA of relative standard deviation ema_std (its length grows with training, a
    # fixed share of it); None: the fixed ema_decay above, warmed up
    ema_std: float | None = Field(None, gt=0.0, lt=0.288)  # (0.289: a plain average of every step)
    checkpoint_every: int = Field(250, ge=1)
    guide_checkpoint_step: int | None = None  # keep this step's EMA weights as the autoguidance model;
    # None = a quarter of training (a weaker, earlier model, as in "light autoguidance")
    guide: GuideConfig = GuideConfig()  # or a guide network of its own (not in this stage's key: its own stage)
    log_every: int = Field(50, ge=1)
    precision: Precision = "fp32"  # the network's forward pass in training; loss and EMA stay fp32
    # a run whose generator's samples have a precision below this (in the baseline recognizer's embeddings, the
    # real images' own precision is the reference) stops before generating; None: always generate
    min_precision: float | None = Field(None, ge=0.0, le=1.0)


class SamplerConfig(_Section):
    steps: int = Field(18, ge=1)  # EDM Heun; the paper uses 32, fewer suffices for 16x16 digits
    sigma_min: float = Field(0.002, gt=0)
    sigma_max: float = Field(80.0, gt=0)
    rho: float = Field(7.0, gt=0)
    # One guidance policy for every generation path (ScoreMix, plain, the peers' generated counterparts, the
    # generator's quality check): cfg needs generator.label_dropout > 0, autoguidance the generator's guide
    # checkpoint (saved at generator.guide_checkpoint_step).
    guidance: Literal["none", "cfg", "autoguidance"] = "none"
    guidance_scale: float = Field(1.0, ge=0.0)  # g in D = D_weak + g (D_strong - D_weak); 1 = no guidance
    batch_size: int = Field(256, ge=1)
    precision: Precision = "fp32"  # the network's forward pass; the mix and the Heun steps stay fp32/fp64

    @model_validator(mode="after")
    def _range(self) -> SamplerConfig:
        if self.sigma_min >= self.sigma_max:
            raise ValueError(f"sampler.sigma_min ({self.sigma_min}) must be below sampler.sigma_max ({self.sigma_max})")
        return self


class RecognizerConfig(_Section):
    # an arcface_torch backbone.pth (insightface's parameter names) used as the baseline recognizer: stage 3
    # loads it instead of training (the widths/blocks/embedding_dim below and data.image_size/channels must
    # describe it: IResNet-50 is widths 64,128,256,512, blocks 3,4,14,3, embedding 512 at 112 px RGB)
    pretrained: Path | None = None
    widths: tuple[int, ...] = (16, 32, 64)  # one IResNet stage per entry
    blocks: tuple[int, ...] = (1, 1, 1)
    embedding_dim: int = Field(64, ge=2)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)  # before the embedding FC
    head: Literal["arcface", "cosface"] = "arcface"
    scale: float = Field(32.0, gt=0)
    margin: float = Field(0.5, ge=0)
    epochs: int = Field(30, ge=1)
    # the augmented recognizer trains as many optimizer steps as the baseline ("steps": its epochs scaled by
    # real / (real + synthetic) images, so a gain is not longer training) or as many epochs ("epochs")
    match: Literal["steps", "epochs"] = "steps"
    batch_size: int = Field(128, ge=1)
    lr: float = Field(0.1, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    hflip: bool = False  # digits are not mirror-symmetric; faces are
    checkpoint_every: int = Field(10, ge=1)  # epochs between checkpoints and Ray Train reports (the last
    # epoch always has one); each report costs ~1 s on a 2-core box, a checkpoint copy more
    precision: Precision = "fp32"  # the backbone's forward pass in training; the margin head stays fp32


class SelectionConfig(_Section):
    strategy: str = "embedding-distant"
    count: int = Field(10, ge=1)  # number of tuples = number of new synthetic classes
    tuple_size: int = Field(2, ge=2)
    max_uses_per_class: int | None = Field(None, ge=1)


class GenerationConfig(_Section):
    method: str = "scoremix"
    per_tuple: int = Field(50, ge=1)  # images per synthetic class
    weights: tuple[float, ...] | None = None  # convex mixing weights, one per class of a tuple; None = uniform
    weights_end: tuple[float, ...] | None = None  # if set, weights ramp linearly to these over the trajectory
    budget: int | None = Field(None, ge=1)  # synthetic images every method adds; None = selection.count *
    # per_tuple (ScoreMix's), so a sweep over methods compares like with like
    edit_strength: float = Field(0.5, gt=0.0, le=1.0)  # DiffuseMix: share of the trajectory re-noised
    fractal_weight: float = Field(0.2, ge=0.0, le=1.0)  # DiffuseMix: fractal blend weight
    filter_tau: float = Field(0.6, ge=-1.0, le=1.0)  # DiffCoRe-Mix: min cosine to the class centre
    filter_candidates: int = Field(2, ge=1)  # DiffCoRe-Mix: generated candidates per image and round
    filter_rounds: int = Field(3, ge=1)  # DiffCoRe-Mix: rounds of fresh candidates for an image with none kept
    mix_alpha: float = Field(0.4, gt=0.0)  # mixup/cutmix: lambda ~ Beta(alpha, alpha)
    inversion_strength: float = Field(
        0.3, gt=0.0, le=1.0
    )  # Diff-II: how far up the trajectory to invert (the paper's 0.3)
    guided_fraction: float = Field(0.5, ge=0.0, le=1.0)  # Diff-II: share of the denoising steps with guidance
    guidance_scale: float = Field(1.5, ge=0.0)  # Diff-II: guidance in its first (high-noise) stage
    unit_size: int = Field(64, ge=1)  # rows rendered as one network batch and written as one Parquet shard;
    # fixed by the plan, so the bytes do not depend on actor count or Ray's batching
    num_actors: int = Field(1, ge=1)
    actor_cpus: float = Field(0.5, gt=0)  # fractional: a 2-CPU box hangs with whole CPUs per actor
    # GPUs per generation actor: "auto" = 1 when the run uses GPUs (ray.use_gpu), else 0; a fraction packs
    # several actors on one GPU (0.5: two per GPU); 0 keeps actors on CPUs even on a GPU cluster
    actor_gpus: Annotated[float, Field(ge=0)] | Auto = "auto"
    threads_per_actor: int | None = Field(None, ge=1)  # torch CPU threads; None = CPU cores // num_actors


class BenchmarkConfig(_Section):
    """One evaluation benchmark, read from its published layout (README: "Benchmarks")."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$")  # in metric names: "<name>.<metric>"
    kind: Literal["bin", "ijb", "tinyface"]  # an InsightFace .bin set, an IJB-B/C folder, a TinyFace folder
    path: Path
    flip: bool = True  # embeddings of the image plus its mirror (the protocols' habit for faces)
    norm_score: bool = True  # ijb: keep each face's embedding norm as its quality weight (insightface's N1)
    detector_score: bool = True  # ijb: weight each face by its detector score (insightface's D1)


class EvaluationConfig(_Section):
    benchmarks: tuple[BenchmarkConfig, ...] = ()  # evaluated for every recognizer after it trains
    bin_every_steps: int | None = Field(None, ge=1)  # during recognizer training: the .bin benchmarks every N
    # optimizer steps, as MLflow curves "<name>.verification_accuracy" (insightface's verification callback)
    batch_size: int = Field(128, ge=1)  # faces an embedding batch holds (IJB, TinyFace)
    num_actors: int = Field(1, ge=1)  # Ray Data actors embedding IJB / TinyFace faces (one GPU each with GPUs)
    actor_cpus: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _names(self) -> EvaluationConfig:
        names = [b.name for b in self.benchmarks]
        if len(set(names)) != len(names):
            raise ValueError(f"evaluation.benchmarks: names repeat: {names}")
        if BIN_MEAN in names:
            raise ValueError(f"evaluation.benchmarks: '{BIN_MEAN}' is the name of the .bin sets' mean")
        return self


BIN_MEAN = "bins"  # "bins.verification_accuracy": the mean accuracy over the .bin benchmarks


class TrackingConfig(_Section):
    tracking_uri: str | None = None  # None = sqlite:///<out>/mlflow.db
    experiment: str = "scoremix-ray"
    log_models: bool = True  # recognizers (and the generator) as MLflow models with a signature
    # a sweep's or study's models: the shared generator and baseline once, on the parent run; the augmented
    # recognizer of the best trial (highest augmented.verification_accuracy) on its run, after the trials, or of
    # every trial ("all": each trial exports its own, ~2 s of a trial process on a 2-core box, and one model
    # folder per trial in the artifact store)
    sweep_models: Literal["best", "all"] = "best"
    registered_model: str | None = None  # register them as <name> (augmented), <name>-baseline, <name>-generator


class RayConfig(_Section):
    address: str | None = None  # None = start a local Ray; "auto" = join the running cluster
    num_workers: int = Field(1, ge=1)  # Ray Train workers (1 is fastest on a 2-core box)
    # GPUs for Ray Train workers and the evaluation/quality tasks: "auto" = when the cluster has GPUs at the
    # start of the job (on an autoscaling cluster with no GPU node up yet, say true)
    use_gpu: bool | Auto = "auto"
    cpus_per_worker: float = Field(2.0, gt=0)  # also the worker's torch threads; 1 worker x 2 threads here
    # A training set (uint8) of at most this many MB is read whole into each Train worker; a larger one streams
    # through Ray Data. Same batches either way (data/batches.py): a memory budget, not a result setting.
    # a lost Train worker or node restarts the worker group, which resumes from the last checkpoint on shared
    # storage, at most this many times a training; a sweep or study trial that fails is retried as often
    max_failures: int = Field(3, ge=0)
    checkpoints_kept: int = Field(2, ge=1)  # newest step checkpoints kept per training (older ones deleted)
    cache_mb: int = Field(1024, ge=0)
    stream_block_mb: int = Field(64, ge=1)  # images per Ray Data block when streaming


class StudyConfig(_Section):
    """A study: every condition (method x strategy) on every fold x seed, compared with the real-only baseline
    of the same fold and seed. Fixed in a committed config before it runs; the report shows every condition."""

    folds: tuple[Annotated[int, Field(ge=0)], ...] = (
        0,
        1,
        2,
        3,
    )  # data.split_seed values: different train/unseen class partitions
    seeds: tuple[Annotated[int, Field(ge=0)], ...] = (
        0,
        1,
    )  # per fold: generator, recognizer and sampling seed (a generator each)
    # None: every registered pair strategy / ScoreMix then every other method. The registries live in the core,
    # above this module: `checks.check_config` fills these in (and checks the names) right after loading.
    strategies: tuple[str, ...] | None = None  # for methods making new classes
    methods: tuple[str, ...] | None = None
    metrics: tuple[str, ...] = ("verification_accuracy", "roc_auc", "tar_at_far_1e-2", "rank1_accuracy")
    # a dose-response study: each condition at every number of synthetic classes here (selection.count; the
    # label-preserving methods add the same number of images: count x generation.per_tuple); None: one dose
    doses: tuple[Annotated[int, Field(ge=1)], ...] | None = None
    confidence: float = Field(0.95, gt=0.5, lt=1.0)  # of the paired-difference intervals
    interval: Literal["t", "bootstrap"] = "t"  # t: mean +- t_{n-1} s/sqrt(n); bootstrap: percentile, 10k resamples

    @field_validator("folds", "seeds", "strategies", "methods", "metrics", "doses", mode="before")
    @classmethod
    def _one_is_a_list(cls, v: Any) -> Any:  # `--set study.seeds=0` means (0,)
        return [v] if isinstance(v, (int, str)) else v

    @model_validator(mode="after")
    def _distinct(self) -> StudyConfig:
        for key in ("folds", "seeds", "methods", "strategies", "doses"):
            values = getattr(self, key)
            if values is None and key in ("doses", "strategies", "methods"):
                continue
            if not values:
                raise ValueError(f"study.{key} is empty")
            if len(set(values)) != len(values):
                raise ValueError(f"study.{key} repeats a value: {list(values)}")
        return self


class Config(_Section):
    name: str = Field("default", pattern=r"^[^'\"/\s]+$")  # a folder under out_dir and an MLflow run name (found by it)
    seed: Seed = 0  # model initialisation, training order, sampling noise
    out_dir: Path = Path("runs")
    # seconds a first contact may take (the Ray cluster, the tracking server, the output folder) before the
    # command fails in one line naming it, instead of hanging in retries
    connect_timeout_s: float = Field(20.0, gt=0)
    data: DataConfig = DataConfig()
    generator: GeneratorConfig = GeneratorConfig()
    sampler: SamplerConfig = SamplerConfig()
    recognizer: RecognizerConfig = RecognizerConfig()
    selection: SelectionConfig = SelectionConfig()
    generation: GenerationConfig = GenerationConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    tracking: TrackingConfig = TrackingConfig()
    ray: RayConfig = RayConfig()
    study: StudyConfig | None = None  # set by a study config (configs/study-digits.yaml); `report` then
    # reports the study

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        """What the formulas say of the settings together. What the registries say (strategy and method names,
        weights per tuple, the budget) is `checks.check_config`, run by every entry point right after loading."""
        if self.ray.use_gpu is False and self.generation.actor_gpus == "auto":  # known without a cluster
            object.__setattr__(self.generation, "actor_gpus", 0.0)
        for key in ("weights", "weights_end"):
            w = getattr(self.generation, key)
            if w is not None and not convex(w):
                raise ValueError(f"generation.{key} must be non-negative and sum to 1, got {list(w)}")
        if self.sampler.guidance == "cfg" and self.generator.label_dropout == 0:
            raise ValueError(
                "sampler.guidance=cfg needs a generator trained with a null label: set "
                "generator.label_dropout > 0 (e.g. 0.1) or use sampler.guidance=autoguidance"
            )
        guide = self.generator.guide_checkpoint_step
        if self.sampler.guidance == "autoguidance" and guide is not None and guide >= self.generator.steps:
            raise ValueError(
                f"sampler.guidance=autoguidance needs an earlier, weaker guide: generator.guide_checkpoint_step "
                f"({guide}) must be below generator.steps ({self.generator.steps})"
            )
        if self.generator.guide.kind == "network":
            if not self.generator.guide.overrides:
                raise ValueError(
                    "generator.guide.kind=network needs generator.guide.overrides: what makes the guide smaller "
                    "or shorter-trained than the main network (e.g. {steps: 200})"
                )
            guide_config(self)  # an override that is not a generator setting, or leaves the guide the main network
        return self

    @property
    def run_dir(self) -> Path:
        return self.out_dir / self.name


def guide_config(cfg: Config) -> Config:
    """The guide network's config (`generator.guide.kind: network`): the main generator's settings with the
    guide's `overrides` applied, as a generator of its own (with no guide network of its own)."""
    tree = cfg.model_dump(mode="json")
    gen = tree["generator"]
    overrides = gen.pop("guide")["overrides"]
    for key, value in overrides.items():
        if key.split(".")[0] in ("guide", "min_precision"):
            raise ValueError(f"generator.guide.overrides.{key}: not a setting of the guide network")
        _set_dotted(gen, key, value)
    try:
        guide = Config.model_validate(tree)
    except ValidationError as e:
        raise ValueError(f"generator.guide.overrides: {_one_line(e)}") from None
    if settings(guide, "generator") == settings(cfg, "generator"):
        raise ValueError(f"generator.guide.overrides {overrides} leave the guide the same network as the main one")
    return guide


WEIGHT_ATOL = 1e-4  # how far from 1 the sum of convex mixing weights may be


def convex(weights) -> bool:
    """Every w_k >= 0 and sum_k w_k = 1 (a sum below 1 washes images out, above 1 saturates them)."""
    return all(w >= 0 for w in weights) and abs(sum(weights) - 1.0) <= WEIGHT_ATOL


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for i, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config key '{'.'.join(keys[: i + 1])}' is a value, not a section (in --set {dotted})")
        node = child
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """'a.b=value' -> ('a.b', value), the value read as YAML (so 32 is an int, 0.5,0.5 a string)."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got '{text}'")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else None
    if isinstance(value, str) and "," in value:  # "0.5,0.5" -> [0.5, 0.5] for tuple fields
        value = [yaml.safe_load(v) for v in value.split(",")]
    return key.strip(), value


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: Any = Config
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
        model = field.annotation
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _key_of(loc: tuple) -> str:
    """The config key of an error location, without pydantic's union-member tags (`bool`, `literal['auto']`)."""
    model: Any = Config
    parts = []
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            if fields is not None and isinstance(part, str):  # an unknown key: keep it, it is the culprit
                parts.append(part)
            break
        parts.append(part)
        model = fields[part].annotation
        models = [m for m in getattr(model, "__args__", ()) if hasattr(m, "model_fields")]  # Optional[Section]
        model = models[0] if models else model
    return ".".join(str(p) for p in parts) or "config"


def _one_line(err: ValidationError) -> str:
    errors = err.errors()
    first = errors[0]
    loc = tuple(first["loc"])
    key = _key_of(loc)
    if first["type"] == "extra_forbidden":
        model = _model_at(loc)
        allowed = ", ".join(model.model_fields) if model else "?"
        return f"unknown config key '{key}' (allowed here: {allowed})"
    # a union field (bool | "auto") fails once per member: say what each would have accepted
    msg = " or ".join(
        dict.fromkeys(e["msg"].removeprefix("Value error, ") for e in errors if _key_of(tuple(e["loc"])) == key)
    )
    if "input" in first and first["type"] != "value_error":
        return f"bad value for config key '{key}': {msg} (got {first['input']!r})"
    return f"bad config: {msg}" if first["type"] == "value_error" else f"config key '{key}': {msg}"


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as e:
            raise ConfigError(f"config file {path} is not UTF-8 text (byte {e.start}: {e.reason})") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f", line {mark.line + 1} column {mark.column + 1}" if mark else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(f"config file {path} is not valid YAML{where}: {problem}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys, not {type(tree).__name__}")
    for text in overrides:
        _set_dotted(tree, *parse_override(text))
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        where = f" in {path}" if path else ""
        raise ConfigError(_one_line(e) + where) from None


def with_overrides(cfg: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """A copy of `cfg` with `a.b=value` overrides applied and validated (errors name the key)."""
    tree = cfg.model_dump(mode="json")
    for text in overrides:
        _set_dotted(tree, *parse_override(text))
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_one_line(e)) from None


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


# Settings that say how a job runs, not what it computes: in no stage's cache key and not in a sweep's resume
# key, so the same work from another folder, launcher or cluster size is the same work (None: the whole section).
# data.on_bad_image: "error" completes only when no image is bad, which is when "skip" writes the same stores;
# evaluation: read after training, its results kept with the benchmark's fingerprint (`evaluation.benchmarks`);
# recognizer.pretrained: the baseline's key holds the file's fingerprint instead of its path (`pipeline`);
# sampler.batch_size: generation batches are the plan's fixed work units (generation.unit_size).
RUN_ONLY: dict[str, tuple[str, ...] | None] = {
    "out_dir": None,
    "connect_timeout_s": None,
    "ray": None,
    "tracking": None,
    "evaluation": None,
    "data": ("on_bad_image",),
    "recognizer": ("pretrained",),
    "generator": ("min_precision",),  # a gate on the run, not what the generator computes
    "sampler": ("batch_size",),
    "generation": ("num_actors", "actor_cpus", "actor_gpus", "threads_per_actor"),
}

# Settings that feed a stage of their own: left out of their section's stage key (changing the guide network
# never retrains the main one), in that stage's key (`guide_config`) and in a sweep's resume key.
OWN_STAGE: dict[str, tuple[str, ...]] = {"generator": ("guide",)}

# Settings added after stages were cached, with the value that computes what was computed before they existed:
# left out of a key while they hold it, so a release that adds an option does not throw away trained stages.
ADDED_OFF: dict[str, dict[str, Any]] = {
    "generator": {
        "lr_decay_steps": None,
        "ema_std": None,
        "network": "unet2d",
        "edm2": EDM2Config().model_dump(mode="json"),
    },
}


def settings(cfg: Config, *sections: str, own_stages: bool = False) -> dict[str, Any]:
    """What `cfg` computes: the named sections (or top-level keys) without the run-only settings, and without
    the settings of stages of their own (`OWN_STAGE`) unless `own_stages` (a whole run's key)."""
    tree = cfg.model_dump(mode="json")
    out = {}
    for section in sections:
        skip = RUN_ONLY.get(section, ())
        if skip is None:
            continue
        skip = skip if own_stages else (*skip, *OWN_STAGE.get(section, ()))
        value, off = tree[section], ADDED_OFF.get(section, {})
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in skip and not (k in off and v == off[k])}
        out[section] = value
    return out


def digest(payload: Any) -> str:
    """A short content address of a JSON-able payload (a stage's key, a sweep's resume key)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def section_hash(cfg: Config, *sections: str, seed: bool = True, **extra: Any) -> str:
    """The one cache-key recipe: the content address of the settings that feed a stage (its `sections`, without
    the run-only settings), the seed if it draws, and `extra` (its upstream stages, a plan's digest)."""
    payload = settings(cfg, *sections)
    if seed:
        payload["seed"] = cfg.seed
    return digest({**payload, **extra})


def flatten(cfg: Config) -> dict[str, Any]:
    """Flat 'a.b' -> value mapping, for MLflow params."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = node

    walk("", cfg.model_dump(mode="json"))
    return out
