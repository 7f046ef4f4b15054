from pathlib import Path

import pytest

from scoremix_ray.config import ConfigError, flatten, load_config, parse_override, section_hash
from scoremix_ray.runtime.checks import check_config

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_and_overrides():
    cfg = load_config(None, ["data.image_size=32", "generation.weights=0.3,0.7", "selection.strategy=random"])
    assert cfg.data.image_size == 32
    assert cfg.generation.weights == (0.3, 0.7)
    assert cfg.selection.strategy == "random"


def test_yaml_then_override(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("data:\n  image_size: 24\nseed: 3\n")
    cfg = load_config(f, ["seed=5"])
    assert (cfg.data.image_size, cfg.seed) == (24, 5)


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["selection.strategy=nearest"], "unknown selection.strategy 'nearest' (valid: random, embedding-distant"),
        (
            ["generation.method=nosuch"],
            "unknown generation.method 'nosuch' (valid: cutmix, diffcoremix, diffii, diffusemix, mixup, plain, "
            "scoremix)",
        ),
        (["study.methods=scoremix,nosuch"], "unknown study.methods 'nosuch'"),
        (["study.strategies=random,closest"], "unknown study.strategies 'closest'"),
        (["generation.weights=0.7,0.7"], "generation.weights must be non-negative and sum to 1, got [0.7, 0.7]"),
        (["generation.weights_end=1.2,-0.2"], "generation.weights_end must be non-negative"),
        (["generation.weights=0.2,0.3,0.5"], "generation.weights has 3 values for tuples of 2 classes"),
        (["selection.strategy=triplet-sum-max", "generation.weights=0.5,0.5"], "2 values for tuples of 3 classes"),
        (
            ["sampler.guidance=autoguidance", "generator.guide_checkpoint_step=800"],
            "guide_checkpoint_step (800) must be below",
        ),
        (["sampler.guidance=cfg"], "generator.label_dropout > 0"),
        (["generation.budget=7"], "generation.budget=7 differs from the 500 images ScoreMix makes"),
        (["generation.method=plain", "generation.budget=7", "study.methods=plain,scoremix"], "generation.budget=7"),
    ],
)
def test_settings_are_checked_together_at_load(overrides, needle):
    """What the CLI does right after loading (`_cfg`), as sweeps do for each trial."""
    with pytest.raises(ConfigError) as e:
        check_config(load_config(None, overrides))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_consistent_settings_load():
    cfg = check_config(
        load_config(
            None,
            [
                "selection.strategy=triplet-sum-max",
                "generation.weights=0.2,0.3,0.5",
                "generation.method=plain",
                "generation.budget=7",
                "sampler.guidance=autoguidance",
            ],
        )
    )
    assert cfg.generation.budget == 7 and cfg.generation.weights == (0.2, 0.3, 0.5)  # plain makes no new classes
    assert check_config(load_config(None, ["generation.budget=500"])).generation.budget == 500  # 10 x 50, ScoreMix's


@pytest.mark.parametrize(
    "override, needle",
    [
        ("data.imgsize=3", "unknown config key 'data.imgsize' (allowed here: source, path, image_size"),
        ("data.image_size=-1", "'data.image_size'"),
        ("data.protocol=foo", "'open-set' or 'closed-set'"),
        ("nosuch=1", "unknown config key 'nosuch'"),
        ("data.source=folder", "data.path is required"),
        ("sampler.sigma_min=100", "sampler.sigma_min"),
    ],
)
def test_bad_keys_and_values_name_the_key(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("data:\n  image_size: big\n")
    with pytest.raises(ConfigError, match=r"'data.image_size'.*in .*bad.yaml"):
        load_config(bad)
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("novalue")


@pytest.mark.parametrize("name", ["default.yaml", "webface.yaml", "study-glyphs-dose-edm2.yaml"])
def test_shipped_configs_validate(name):
    cfg = load_config(ROOT / "configs" / name)
    assert cfg.name == name.removesuffix(".yaml")


def test_webface_is_a_cluster_setting():
    cfg = load_config(ROOT / "configs" / "webface.yaml")
    assert cfg.data.image_size == 112 and cfg.recognizer.blocks == (3, 4, 14, 3) and cfg.ray.use_gpu


def test_section_hash_tracks_only_its_sections():
    a = load_config(None, [])
    b = load_config(None, ["selection.strategy=random"])
    c = load_config(None, ["data.image_size=32"])
    assert section_hash(a, "data") == section_hash(b, "data")
    assert section_hash(a, "data") != section_hash(c, "data")
    assert section_hash(a, "data", seed=False) == section_hash(load_config(None, ["seed=9"]), "data", seed=False)
    assert flatten(a)["data.image_size"] == 16 and flatten(c)["data.image_size"] == 32
    assert section_hash(load_config(None, ["data.on_bad_image=skip"]), "data") == section_hash(a, "data")  # same bytes


def test_options_added_later_keep_the_keys_of_stages_cached_before():
    """generator.lr_decay_steps and generator.ema_std (EDM2's recipe) came after generators were cached: at their
    off value they are left out of the key, so a config asking for the recipe from before (EDM 2022, as the
    committed study configs do) finds the folders it trained then (3a161b1495fb: the defaults' key in the
    release without them); the defaults since (EDM2's noise levels and lr decay) make new ones."""
    edm = ["generator.p_mean=-1.2", "generator.p_std=1.2", "generator.lr_decay_steps=null"]
    assert section_hash(load_config(None, edm), "generator") == "3a161b1495fb"
    assert section_hash(load_config(None, [*edm, "generator.ema_std=null"]), "generator") == "3a161b1495fb"
    for option in ("generator.lr_decay_steps=150", "generator.ema_std=0.1"):
        assert section_hash(load_config(None, [*edm, option]), "generator") != "3a161b1495fb", option
    assert section_hash(load_config(None, []), "generator") != "3a161b1495fb"
