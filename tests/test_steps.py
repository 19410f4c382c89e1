"""StepRunner: failed rows bypass steps, a raising row fails alone, decisions fold in order."""

from __future__ import annotations

import pyarrow as pa
from pydantic import BaseModel
from run_helpers import sample_table

from curate.registry import register_step
from curate.steps import StepRunner


class _Params(BaseModel):
    bad_caption: str = "boom"


@register_step("_test_fragile", params=_Params)
class _FragileStep:
    """Raises on one caption; drops captions starting with 'drop'."""

    def __init__(self, params: _Params):
        self.params = params

    def __call__(self, batch: pa.Table) -> pa.Table:
        captions = batch["caption"].to_pylist()
        if self.params.bad_caption in captions:
            raise ValueError("cannot handle this caption")
        keep = [not c.startswith("drop") for c in captions]
        batch = batch.append_column("caption_len", pa.array([len(c) for c in captions], pa.int32()))
        batch = batch.append_column("step_keep", pa.array(keep))
        return batch.append_column("step_drop_reason", pa.array([None if k else "starts_with_drop" for k in keep]))


def _table(captions, statuses=None, metas=None):
    return sample_table(captions, statuses, metas)


def test_failed_rows_bypass_the_step_and_keep_their_place():
    table = _table(["a cat", "drop me", "a dog"], ["success", "success", "failed_to_download"])
    out = StepRunner("_test_fragile", "fragile", {})(table)
    assert out["row_in_shard"].to_pylist() == [0, 1, 2]
    assert out["caption_len"].to_pylist() == [5, 7, None]
    assert out["keep"].to_pylist() == [True, False, False]
    assert out["drop_reason"].to_pylist() == [None, "fragile:starts_with_drop", "read:failed_to_download"]
    assert [d["step"] for d in out["decisions"][2].as_py()] == ["read"]
    assert "step_keep" not in out.column_names


def test_a_raising_row_fails_alone_with_its_message():
    table = _table(["a cat", "boom", "drop it"])
    out = StepRunner("_test_fragile", "fragile", {})(table)
    assert out["status"].to_pylist() == ["success", "failed_in_fragile", "success"]
    assert "cannot handle" in out["error_message"][1].as_py()
    assert out["keep"].to_pylist() == [True, False, False]
    decisions = out["decisions"].to_pylist()
    assert decisions[1] == [{"step": "fragile", "keep": False, "drop_reason": "failed_in_fragile"}]
    assert decisions[2] == [{"step": "fragile", "keep": False, "drop_reason": "starts_with_drop"}]


def test_first_drop_reason_wins_and_decisions_accumulate():
    table = _table(["drop one", "fine caption"])
    once = StepRunner("_test_fragile", "first", {})(table)
    twice = StepRunner("_test_fragile", "second", {})(once.drop_columns(["caption_len"]))
    assert twice["drop_reason"].to_pylist() == ["first:starts_with_drop", None]
    assert [d["step"] for d in twice["decisions"][0].as_py()] == ["first", "second"]


def test_empty_batch_keeps_schema():
    table = _table(["x"], ["failed_to_download"])
    out = StepRunner("_test_fragile", "fragile", {})(table)
    assert out.num_rows == 1 and "caption_len" in out.column_names


def test_a_worker_told_the_module_of_a_step_imports_that_module_alone():
    """The driver names each step's module to its workers (``runner_kwargs``): a worker process
    running ``basic`` does not import every built-in step (the captioners' imports: a second of
    its start). Without the module, every built-in step module is loaded, as before."""
    import subprocess
    import sys

    probe = (
        "import sys; from curate.steps import StepRunner; "
        "StepRunner('basic', 'basic', {'language': None}, module=MODULE); "
        "print(sorted(m for m in ('captioners.gbc', 'filters.mode', 'filters.basic') if m in sys.modules))"
    )

    def imported(module: str) -> str:
        done = subprocess.run([sys.executable, "-c", probe.replace("MODULE", module)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert imported("'filters.basic'") == "['filters.basic']"
    assert imported("None") == "['captioners.gbc', 'filters.basic', 'filters.mode']"
