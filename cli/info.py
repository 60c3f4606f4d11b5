"""``flowkit info``: what a model file holds."""

from __future__ import annotations

import json

import click
from flowkit_cli.errors import clean_errors

from flowkit.io import load_model


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@clean_errors
def info(model, as_json) -> None:
    """Describe a fitted MODEL: architecture, size, columns and training summary."""
    flow, standardizer, metadata = load_model(model)
    summary = {"config": flow.config, "parameters": sum(p.numel() for p in flow.parameters()),
               "columns": standardizer.columns if standardizer is not None else None, "training": metadata}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    lines = {"flow": f"{flow.config['preset']} ({summary['parameters']} parameters)",
             "config": json.dumps({k: v for k, v in flow.config.items() if k != "preset"})}
    if summary["columns"]:
        lines["columns"] = ", ".join(summary["columns"])
    for key, value in metadata.items():
        if key == "history" and isinstance(value, list):
            value = f"{len(value)} records (`flowkit plot MODEL --history`)"
        lines.setdefault(key, value)
    width = max(len(key) for key in lines) + 1
    for key, value in lines.items():
        click.echo(f"{key + ':':<{width}} {value}")
