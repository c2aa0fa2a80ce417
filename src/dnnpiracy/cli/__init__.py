"""``dnnpiracy``: the command line.  Each command is a thin layer over the package's functions.

This module holds the group (``main``, the entry point) and its error handling; the commands live one purpose per
module: ``data`` (data, models), ``owner`` (watermark, verify, owner-report), ``run`` (run, detectors),
``experiments`` (study, reproduce, traffic-calibration, traffic-fit), ``schemes`` (schemes, benchmark), ``serve``
(fit-detector, serve, verify --url) and ``bench`` (bench, bench-http).  Options they share are in ``options``."""

from __future__ import annotations

import sys

import click

from dnnpiracy.cli.options import (  # noqa: F401  (re-exported for older imports)
    DATASET_CHOICES,
    SCHEME_CHOICES,
)
from dnnpiracy.cli.options import data_dir_option as _data_dir_option  # noqa: F401
from dnnpiracy.cli.options import scheme_option as _scheme_option  # noqa: F401
from dnnpiracy.config import ConfigError


class _Errors(click.Group):
    """Turn the project's own errors into one clear line and exit status 2, never a traceback."""

    def invoke(self, ctx):
        from dnnpiracy.data import DataError
        from dnnpiracy.io import ArtifactError
        try:
            return super().invoke(ctx)
        except (DataError, ArtifactError, ConfigError) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except ValueError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=_Errors, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="torch CPU threads (default: all cores)")
def main(threads: int | None) -> None:
    """Pirate a watermarked DNN without accuracy loss (and test your watermark against it)."""
    if threads:
        import torch
        torch.set_num_threads(threads)


# the command modules register their commands on `main` when imported
from dnnpiracy.cli import bench as _bench  # noqa: E402,F401  (bench, bench-http)
from dnnpiracy.cli import data as _data  # noqa: E402,F401  (data, models)
from dnnpiracy.cli import experiments as _experiments  # noqa: E402,F401  (study, reproduce, traffic-*)
from dnnpiracy.cli import owner as _owner  # noqa: E402,F401  (watermark, verify, owner-report)
from dnnpiracy.cli import run as _run  # noqa: E402,F401  (run, detectors)
from dnnpiracy.cli import schemes as _schemes  # noqa: E402,F401  (schemes, benchmark)
from dnnpiracy.cli import serve as _serve  # noqa: E402,F401  (fit-detector, serve, verify --url; after owner)

if __name__ == "__main__":  # pragma: no cover
    main()
