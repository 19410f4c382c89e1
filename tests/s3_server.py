"""A real S3 server on 127.0.0.1 for the tests: moto's ``ThreadedMotoServer`` (the server s3fs
tests itself against), reached through the standard AWS environment variables, so that s3fs in
this process, in ``curate`` subprocesses and in Ray workers started with that environment all
find it without any option."""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Iterator

from model_servers import free_port


@contextlib.contextmanager
def s3_server() -> Iterator[dict[str, str]]:
    """Yields the environment that points AWS clients at the server; sets it in this process for
    as long as the server runs."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def new_bucket() -> str:
    """A fresh bucket on the server the environment names; returns its ``s3://`` URL."""
    import fsspec

    name = f"curate-{uuid.uuid4().hex[:12]}"
    fsspec.filesystem("s3", skip_instance_cache=True).mkdir(name)
    return f"s3://{name}"
