"""`kdstore convert`: a store as one HDF5 file, or back to Zarr."""

from __future__ import annotations

import click

from kdstore.cli.common import friendly_errors, required_path


@click.command("convert")
@required_path("store", "Store to copy (.zarr folder or .h5 file).", positional=True, exists=True)
@required_path("out", "Destination: a .h5 file (from Zarr) or a .zarr folder (from HDF5).", positional=True)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@friendly_errors
def command(store: str, out: str, overwrite: bool) -> None:
    """Copy STORE to OUT: Zarr -> HDF5 when OUT ends in .h5, HDF5 -> Zarr when STORE does.

    Readers open either format (same arrays and attributes).

    \b
    Example:
      kdstore convert --store teacher.zarr --out teacher.h5
      kdstore inspect --store teacher.h5 --verify
    """
    from kdstore.store.convert import convert

    click.echo(f"wrote {convert(store, out, overwrite=overwrite)}")
