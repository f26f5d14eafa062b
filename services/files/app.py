"""Wiring of the files service: its spec, settings, blob store, URL signer and servicers."""

from __future__ import annotations

import pathlib

from llmlab.runtime import ServiceApp, ServiceSpec

from .blobstore import open_store
from .exports.jobs import ExportJobs
from .repository import FilesRepository
from .servicers.common import Deps
from .servicers.datasets import DatasetServicer
from .servicers.exports import ExportServicer
from .servicers.files import FileServicer
from .servicers.transfers import TransferServicer
from .settings import FilesSettings
from .signing import Signer


async def open_deps(app: ServiceApp) -> Deps:
    """The repository, blob store and signer; the service and its export workers (worker.py) share them."""
    assert app.db is not None
    settings = app.settings
    assert isinstance(settings, FilesSettings)
    repo = FilesRepository(app.db)
    secret = settings.signing_secret or await repo.secret("signing_key")
    store = await open_store(settings)
    app.on_stop(store.close)
    return Deps(repo=repo, store=store, signer=Signer(secret.encode()), settings=settings)


async def setup(app: ServiceApp) -> None:
    deps = await open_deps(app)
    # Large exports go to the queue that `python -m services.files.worker` consumes (exports/jobs.py).
    jobs = ExportJobs(deps, app.channel("inference"), app.events)
    await jobs.sweep()
    app.serve_package(
        "llmlab.files.v1",
        {
            "FileService": FileServicer(deps),
            "DatasetService": DatasetServicer(deps),
            "TransferService": TransferServicer(deps),
            "ExportService": ExportServicer(deps, app.channel("experiments"), jobs),
        },
    )


SPEC = ServiceSpec(
    name="files",
    setup=setup,
    settings_cls=FilesSettings,
    migrations=pathlib.Path(__file__).parent / "migrations",
    uses_redis=True,  # the export job queue (Redis Streams)
    # Without BDP probing a stream's HTTP/2 receive window stays small, so a client that uploads faster than the
    # service checks rows waits in flow control instead of being buffered here: a 200 MB dataset PUT grew the
    # service's RSS by 92 MB with probing and by 5.5 MB without (bench/files.py, docs/files.md).
    server_options=(("grpc.http2.bdp_probe", 0),),
)
