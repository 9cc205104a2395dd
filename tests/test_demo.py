"""The embedded default: the committed tiny world models behave like the world, the demo runs."""

import os

import numpy as np

from pafu_lab import demo
from pafu_core.adapter import WanChunkRunner
from pafu_core.wan import WanDiT, init_weights_
from pafu_lab.world.evaluate import Batch, load_world_models, rollouts
from pafu_lab.world.train import TINY_WAN


def test_trained_student_watching_the_world_brings_the_objects_back():
    """The committed student with a keep-all cache, watching the world (36 frames, two returns): its
    objects come back where they were, with the colours they last had, far above chance and far above a
    random-weights model of the same shape (which shows no objects)."""
    student, head = load_world_models()
    batch = Batch(seed=5, frames=36, styles=[0, 3, 5, 6], watched=True)
    trained = rollouts(student, head, "keep_all", None, batch)
    random_model = WanChunkRunner(init_weights_(WanDiT(TINY_WAN), seed=0).eval())
    untrained = rollouts(random_model, head, "keep_all", None, batch)
    mean = lambda rows, key: sum(getattr(r, key) for r in rows) / len(rows)  # noqa: E731
    assert mean(trained, "accuracy") > 0.6, [r.accuracy for r in trained]
    assert mean(trained, "schedule") > 0.5, [r.schedule for r in trained]
    assert mean(trained, "accuracy") > mean(untrained, "accuracy") + 0.4


def read_mp4(path: str) -> np.ndarray:
    import av
    with av.open(path) as container:
        return np.stack([fr.to_ndarray(format="rgb24") for fr in container.decode(video=0)])


def test_shortened_demo_writes_its_outputs(tmp_path, capsys):
    demo.main(["--frames", "42", "--out", str(tmp_path), "--policies", "fifo,pafu"])
    for name in ("side_by_side.mp4", "side_by_side_return.png", "kept_tokens.mp4", "curves.png", "results.md"):
        assert os.path.getsize(tmp_path / name) > 0, name
    table = (tmp_path / "results.md").read_text()
    assert "| 25% | pafu |" in table and "| 25% | fifo |" in table and "keep_all" in table
    assert "One example video" in table and "±" not in table          # a single video has no spread
    video = read_mp4(str(tmp_path / "side_by_side.mp4"))
    assert video.shape[0] == 42 and video.shape[2] > 4 * 16 * 12       # the world + three labelled panels, scaled up
