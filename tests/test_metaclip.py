"""MetaCLIP balancing: per-entry sub-sampling to about t, determinism, matching, validation, a run."""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError
from run_helpers import run_cli, sample_table

from curate.config import PIPELINES_DIR, RecipeError, load_recipe
from curate.steps import apply_global_decision
from filters.metaclip import MetaClipBalancer, MetaClipParams, entry_probabilities

T = 500
NUM_ENTRIES = 30
# Zipf-like single-entry counts, 20000 down to 5 (geometric in rank): 16 entries over T, 14 under.
SINGLE_COUNTS = np.round(20_000 * (5 / 20_000) ** (np.arange(NUM_ENTRIES) / (NUM_ENTRIES - 1))).astype(int)
# Captions with two entries: (entry a, entry b, rows). Head with head, and head with tail.
PAIRS = [(0, 1, 3000), (2, 6, 3000), (1, 29, 200)]
UNMATCHED = 300
DROPPED_EARLIER = 400  # rows of entry 0 that an earlier step dropped: neither counted nor decided


def _entry(i: int) -> str:
    return f"concept{i:02d}"


def _write_entries(tmp_path, entries) -> str:
    path = tmp_path / "entries.txt"
    path.write_text("\n".join(entries) + "\n")
    return str(path)


def _pool() -> tuple[pa.Table, np.ndarray]:
    """A pool with a known per-entry distribution, and the count each entry must get."""
    captions: list[str] = []
    for i, n in enumerate(SINGLE_COUNTS):
        captions += [f"a photo of {_entry(i)} on a table"] * int(n)
    for a, b, n in PAIRS:
        captions += [f"{_entry(a)} next to {_entry(b)}."] * n
    captions += ["nothing to see here"] * UNMATCHED
    kept_before = len(captions)
    captions += [f"an old {_entry(0)}"] * DROPPED_EARLIER
    n = len(captions)
    table = pa.table(
        {
            "uid": [f"{(i * 0x9E3779B97F4A7C15) % 2**128:032x}" for i in range(n)],
            "caption": captions,
            "status": ["success"] * n,
            "keep": [i < kept_before for i in range(n)],
        }
    )
    counts = SINGLE_COUNTS.astype(np.int64).copy()
    for a, b, rows in PAIRS:
        counts[[a, b]] += rows
    return table, counts


@pytest.fixture(scope="module")
def balanced(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("metaclip")
    step = MetaClipBalancer(
        MetaClipParams(entries=_write_entries(tmp, [_entry(i) for i in range(NUM_ENTRIES)]), t=T, seed=0)
    )
    table, counts = _pool()
    annotated = step(table)
    state = _state(step, annotated, tmp / "artifacts")
    return step, table, annotated, state, counts, step.decide(annotated, state)


def _state(step: MetaClipBalancer, table: pa.Table, artifacts) -> dict:
    con = duckdb.connect()
    try:
        con.register("annotated", table)
        con.execute("CREATE VIEW staged AS SELECT * FROM annotated")
        return step.global_state(con, artifacts)
    finally:
        con.close()


def _bound(n: int, q: float) -> float:
    """5 binomial standard deviations: a correct draw lands outside with probability < 1e-6."""
    return 5 * np.sqrt(n * q * (1 - q))


# --- the algorithm ------------------------------------------------------------------------------


def test_counts_state_and_artifact(balanced):
    step, _, _, state, counts, _ = balanced
    saved = pq.read_table(state["entry_counts"]).to_pydict()
    assert saved["entry_id"] == list(range(NUM_ENTRIES))
    assert saved["entry"] == step.entries
    assert saved["count"] == counts.tolist()  # the rows dropped earlier are not counted
    assert state == {
        "entry_counts": state["entry_counts"],
        "t": T,
        "entries": NUM_ENTRIES,
        "head_entries": int((counts > T).sum()),
        "matched_rows": int(SINGLE_COUNTS.sum()) + sum(n for _, _, n in PAIRS),
        "unmatched_rows": UNMATCHED,
    }
    assert len(json.dumps(state)) < 500  # small: the counts live in the artifact


def test_single_entry_rows_are_kept_about_t_per_entry(balanced):
    _, table, _, _, counts, out = balanced
    n_single = int(SINGLE_COUNTS.sum())
    keep = out["step_keep"].slice(0, n_single).to_numpy(zero_copy_only=False)
    starts = np.concatenate([[0], np.cumsum(SINGLE_COUNTS)])
    p = entry_probabilities(counts, T)
    figures = []
    for e in range(NUM_ENTRIES):
        n = int(SINGLE_COUNTS[e])
        kept = int(keep[starts[e] : starts[e + 1]].sum())
        figures.append((_entry(e), int(counts[e]), n, kept))
        if counts[e] <= T:
            assert kept == n, (e, n, kept)  # tail entries keep every pair
        else:
            # Entries whose rows are all single-entry ones: kept ~ Binomial(count, t / count), mean t.
            assert abs(kept - n * p[e]) <= _bound(n, p[e]), (e, counts[e], n, kept)
    print("entry, count, single-entry rows, kept:", figures)
    head = [f for f, c in zip(figures, counts, strict=True) if c > T]
    # All head entries together: about t each (a tighter check of the same thing).
    expected = sum(n * p[e] for e, (_, _, n, _) in enumerate(figures) if counts[e] > T)
    variance = sum(n * p[e] * (1 - p[e]) for e, (_, _, n, _) in enumerate(figures) if counts[e] > T)
    assert abs(sum(f[3] for f in head) - expected) <= 5 * np.sqrt(variance)


def test_multi_entry_rows_follow_any_entry_rule(balanced):
    _, _, _, _, counts, out = balanced
    p = entry_probabilities(counts, T)
    start = int(SINGLE_COUNTS.sum())
    keep = out["step_keep"].to_numpy(zero_copy_only=False)
    probs = out["metaclip_keep_prob"].to_numpy(zero_copy_only=False)
    for a, b, n in PAIRS:
        q = 1 - (1 - p[a]) * (1 - p[b])
        kept = int(keep[start : start + n].sum())
        assert np.allclose(probs[start : start + n], q, rtol=1e-6)
        if q == 1:
            assert kept == n
        else:
            assert abs(kept - n * q) <= _bound(n, q), (a, b, n, kept, q)
        start += n


def test_unmatched_and_earlier_drops(balanced, tmp_path):
    step, table, annotated, state, _, out = balanced
    n = table.num_rows
    unmatched = slice(n - DROPPED_EARLIER - UNMATCHED, n - DROPPED_EARLIER)
    assert out["step_keep"].to_pylist()[unmatched] == [False] * UNMATCHED
    assert out["step_drop_reason"].to_pylist()[unmatched] == ["no_entry_match"] * UNMATCHED
    assert out["metaclip_keep_prob"].to_pylist()[unmatched] == [None] * UNMATCHED
    earlier = slice(n - DROPPED_EARLIER, n)
    assert out["step_keep"].to_pylist()[earlier] == [None] * DROPPED_EARLIER  # no decision
    assert out["metaclip_keep_prob"].to_pylist()[earlier] == [None] * DROPPED_EARLIER
    reasons = set(out.filter(pc.invert(pc.fill_null(out["step_keep"], True)))["step_drop_reason"].to_pylist())
    assert reasons == {"balanced_out", "no_entry_match"}
    assert (
        out.filter(pc.fill_null(out["step_keep"], False))["step_drop_reason"].null_count
        == out.filter(pc.fill_null(out["step_keep"], False)).num_rows
    )
    lenient = MetaClipBalancer(step.params.model_copy(update={"drop_unmatched": False}))
    assert lenient.decide(annotated, state)["step_keep"].to_pylist()[unmatched] == [True] * UNMATCHED


def test_decisions_fold_like_other_steps(tmp_path):
    """Through the runner's path: failed rows never reach the step, earlier drops get no decision."""
    params = MetaClipParams(entries=_write_entries(tmp_path, ["dog", "cat"]), t=1)
    step = MetaClipBalancer(params)
    table = sample_table(
        ["a dog", "a dog", "a dog", "a cat", "no match", "a dog"], ["success"] * 5 + ["failed_to_download"]
    )
    table = table.set_column(table.schema.get_field_index("keep"), "keep", pa.array([True] * 4 + [False, False]))
    state = _state(step, step(table.slice(0, 5)), tmp_path / "artifacts")
    assert pq.read_table(state["entry_counts"])["count"].to_pylist() == [3, 1]
    out = apply_global_decision(table, step, state, "metaclip")
    steps = [[d["step"] for d in ds] for ds in out["decisions"].to_pylist()]
    assert steps[:4] == [["metaclip"]] * 4 and steps[4] == [] and steps[5] == ["read"]
    assert out["metaclip_entries"].to_pylist()[:5] == [[0], [0], [0], [1], []]
    assert out["keep"].to_pylist()[3] is True  # "cat" is a tail entry (count 1 <= t)
    dropped = [r for r in out["drop_reason"].to_pylist()[:3] if r is not None]
    assert set(dropped) <= {"metaclip:balanced_out"}
    assert out["metaclip_keep_prob"].to_pylist()[:4] == pytest.approx([1 / 3] * 3 + [1.0])


# --- determinism --------------------------------------------------------------------------------


def _kept_uids(out: pa.Table) -> set[str]:
    return set(out.filter(pc.fill_null(out["step_keep"], False))["uid"].to_pylist())


def test_same_seed_same_uids_whatever_the_batches(balanced):
    step, table, annotated, state, _, out = balanced
    bounds = [0, 1, 17, 5000, 5001, 33_333, annotated.num_rows]
    pieces = [step.decide(annotated.slice(a, b - a), state) for a, b in zip(bounds, bounds[1:], strict=False)]
    assert pa.concat_tables(pieces)["step_keep"].equals(out["step_keep"])
    order = np.random.default_rng(1).permutation(annotated.num_rows)
    assert _kept_uids(step.decide(annotated.take(order), state)) == _kept_uids(out)
    # Not annotated upstream: decide matches first, with the same result.
    assert step.decide(table.slice(0, 5000), state)["step_keep"].equals(out["step_keep"].slice(0, 5000))


def test_other_seed_other_uids(balanced):
    step, _, annotated, state, _, out = balanced
    other = MetaClipBalancer(step.params.model_copy(update={"seed": 1})).decide(annotated, state)
    a, b = _kept_uids(out), _kept_uids(other)
    assert a != b
    assert abs(len(a) - len(b)) < 0.05 * len(a)  # the same distribution, other draws


def test_counting_by_matching_equals_counting_annotations(balanced, tmp_path):
    step, table, _, state, _, _ = balanced
    again = _state(step, table, tmp_path / "artifacts")  # no entries column: matches the text
    assert {k: v for k, v in again.items() if k != "entry_counts"} == {
        k: v for k, v in state.items() if k != "entry_counts"
    }
    assert pq.read_table(again["entry_counts"]).equals(pq.read_table(state["entry_counts"]))


# --- matching -----------------------------------------------------------------------------------


def test_whole_words_and_phrases(tmp_path):
    step = MetaClipBalancer(MetaClipParams(entries=_write_entries(tmp_path, ["cat", "red car", "Ice Cream"]), t=10))
    captions = ["category", "concatenate", "a cat.", "Cat's toy", "a red car parked", "a red carpet", "ice  cream"]
    captions.append(None)
    out = step(pa.table({"caption": captions}))
    assert out["metaclip_entries"].type == pa.list_(pa.int32())
    assert out["metaclip_entries"].to_pylist() == [[], [], [0], [0], [1], [], [2], []]
    strict = MetaClipBalancer(step.params.model_copy(update={"case_insensitive": False}))
    assert strict(pa.table({"caption": ["Cat's toy", "Ice Cream", "a cat"]}))["metaclip_entries"].to_pylist() == [
        [],
        [2],
        [0],
    ]


def test_other_text_column_and_prefix(tmp_path):
    params = MetaClipParams(entries=_write_entries(tmp_path, ["dog"]), text="dense", prefix="mc")
    out = MetaClipBalancer(params)(pa.table({"dense": ["a dog", "a cat"]}))
    assert out["mc_entries"].to_pylist() == [[0], []]
    with pytest.raises(ValueError, match="text: value 'dense' is not a column"):
        MetaClipBalancer(params)(pa.table({"caption": ["a dog"]}))


# --- validation ---------------------------------------------------------------------------------


def test_bad_entries_fail_at_validation(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# only comments\n\n   \n")
    with pytest.raises(ValidationError, match=r"(?s)entries\n.*empty\.txt.*has no entries.*allowed: a text file"):
        MetaClipParams(entries=str(empty))
    with pytest.raises(ValidationError, match=r"(?s)entries\n.*nope\.txt.*does not exist"):
        MetaClipParams(entries=str(tmp_path / "nope.txt"))
    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps(["dog", 3]))
    with pytest.raises(ValidationError, match="JSON list of strings"):
        MetaClipParams(entries=str(mixed))
    with pytest.raises(ValidationError, match=r"(?s)entries\n.*valid string"):
        MetaClipParams(entries=5)
    good = _write_entries(tmp_path, ["dog"])
    with pytest.raises(ValidationError, match=r"(?s)\bt\n.*greater than or equal to 1"):
        MetaClipParams(entries=good, t=0)
    with pytest.raises(ValidationError, match="Extra inputs"):
        MetaClipParams(entries=good, threshold=3)
    with pytest.raises(RecipeError, match=r"steps\.2\.params\.entries: value '.*nope\.txt'.*does not exist"):
        overrides = [f"steps.metaclip.params.entries={tmp_path / 'nope.txt'}"]
        load_recipe("metaclip", overrides, input_path="p", output_path="r")


def test_json_entries_and_builtin_file(tmp_path, monkeypatch):
    meta = tmp_path / "metadata.json"
    meta.write_text(json.dumps(["dog", "", "hot dog"]))
    assert MetaClipBalancer(MetaClipParams(entries=str(meta))).entries == ["dog", "hot dog"]
    monkeypatch.chdir(tmp_path)  # the built-in recipe's entries are found from any directory
    assert MetaClipParams(entries="metaclip_entries.txt").entries == str(PIPELINES_DIR / "metaclip_entries.txt")


# --- end to end ---------------------------------------------------------------------------------


def test_recipe_end_to_end(ray_session, small_pool_pattern, tmp_path):
    t = 60
    out = tmp_path / "run"
    done = run_cli("metaclip", small_pool_pattern, out, ray_session, [f"steps.metaclip.params.t={t}"])
    assert done.returncode == 0, done.stdout
    state = json.loads((out / "global_state.json").read_text())["metaclip"]
    con = duckdb.connect()
    con.execute(f"ATTACH '{out / 'catalog.duckdb'}' AS c (READ_ONLY)")
    con.execute(f"CREATE VIEW counts AS SELECT * FROM read_parquet('{state['entry_counts']}')")
    # Eligible: rows that reached metaclip still kept.
    con.execute(
        "CREATE VIEW eligible AS SELECT * FROM c.samples "
        "WHERE status = 'success' AND (keep OR drop_reason LIKE 'metaclip:%')"
    )
    recount = dict(
        con.execute("SELECT e, count(*) FROM (SELECT unnest(metaclip_entries) e FROM eligible) GROUP BY e").fetchall()
    )
    counts = con.execute("SELECT entry_id, entry, count FROM counts ORDER BY entry_id").fetchall()
    assert [c for _, _, c in counts] == [recount.get(i, 0) for i, _, _ in counts]
    assert state["head_entries"] == sum(c > t for _, _, c in counts) > 0

    reasons = dict(
        con.execute("SELECT drop_reason, count(*) FROM c.decisions WHERE step = 'metaclip' GROUP BY 1").fetchall()
    )
    assert reasons.get("balanced_out", 0) > 0 and set(reasons) <= {None, "balanced_out", "no_entry_match"}
    ((undecided,),) = con.execute(
        "SELECT count(*) FROM c.samples WHERE drop_reason LIKE 'basic:%' "
        "AND (metaclip_keep_prob IS NOT NULL OR list_contains([d.step for d in decisions], 'metaclip'))"
    ).fetchall()
    assert undecided == 0

    probs = entry_probabilities(np.array([c for _, _, c in counts]), t)
    rows = con.execute("SELECT metaclip_entries, metaclip_keep_prob, keep FROM eligible").fetchall()
    per_entry: dict[int, list] = {}
    for entries, prob, keep in rows:
        if entries:
            assert prob == pytest.approx(1 - np.prod(1 - probs[entries]), rel=1e-5)
        for e in entries:
            per_entry.setdefault(e, []).append((prob, keep))
    figures = []
    for e, items in sorted(per_entry.items()):
        kept, q = sum(k for _, k in items), np.array([p for p, _ in items])
        figures.append((counts[e][1], counts[e][2], kept))
        if counts[e][2] <= t:
            assert kept == counts[e][2]  # tail entries keep all their pairs
        else:
            assert kept < counts[e][2]
            assert abs(kept - q.sum()) <= 5 * np.sqrt((q * (1 - q)).sum()) + 1
    print("entry, count, kept:", figures)
    sizes = json.loads((out / "shards" / "sizes.json").read_text())
    ((kept_total,),) = con.execute("SELECT count(*) FROM c.samples WHERE keep").fetchall()
    assert sum(sizes.values()) == kept_total
