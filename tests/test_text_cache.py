"""The persistent text-embedding cache (dslo.models.text_cache) and the faster first encoding, on
tiny random CLIPs saved and loaded through the real loader."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from dslo.models import create_logits_model
from dslo.models import text_cache as tc
from dslo.testing import make_tiny_clip

NAMES = ["sky", "road", "pedestrian", "sky", "traffic light"]
TEMPLATES = ("a photo of a {}.", "a {} in a video game.", "itap of the {}.")


@pytest.fixture(scope="module")
def clip_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    return {"a": make_tiny_clip(root / "a", seed=0), "b": make_tiny_clip(root / "b", seed=1)}


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DSLO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("DSLO_TEXT_CACHE", "1")
    return tmp_path / "cache" / "text"


def load(path, **kw):
    return create_logits_model(path, device="cpu", templates=kw.pop("templates", TEMPLATES), **kw)


def counting(model):
    """Count the names that are really encoded (not found in a cache)."""
    seen = []
    real = model._embed_names

    def spy(names):
        seen.extend(names)
        return real(names)

    model._embed_names = spy
    return seen


def files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.safetensors")) if root.exists() else []


def test_hit_in_a_new_model_and_miss_for_new_names(clip_dirs, cache):
    m1 = load(clip_dirs["a"])
    first = m1.text_embeddings(NAMES)
    assert len(files(cache)) == 4  # one file per distinct name
    m2 = load(clip_dirs["a"])  # a new process would see exactly this: an empty in-memory cache
    seen = counting(m2)
    again = m2.text_embeddings(NAMES)
    assert seen == [] and torch.equal(first, again)
    m2.text_embeddings(["bicycle", "sky"])
    assert seen == ["bicycle"]


def test_different_templates_or_weights_never_hit(clip_dirs, cache):
    load(clip_dirs["a"]).text_embeddings(NAMES)
    other_templates = load(clip_dirs["a"], templates=TEMPLATES[:2])
    seen = counting(other_templates)
    other_templates.text_embeddings(NAMES)
    assert seen == ["sky", "road", "pedestrian", "traffic light"]
    other_weights = load(clip_dirs["b"])
    seen = counting(other_weights)
    e_b = other_weights.text_embeddings(NAMES)
    assert len(seen) == 4
    assert not torch.allclose(e_b, load(clip_dirs["a"]).text_embeddings(NAMES))
    assert len({p.parent.parent for p in files(cache)}) == 2  # one folder per model
    assert len(files(cache)) == 12


def test_weights_changed_in_place_never_hit(clip_dirs, cache, tmp_path):
    import shutil

    d = tmp_path / "clip"
    shutil.copytree(clip_dirs["a"], d)
    e_a = load(d).text_embeddings(NAMES)
    shutil.copy(clip_dirs["b"] / "model.safetensors", d / "model.safetensors")  # same folder, new weights
    m = load(d)
    seen = counting(m)
    e_new = m.text_embeddings(NAMES)
    assert len(seen) == 4 and not torch.allclose(e_a, e_new)


def test_models_built_in_memory_are_keyed_by_their_parameters(clip_dirs, cache):
    m = load(clip_dirs["a"])
    m.identity = None  # as for a ClipLogitsModel built around an in-memory CLIPModel
    key = m.text_key()
    assert key.startswith("params:")
    with torch.no_grad():
        m.model.text_projection.weight.add_(1e-3)
    m.identity = None
    assert m.text_key() != key


def test_corrupted_and_foreign_files_are_ignored_and_replaced(clip_dirs, cache):
    ref = load(clip_dirs["a"]).text_embeddings(["sky", "road"])
    cache_obj = tc.TextEmbeddingCache(load(clip_dirs["a"]).text_key(), TEMPLATES)
    sky, road = cache_obj.path("sky"), cache_obj.path("road")
    sky.write_bytes(sky.read_bytes()[:40])  # a torn write
    road.write_bytes(b"not a safetensors file")
    assert cache_obj.get("sky") is None and cache_obj.get("road") is None
    m = load(clip_dirs["a"])
    seen = counting(m)
    torch.testing.assert_close(m.text_embeddings(["sky", "road"]), ref)
    assert sorted(seen) == ["road", "sky"]
    assert cache_obj.get("sky") is not None and cache_obj.get("road") is not None  # rewritten, valid
    # a well-formed file of another name at this name's path (e.g. a hash collision) is not trusted
    road.write_bytes(sky.read_bytes())
    assert cache_obj.get("road") is None
    # nor a file whose vector is not finite
    from safetensors.torch import save_file

    save_file({"embedding": torch.full((16,), float("nan"))}, str(sky), metadata=cache_obj._meta("sky"))
    assert cache_obj.get("sky") is None


def test_disabled_by_environment(clip_dirs, cache, monkeypatch):
    monkeypatch.setenv("DSLO_TEXT_CACHE", "0")
    load(clip_dirs["a"]).text_embeddings(NAMES)
    assert files(cache) == []


def test_bounded_size_drops_least_recently_used(tmp_path):
    c = tc.TextEmbeddingCache("m", TEMPLATES, root=tmp_path, max_bytes=10**9)
    c.put_many({f"n{i}": torch.randn(64) for i in range(10)})
    size = files(tmp_path)[0].stat().st_size
    for i in range(10):  # distinct ages, n0 oldest
        os.utime(c.path(f"n{i}"), (1000 + i, 1000 + i))
    assert c.get("n0") is not None  # a hit refreshes n0
    small = tc.TextEmbeddingCache("m", TEMPLATES, root=tmp_path, max_bytes=5 * size)
    small.put_many({"new": torch.randn(64)})
    left = {n for n in ["new"] + [f"n{i}" for i in range(10)] if small.path(n).is_file()}
    assert sum(p.stat().st_size for p in files(tmp_path)) <= 5 * size
    assert {"new", "n0"} <= left and "n1" not in left


def test_two_processes_writing_the_same_entries(clip_dirs, cache):
    script = textwrap.dedent(f"""
        import torch
        from dslo.models import create_logits_model
        m = create_logits_model({str(clip_dirs['a'])!r}, device="cpu", templates={TEMPLATES!r})
        e = m.text_embeddings({NAMES!r})
        print(e.sum().item())
    """)
    env = dict(os.environ, DSLO_TEXT_CACHE="1")
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    assert len(files(cache)) == 4 and not list(cache.rglob(".tmp*")) and not list(cache.rglob("*.tmp"))
    m = load(clip_dirs["a"])
    seen = counting(m)
    e = m.text_embeddings(NAMES)
    assert seen == []
    fresh = m._embed_names(list(dict.fromkeys(NAMES)))  # computed here, not read
    torch.testing.assert_close(e, torch.stack([fresh[n] for n in NAMES]))


def test_export_and_import_between_models(clip_dirs, cache, monkeypatch):
    monkeypatch.setenv("DSLO_TEXT_CACHE", "0")
    driver = load(clip_dirs["a"])
    shipped = driver.export_text_embeddings(NAMES)
    assert shipped.names == ("sky", "road", "pedestrian", "traffic light")
    back = tc.TextEmbeddings.from_bytes(shipped.to_bytes())
    assert back.key == shipped.key and back.names == shipped.names and torch.equal(back.vectors, shipped.vectors)
    worker = load(clip_dirs["a"])
    seen = counting(worker)
    worker.import_text_embeddings(back)
    torch.testing.assert_close(worker.text_embeddings(NAMES), driver.text_embeddings(NAMES))
    assert seen == []
    with pytest.raises(ValueError, match="same weights, dtype and templates"):
        load(clip_dirs["b"]).import_text_embeddings(back)
    with pytest.raises(ValueError, match="same weights, dtype and templates"):
        load(clip_dirs["a"], templates=TEMPLATES[:1]).import_text_embeddings(back)
    with pytest.raises(ValueError, match="not dslo text embeddings"):
        tc.TextEmbeddings.from_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")


def test_sorted_deduplicated_encoding_equals_one_prompt_at_a_time(clip_dirs):
    m = load(clip_dirs["a"], text_batch_size=3)
    texts = ["a photo of a sky.", "itap of the traffic light.", "a photo of a sky.", "x", "a road in a video game."]
    got = m._encode_texts(texts)
    with torch.no_grad():
        ref = []
        for t in texts:  # no padding at all
            tok = m.tokenizer([t], return_tensors="pt")
            pooled = m.model.text_model(**tok).pooler_output
            ref.append(torch.nn.functional.normalize(m.model.text_projection(pooled), dim=-1)[0])
    torch.testing.assert_close(got, torch.stack(ref), atol=1e-5, rtol=1e-5)


def test_cli_cache_info_and_clear(clip_dirs, cache, capsys):
    from dslo.cli import main

    load(clip_dirs["a"]).text_embeddings(NAMES)
    assert main(["cache", "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["text"]["entries"] == 4 and info["text"]["path"] == str(cache)
    assert main(["cache", "info"]) == 0
    assert "4 embeddings" in capsys.readouterr().out
    assert main(["cache", "clear"]) == 0
    assert files(cache) == [] and "removed 4" in capsys.readouterr().out
