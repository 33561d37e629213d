"""EventDataModule over tiny WebDataset shards written here: batch contract, skipping, splitting, mixing, seeds.

`tokenizer` is conftest's (session-wide open_clip BPE); the shards are hand-made here, not conftest's EventWorld ones.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from io import BytesIO
from pathlib import Path

import pytest
import torch
import webdataset as wds
from PIL import Image

from align.batch import _replacements
from align.data import CLIP_MEAN, CLIP_STD, EventDataModule
from align.ontology import Ontology
from align.schema import NEGATIVE_KINDS, Argument, Description, Event, Negative, Region, Sample, Trigger
from align.shardlist import shard_sizes

W, H, SIZE = 64, 48, 32


def jpeg(color: tuple[int, int, int]) -> bytes:
    buf = BytesIO()
    Image.new("RGB", (W, H), color).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def attack_sample(key: str, n_neg: int = 4) -> Sample:
    """Salient Conflict.Attack with boxed Attacker/Target, an unboxed Place, and a second (Meet) event."""
    attack = Event("Conflict.Attack", Trigger("attacked"), [
        Argument("Attacker", "soldiers", box=(0, 0, 32, 24)),
        Argument("Target", "a building", box=(32, 24, 64, 48)),
        Argument("Place", "Kyiv"),
    ])
    meet = Event("Contact.Meet", Trigger("met"), [Argument("Participant", "leaders")])
    negatives = [
        Negative("type_swap", f"{key}: soldiers met a building", {"type": ["Conflict.Attack", "Contact.Meet"]}),
        Negative("role_swap", f"{key}: a building attacked soldiers", {"roles": ["Attacker", "Target"]}),
        Negative("arg_replace", f"{key}: soldiers attacked a hospital", {"Target": ["a building", "a hospital"]}),
        Negative("arg_replace", f"{key}: police attacked a building", {"role": "Attacker", "new": "police"}),
    ][:n_neg]
    return Sample(
        key=key, caption=f"Soldiers attacked a building in Kyiv ({key}).", width=W, height=H,
        events=[attack, meet], salient=0,
        positives=[Description("long", f"long {key}"), Description("short", f"short {key}")],
        negatives=negatives,
        regions=[Region((0, 0, 64, 48), "scene", 0.1, "grid"), Region((0, 0, 32, 24), "person", 0.9, "detector"),
                 Region((32, 24, 64, 48), "building", 0.8, "detector")],
    )


def plain_sample(key: str) -> Sample:
    return Sample(key=key, caption=f"a quiet street {key}", width=W, height=H)


def write_shards(folder: Path, prefix: str, n_shards: int, per_shard: int, *, manifest: str | None = "manifest.json",
                 extra: dict[int, list[dict]] | None = None) -> str:
    """Write shards of attack samples (extra raw members prepended per shard); return the brace pattern."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(prefix)
    entries = []
    for s in range(n_shards):
        name = f"{prefix}-{s:06d}.tar"
        with wds.TarWriter(str(folder / name)) as tw:
            bad = (extra or {}).get(s, [])
            for raw in bad:
                tw.write(raw)
            for i in range(per_shard):
                sample = attack_sample(f"{prefix}{s:02d}{i:03d}", n_neg=1 + (i % 4))
                color = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
                tw.write({"__key__": sample.key, "jpg": jpeg(color), "json": sample.to_json().encode()})
        entries.append({"name": name, "num_samples": per_shard})
    if manifest:
        (folder / manifest).write_text(json.dumps({"shards": entries}))
    return str(folder / f"{prefix}-{{000000..{n_shards - 1:06d}}}.tar")


def make_dm(tokenizer, **kw) -> EventDataModule:
    args = {"batch_size": 4, "num_workers": 0, "image_size": SIZE, "shuffle_buffer": 20} | kw
    dm = EventDataModule(**args)
    dm.tokenizer = tokenizer
    return dm


def keys_of(loader) -> list[str]:
    return [k for batch in loader for k in batch["keys"]]


# --------------------------------------------------------------------------- batch contract
def test_batch_shapes_masks_and_content(tmp_path, tokenizer):
    folder = tmp_path / "s"
    folder.mkdir()
    with wds.TarWriter(str(folder / "val-000000.tar")) as tw:
        for sample, color in ((attack_sample("a0", n_neg=4), (200, 30, 30)), (attack_sample("a1", n_neg=1), (0, 0, 0)),
                              (plain_sample("p0"), (30, 200, 30))):
            tw.write({"__key__": sample.key, "jpg": jpeg(color), "json": sample.to_json().encode()})
    dm = make_dm(tokenizer, val=str(folder / "val-000000.tar"), num_negatives=3, max_regions=2, max_arguments=4,
                 num_arg_negatives=3, positive_kinds=("long", "caption", "llm"))
    (batch,) = list(dm.val_dataloader())
    B, L = 3, tokenizer(["x"]).shape[-1]
    assert batch["keys"] == ["a0", "a1", "p0"]
    expected = {"images": (B, 3, SIZE, SIZE), "pos_tokens": (B, 3, L), "pos_mask": (B, 3), "neg_tokens": (B, 3, L),
                "neg_mask": (B, 3), "neg_kinds": (B, 3), "boxes": (B, 2, 4), "box_mask": (B, 2),
                "arg_tokens": (B, 4, L), "arg_mask": (B, 4), "arg_boxes": (B, 4, 4), "arg_box_mask": (B, 4),
                "arg_region": (B, 4), "event_type": (B,), "neg_arg_tokens": (B, 3, 4, L), "neg_arg_mask": (B, 3),
                "neg_arg_kinds": (B, 3)}
    for name, shape in expected.items():
        assert tuple(batch[name].shape) == shape, name
    assert batch["images"].dtype == torch.float32 and batch["pos_tokens"].dtype == torch.long

    # Images are resized and normalised: undo the normalisation and compare with the JPEG colour.
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    rgb = (batch["images"][0] * std + mean).mean(dim=(1, 2))
    assert torch.allclose(rgb, torch.tensor([200, 30, 30]) / 255, atol=0.05)

    def tok(text: str) -> torch.Tensor:
        return tokenizer([text])[0]

    # Positives: slot i = kind i; "caption" falls back to the record caption; "llm" is absent -> masked.
    assert batch["pos_mask"].tolist() == [[True, True, False]] * 3
    assert torch.equal(batch["pos_tokens"][0, 0], tok("long a0"))
    assert torch.equal(batch["pos_tokens"][0, 1], tok(attack_sample("a0").caption))
    assert torch.equal(batch["pos_tokens"][2, 0], tok("a quiet street p0"))  # primary falls back to the caption
    assert not batch["pos_tokens"][0, 2].any()

    # K fixed with a mask; balanced over kinds; padding kind -1.
    assert batch["neg_mask"].tolist() == [[True, True, True], [True, False, False], [False, False, False]]
    kinds = batch["neg_kinds"][0].tolist()
    assert len(set(kinds)) == 3 and all(0 <= k < len(NEGATIVE_KINDS) for k in kinds)
    assert batch["neg_kinds"][1].tolist() == [NEGATIVE_KINDS.index("type_swap"), -1, -1]

    # Regions: top-R by score, scaled to the resized image (64x48 -> 32x32).
    assert batch["box_mask"].tolist() == [[True, True]] * 2 + [[False, False]]
    assert batch["boxes"][0].tolist() == [[0, 0, 16, 16], [16, 16, 32, 32]]
    assert batch["box_labels"][0] == ["person", "building"] and batch["box_labels"][2] == []

    # Salient event and its arguments.
    assert batch["event_type"].tolist() == [Ontology.default().type_names.index("Conflict.Attack")] * 2 + [-1]
    assert batch["arg_mask"][0].tolist() == [True, True, True, False] and not batch["arg_mask"][2].any()
    assert torch.equal(batch["arg_tokens"][0, 1], tok("Target: a building"))
    assert batch["arg_box_mask"][0].tolist() == [True, True, False, False]
    assert batch["arg_boxes"][0, 1].tolist() == [16, 16, 32, 32]
    assert batch["arg_region"][0].tolist() == [0, 1, -1, -1]

    # Argument negatives: 3 role swaps + 2 replacements available, kinds alternate, per-argument mask = arg_mask.
    rs, ar = NEGATIVE_KINDS.index("role_swap"), NEGATIVE_KINDS.index("arg_replace")
    assert batch["neg_arg_mask"][0].all() and sorted(batch["neg_arg_kinds"][0].tolist()) == sorted([rs, rs, ar])
    assert batch["neg_arg_kinds"][1].tolist().count(ar) == 0  # a1 has no arg_replace negative: swaps only
    assert not batch["neg_arg_mask"][2].any() and batch["neg_arg_kinds"][2].tolist() == [-1, -1, -1]
    gold = [tok(t) for t in ("Attacker: soldiers", "Target: a building", "Place: Kyiv")]
    replacements = {tuple(tok(t).tolist()) for t in ("Target: a hospital", "Attacker: police")}
    for j in range(3):
        rows = batch["neg_arg_tokens"][0, j]
        changed = [m for m in range(3) if not torch.equal(rows[m], gold[m])]
        assert not rows[3].any()
        if batch["neg_arg_kinds"][0, j] == rs:
            assert len(changed) == 2  # two roles exchanged their texts
        else:
            assert len(changed) == 1 and tuple(rows[changed[0]].tolist()) in replacements


def test_arg_replace_changed_forms():
    assert _replacements({"Target": ["a building", "a hospital"]}) == [("Target", "a hospital")]
    assert _replacements({"role": "Attacker", "new": "police"}) == [("Attacker", "police")]
    assert _replacements({"arguments": [{"role": "Place", "to": "Paris"}]}) == [("Place", "Paris")]
    assert _replacements("nonsense") == [] and _replacements({"role": 3}) == []


def test_negatives_deterministic_per_seed(tmp_path, tokenizer):
    pattern = write_shards(tmp_path, "val", 1, 8)
    first = [b["neg_tokens"] for b in make_dm(tokenizer, val=pattern, num_negatives=2).val_dataloader()]
    again = [b["neg_tokens"] for b in make_dm(tokenizer, val=pattern, num_negatives=2).val_dataloader()]
    other = [b["neg_tokens"] for b in make_dm(tokenizer, val=pattern, num_negatives=2, seed=7).val_dataloader()]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


# --------------------------------------------------------------------------- corrupt input
@pytest.mark.parametrize("num_workers", [0, 2])
def test_corrupt_samples_are_skipped_and_counted(tmp_path, tokenizer, caplog, num_workers):
    good = attack_sample("schemabad")
    bad_schema = good.to_dict() | {"width": "wide"}
    extra = {
        0: [{"__key__": "badjpeg", "jpg": b"\xff\xd8 not a jpeg", "json": attack_sample("badjpeg").to_json().encode()},
            {"__key__": "badjson", "jpg": jpeg((1, 2, 3)), "json": b'{"key": "badjson", '}],
        1: [{"__key__": "nojson", "jpg": jpeg((1, 2, 3))},
            {"__key__": "schemabad", "jpg": jpeg((1, 2, 3)), "json": json.dumps(bad_schema).encode()}],
    }
    pattern = write_shards(tmp_path, "val", 2, 5, extra=extra)
    dm = make_dm(tokenizer, val=pattern, num_workers=num_workers)
    with caplog.at_level(logging.WARNING, logger="align.data"):
        keys = keys_of(dm.val_dataloader())
    assert sorted(keys) == sorted(f"val{s:02d}{i:03d}" for s in range(2) for i in range(5))
    assert dm.skipped == Counter({"bad_image": 1, "bad_json": 1, "missing_member": 1, "schema": 1})
    if num_workers == 0:  # worker processes log to their own handlers
        text = caplog.text
        assert "badjpeg" in text and "val-000000.tar" in text and "'width'" in text


def test_unreadable_shard_is_skipped(tmp_path, tokenizer):
    pattern = write_shards(tmp_path, "val", 2, 3)
    (tmp_path / "val-000001.tar").write_bytes(b"this is not a tar file" * 50)
    dm = make_dm(tokenizer, val=pattern)
    assert sorted(keys_of(dm.val_dataloader())) == [f"val00{i:03d}" for i in range(3)]
    assert dm.skipped["tar"] >= 1


# --------------------------------------------------------------------------- splitting and lengths
def test_val_sees_each_key_once_with_workers_and_ranks(tmp_path, tokenizer, monkeypatch):
    pattern = write_shards(tmp_path, "val", 5, 7)
    everything = {f"val{s:02d}{i:03d}" for s in range(5) for i in range(7)}
    loader = make_dm(tokenizer, val=pattern, batch_size=3, num_workers=2).val_dataloader()
    keys = keys_of(loader)
    assert len(keys) == len(set(keys)) == 35 and set(keys) == everything
    # Lengths from the manifest: worker 0 gets shards 0,2,4 (21 -> 7 batches), worker 1 shards 1,3 (14 -> 5).
    assert len(loader) == 12 == sum(1 for _ in loader)
    per_rank = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        per_rank.append(keys_of(make_dm(tokenizer, val=pattern, num_workers=2).val_dataloader()))
    assert not set(per_rank[0]) & set(per_rank[1]) and set(per_rank[0]) | set(per_rank[1]) == everything


def test_manifest_forms(tmp_path, tokenizer):
    a = write_shards(tmp_path / "a", "val", 2, 3, manifest=None)
    (tmp_path / "a" / "sizes.json").write_text(json.dumps({"val-000000.tar": 3, "val-000001.tar": 3}))
    assert len(make_dm(tokenizer, val=a).val_dataloader()) == 2
    b = write_shards(tmp_path / "b", "val", 2, 3, manifest=None)
    (tmp_path / "b" / "manifest.json").write_text("{broken")
    assert shard_sizes([str(tmp_path / "b" / "val-000000.tar")]) == {}
    loader = make_dm(tokenizer, val=b).val_dataloader()
    with pytest.raises(TypeError):
        len(loader)  # unknown length: Lightning then runs the loader to exhaustion
    assert len(keys_of(loader)) == 6


def test_train_resampled_equal_batches_per_rank(tmp_path, tokenizer, monkeypatch):
    pattern = write_shards(tmp_path, "train", 3, 6)
    seen = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        loader = make_dm(tokenizer, train=pattern, samples_per_epoch=40, num_workers=2).train_dataloader()
        batches = list(loader)
        assert len(loader) == len(batches) == 40 // (4 * 2)
        assert all(len(b["keys"]) == 4 for b in batches)
        seen.append([k for b in batches for k in b["keys"]])
    assert seen[0] != seen[1]  # seeds differ per rank


def test_train_default_epoch_from_manifest(tmp_path, tokenizer):
    loader = make_dm(tokenizer, train=write_shards(tmp_path, "train", 2, 6)).train_dataloader()
    assert len(loader) == 3 == sum(1 for _ in loader)


def test_two_sources_mix_by_weight(tmp_path, tokenizer):
    a = write_shards(tmp_path / "a", "a", 2, 10)
    b = write_shards(tmp_path / "b", "b", 2, 10)
    keys = keys_of(make_dm(tokenizer, train=[a, b], train_weights=[0.8, 0.2], samples_per_epoch=240,
                           batch_size=8).train_dataloader())
    share = sum(k.startswith("a") for k in keys) / len(keys)
    assert len(keys) == 240 and 0.65 < share < 0.92
    only_a = keys_of(make_dm(tokenizer, train=[a, b], train_weights=[1, 0], samples_per_epoch=40).train_dataloader())
    assert all(k.startswith("a") for k in only_a)


def test_seeds_differ_per_epoch_and_repeat_per_seed(tmp_path, tokenizer):
    pattern = write_shards(tmp_path, "train", 3, 6)
    loader = make_dm(tokenizer, train=pattern, samples_per_epoch=24).train_dataloader()
    epoch0, epoch1 = keys_of(loader), keys_of(loader)
    assert epoch0 != epoch1
    assert keys_of(make_dm(tokenizer, train=pattern, samples_per_epoch=24).train_dataloader()) == epoch0


def test_train_without_resampling_reads_each_shard_once(tmp_path, tokenizer):
    pattern = write_shards(tmp_path, "train", 3, 8)
    loader = make_dm(tokenizer, train=pattern, resampled=False, num_workers=2).train_dataloader()
    keys = keys_of(loader)
    assert len(loader) == 6 == len(keys) // 4 and len(set(keys)) == len(keys)


# --------------------------------------------------------------------------- configuration errors
def test_configuration_errors(tmp_path, tokenizer):
    with pytest.raises(FileNotFoundError, match="train-000001"):
        make_dm(tokenizer, train=str(tmp_path / "train-{000000..000001}.tar"), samples_per_epoch=8).train_dataloader()
    with pytest.raises(ValueError, match="positive_kinds"):
        EventDataModule(positive_kinds=("poem",))
    pattern = write_shards(tmp_path, "val", 1, 2)
    with pytest.raises(RuntimeError, match="tokenizer"):
        EventDataModule(val=pattern).val_dataloader()
    with pytest.raises(ValueError, match="train_weights"):
        make_dm(tokenizer, train=[pattern, pattern], train_weights=[1.0]).train_dataloader()
    with pytest.raises(ValueError, match="samples_per_epoch"):
        make_dm(tokenizer, train=write_shards(tmp_path / "x", "t", 1, 2, manifest=None)).train_dataloader()


# --------------------------------------------------------------------------- under a Lightning Trainer
def test_under_trainer_epochs_lengths_and_skip_counts(tmp_path, tokenizer):
    import lightning as L

    class Probe(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(3, 1)
            self.train_keys: dict[int, list[str]] = {}
            self.val_keys: dict[int, list[str]] = {}

        def setup(self, stage: str) -> None:
            self.trainer.datamodule.tokenizer = tokenizer  # what the real LightningModule does with model.tokenizer

        def training_step(self, batch, i):
            assert "skipped" not in batch
            self.train_keys.setdefault(self.current_epoch, []).extend(batch["keys"])
            return self.lin(batch["images"].mean((2, 3))).mean()

        def validation_step(self, batch, i):
            self.val_keys.setdefault(self.current_epoch, []).extend(batch["keys"])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    train = write_shards(tmp_path / "t", "train", 3, 6)
    val = write_shards(tmp_path / "v", "val", 2, 5, extra={1: [{"__key__": "bad", "jpg": b"xx", "json": b"{"}]})
    dm = EventDataModule(train=train, val=val, batch_size=4, num_workers=2, image_size=SIZE, samples_per_epoch=16)
    probe = Probe()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(probe, datamodule=dm)
    assert trainer.num_training_batches == 4 and trainer.num_val_batches == [4]  # 2 workers x ceil(5 / 4)
    assert [len(probe.train_keys[e]) for e in (0, 1)] == [16, 16] and probe.train_keys[0] != probe.train_keys[1]
    for e in (0, 1):
        assert sorted(probe.val_keys[e]) == sorted(f"val{s:02d}{i:03d}" for s in range(2) for i in range(5))
    assert dm.skipped == Counter({"bad_json": 2})  # one bad record, read by two validation runs


def test_negative_modes_keep_only_that_style():
    from align.batch import SampleEncoder
    from align.ontology import Ontology

    sample = attack_sample("m")
    for i, n in enumerate(sample.negatives):
        n.changed["mode"] = "template" if i % 2 else "caption_edit"
    kept = {n.text for n in sample.negatives if n.changed["mode"] == "template"}

    def encoder(modes):
        return SampleEncoder(image_size=SIZE, mean=(0, 0, 0), std=(1, 1, 1), positive_kinds=("long",),
                             negative_kinds=("type_swap", "role_swap", "arg_replace"), num_negatives=8,
                             max_regions=4, max_arguments=4, num_arg_negatives=0, ontology=Ontology.default(),
                             seed=0, max_image_pixels=10**8, negative_modes=modes)

    import random

    picked = {t for t, _ in encoder(("template",))._negatives(sample, random.Random(0))}
    assert picked == kept
    assert len(encoder(None)._negatives(sample, random.Random(0))) == len(sample.negatives)
    with pytest.raises(ValueError, match="negative_modes"):
        EventDataModule(negative_modes=("prose",))
