"""The face benchmarks (IJB, TinyFace, .bin) and insightface's formats in and out, on tiny folders the tests
make in the published layouts."""

import json
import math

import numpy as np
import pytest
import torch
from face_fixtures import make_ijb, make_tinyface
from torch import nn

from scoremix_ray.config import Config, RecognizerConfig, load_config
from scoremix_ray.core.evaluation import ijb, tinyface
from scoremix_ray.core.evaluation.benchmarks import fingerprint, numbers
from scoremix_ray.core.recognition.train import Recognizer, embed_images
from scoremix_ray.foundations.errors import ScoreMixError
from scoremix_ray.runtime.benchmarks import evaluate
from scoremix_ray.runtime.context import RunContext


def test_alignment_recovers_a_known_similarity_transform():
    import cv2

    from scoremix_ray.core.data.align import ARCFACE_TEMPLATE, align, similarity

    # a face at scale 0.8, turned 10 degrees and moved: its landmarks are the template mapped by the inverse
    a, s, t = math.radians(10), 0.8, np.array([5.0, -3.0])
    rot = s * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    truth = np.hstack([rot, t[:, None]])  # source -> template
    inv = np.linalg.inv(np.vstack([truth, [0, 0, 1]]))[:2]
    landmarks = ARCFACE_TEMPLATE @ inv[:, :2].T + inv[:, 2]
    assert np.allclose(similarity(landmarks), truth, atol=1e-4)
    # warping a crop out with the inverse and aligning it back gives the crop (inside the border)
    crop = np.zeros((112, 112, 3), np.uint8)
    crop[30:80, 40:70] = (200, 60, 20)
    crop[50:60, 10:100] = (20, 180, 90)
    moved = cv2.warpAffine(crop, inv, (160, 160), flags=cv2.INTER_LINEAR)
    back = align(moved, landmarks)
    inner = (slice(12, 100), slice(12, 100))
    assert np.abs(back[inner].astype(int) - crop[inner]).mean() < 3
    # at the recognizer's own size the template scales with it
    assert np.allclose(similarity(landmarks, 56)[:, :2], truth[:, :2] / 2, atol=1e-4)


def test_media_pooling_scores_and_tar_by_hand():
    # template 1: media 10 = faces [1,0] and [3,0] (mean [2,0]), media 11 = [0,1]  -> sum [2,1]
    # template 2: one face [0,2] -> [0,1];  template 3: [1,1] in media 13, [1,-1] in media 14 -> [2,0]
    feats = np.array([[1, 0], [3, 0], [0, 1], [0, 2], [1, 1], [1, -1]], float)
    templates = np.array([1, 1, 1, 2, 3, 3])
    medias = np.array([10, 10, 11, 12, 13, 14])
    ids, tf = ijb.template_features(feats, templates, medias)
    assert ids.tolist() == [1, 2, 3]
    assert np.allclose(tf, [[2 / 5**0.5, 1 / 5**0.5], [0, 1], [1, 0]])
    scores = ijb.pair_scores(ids, tf, np.array([[1, 2], [1, 3], [2, 3]]))
    assert np.allclose(scores, [1 / 5**0.5, 2 / 5**0.5, 0])
    # detector-score weighting (D1) scales each face before the media mean: [1,0]x1 and [0,1]x3 -> [0.5, 1.5]
    pair = np.array([[1.0, 0], [0, 1.0]])
    _, tf = ijb.template_features(pair, np.array([7, 7]), np.array([1, 1]), np.array([1.0, 3.0]), detector_score=True)
    assert np.allclose(tf, [[1 / 10**0.5, 3 / 10**0.5]])
    # faces pooled a chunk at a time give the same templates
    ijb.FACE_CHUNK, chunk = 2, ijb.FACE_CHUNK
    try:
        assert np.allclose(
            ijb.template_features(feats, templates, medias)[1], [[2 / 5**0.5, 1 / 5**0.5], [0, 1], [1, 0]]
        )
    finally:
        ijb.FACE_CHUNK = chunk
    # N0 normalises each face first: [3,0] then weighs as much as [0,1]
    n0 = ijb.face_features(np.array([[3.0, 0], [0, 1.0]]), np.ones(2), norm_score=False, detector_score=False)
    assert np.allclose(n0, [[1, 0], [0, 1]])
    # TAR at FAR as eval_ijbc.py reads sklearn's ROC: 4 positives, 10 negatives, one negative (0.85) above
    # three positives. ROC points (FPR, TPR): (0, 0), (0, .25), (.1, .25), (.1, 1), (.2, 1) ... The nearest
    # points to FAR 0.1 are at FPR 0.1, the highest of them TAR 1 (threshold 0.3 accepts the 0.85 negative and
    # every positive); to FAR 0.01 those at FPR 0, the highest TAR 0.25 (only 0.9 is above 0.85)
    pos = [0.9, 0.8, 0.7, 0.3]
    neg = [0.85, 0.2, 0.1, 0.0, -0.1, -0.2, -0.3, -0.4, -0.5, -0.6]
    tar, fpr, tpr = ijb.tar_at_far(np.array(pos + neg), np.array([True] * 4 + [False] * 10))
    assert tar["tar_at_far_1e-1"] == 1.0 and tar["tar_at_far_1e-2"] == 0.25 and tar["tar_at_far_1e-6"] == 0.25
    assert tar["notes"] == [
        "FAR 1e-06, 1e-05, 0.0001, 0.001, 0.01 below 1/10 negative pairs: the nearest ROC point is read"
    ]
    assert np.array_equal(ijb.thin_roc(fpr, tpr)["fpr"], fpr)  # a small curve is drawn whole
    rng = np.random.default_rng(0)
    labels = rng.random(100_000) < 0.02
    _, fpr, tpr = ijb.tar_at_far(rng.normal(2.0 * labels, 1), labels)
    thin = ijb.thin_roc(fpr, tpr, points=100)
    assert len(fpr) > 200 and len(thin["fpr"]) <= 103 and np.all(np.diff(thin["fpr"]) >= 0)
    assert (thin["fpr"][[0, -1]] == fpr[[0, -1]]).all() and thin["tpr"][thin["fpr"] == 0].max() == tpr[fpr == 0].max()
    # a positive below 9 of 10 negatives: at FAR 0.1 it is still rejected
    tar, _, _ = ijb.tar_at_far(
        np.array([0.9, 0.8, -0.5] + [0.5, 0.2, 0.1, 0, -0.1, -0.2, -0.3, -0.4, -0.6, -0.7]),
        np.array([True] * 3 + [False] * 10),
    )
    assert tar["tar_at_far_1e-1"] == pytest.approx(2 / 3)


def test_rank_k_by_hand():
    gallery = np.eye(4)  # identities 0, 1, 2 and a distractor (-1)
    g_labels = np.array([0, 1, 2, -1])
    probe = np.array([[0.9, 0.1, 0, 0], [0.1, 0.2, 0.3, 0.9], [0, 0.5, 0.6, 0]])
    p_labels = np.array([0, 1, 1])
    # probe 0: nearest is 0 (rank 1); probe 1: order 3, 2, 1 (rank 3); probe 2: order 2, 1 (rank 2)
    out = tinyface.rank_k(probe, p_labels, gallery, g_labels, ranks=(1, 2, 3))
    assert out == {"rank1": 1 / 3, "rank2": 2 / 3, "rank3": 1.0}


def _ctx_cfg(tmp_path, *sets) -> tuple[RunContext, Config]:
    ctx = RunContext(gpus=0, executor="process")
    return ctx, ctx.devices(load_config(None, [f"out_dir={tmp_path}", "ray.use_gpu=false", *sets]))


def test_ijb_folder_end_to_end(tiny_recognizer, tmp_path):
    from scoremix_ray.core.data.align import align, read_rgb, to_channels

    made = make_ijb(tmp_path / "IJBC")
    bench = ijb.read_ijb(tmp_path / "IJBC")
    assert (len(bench.names), len(np.unique(bench.templates)), len(bench.pairs)) == (
        made["faces"],
        made["templates"],
        made["pairs"],
    )
    ctx, cfg = _ctx_cfg(tmp_path, "evaluation.batch_size=7")
    from scoremix_ray.config import BenchmarkConfig

    b = BenchmarkConfig(name="ijbc", kind="ijb", path=tmp_path / "IJBC")
    cache = tmp_path / "cache"
    cache.mkdir()
    got = evaluate(ctx, cfg, b, tiny_recognizer / "final", cache)
    # the same numbers by hand: align each crop, embed it with its mirror, unnormalised
    net = Recognizer.load(tiny_recognizer / "final")
    crops = np.stack(
        [
            to_channels(align(read_rgb(bench.root / "loose_crop" / n), lm, 8), 1)
            for n, lm in zip(bench.names, bench.landmarks)
        ]
    )
    feats = embed_images(net, crops, "cpu", flip=True, normalize=False)
    assert np.allclose(np.load(cache / "embeddings.npy"), feats, atol=1e-5)
    want, _ = ijb.verify(bench, feats)
    assert {k: got[k] for k in want if k != "notes"} == pytest.approx({k: v for k, v in want.items() if k != "notes"})
    assert got["templates"] == 20 and (cache / "roc.png").is_file()
    # a second evaluation reads the cached embeddings (a changed crop would need a new fingerprint)
    (cache / "embeddings.npy").chmod(0o444)
    assert evaluate(ctx, cfg, b, tiny_recognizer / "final", cache)["pairs"] == made["pairs"]
    # the meta files must agree
    lines = (tmp_path / "IJBC" / "meta" / "ijbc_name_5pts_score.txt").read_text().splitlines()
    (tmp_path / "IJBC" / "meta" / "ijbc_name_5pts_score.txt").write_text("\n".join(lines[1:] + lines[:1]) + "\n")
    with pytest.raises(ScoreMixError, match="line 1 does not name the same image"):
        ijb.read_ijb(tmp_path / "IJBC")


def test_embeddings_through_the_ray_data_pool_equal_this_process(ray_session, tiny_recognizer, tmp_path):
    """IJB faces embedded by two Ray Data actors (runtime/embed.py, the pool without Ray's actor restarts) give
    the rows this process gives, each face at its own index."""
    from scoremix_ray.core.evaluation.ijb import AlignedCrops
    from scoremix_ray.runtime.embed import embeddings

    make_ijb(tmp_path / "IJBC")
    bench = ijb.read_ijb(tmp_path / "IJBC")
    reader = AlignedCrops(bench.root, bench.names, bench.landmarks)
    got = {}
    for executor in ("process", "ray"):
        ctx = RunContext(gpus=0, executor=executor)
        cfg = ctx.devices(
            load_config(
                None,
                [f"out_dir={tmp_path}", "ray.use_gpu=false", "evaluation.batch_size=5"]
                + ["evaluation.num_actors=2", "evaluation.actor_cpus=0.5"],
            )
        )
        (tmp_path / executor).mkdir()
        got[executor] = np.array(
            embeddings(ctx, cfg, tiny_recognizer / "final", reader, tmp_path / executor, True, False)
        )
    assert got["ray"].shape == (len(bench.names), 16) and np.allclose(got["ray"], got["process"], atol=1e-5)


def test_tinyface_folder_end_to_end(tiny_recognizer, tmp_path):
    from scoremix_ray.config import BenchmarkConfig
    from scoremix_ray.core.recognition.train import embed

    make_tinyface(tmp_path / "tinyface")
    files, part, labels = tinyface.read_tinyface(tmp_path / "tinyface")
    assert np.bincount(part).tolist() == [8, 4, 5] and set(labels[part == 2]) == {-1}
    ctx, cfg = _ctx_cfg(tmp_path)
    b = BenchmarkConfig(name="tinyface", kind="tinyface", path=tmp_path / "tinyface")
    cache = tmp_path / "cache"
    cache.mkdir()
    got = evaluate(ctx, cfg, b, tiny_recognizer / "final", cache)
    net = Recognizer.load(tiny_recognizer / "final")
    emb = embed(net, tinyface.ResizedFiles(files).images(np.arange(len(files)), 8, 1), flip=True)
    want = tinyface.rank_k(emb[part == 0], labels[part == 0], emb[part > 0], labels[part > 0])
    assert {k: got[k] for k in want} == pytest.approx(want)
    assert got["rank1"] <= got["rank5"] <= got["rank20"] == 1.0  # 9 gallery faces: rank 20 holds them all
    assert (got["probes"], got["gallery"], got["distractors"]) == (8, 9, 5)
    (tmp_path / "tinyface" / "Testing_Set" / "Gallery_Match").rename(tmp_path / "gm")
    with pytest.raises(ScoreMixError, match="expected folders Probe, Gallery_Match, Gallery_Distractor"):
        fingerprint(b)


def test_headline_numbers_and_the_bin_mean():
    m = {
        "benchmarks": {
            "lfw": {"kind": "bin", "verification_accuracy": 0.9, "roc_auc": 0.95},
            "cfp_fp": {"kind": "bin", "verification_accuracy": 0.8},
            "ijbc": {"kind": "ijb", "tar_at_far_1e-6": 0.5, "tar_at_far_1e-5": 0.6, "tar_at_far_1e-4": None},
        }
    }
    out = numbers(m)
    assert out["bins.verification_accuracy"] == pytest.approx(0.85)
    assert out["ijbc.tar_at_far_1e-6"] == 0.5 and "ijbc.tar_at_far_1e-4" not in out and "lfw.roc_auc" not in out
    with pytest.raises(Exception, match="names repeat"):
        load_config(None, ["evaluation.benchmarks=[{name: a, kind: bin, path: x}, {name: a, kind: bin, path: y}]"])
    with pytest.raises(Exception, match="moved to evaluation.benchmarks"):
        load_config(None, ["data.verification_bin=lfw.bin"])


# --- insightface checkpoints in and out -------------------------------------------------------------------


class _Block(nn.Module):  # arcface_torch backbones/iresnet.py IBasicBlock, as it is written there
    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        if self.downsample is not None:
            identity = self.downsample(x)
        return out + identity


class ArcfaceIResNet(nn.Module):  # arcface_torch IResNet: 3 x 112 x 112 in, widths 64-512, fc over 7 x 7
    fc_scale = 7 * 7

    def __init__(self, layers, num_features=512):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-05)
        self.prelu = nn.PReLU(64)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1])
        self.layer3 = self._make_layer(256, layers[2])
        self.layer4 = self._make_layer(512, layers[3])
        self.bn2 = nn.BatchNorm2d(512, eps=1e-05)
        self.dropout = nn.Dropout(p=0, inplace=True)
        self.fc = nn.Linear(512 * self.fc_scale, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-05)

    def _make_layer(self, planes, blocks):
        down = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, 2, bias=False), nn.BatchNorm2d(planes, eps=1e-05))
        layers = [_Block(self.inplanes, planes, 2, down)]
        self.inplanes = planes
        return nn.Sequential(*layers, *[_Block(planes, planes) for _ in range(1, blocks)])

    def forward(self, x):
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


def _randomise_statistics(module: nn.Module, seed: int) -> nn.Module:
    """Batch-norm running statistics and PReLU slopes away from their initial values, as after training."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
    return module.eval()


def test_an_arcface_torch_r18_in_and_out(tmp_path):
    from scoremix_ray.core.recognition.insightface import arcface_name, backbone_state, load_pretrained

    theirs = _randomise_statistics(ArcfaceIResNet([2, 2, 2, 2]), 0)
    torch.save({"module." + k: v for k, v in theirs.state_dict().items()}, tmp_path / "backbone.pth")  # DDP names
    cfg = RecognizerConfig(widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2), embedding_dim=512)
    ours = Recognizer(cfg, 10, 112, 3)
    load_pretrained(ours, tmp_path / "backbone.pth")
    assert arcface_name(ours.meta) == "r18"
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        assert torch.allclose(ours.eval()(x), theirs(x), atol=1e-5)
    # and back: our state dict loads into arcface_torch's class with strict=True
    again = ArcfaceIResNet([2, 2, 2, 2])
    again.load_state_dict(ours.backbone.state_dict(), strict=True)
    assert set(backbone_state(tmp_path / "backbone.pth")) == set(again.state_dict())


def test_a_mismatched_checkpoint_is_one_line(tmp_path):
    from scoremix_ray.core.recognition.insightface import load_pretrained

    small = Recognizer(RecognizerConfig(widths=(8, 16), blocks=(1, 1), embedding_dim=16), 5, 8, 1)
    torch.save(small.backbone.state_dict(), tmp_path / "small.pth")
    other = Recognizer(RecognizerConfig(widths=(16, 16), blocks=(1, 1), embedding_dim=16), 5, 8, 1)
    with pytest.raises(ScoreMixError) as e:
        load_pretrained(other, tmp_path / "small.pth")
    assert str(e.value) == (
        f"{tmp_path / 'small.pth'}: 'conv1.weight' is (8, 1, 3, 3) in the checkpoint, (16, 1, 3, 3) in the model "
        "(recognizer.widths/blocks/embedding_dim and data.image_size/channels build the model)"
    )
    deeper = Recognizer(RecognizerConfig(widths=(8, 16), blocks=(1, 2), embedding_dim=16), 5, 8, 1)
    with pytest.raises(ScoreMixError, match=r"no 'layer2.1.bn1.weight' \(model shape \(16,\)\)"):
        load_pretrained(deeper, tmp_path / "small.pth")
    torch.save({"weights": [1, 2]}, tmp_path / "junk.pth")
    with pytest.raises(ScoreMixError, match="not a state dict of tensors"):
        load_pretrained(small, tmp_path / "junk.pth")


def test_export_round_trip_and_onnx(tiny_recognizer, tmp_path):
    import onnxruntime as ort

    from scoremix_ray.core.recognition.insightface import export, load_pretrained

    info = export(tiny_recognizer / "final", tmp_path / "out")
    assert info["arcface_torch"] is None and info["onnx_max_abs_diff"] < 1e-4
    assert json.loads((tmp_path / "out" / "export.json").read_text())["input"]["normalise"] == "(x - 127.5) / 127.5"
    net = Recognizer.load(tiny_recognizer / "final")
    fresh = Recognizer(RecognizerConfig(**net.meta["config"]), 5, 8, 1)
    load_pretrained(fresh, tmp_path / "out" / "backbone.pth")
    images = np.random.default_rng(1).integers(0, 256, (6, 8, 8, 1), dtype=np.uint8)
    assert np.array_equal(embed_images(fresh.eval(), images, "cpu"), embed_images(net, images, "cpu"))
    # ONNX with another batch size than the export's: the batch axis is dynamic
    x = (images.transpose(0, 3, 1, 2).astype(np.float32) - 127.5) / 127.5
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x})[0]
    with torch.no_grad():
        assert np.abs(got - net.backbone(torch.from_numpy(x)).numpy()).max() < 1e-4


def test_recognizer_as_an_mlflow_model(tiny_recognizer, tmp_path):
    import shutil

    import mlflow.pytorch

    from scoremix_ray.runtime import mlflow_store, tracking

    stage = tmp_path / "recognizer-x"
    shutil.copytree(tiny_recognizer / "final", stage / "final")
    cfg = load_config(None, [f"out_dir={tmp_path}", "tracking.registered_model=digits"])
    tracker = tracking.Tracker(tracking.tracking_uri(cfg))
    tracking.client(cfg)
    rid = tracker.do(mlflow_store.open_run, "models", "m", {}, {}, None)
    tracking.log_models(tracker, cfg, rid, {"baseline": stage})
    assert (stage / "mlflow_model" / "MLmodel").is_file()
    mlflow.set_tracking_uri(tracking.tracking_uri(cfg))
    loaded = mlflow.pytorch.load_model(f"runs:/{rid}/baseline_model")
    images = np.random.default_rng(2).integers(0, 256, (4, 8, 8, 1), dtype=np.uint8)
    x = torch.from_numpy((images.transpose(0, 3, 1, 2).astype(np.float32) - 127.5) / 127.5)
    net = Recognizer.load(tiny_recognizer / "final")
    with torch.no_grad():  # a torch.export graph of the backbone: the same numbers for another batch size
        assert torch.allclose(loaded(x), net.backbone(x), atol=1e-6)
    info = mlflow.models.get_model_info(f"runs:/{rid}/baseline_model")
    assert info.signature.inputs.inputs[0].shape == (-1, 1, 8, 8)
    versions = tracking.client(cfg).search_model_versions("name='digits-baseline'")
    assert len(versions) == 1 and versions[0].run_id == rid


def test_bin_sets_during_training_change_nothing_trained(tiny_benchmarks, tmp_path):
    from scoremix_ray.config import DataConfig
    from scoremix_ray.core.data import load_labelled, make_split
    from scoremix_ray.core.data.batches import InMemory, schedule
    from scoremix_ray.core.recognition.train import train_recognizer
    from scoremix_ray.runtime.train import bin_check

    split = make_split(load_labelled("digits", None, 8, 1), DataConfig(image_size=8, per_class=20, num_pairs=40))
    cfg = load_config(None, [tiny_benchmarks, "evaluation.bin_every_steps=2"])
    rc = RecognizerConfig(widths=(8,), blocks=(1,), embedding_dim=8, epochs=2, batch_size=32)
    feed = InMemory(split.train.images, split.train.labels)
    seen = []
    with_check = train_recognizer(
        feed, 5, rc, 0, tmp_path / "a", monitor=lambda m, step: seen.append((step, m)), check=bin_check(cfg)
    )
    plain = train_recognizer(feed, 5, rc, 0, tmp_path / "b")
    points = [(step, m) for step, m in seen if "tiny_bin.verification_accuracy" in m]
    steps_per_epoch = schedule("recognizer", rc, len(split.train.labels), 0, 0, 1).steps_per_epoch
    assert [s for s, _ in points] == list(range(2, 2 * steps_per_epoch + 1, 2))
    assert all(0 <= m["tiny_bin.verification_accuracy"] <= 1 for _, m in points)
    a, b = torch.load(with_check / "model.pt"), torch.load(plain / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the checks read the network, never changed its training
    assert bin_check(load_config(None, [tiny_benchmarks])) is None  # off by default
