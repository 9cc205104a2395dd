"""Hostile and broken files: every one is refused with one readable sentence that names the file,
nothing is allocated beyond the file's own size, and no pickled code ever runs."""

import json
import os
import pickle
import struct
import tracemalloc

import pytest
import torch
from safetensors.torch import save_file

from pafu_core.salience import HeadConfig, SalienceHead, load_head, save_head
from pafu_core.wan import WanDiT, check_wan_state_dict, read_state_dict, strip_checkpoint_prefixes, tiny_config

MARKER = "pafu_pickle_ran.txt"
CLASS_NAMES = ("Traceback", "KeyError", "AttributeError", "TypeError", "JSONDecodeError", "UnpicklingError",
               "HFValidationError", "ZeroDivisionError", "IndexError")


class Payload:
    """Unpickling this would create a marker file: proof that code ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def head_bytes(rescore=True) -> tuple[bytes, int]:
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "h.safetensors")
        save_head(SalienceHead(HeadConfig(num_layers=2, dim=128, num_heads=1, hidden=8, rescore=rescore)), p)
        raw = open(p, "rb").read()
    return raw, int.from_bytes(raw[:8], "little")


def with_header(raw: bytes, edit) -> bytes:
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    edit(header)
    body = json.dumps(header).encode()
    return struct.pack("<Q", len(body)) + body + raw[8 + n:]


def with_pafu(raw: bytes, edit) -> bytes:
    def go(header):
        meta = json.loads(header["__metadata__"]["pafu"])
        edit(meta)
        header["__metadata__"]["pafu"] = json.dumps(meta)
    return with_header(raw, go)


def head_cases(tmp) -> dict[str, bytes]:
    raw, n = head_bytes()
    gen = torch.Generator().manual_seed(0)
    cases = {}
    for cut in (0, 3, 8, 9, 8 + n // 2, 8 + n - 1, 8 + n, 8 + n + 5, len(raw) - 1):
        cases[f"truncated_at_{cut}"] = raw[:cut]
    for i in range(4):
        junk = bytes(torch.randint(0, 256, (n,), generator=gen).tolist())
        cases[f"random_header_{i}"] = raw[:8] + junk + raw[8 + n:]
    cases["huge_header_length"] = struct.pack("<Q", 2**62) + raw[8:]
    for name, body in (("deep_nesting", b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
                       ("huge_integer", b'{"a": ' + b"9" * 5000 + b"}")):
        cases[name] = struct.pack("<Q", len(body)) + body
    cases["deep_pafu_metadata"] = with_header(raw, lambda h: h["__metadata__"].__setitem__("pafu", "[" * 50_000))

    def entry(name, **kw):
        def go(h):
            h["w1"].update(kw) if name == "update" else h["w1"].pop(name)
        return go

    cases["no_data_offsets"] = with_header(raw, entry("data_offsets"))
    cases["no_dtype"] = with_header(raw, entry("dtype"))
    cases["unknown_dtype"] = with_header(raw, entry("update", dtype="X9"))
    cases["integer_dtype"] = with_header(raw, entry("update", dtype="I32"))
    cases["shape_not_list"] = with_header(raw, entry("update", shape="2x128"))
    cases["negative_shape"] = with_header(raw, entry("update", shape=[-2, 256, 8]))
    cases["huge_declared_size"] = with_header(raw, entry("update", shape=[10**6, 10**6, 10**3],
                                                          data_offsets=[0, 4 * 10**15]))
    cases["offsets_past_end"] = with_header(raw, entry("update", data_offsets=[0, 10**9]))
    cases["offsets_not_ints"] = with_header(raw, entry("update", data_offsets=["0", "8"]))
    cases["entry_not_dict"] = with_header(raw, lambda h: h.__setitem__("w1", [1, 2]))
    cases["metadata_not_dict"] = with_header(raw, lambda h: h.__setitem__("__metadata__", ["pafu"]))
    cases["no_pafu_metadata"] = with_header(raw, lambda h: h.__setitem__("__metadata__", {"x": "y"}))
    cases["pafu_not_json"] = with_header(raw, lambda h: h["__metadata__"].__setitem__("pafu", "{not json"))
    cases["pafu_not_object"] = with_header(raw, lambda h: h["__metadata__"].__setitem__("pafu", "[1, 2]"))
    cases["no_input_features"] = with_pafu(raw, lambda m: m.pop("input_features"))
    cases["hidden_is_text"] = with_pafu(raw, lambda m: m.__setitem__("hidden", "64"))
    cases["hidden_huge"] = with_pafu(raw, lambda m: m.__setitem__("hidden", 10**9))
    cases["patch_size_text"] = with_pafu(raw, lambda m: m["backbone"].__setitem__("patch_size", "1,2,2"))
    cases["million_layers"] = with_pafu(raw, lambda m: m["backbone"].__setitem__("num_layers", 10**6))
    cases["wide_backbone"] = with_pafu(raw, lambda m: m["backbone"].__setitem__("dim", 4096))
    cases["fingerprint_edited"] = with_pafu(raw, lambda m: m.__setitem__("backbone_fingerprint", "0" * 16))
    cases["future_version"] = with_pafu(raw, lambda m: m.__setitem__("format_version", 99))
    cases["other_family"] = with_pafu(raw, lambda m: m.__setitem__("model_family", "sdxl"))
    cases["unknown_feature"] = with_pafu(raw, lambda m: m.__setitem__("input_features", ["pixels"]))
    cases["nan_recency"] = with_pafu(raw, lambda m: m.__setitem__("recency", float("nan")))
    cases["rescore_inputs_bad"] = with_pafu(raw, lambda m: m.__setitem__("rescore_inputs", ["entry", "mood"]))
    for bad, tensor in ((float("nan"), "w1"), (float("inf"), "b2"), (float("-inf"), "r1")):
        head = SalienceHead(HeadConfig(num_layers=2, dim=128, num_heads=1, hidden=8, rescore=True))
        with torch.no_grad():
            getattr(head, tensor).view(-1)[1] = bad
        p = os.path.join(tmp, "nonfinite.safetensors")
        save_head(head, p)
        cases[f"{tensor}_{bad}"] = open(p, "rb").read()
    p = os.path.join(tmp, "plain.safetensors")
    save_file({"w1": torch.zeros(3)}, p)
    cases["plain_safetensors"] = open(p, "rb").read()
    torch.save({"w1": torch.zeros(3)}, os.path.join(tmp, "t.pt"))
    cases["torch_save_zip"] = open(os.path.join(tmp, "t.pt"), "rb").read()
    cases["pickle_payload"] = pickle.dumps(Payload(os.path.join(tmp, MARKER)))
    return cases


def checkpoint_cases(tmp) -> dict[str, tuple[str, object]]:
    """(suffix, content): bytes, or an object to torch.save."""
    sd = {k: v.detach() for k, v in WanDiT(tiny_config()).state_dict().items()}
    wrong_mod = dict(sd, **{"head.modulation": torch.zeros(1, 3, 7)})
    narrow = {k: v[..., :1] if v.ndim else v for k, v in sd.items()}
    narrow["patch_embedding.weight"] = torch.zeros(8, 16, 1, 2, 2)
    missing = {k: v for k, v in sd.items() if k != "blocks.1.ffn.2.bias"}
    p = os.path.join(tmp, "ok.safetensors")
    save_file(sd, p)
    st = open(p, "rb").read()
    n = int.from_bytes(st[:8], "little")
    return {
        "list": (".pt", [torch.zeros(3)]), "bare_tensor": (".pt", torch.zeros(3)), "empty_pt": (".pt", b""),
        "random_pt": (".pt", bytes(range(256)) * 4), "int_keys": (".pt", {1: torch.zeros(3)}),
        "empty_dict": (".pt", {}), "pickle_code_pt": (".pt", pickle.dumps(Payload(os.path.join(tmp, MARKER)))),
        "head_modulation_wrong": (".pt", wrong_mod), "narrow_model": (".pt", narrow),
        "missing_key": (".safetensors", missing), "not_wan": (".pt", {"conv.weight": torch.zeros(2)}),
        "st_truncated": (".safetensors", st[:8 + n + 10]), "st_empty": (".safetensors", b""),
        "st_huge": (".safetensors", with_header(st, lambda h: h["head.modulation"].update(
            shape=[10**7, 10**7], data_offsets=[0, 4 * 10**14]))),
    }


def write(path, content):
    if isinstance(content, bytes):
        with open(path, "wb") as fh:
            fh.write(content)
    elif isinstance(content, dict) and path.endswith(".safetensors"):
        save_file(content, path)
    else:
        torch.save(content, path)


def refuse(load, path):
    """Run ``load(path)``: it must raise a ValueError-family error naming the file, in plain words,
    with a small Python allocation peak."""
    tracemalloc.start()
    try:
        with pytest.raises(ValueError) as err:
            load(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    msg = str(err.value)
    assert os.path.basename(path) in msg, msg
    assert not any(name in msg for name in CLASS_NAMES), msg
    assert peak < 16 * 2**20, (peak, msg)
    return msg


def test_hostile_head_files(tmp_path, capsys):
    cases = head_cases(str(tmp_path))
    assert len(cases) >= 40
    for name, content in cases.items():
        path = str(tmp_path / f"{name}.safetensors")
        write(path, content)
        refuse(load_head, path)
    assert not (tmp_path / MARKER).exists(), "a pickle payload ran"
    with capsys.disabled():
        print(f"\n[hostile files] {len(cases)} malformed head files refused with readable errors")


def load_checkpoint(path):
    check_wan_state_dict(strip_checkpoint_prefixes(read_state_dict(path)), os.path.basename(path))


def test_hostile_checkpoint_files(tmp_path, capsys):
    cases = checkpoint_cases(str(tmp_path))
    check_wan_state_dict(WanDiT(tiny_config()).state_dict())     # torch's one-time imports, not the load
    for name, (suffix, content) in cases.items():
        path = str(tmp_path / f"{name}{suffix}")
        write(path, content)
        refuse(load_checkpoint, path)
    assert not (tmp_path / MARKER).exists(), "a pickle payload ran"
    with capsys.disabled():
        print(f"[hostile files] {len(cases)} malformed checkpoints refused with readable errors")


def test_a_good_head_still_loads(tmp_path):
    raw, _ = head_bytes()
    path = tmp_path / "good.safetensors"
    path.write_bytes(raw)
    head = load_head(path)
    assert head.rescores and head.config.rescore_inputs == ("entry", "newer", "age")
