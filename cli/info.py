"""``flowkit info``: what a model file holds."""

from __future__ import annotations

import json

import click
from flowkit_cli.errors import clean_errors

from flowkit.io import load_model


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output: everything below and more.")
@clean_errors
def info(model, as_json) -> None:
    """Describe a fitted MODEL: architecture, size, columns (modelled, context, integer, bounded),
    preprocessing and the training summary (negative log-likelihoods against the Gaussian's)."""
    flow, standardizer, metadata = load_model(model)
    context = standardizer.context.columns if standardizer is not None and standardizer.context else []
    summary = {"config": flow.config, "parameters": sum(p.numel() for p in flow.parameters()),
               "columns": standardizer.columns if standardizer is not None else None,
               "context_columns": context, "preprocessing": flow.config.get("preprocessing", []),
               "training": metadata}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    lines = {"flow": f"{flow.config['preset']} ({summary['parameters']} parameters)",
             "config": json.dumps({k: v for k, v in flow.config.items() if k not in ("preset", "preprocessing")})}
    if summary["columns"]:
        lines["columns"] = ", ".join(summary["columns"])
    if context:
        lines["context"] = ", ".join(context)
    roles = metadata.get("columns") if isinstance(metadata.get("columns"), dict) else {}
    if roles.get("discrete"):
        lines["integer columns"] = ", ".join(roles["discrete"]) + " (dequantised; sampled as whole numbers)"
    if roles.get("bounds"):
        lines["bounds"] = ", ".join(f"{name} in [{'' if lo is None else f'{lo:g}'}:{'' if hi is None else f'{hi:g}'}]"
                                    for name, (lo, hi) in roles["bounds"].items())
    if roles.get("ignored"):
        lines["left out"] = ", ".join(roles["ignored"])
    for split, entry in (metadata.get("summary") or {}).items():
        lines[f"{split} NLL"] = (f"{entry['flow_nll']:.4f} nats/row ({entry['flow_bits_per_feature']:.4f} bits/feature)"
                                 f", Gaussian {entry['gaussian_nll']:.4f} ({entry['gaussian_bits_per_feature']:.4f}); "
                                 f"{entry['rows']} rows")
    for key, value in metadata.items():
        if key in ("columns", "summary") or (key in ("test", "proposals") and not value):
            continue
        if key == "proposals" and isinstance(value, list):
            value = "; ".join(map(str, value)) + " (not applied)"
        if key == "history" and isinstance(value, list):
            value = f"{len(value)} records (`flowkit plot MODEL --history`)"
        lines.setdefault(key, value)
    width = max(len(key) for key in lines) + 1
    for key, value in lines.items():
        click.echo(f"{key + ':':<{width}} {value}")
