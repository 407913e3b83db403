"""``imgindex duplicates``: exact and near copies grouped, different pictures kept apart.

Generated pictures with the torch-free ``thumbnail`` model; the real near-duplicates corpus with
the default model (slow); the pHash multi-index and the vector tier against brute force."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import corpus
from helpers import cli, cli_json, synthetic_row
from imaging import draw
from PIL import ImageOps

from imgindex.db.schema import images
from imgindex.duplicates import (
    DEFAULT_MAX_DISTANCE,
    DEFAULT_THRESHOLD,
    find_duplicates,
    phash_pairs,
)
from imgindex.library import Library


def distances(hashes: np.ndarray, h: int) -> np.ndarray:
    """Hamming distance from ``h`` to each of ``hashes`` (int64 array of stored hashes)."""
    x = np.bitwise_xor(np.asarray(hashes, np.int64), np.int64(h)).view(np.uint64)
    return np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)]
)
def copies(request, tmp_path_factory) -> tuple[Path, Path]:
    """On each backend (a PostgreSQL library's data dir records its database), an original
    with an exact copy, a smaller copy of another aspect ratio, a PNG re-encode,
    a grey copy, a mirror image, a grey crop; and four different pictures, two files that
    decode as nothing (one a copy of the other)."""
    root = tmp_path_factory.mktemp("dups")
    photos, data = root / "photos", root / "data"
    photos.mkdir()
    orig = draw("red", 0, (640, 480))
    orig.save(photos / "orig.jpg", quality=90)
    shutil.copy(photos / "orig.jpg", photos / "orig_copy.jpg")
    orig.resize((300, 200)).save(photos / "orig_small.jpg", quality=70)
    orig.save(photos / "orig.png")
    orig.convert("L").save(photos / "orig_grey.jpg")
    ImageOps.mirror(orig).save(photos / "orig_mirror.jpg")
    orig.crop((32, 24, 608, 456)).convert("L").save(photos / "orig_greycrop.jpg")
    for family, seed in [("red", 2), ("blue", 0), ("green", 3), ("blue", 4)]:
        draw(family, seed, (640, 480)).save(photos / f"{family}{seed}.jpg")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not really a JPEG " * 40)
    shutil.copy(photos / "broken.jpg", photos / "broken_copy.jpg")
    where = []
    if request.param == "postgresql":
        where = ["--database", request.getfixturevalue("postgres_server").create_database()]
    cli(data, *where, "init", photos, "--model", "thumbnail")
    cli(data, "index")
    return photos, data


def names(group: dict) -> list[str]:
    return [Path(m["path"]).name for m in group["members"]]


def test_copies_are_grouped_with_their_original_and_nothing_else(copies):
    _, data = copies
    groups = cli_json(data, "duplicates")
    assert len(groups) == 1, groups
    group = groups[0]
    assert sorted(names(group)) == sorted(
        [
            "orig.jpg",
            "orig_copy.jpg",
            "orig_small.jpg",
            "orig.png",
            "orig_grey.jpg",
            "orig_mirror.jpg",
            "orig_greycrop.jpg",
        ]
    )
    assert all(Path(m["path"]).is_absolute() for m in group["members"])
    assert set(group["reason"]) == {"exact", "phash", "vector"}


def test_json_members_first_then_by_score_with_kinds(copies):
    _, data = copies
    members = cli_json(data, "duplicates")[0]["members"]
    assert all(set(m) == {"path", "score", "kind", "distance", "host", "id"} for m in members)
    # one host's library: '' on SQLite ("this machine"), the host's name on PostgreSQL
    assert {m["host"] for m in members} == {cli_json(data, "status")["host"]}
    first, rest = members[0], members[1:]
    # the largest picture first: most pixels, then the largest file (the JPEGs, not the PNG
    # of this flat drawing), then the path
    assert first["kind"] == "first" and first["score"] == 1.0 and first["distance"] == 0
    assert Path(first["path"]).name == "orig.jpg"
    kinds = {Path(m["path"]).name: m["kind"] for m in rest}
    assert kinds == {"orig_copy.jpg": "exact"} | {n: "near" for n in kinds if n != "orig_copy.jpg"}
    scores = [m["score"] for m in rest]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)
    assert all(m["score"] == 1.0 for m in rest if m["kind"] == "exact")
    by_name = {Path(m["path"]).name: m for m in members}
    assert by_name["orig_small.jpg"]["distance"] <= DEFAULT_MAX_DISTANCE
    assert by_name["orig_grey.jpg"]["distance"] <= DEFAULT_MAX_DISTANCE


def test_distances_are_the_stored_hashes_hamming_distances(copies):
    _, data = copies
    with Library.open(data) as lib, lib.engine.connect() as conn:
        stored = dict(
            conn.execute(images.select().with_only_columns(images.c.path, images.c.phash)).all()
        )
    checked = 0
    for g in cli_json(data, "duplicates", "--threshold", "0.5"):  # far pairs too
        ref = stored[g["members"][0]["path"]]
        for m in g["members"]:
            assert m["distance"] == int(distances(np.array([stored[m["path"]]]), ref)[0])
            checked += m["distance"] > 16
    assert checked  # some pairs differ in many bits


def test_text_output_is_one_block_per_group(copies):
    photos, data = copies
    # a lower threshold groups look-alikes too: the two blue pictures (cosine 0.96)
    out = cli(data, "duplicates", "--threshold", "0.9").stdout
    blocks = out.strip("\n").split("\n\n")
    assert len(blocks) == len(cli_json(data, "duplicates", "--threshold", "0.9")) >= 2
    for block in blocks:
        lines = block.splitlines()
        assert lines[0].startswith("group ")
        assert all(
            re.match(r"^  -?\d\.\d{4}  [ \d-]\d  (first|exact|near) +/", line) for line in lines[1:]
        )
        assert " first " in lines[1]
    assert str(photos.resolve() / "orig_small.jpg") in out


def test_options_move_the_tiers(copies):
    _, data = copies
    strict = cli_json(data, "duplicates", "--threshold", "0.999")
    assert "orig_mirror.jpg" not in names(strict[0])  # only the embeddings link the mirror
    assert "orig_small.jpg" in names(strict[0])
    # the grey crop is 2 bits from the original; its embedding is near the grey copy's only
    hash_only = cli_json(data, "duplicates", "--threshold", "1")
    assert "orig_greycrop.jpg" in names(hash_only[0])
    assert "orig_mirror.jpg" not in names(hash_only[0])
    same_hash = cli_json(data, "duplicates", "--threshold", "1", "--max-distance", "0")
    assert sorted(names(same_hash[0])) == sorted(
        ["orig.jpg", "orig_copy.jpg", "orig_small.jpg", "orig.png", "orig_grey.jpg"]
    )


def test_bad_options_are_user_errors(copies):
    _, data = copies
    assert "--threshold" in cli(data, "duplicates", "--threshold", "0", code=1).stderr
    assert "--max-distance" in cli(data, "duplicates", "--max-distance", "17", code=1).stderr


def test_failed_files_are_never_grouped(copies):
    _, data = copies
    failed = {Path(f["path"]).name for f in cli_json(data, "status", "--failed")}
    assert failed == {"broken.jpg", "broken_copy.jpg"}
    grouped = {n for g in cli_json(data, "duplicates", "--threshold", "0.5") for n in names(g)}
    assert not grouped & failed


def test_cli_defaults_are_the_cores(copies):
    _, data = copies
    out = cli(data, "duplicates", "--help").stdout
    assert f"[default: {DEFAULT_THRESHOLD}]" in out and f"[default: {DEFAULT_MAX_DISTANCE}]" in out


# --- the tiers against brute force ----------------------------------------------------------


def flip_bits(h: int, bits: np.ndarray) -> int:
    u = np.array([h], np.int64).view(np.uint64)
    for b in bits:
        u ^= np.uint64(1) << np.uint64(b)
    return int(u.view(np.int64)[0])


@pytest.mark.slow  # brute force over all pairs
@pytest.mark.parametrize("max_distance", [0, 1, 4, 6, 10])
def test_phash_pairs_match_brute_force(max_distance):
    rng = np.random.default_rng(max_distance)
    h = rng.integers(-(2**63), 2**63 - 1, size=2000, dtype=np.int64)
    for i in range(200):  # copies 0 to 12 bits away; some hashes repeated thrice
        h[1000 + i] = flip_bits(int(h[i]), rng.choice(64, i % 13, replace=False))
    h[1500:1510] = h[:10]
    dist = np.stack([distances(h, int(x)) for x in h])
    i, j = np.triu_indices(len(h), 1)
    close = dist[i, j] <= max_distance
    want = set(zip(i[close].tolist(), j[close].tolist(), strict=True))
    got = set(map(tuple, phash_pairs(h, max_distance).tolist()))
    assert got == want and len(want) >= 20


def test_vector_tier_through_an_ivf_index_finds_every_pair_above_the_threshold(tmp_path):
    """Past ``flat_max`` vectors the FAISS index is approximate (IVF-SQ4): candidates are
    re-scored with the stored vectors, so pairs just above the threshold are found and pairs
    just below are not."""
    data, dim = tmp_path / "data", 192
    (tmp_path / "photos").mkdir()
    cli(data, "init", tmp_path / "photos", "--model", "thumbnail")
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(40, dim))
    x = centres[rng.integers(0, 40, 2000)] + 0.8 * rng.normal(size=(2000, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    cosines = np.tile([0.999, 0.985, 0.972, 0.965, 0.9], 20)
    for n, c in enumerate(cosines):  # a copy of row n at cosine c
        u = rng.normal(size=dim)
        u -= (u @ x[n]) * x[n]
        x[1900 + n] = c * x[n] + np.sqrt(1 - c * c) * u / np.linalg.norm(u)
    x = x.astype(np.float32)
    # unrelated uniform pHashes (no pair within 4 bits), the sign bit set in about half of them
    ph = rng.integers(-(2**63), 2**63 - 1, len(x), dtype=np.int64)
    with Library.open(data) as lib, lib.engine.begin() as conn:
        conn.execute(
            images.insert(),
            [
                synthetic_row(f"/synthetic/{i}.jpg", v, lib.model, phash=int(ph[i]))
                for i, v in enumerate(x)
            ],
        )
    with Library.open(data, write=True, flat_max=500) as lib:
        assert lib.cache.load().approximate  # built and saved as IVF
    i, j = np.triu_indices(len(x), 1)
    sims = (x @ x.T)[i, j]
    above = sims >= DEFAULT_THRESHOLD
    want = {frozenset((f"{a}.jpg", f"{b}.jpg")) for a, b in zip(i[above], j[above], strict=True)}
    with Library.open(data) as lib:  # a reader: the memory-mapped IVF file
        assert lib.cache.current().approximate
        groups = find_duplicates(lib)
    got = {frozenset(Path(m.path).name for m in g.members) for g in groups}
    assert got == want and len(want) == 60
    assert all(g.reason == ["vector"] for g in groups)
    for g in groups:  # exact cosines, and Hamming distances of the signed stored hashes
        a, b = (int(Path(m.path).stem) for m in g.members)
        assert g.members[1].score == pytest.approx(float(x[a] @ x[b]), abs=1e-6)
        assert g.members[1].distance == distances(ph[[b]], int(ph[a]))[0]


# --- the real near-duplicates corpus, default model ---------------------------------------


@pytest.mark.slow
def test_near_duplicates_corpus_with_the_default_model(tmp_path):
    root = corpus("near-duplicates").resolve()  # the library stores resolved paths
    data = tmp_path / "data"
    cli(data, "init", root)
    cli(data, "index")
    groups = cli_json(data, "duplicates")
    group_of = {m["path"]: n for n, g in enumerate(groups) for m in g["members"]}
    files = sorted(str(p) for p in root.rglob("*") if p.is_file())

    def same_group(a: str, b: str) -> bool:
        return a in group_of and group_of.get(a) == group_of.get(b)

    base = {re.search(r"ukbench\d+", p).group(): p for p in files if "/base_images/" in p}
    for path in files:
        name = Path(path).name
        if re.search(r"_(resize|gray)\.", name) or "/formats_images/ukbench" in path:
            number = re.search(r"ukbench\d+", name).group()
            assert same_group(path, base[number]), (path, groups)
    for g in groups:  # never two different photographs
        numbers = {m.group() for p in names(g) if (m := re.search(r"ukbench\d+", p))}
        assert len(numbers) <= 1, g
        others = [p for p in names(g) if "ukbench" not in p]
        assert others in ([], ["alpha_channel_image.png"]), g  # an RGBA copy of 00120
    failed = {f["path"] for f in cli_json(data, "status", "--failed")}
    corrupt = {p for p in files if "_corrupt" in p}
    assert corrupt and corrupt <= failed and not corrupt & set(group_of)
    for kind in ("hflip", "rotation"):  # recorded, not required
        for path in (p for p in files if f"_{kind}." in p):
            g = groups[group_of[path]] if path in group_of else None
            fate = (
                "not grouped"
                if g is None
                else (
                    "with the original"
                    if same_group(path, base["ukbench00120"])
                    else "only with "
                    + ", ".join(
                        m["path"].removeprefix(str(root)) for m in g["members"] if m["path"] != path
                    )
                )
            )
            member = next((m for m in g["members"] if m["path"] == path), None) if g else None
            print(f"_{kind}: {path.removeprefix(str(root))}: {fate}; {member}")
