"""The embedded default: the committed tiny world models behave like the world, the demo runs."""

import os

from pafu_core import demo
from pafu_core.adapter import WanChunkRunner
from pafu_core.wan import WanDiT, init_weights_
from pafu_core.world.evaluate import load_world_models, rollouts
from pafu_core.world.train import TINY_WAN


def test_trained_student_with_keep_all_follows_the_world():
    student, head = load_world_models()
    trained = rollouts(student, head, "keep_all", None, 5, 72, styles=[0, 3])
    random_model = WanChunkRunner(init_weights_(WanDiT(TINY_WAN), seed=0).eval())
    untrained = rollouts(random_model, head, "keep_all", None, 5, 72, styles=[0, 3])
    for good, bad in zip(trained, untrained):
        assert good.schedule > 0.9, good.schedule            # scenes and dark frames where the world puts them
        assert good.consistency > 0.5, good.consistency      # the scene returns as it was last seen
        assert good.consistency > bad.consistency + 0.4, (good.consistency, bad.consistency)


def test_shortened_demo_writes_its_outputs(tmp_path, capsys):
    demo.main(["--frames", "42", "--out", str(tmp_path), "--policies", "fifo,pafu"])
    for name in ("side_by_side.gif", "curves.png", "kept_tokens_pafu.gif", "results.md", "keep_all.gif",
                 "fifo.gif", "pafu.gif"):
        assert os.path.getsize(tmp_path / name) > 0, name
    table = (tmp_path / "results.md").read_text()
    assert "| 25% | pafu |" in table and "| 25% | fifo |" in table and "keep_all" in table
    from PIL import Image
    assert Image.open(tmp_path / "side_by_side.gif").n_frames == 42
