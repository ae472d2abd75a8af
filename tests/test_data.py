"""vlm_sft.data.loading: every accepted format round-trips to the same rows; every bad input is named precisely."""

from __future__ import annotations

import base64
import io
import json
import logging
import struct
import zlib
from pathlib import Path

import datasets
import pytest
from PIL import Image

from vlm_sft.data.loading import FEATURES, DataError, check_conversations, load_conversations, load_splits
from vlm_sft.training.config import VisionArguments

RED, BLUE = (200, 30, 30), (30, 30, 200)


# ---------------------------------------------------------------- helpers
def png(path: Path, color=RED, size=(8, 8), fmt: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, fmt)
    return path


def write_json(path: Path, value) -> Path:
    path.write_text(json.dumps(value, indent=1))
    return path


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def llava(question="<image>\nWhat color is it?", answer="Red.", image="a.png", **extra) -> dict:
    record = {"conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}], **extra}
    if image is not None:
        record["image"] = image
    return record


def error_lines(path: Path, **kwargs) -> list[str]:
    return [str(p) for p in check_conversations(path, **kwargs).problems if not p.warning]


def assert_reported(lines: list[str], *fragments: str) -> None:
    """One error line holds all the fragments (sample, field, what was expected)."""
    assert any(all(f in line for f in fragments) for line in lines), "\n".join(lines) or "no errors reported"


def undecoded(ds: datasets.Dataset) -> list[dict]:
    return ds.cast_column("images", datasets.List(datasets.Image(decode=False))).to_list()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    png(tmp_path / "a.png", RED)
    png(tmp_path / "b.png", BLUE, size=(12, 6))
    return tmp_path


# The same three samples in every format: multi-turn, multi-image with interleaved placeholders, text-only.
LLAVA = [
    {
        "id": "one",
        "image": "a.png",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat color is it?"},
            {"from": "gpt", "value": "Red."},
            {"from": "human", "value": "Are you sure?"},
            {"from": "gpt", "value": "Yes, it is red."},
        ],
    },
    {
        "id": "two",
        "image": ["a.png", "b.png"],
        "conversations": [
            {"from": "human", "value": "First: <image>\nSecond: <image>\nWhich is blue?"},
            {"from": "gpt", "value": "The second."},
        ],
    },
    {"id": "three", "conversations": [{"from": "user", "value": "Hi"}, {"from": "assistant", "value": "Hello."}]},
]
MESSAGES = [
    {
        "id": "one",
        "images": ["a.png"],
        "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color is it?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Red."}]},
            {"role": "user", "content": "Are you sure?"},
            {"role": "assistant", "content": "Yes, it is red."},
        ],
    },
    {
        "id": "two",
        "images": ["a.png", "b.png"],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "First: "},
                    {"type": "image"},
                    {"type": "text", "text": "Second: "},
                    {"type": "image", "text": None},
                    {"type": "text", "text": "Which is blue?"},
                ],
            },
            {"role": "assistant", "content": "The second."},
        ],
    },
    {
        "id": "three",
        "images": [],
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": [{"type": "text", "text": "Hello."}]},
        ],
    },
]


# ---------------------------------------------------------------- formats and round trips
def test_llava_rows_follow_the_contract(folder):
    ds = load_conversations(write_json(folder / "train.json", LLAVA))
    assert ds.features == FEATURES
    assert len(ds) == 3
    two = ds[1]
    assert two["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "First: "},
                {"type": "image", "text": None},
                {"type": "text", "text": "Second: "},
                {"type": "image", "text": None},
                {"type": "text", "text": "Which is blue?"},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "The second."}]},
    ]
    assert [im.size for im in two["images"]] == [(8, 8), (12, 6)]  # decoded PIL images, in placeholder order
    assert two["images"][1].convert("RGB").getpixel((0, 0)) == BLUE
    assert [m["role"] for m in ds[0]["messages"]] == ["user", "assistant", "user", "assistant"]
    assert ds[0]["messages"][0]["content"] == [
        {"type": "image", "text": None},
        {"type": "text", "text": "What color is it?"},
    ]
    assert ds[2]["images"] == [] and ds[2]["messages"][1]["content"][0]["text"] == "Hello."


@pytest.mark.parametrize("records, writer", [(LLAVA, write_jsonl), (MESSAGES, write_json), (MESSAGES, write_jsonl)])
def test_every_file_format_gives_the_same_dataset(folder, records, writer):
    reference = load_conversations(write_json(folder / "ref.json", LLAVA))
    other = load_conversations(writer(folder / f"data.{'jsonl' if writer is write_jsonl else 'json'}", records))
    assert other.features == reference.features
    assert undecoded(other) == undecoded(reference)


def test_json_lines_in_a_json_file_and_a_single_object_are_read(folder):
    reference = undecoded(load_conversations(write_json(folder / "ref.json", LLAVA)))
    assert undecoded(load_conversations(write_jsonl(folder / "lines.json", LLAVA))) == reference
    one = folder / "one.json"
    one.write_text(json.dumps(LLAVA[0], indent=2))
    assert undecoded(load_conversations(one)) == reference[:1]


def test_openai_inline_image_parts(folder):
    data_url = "data:image/png;base64," + base64.b64encode((folder / "b.png").read_bytes()).decode()
    record = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": "a.png"}},
                    {"type": "image_url", "image_url": {"url": data_url}},
                    {"type": "text", "text": "Compare."},
                ],
            },
            {"role": "assistant", "content": "Red, then blue."},
        ]
    }
    ds = load_conversations(write_json(folder / "openai.json", [record]))
    images = ds[0]["images"]
    assert [im.convert("RGB").getpixel((0, 0)) for im in images] == [RED, BLUE]
    assert [p["type"] for p in ds[0]["messages"][0]["content"]] == ["image", "image", "text"]


def test_save_to_disk_folder_and_dataset_dict(folder):
    reference = load_conversations(write_json(folder / "ref.json", LLAVA))
    reference.save_to_disk(str(folder / "saved"))
    loaded = load_conversations(folder / "saved")
    assert loaded["messages"] == reference["messages"]
    assert [[im.tobytes() for im in row] for row in loaded["images"]] == [
        [im.tobytes() for im in row] for row in reference["images"]
    ]
    datasets.DatasetDict({"train": reference, "test": reference.select([2])}).save_to_disk(str(folder / "dict"))
    train, evaluation = load_splits(VisionArguments(train_file=str(folder / "dict"), eval_file=str(folder / "dict")))
    assert (len(train), len(evaluation)) == (3, 1)


def _cache_as_hub_dataset(ds: datasets.Dataset, cache: Path, repo_id: str) -> None:
    """Put `ds` in a datasets cache exactly where a previous online `load_dataset(repo_id)` would have."""
    from datasets.data_files import DataFilesDict
    from datasets.packaged_modules.parquet.parquet import Parquet

    ds.to_parquet(str(cache / "data.parquet"))
    name = repo_id.split("/")[1]
    files = DataFilesDict.from_patterns({"train": [str(cache / "data.parquet")]})
    Parquet(cache_dir=str(cache), dataset_name=name, data_files=files, hash="0123abcd").download_and_prepare()
    for config_dir in (cache / name).glob("default-*"):
        config_dir.rename(cache / name / "default")
    (cache / name).rename(cache / repo_id.replace("/", "___"))


def test_hub_dataset_from_the_local_cache(folder, monkeypatch):
    reference = load_conversations(write_json(folder / "ref.json", LLAVA))
    cache = folder / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    rows = undecoded(reference)
    for row in rows:  # Hub datasets carry the image bytes, with the original file name as path
        row["images"] = [
            {"bytes": Path(im["path"]).read_bytes(), "path": Path(im["path"]).name} for im in row["images"]
        ]
    _cache_as_hub_dataset(datasets.Dataset.from_list(rows, features=FEATURES), cache, "lab/workbench")
    (folder / "a.png").unlink()  # the cached dataset carries the image bytes itself
    (folder / "b.png").unlink()
    hub = load_conversations("lab/workbench")
    assert hub["messages"] == reference["messages"]
    assert hub[1]["images"][1].convert("RGB").getpixel((0, 0)) == BLUE
    assert_reported(error_lines("lab/not-cached"), "lab/not-cached", "Hub dataset", "HF_HUB_OFFLINE")


def test_system_prompt_goes_to_samples_without_one(folder):
    records = [llava(), {**llava(), "conversations": [{"from": "system", "value": "Own."}, *llava()["conversations"]]}]
    ds = load_conversations(write_json(folder / "s.json", records), system_prompt="Be brief.")
    assert ds[0]["messages"][0] == {"role": "system", "content": [{"type": "text", "text": "Be brief."}]}
    assert ds[1]["messages"][0]["content"][0]["text"] == "Own."
    assert [m["role"] for m in ds[1]["messages"]] == ["system", "user", "assistant"]


def test_image_dir_overrides_the_file_folder(folder, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("data")
    path = write_json(elsewhere / "train.json", [llava()])
    assert_reported(error_lines(path), "sample 0", "field image", "does not exist")
    assert len(load_conversations(path, image_dir=folder)) == 1


# ---------------------------------------------------------------- splits
def test_load_splits_eval_file_and_seeded_fraction(folder):
    records = [llava(answer=f"Red {i}.") for i in range(10)]
    train_file = str(write_json(folder / "train.json", records))
    eval_file = str(write_json(folder / "eval.json", [llava(answer="Held out.")]))
    train, evaluation = load_splits(VisionArguments(train_file=train_file, eval_file=eval_file))
    assert (len(train), len(evaluation)) == (10, 1)
    assert load_splits(VisionArguments(train_file=train_file))[1] is None

    args = VisionArguments(train_file=train_file, eval_fraction=0.2)
    first, second = load_splits(args, seed=1), load_splits(args, seed=1)
    assert (len(first[0]), len(first[1])) == (8, 2)
    assert first[1]["messages"] == second[1]["messages"]  # same seed, same held-out samples
    held_out = {m[1]["content"][0]["text"] for m in first[1]["messages"]}
    assert held_out.isdisjoint(m[1]["content"][0]["text"] for m in first[0]["messages"])
    other_seeds = [{m[1]["content"][0]["text"] for m in load_splits(args, seed=s)[1]["messages"]} for s in (2, 3, 4)]
    assert any(s != held_out for s in other_seeds)


def test_load_splits_reports_both_files_at_once(folder):
    train_file = write_json(folder / "train.json", [llava(answer="")])
    eval_file = write_json(folder / "eval.json", [llava(image="missing.png")])
    with pytest.raises(DataError) as err:
        load_splits(VisionArguments(train_file=str(train_file), eval_file=str(eval_file)))
    text = str(err.value)
    assert "train.json, sample 0" in text and "conversations[1].value" in text
    assert "eval.json, sample 0" in text and "missing.png" in text
    assert len(err.value.problems) == 2


def test_load_splits_refuses_an_impossible_fraction_and_a_missing_train_file(folder):
    path = str(write_json(folder / "train.json", [llava()]))
    with pytest.raises(DataError, match="eval_fraction=0.5 cannot split 1 samples"):
        load_splits(VisionArguments(train_file=path, eval_fraction=0.5))
    with pytest.raises(DataError, match="train_file is not set"):
        load_splits(VisionArguments())


def test_train_eval_leak_and_duplicates_are_warnings(folder, caplog):
    train_file = write_json(folder / "train.json", [llava(id="x"), llava(id="y"), llava(answer="Other.")])
    eval_file = write_json(folder / "eval.json", [llava(answer="Other.")])
    with caplog.at_level(logging.WARNING, logger="vlm_sft.data.loading"):
        train, evaluation = load_splits(VisionArguments(train_file=str(train_file), eval_file=str(eval_file)))
    assert (len(train), len(evaluation)) == (3, 1)  # warnings never block
    assert "sample 1 (id 'y')" in caplog.text and "exact duplicate of sample 0 (id 'x')" in caplog.text
    assert "eval.json, sample 0" in caplog.text and "is also sample 2 of the training data" in caplog.text


# ---------------------------------------------------------------- bad samples: each names sample and field
def _turns(*pairs) -> list[dict]:
    return [{"from": who, "value": text} for who, text in pairs]


BAD_SAMPLES = [
    # (case, record placed at index 1 after a good one, fragments one error line must hold)
    ("missing conversations", {"image": "a.png"}, ["field conversations", "missing key 'conversations'"]),
    (
        "misspelled conversations",
        {"image": "a.png", "conversation": []},
        ["field conversation", "did you mean 'conversations'"],
    ),
    ("misspelled image key", {**llava(image=None), "imgae": "a.png"}, ["field imgae", "did you mean 'image'"]),
    (
        "misspelled turn key",
        {
            "image": "a.png",
            "conversations": [{"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "valeu": "A."}],
        },
        ["field conversations[1].valeu", "did you mean 'value'"],
    ),
    (
        "unknown role",
        {"image": "a.png", "conversations": _turns(("human", "<image>\nQ?"), ("bot", "A."))},
        ["field conversations[1].from", "unknown role 'bot'"],
    ),
    (
        "misspelled role",
        llava(**{"conversations": _turns(("humna", "<image>\nQ?"), ("gpt", "A."))}),
        ["field conversations[0].from", "did you mean 'human'"],
    ),
    (
        "not alternating",
        llava(**{"conversations": _turns(("human", "<image>\nQ?"), ("human", "Q2?"), ("gpt", "A"))}),
        ["field conversations[1].from", "expected an assistant turn"],
    ),
    (
        "assistant first",
        llava(**{"conversations": _turns(("gpt", "Hello."), ("human", "<image>\nQ?"), ("gpt", "A"))}),
        ["field conversations[0].from", "expected a user turn"],
    ),
    (
        "not ending with assistant",
        llava(**{"conversations": _turns(("human", "<image>\nQ?"), ("gpt", "A."), ("human", "And?"))}),
        ["field conversations[2].from", "ends with a user turn"],
    ),
    (
        "system not first",
        llava(**{"conversations": _turns(("human", "<image>\nQ?"), ("system", "S"), ("gpt", "A"))}),
        ["field conversations[1].from", "system message is only allowed as the first"],
    ),
    ("empty reply", llava(answer=""), ["field conversations[1].value", "non-empty assistant reply"]),
    (
        "whitespace reply",
        llava(answer=" \n\t"),
        ["field conversations[1].value", "got an empty or whitespace-only text"],
    ),
    (
        "annotate placeholder",
        llava(answer="[ANNOTATE: the tools you see]"),
        ["field conversations[1].value", "unannotated placeholder '[ANNOTATE: the tools you see]'"],
    ),
    (
        "more placeholders than images",
        llava(question="<image>\n<image>\nQ?"),
        ["field image", "2 image placeholders in the conversation but 1 image listed"],
    ),
    (
        "more images than placeholders",
        llava(question="Q?", image=["a.png", "b.png"]),
        ["field image", "0 image placeholders in the conversation but 2 images listed"],
    ),
    (
        "near-miss placeholder",
        llava(question="<Image>\nQ?", image=None),
        ["field conversations[0].value", "'<Image>' looks like an image placeholder"],
    ),
    ("image in a reply", llava(answer="<image>\nThis."), ["field conversations[1].value", "an image in an assistant"]),
    ("missing image file", llava(image="nope.png"), ["field image", "'nope.png'", "does not exist"]),
    ("image path leaves the folder", llava(image="../a.png"), ["field image", "leaves the image folder"]),
    ("absolute image path", llava(image="/etc/hostname"), ["field image", "absolute path"]),
    ("image list entry not a path", llava(image=["a.png", 7]), ["field image[1]", "expected an image path"]),
    ("image not a path", llava(image={"x": 1}), ["field image", "expected an image path"]),
    ("both image and images", {**llava(), "images": ["a.png"]}, ["field image", "both 'image' and 'images'"]),
    ("sample not an object", ["a.png", "Q?"], ["sample 1", "expected a JSON object"]),
    (
        "conversations not a list",
        {"image": "a.png", "conversations": {"from": "human"}},
        ["field conversations", "expected a non-empty list of turns, got an object"],
    ),
    ("empty conversations", {"image": "a.png", "conversations": []}, ["field conversations", "got an empty list"]),
    (
        "turn not an object",
        {"conversations": ["hello", {"from": "gpt", "value": "A."}]},
        ["field conversations[0]", "expected a turn object"],
    ),
    ("value not a string", llava(answer=42), ["field conversations[1].value", "expected a string, got a number (42)"]),
    (
        "missing role key",
        {"conversations": [{"value": "Q?"}, {"from": "gpt", "value": "A."}]},
        ["field conversations[0].from", "missing key 'from'"],
    ),
]


@pytest.mark.parametrize("case, record, fragments", BAD_SAMPLES, ids=[c[0] for c in BAD_SAMPLES])
def test_bad_llava_sample_is_named(folder, case, record, fragments):
    path = write_json(
        folder / "bad.json", [llava(id="good"), {"id": "bad-1", **record} if isinstance(record, dict) else record]
    )
    lines = error_lines(path)
    assert_reported(lines, "bad.json", "sample 1", *fragments)
    assert not any("sample 0" in line for line in lines)  # the good neighbour is not blamed
    with pytest.raises(DataError):
        load_conversations(path)


BAD_MESSAGES = [
    (
        "unknown role",
        {"messages": [{"role": "bot", "content": "Hi"}, {"role": "assistant", "content": "A"}]},
        ["field messages[0].role", "unknown role 'bot'"],
    ),
    (
        "content not text",
        {"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "A"}]},
        ["field messages[0].content", "expected a string or a list of parts"],
    ),
    (
        "unsupported part",
        {"messages": [{"role": "user", "content": [{"type": "audio"}]}, {"role": "assistant", "content": "A"}]},
        ["field messages[0].content[0]", "type 'audio'"],
    ),
    (
        "remote url",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}],
                },
                {"role": "assistant", "content": "A"},
            ]
        },
        ["field messages[0].content[0]", "remote image URL", "never downloaded"],
    ),
    (
        "bad data url",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}],
                },
                {"role": "assistant", "content": "A"},
            ]
        },
        ["field messages[0].content[0]", "base64 payload is invalid"],
    ),
    (
        "images both listed and inline",
        {
            "images": ["a.png"],
            "messages": [
                {"role": "user", "content": [{"type": "image", "image": "b.png"}]},
                {"role": "assistant", "content": "A"},
            ],
        },
        ["field images", "both in this field and inline"],
    ),
    (
        "image part count",
        {
            "images": ["a.png", "b.png"],
            "messages": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]},
                {"role": "assistant", "content": "A"},
            ],
        },
        ["field images", "1 image placeholder in the conversation but 2 images listed"],
    ),
    (
        "misspelled content key",
        {"messages": [{"role": "user", "contents": "Q?"}, {"role": "assistant", "content": "A"}]},
        ["field messages[0].contents", "did you mean 'content'"],
    ),
    ("wrong format forced", llava(), ["field messages", "missing key 'messages'", "use --format auto"]),
]


@pytest.mark.parametrize("case, record, fragments", BAD_MESSAGES, ids=[c[0] for c in BAD_MESSAGES])
def test_bad_messages_sample_is_named(folder, case, record, fragments):
    good = {"id": "good", "messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]}
    path = write_jsonl(folder / "bad.jsonl", [good, {"id": "bad-1", **record}])
    kwargs = {"data_format": "messages"} if case == "wrong format forced" else {}
    assert_reported(error_lines(path, **kwargs), "bad.jsonl", "sample 1 (id 'bad-1')", "line 2", *fragments)


def test_all_problems_are_reported_at_once(folder):
    records = [llava(answer=""), llava(), llava(image="missing.png"), {"conversation": []}, llava(answer="[ANNOTATE]")]
    with pytest.raises(DataError) as err:
        load_conversations(write_json(folder / "bad.json", records))
    samples = {p.index for p in err.value.problems}
    assert samples == {0, 2, 3, 4}
    assert "4 errors in 4 samples" in str(err.value)


# ---------------------------------------------------------------- images: broken, hostile, huge
def _png_bytes(color=RED, size=(64, 64)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def _forged_png(width: int, height: int) -> bytes:
    """A valid PNG header that claims width x height: PIL reads the size before decoding anything."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 40).convert("RGB").save(buf, "JPEG")
    return buf.getvalue()


def _corrupt_png() -> bytes:
    data = bytearray(_png_bytes())
    data[data.index(b"IDAT") + 8] ^= 0xFF  # one flipped byte inside the pixel data
    return bytes(data)


BAD_IMAGES = [
    ("truncated png", lambda: _png_bytes()[:60], "is corrupt or truncated"),
    ("truncated jpeg", lambda: _jpeg_bytes()[:-100], "is corrupt or truncated"),  # header intact: only load() sees it
    ("corrupt png", _corrupt_png, "is corrupt or truncated"),
    ("not an image", lambda: b"just some text, not pixels", "is not an image that PIL can read"),
    ("empty file", lambda: b"", "is not an image that PIL can read"),
    ("decompression bomb", lambda: _forged_png(50_000, 50_000), "decompression bomb"),
    ("over the pixel limit", lambda: _forged_png(12_000, 12_000), "over the limit of 89,478,485"),
]


@pytest.mark.parametrize("case, make, fragment", BAD_IMAGES, ids=[c[0] for c in BAD_IMAGES])
def test_bad_image_file_is_refused(folder, case, make, fragment):
    (folder / "bad.png").write_bytes(make())
    path = write_json(
        folder / "data.json", [llava(), llava(image=["a.png", "bad.png"], question="<image>\n<image>\nQ?")]
    )
    assert_reported(error_lines(path), "sample 1", "field image[1]", "'bad.png'", fragment)


def test_pixel_limit_is_configurable(folder):
    path = write_json(folder / "data.json", [llava()])
    assert error_lines(path) == []
    assert_reported(error_lines(path, max_pixels=63), "sample 0", "field image", "8 x 8 = 64 pixels, over the limit")


def test_folders_and_symlinks_out_of_the_image_folder_are_refused(folder, tmp_path_factory):
    outside = png(tmp_path_factory.mktemp("outside") / "secret.png")
    (folder / "images").mkdir()
    (folder / "images" / "link.png").symlink_to(outside)
    png(folder / "images" / "ok.png")
    (folder / "images" / "inside.png").symlink_to(folder / "images" / "ok.png")
    (folder / "images" / "dir.png").mkdir()
    records = [
        llava(image="link.png"),
        llava(image="inside.png"),
        llava(image="dir.png"),
        llava(image="sub/../ok.png"),
        llava(image="../a.png"),
    ]
    lines = error_lines(write_json(folder / "data.json", records), image_dir=folder / "images")
    assert_reported(lines, "sample 0", "field image", "symbolic link", "outside the image folder")
    assert_reported(lines, "sample 2", "field image", "is a folder")
    assert_reported(lines, "sample 4", "field image", "'../a.png' leaves the image folder")
    assert not any("sample 1" in line or "sample 3" in line for line in lines)  # links and '..' that stay inside


def test_image_dicts_in_user_json_are_checked_like_paths(folder, tmp_path_factory):
    """Only `datasets` rows may hold {"path": absolute}; in a user's JSON a dict path must stay in the folder."""
    outside = png(tmp_path_factory.mktemp("outside") / "outside.png")
    (folder / "images").mkdir()
    png(folder / "images" / "ok.png")
    inline = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image", "image": {"path": str(outside)}}, {"type": "text", "text": "Q"}],
            },
            {"role": "assistant", "content": "A"},
        ]
    }
    records = [
        llava(image={"path": str(outside)}),
        inline,
        llava(image=[{"path": "../a.png"}]),
        llava(image={"path": "ok.png"}),
        llava(image={"bytes": list((folder / "b.png").read_bytes()), "path": str(outside)}),
        llava(image={"bytes": 7}),
    ]
    lines = error_lines(write_json(folder / "data.json", records), image_dir=folder / "images")
    assert_reported(lines, "sample 0", "field image", repr(str(outside)), "absolute path")
    assert_reported(lines, "sample 1", "field messages[0].content[0]", repr(str(outside)), "absolute path")
    assert_reported(lines, "sample 2", "field image[0]", "'../a.png' leaves the image folder")
    assert_reported(lines, "sample 5", "field image", "expected 'bytes' as base64 text or a list of byte values")
    assert not any("sample 3" in line or "sample 4" in line for line in lines)  # inside the folder; bytes only
    with pytest.raises(DataError, match="sample 0.*field image.*absolute path"):
        load_conversations(write_json(folder / "one.json", records[:1]), folder / "images")
    ds = load_conversations(write_json(folder / "ok.json", records[3:5]), folder / "images")
    assert ds[1]["images"][0].convert("RGB").getpixel((0, 0)) == BLUE  # the bytes, never the path beside them


def test_sample_ids_survive_validation(folder):
    ds = load_conversations(write_json(folder / "ids.json", [llava(id=7), llava(answer="Blue.")]))
    assert ds["id"] == ["7", None]


# ---------------------------------------------------------------- malformed files: line and column
def test_malformed_json_names_line_column_and_sample(folder):
    text = json.dumps([llava(), llava(answer="Blue.")], indent=1).replace('"Blue."', '"Blue." "x"')
    path = folder / "bad.json"
    path.write_text(text)
    (problem,) = check_conversations(path).problems
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if '"x"' in ln)
    assert (problem.index, problem.line, problem.column) == (1, line, text.splitlines()[line - 1].index('"x"') + 1)
    assert "invalid JSON: Expecting ',' delimiter" in str(problem) and "field value" in str(problem)


def test_missing_comma_between_samples(folder):
    path = folder / "bad.json"
    path.write_text("[\n" + json.dumps(llava()) + "\n" + json.dumps(llava()) + "\n]")
    assert_reported(
        error_lines(path), "bad.json", "sample 0", "line 3, column 1", "expected ',' between samples or ']'"
    )


@pytest.mark.parametrize(
    "text, fragments",
    [
        ("[" + json.dumps(llava()) + ",\n]", ["sample 0", "line 2, column 1", "trailing comma"]),
        ("[" + json.dumps(llava()), ["sample 0", "the file ends too early"]),
        ("[" + json.dumps(llava()) + "] []", ["line 1", "extra data after the list"]),
        ('"just a string"', ["line 1, column 1", "expected a JSON list of samples"]),
        ("   \n", ["is empty"]),
        ("[" + json.dumps(llava())[:-1] + ', "id": }]', ["sample 0", "field id", "invalid JSON: Expecting value"]),
    ],
)
def test_malformed_json_files(folder, text, fragments):
    path = folder / "bad.json"
    path.write_text(text)
    assert_reported(error_lines(path), "bad.json", *fragments)


def test_malformed_jsonl_lines_are_all_reported(folder):
    good = json.dumps(llava())
    path = folder / "bad.jsonl"
    path.write_text(f"{good}\n{good[:-1]}\n\n{{'single': 'quotes'}}\n{good}\n")
    lines = error_lines(path)
    assert_reported(lines, "sample 1", "line 2, column", "invalid JSON")
    assert_reported(lines, "sample 2", "line 4, column 2", "invalid JSON: Expecting property name")
    assert len(lines) == 2


def test_not_utf8_and_missing_files(folder):
    path = folder / "latin1.json"
    path.write_bytes(json.dumps([llava(answer="caf\u00e9")], ensure_ascii=False).encode("latin-1"))
    assert_reported(error_lines(path), "latin1.json", "is not UTF-8")
    assert_reported(error_lines(folder / "none.json"), "none.json", "does not exist")
    (folder / "plain").mkdir()
    assert_reported(error_lines(folder / "plain"), "plain", "not a dataset saved with save_to_disk")


# ---------------------------------------------------------------- robustness: any JSON value anywhere
ODD_VALUES = [
    None,
    0,
    2.5,
    True,
    "",
    " ",
    [],
    {},
    [None],
    [[]],
    {"a": 1},
    "<image>",
    "[ANNOTATE]",
    "a\x00.png",
    "x" * 300,
]
SLOTS = {  # where an odd value goes: (format, path of keys into the record)
    "record": ("llava", ()),
    "image": ("llava", ("image",)),
    "conversations": ("llava", ("conversations",)),
    "turn": ("llava", ("conversations", 0)),
    "from": ("llava", ("conversations", 1, "from")),
    "value": ("llava", ("conversations", 1, "value")),
    "messages": ("messages", ("messages",)),
    "content": ("messages", ("messages", 0, "content")),
    "part": ("messages", ("messages", 0, "content", 0)),
    "images": ("messages", ("images",)),
}


def _with(record, path: tuple, value):
    if not path:
        return value
    target = record
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return record


@pytest.mark.parametrize("slot", list(SLOTS))
def test_any_json_value_in_any_field_never_raises(folder, slot):
    fmt, path = SLOTS[slot]
    for odd in ODD_VALUES:
        record = (
            llava()
            if fmt == "llava"
            else {
                "images": ["a.png"],
                "messages": [
                    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]},
                    {"role": "assistant", "content": "A."},
                ],
            }
        )
        checked = check_conversations(write_json(folder / "odd.json", [_with(record, path, odd)]))
        assert all(p.index == 0 and p.file.endswith("odd.json") for p in checked.problems), checked.problems


def test_training_refuses_invalid_data_before_writing_anything(folder, tiny_llava, capsys):
    from vlm_sft.training.train import main as train_main

    train_file = write_json(folder / "train.json", [llava(), llava(answer="[ANNOTATE: the color]")])
    out = folder / "run"
    argv = [
        "--model_name_or_path",
        str(tiny_llava),
        "--output_dir",
        str(out),
        "--train_file",
        str(train_file),
        "--report_to",
        "none",
        "--bf16",
        "false",
        "--use_cpu",
        "true",
        "--use_peft",
        "true",
    ]
    assert train_main(argv) == 1
    err = capsys.readouterr().err
    assert "train.json, sample 1, line" in err and "field conversations[1].value: unannotated placeholder" in err
    assert not out.exists()  # nothing was written: data is checked before the model, trainer or output_dir
