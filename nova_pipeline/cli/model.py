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


def _model_dir(raw: str) -> Path | None:
    """``--model-dir``: a directory, a Hugging Face model name (downloaded once when online), or bundled."""
    from nova_pipeline.core.serving.model_switch import resolve_model

    return resolve_model(raw, settings_from_env().home)


@model_app.command("show")
def show() -> None:
    """The active model (what searches and rebuilds use) and the model NOVA_EMBED_MODEL names, if any."""
    from nova_pipeline.core.index.embedding import bundled_fingerprint
    from nova_pipeline.core.serving.model_switch import model_dir_for, read_active

    home = settings_from_env().home
    active = read_active(home)
    if active is None:
        console.print(f"active: the bundled all-MiniLM-L6-v2 ({bundled_fingerprint()}), never switched")
    else:
        console.print(
            f"active: {active.model_dir or 'bundled'} ({active.fingerprint}), switched {active.switched_at} "
            f"by {active.switched_by}",
            highlight=False,
        )
    used = model_dir_for(home)
    console.print(
        f"this process would embed with: {used or 'bundled'} ({bundled_fingerprint(used)})", highlight=False
    )


@model_app.command("build")
def build(
    model_dir: str = typer.Option(
        ..., "--model-dir", help="a sentence-transformers directory, a Hugging Face name, or 'bundled'"
    ),
) -> None:
    """Build the vector index of another model beside the active one (vector_index alone, its checks
    included): searches keep using the active model. Then: nova model switch --model-dir DIR."""
    import dagster as dg

    from nova_pipeline.cli.common import require_dagster_home
    from nova_pipeline.core.index.embedding import bundled_fingerprint
    from nova_pipeline.core.keys import VECTOR_INDEX
    from nova_pipeline.defs.resources import EmbedderResource, default_resources
    from nova_pipeline.deploy.runs import process_tags

    require_dagster_home()
    chosen = _model_dir(model_dir)
    from nova_pipeline.definitions import defs

    assets = [a for a in defs.assets if VECTOR_INDEX in {k.to_user_string() for k in a.keys}]
    resources = {**default_resources(), "embedder": EmbedderResource(model_dir=str(chosen or ""))}
    console.print(
        f"embedding every chunk with {chosen or 'bundled'} ({bundled_fingerprint(chosen)})…", highlight=False
    )
    with dg.DagsterInstance.get() as instance:
        result = dg.materialize(
            assets,
            instance=instance,
            resources=resources,
            selection=[VECTOR_INDEX],
            tags={
                "nova/command": "nova model build",
                "nova/model": str(chosen or "bundled"),
                **process_tags(),
            },
            raise_on_error=False,
        )
    if not result.success:
        console.print(
            f"[red]run {result.run_id} failed[/red]: see the Dagster UI or nova monitor {result.run_id[:8]}"
        )
        raise typer.Exit(1)
    console.print(
        f"run {result.run_id} built the collection of {bundled_fingerprint(chosen)}; switch to it with: "
        f"nova model switch --model-dir {model_dir}",
        highlight=False,
    )


@model_app.command("switch")
def switch(
    model_dir: str = typer.Option(..., "--model-dir", help="the model to make active, or 'bundled'"),
) -> None:
    """Make a model active once its collection is complete: running services swap to it within a second
    (after loading it), the next rebuild embeds with it. Refuses, saying what is missing, otherwise."""
    from nova_pipeline.core.protect import audit
    from nova_pipeline.core.serving.model_switch import switch as do_switch

    settings = settings_from_env()
    active = do_switch(settings.home, _model_dir(model_dir), audit.actor(), settings.chroma_url)
    console.print(
        f"active model: {active.model_dir or 'bundled'} ({active.fingerprint}); services follow within a "
        "second, the next rebuild embeds with it",
        highlight=False,
    )
