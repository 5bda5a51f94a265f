"""The embedding model's files: nova model verify, nova model trust."""

from __future__ import annotations

from pathlib import Path

import typer

from nova_pipeline.cli.common import app, console, settings_from_env

model_app = typer.Typer(help="The embedding model's files, checked against a pinned blake3 manifest.")
app.add_typer(model_app, name="model")


@model_app.command("verify")
def verify(
    model_dir: str = typer.Option(None, "--model-dir", help="a model directory (default: the bundled one)"),
) -> None:
    """Check every file of the model against its pinned manifest (a model seen for the first time is pinned
    in NOVA_HOME). Exit 2 and name the file when one changed."""
    from nova_pipeline.core.index.embedding import bundled_model_dir
    from nova_pipeline.core.index.model_files import verify as check

    result = check(Path(model_dir) if model_dir else bundled_model_dir(), settings_from_env().home)
    state = "pinned now (trust on first use)" if result.pinned_now else "match the pinned manifest"
    console.print(f"{result.files} files of {result.model_dir} {state}: {result.manifest}", highlight=False)


@model_app.command("trust")
def trust(
    model_dir: str = typer.Option(..., "--model-dir", help="the model directory to pin again, as it is now"),
) -> None:
    """Pin a model's files again after a deliberate update (an audit line in NOVA_HOME/audit.log)."""
    from nova_pipeline.core.index.model_files import trust as repin
    from nova_pipeline.core.protect import audit

    home = settings_from_env().home
    model_dir = Path(model_dir)
    changed = repin(model_dir, home)
    audit.record(
        home, "model trust", "ok", audit.actor(), model_dir=str(model_dir.resolve()), changed=changed
    )
    console.print(
        f"pinned {model_dir} again; {len(changed)} files changed since the last pin"
        + (f": {', '.join(changed[:5])}" if changed else ""),
        highlight=False,
    )
