"""`kdstore convert`: a store as one HDF5 file, or back to Zarr."""

from __future__ import annotations

import click

from kdstore.cli.common import friendly_errors


@click.command("convert")
@click.argument("src", type=click.Path(exists=True))
@click.argument("dst", type=click.Path())
@click.option("--overwrite", is_flag=True, help="Replace DST if it exists.")
@friendly_errors
def command(src, dst, overwrite):
    """Copy store SRC to DST: Zarr -> HDF5 when DST ends in .h5, HDF5 -> Zarr when SRC does.

    Readers open either format (same arrays and attributes).

    \b
    Example:
      kdstore convert teacher.zarr teacher.h5
      kdstore inspect teacher.h5 --verify
    """
    from kdstore.store.convert import convert

    click.echo(f"wrote {convert(src, dst, overwrite=overwrite)}")
