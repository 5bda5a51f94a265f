"""Looking at what was built: status, search, plan."""

from __future__ import annotations

import contextlib
import json
import os

import typer
from rich.table import Table

from nova_pipeline.cli.common import app, console, search_hint, settings_from_env
from nova_pipeline.core.errors import NovaError
from nova_pipeline.core.keys import ASSETS, VECTOR_INDEX
from nova_pipeline.core.serving.model_switch import active_fingerprint


def _instance_facts() -> tuple[dict, tuple, str | None]:
    """``(last materializations, last rebuild run, Postgres URL)`` from DAGSTER_HOME's instance, or empty."""
    import os

    if not os.environ.get("DAGSTER_HOME"):
        return {}, (None, None), None
    import dagster as dg

    from nova_pipeline.deploy.instance import last_materializations, last_run, postgres_url

    with dg.DagsterInstance.get() as instance:
        return last_materializations(instance, ASSETS), last_run(instance, "rebuild"), postgres_url(instance)


def _age(ts: float | None) -> str:
    import time

    if ts is None:
        return ""
    secs = time.time() - ts
    return (
        f"{secs / 86400:.1f} d"
        if secs > 86400
        else f"{secs / 3600:.1f} h"
        if secs > 3600
        else f"{secs / 60:.0f} min"
    )


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="print the state as JSON")) -> None:
    """What the pipeline has built, where it lives, and how old each asset is.

    One row per asset with the age of its last materialization."""
    import time

    from nova_pipeline.core.serving.failover import FailoverSettings
    from nova_pipeline.core.serving.stats import describe_state

    s = settings_from_env()
    rows = describe_state(s, active_fingerprint(s.home), FailoverSettings.from_env().max_memory_mb)
    mats, _, _ = _instance_facts()
    for r in rows:
        at = mats.get(r["asset"], {}).get("at")
        r["last_materialized"] = at
        r["age_seconds"] = round(time.time() - at, 1) if at else None
    if as_json:
        print(
            json.dumps(
                {
                    "nova_home": str(s.home),
                    "source_dir": str(s.source_dir) if s.source_dir else None,
                    "model": _model_line(s.home),
                    "assets": rows,
                },
                indent=1,
            )
        )
        if not rows:
            raise typer.Exit(1)
        return
    if not rows:
        console.print(
            f"[yellow]Nothing built yet under {s.home}: run the rebuild job "
            "(make rebuild, or nova rebuild --source /path/to/tree)."
        )
        raise typer.Exit(1)
    table = Table(title=f"nova_pipeline state in {s.home}")
    for col in ("asset", "what", "age", "where"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["asset"],
            ("[yellow]" if r.get("warning") else "") + r["what"],
            _age(r["last_materialized"]),
            r["where"],
        )
    console.print(table)
    if s.source_dir is not None:
        console.print(f"source: {s.source_dir}")
    console.print(f"model: {_model_line(s.home)}", highlight=False)
    console.print(f"search it: {search_hint(s.home)}", highlight=False)


def _model_line(home) -> str:
    """The active model, and a model NOVA_EMBED_MODEL names for a build beside it (a switch in progress)."""
    from nova_pipeline.core.serving.model_switch import read_active

    active = read_active(home)
    line = (
        f"{active.model_dir or 'bundled'} ({active.fingerprint}), active since {active.switched_at}"
        if active
        else f"bundled all-MiniLM-L6-v2 ({active_fingerprint(home, {})})"
    )
    chosen = active_fingerprint(home)
    if chosen != (active.fingerprint if active else active_fingerprint(home, {})):
        line += f"; NOVA_EMBED_MODEL names {chosen}: build it with nova model build, then nova model switch"
    return line


@app.command()
def stats(as_json: bool = typer.Option(False, "--json", help="print the stats as JSON")) -> None:
    """Numbers of the vector store, embedding cache, compressed store, patterns, dictionary and system.

    The embedding cache's line includes the last run's hit rate."""
    from nova_pipeline.core.serving.stats import collect_stats

    s = settings_from_env()
    mats, _, _ = _instance_facts()
    data = collect_stats(s, active_fingerprint(s.home), mats.get(VECTOR_INDEX, {}).get("metadata"))
    if as_json:
        print(json.dumps(data, indent=1, default=str))
        return
    for section, values in data.items():
        table = Table(title=section.replace("_", " "), show_header=False, title_justify="left")
        table.add_column("key")
        table.add_column("value")
        for k, v in values.items():
            table.add_row(k.replace("_", " "), _cell(v))
        console.print(table)


def _cell(v) -> str:
    """One value of ``nova stats`` as text: integers with thousands separators, a dict as ``key: value``
    pairs, a list of dicts one per line and of numbers on one line, None as ``-``."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k.replace('_', ' ')}: {_cell(x)}" for k, x in v.items()) or "-"
    if isinstance(v, list):
        sep = "\n" if any(isinstance(x, dict) for x in v) else ", "
        return sep.join(_cell(x) for x in v) or "-"
    return str(v)


@app.command()
def health(
    as_json: bool = typer.Option(False, "--json", help="print the checks, each with its level, as JSON"),
    skip_model: bool = typer.Option(False, "--skip-model", help="do not load the model (the slowest check)"),
    strict: bool = typer.Option(
        False, "--strict", help="exit 1 on warnings too, not only on critical checks"
    ),
) -> None:
    """Check every part of the deployment, each ok, warning or critical; exit 1 on any critical.

    NOVA_HOME, disk, memory, the model, the primary vector store, PostgreSQL, the golden copy, the newest
    backup, the last rebuild run, and runs whose process died (failed now, resumable) or that still hold
    pool slots. Warnings are printed and exit 0 (with --strict, 1)."""
    from nova_pipeline.core.serving.failover import FailoverSettings
    from nova_pipeline.core.serving.health import NA, Check, RunFacts, healthy, run_checks

    s = settings_from_env()
    facts, pg_url = RunFacts(), None
    if os.environ.get("DAGSTER_HOME"):
        try:
            facts, pg_url = _health_facts()
        except Exception as exc:  # noqa: BLE001 - an instance that cannot be opened is itself a finding
            facts = RunFacts(instance=f"{type(exc).__name__}: {exc}")
    checks = run_checks(
        s.home,
        s.chroma_url,
        active_fingerprint(s.home),
        FailoverSettings.from_env().max_memory_mb,
        pg_url,
        facts,
        load_model=not skip_model,
    )
    if skip_model:
        checks = [
            Check(c.name, NA, "skipped (--skip-model)") if c.name == "model loads offline" else c
            for c in checks
        ]
    ok = healthy(checks, strict=strict)
    if as_json:
        print(
            json.dumps({"healthy": ok, "strict": strict, "checks": [c.as_dict() for c in checks]}, indent=1)
        )
    else:
        table = Table(title="nova health")
        for col in ("", "level", "check", "detail"):
            table.add_column(col)
        marks = {"ok": "[green]✓", "warning": "[yellow]!", "critical": "[red]✗", "n/a": "[dim]-"}
        for c in checks:
            table.add_row(marks[c.level], c.level, c.name, c.detail)
        console.print(table)
        warnings = sum(c.level == "warning" for c in checks)
        verdict = "[green]healthy" if ok else "[red]not healthy"
        console.print(verdict + (f" ({warnings} warnings)" if warnings else ""))
    if not ok:
        raise typer.Exit(1)


def _health_facts():
    """``(RunFacts, Postgres URL)`` of DAGSTER_HOME's instance; runs found dead are failed now."""
    import dagster as dg

    from nova_pipeline.defs.jobs import BACKUP_INTERVAL_S, daily_backup
    from nova_pipeline.deploy.instance import postgres_url, run_facts

    with dg.DagsterInstance.get() as instance:
        return run_facts(instance, daily_backup.name, BACKUP_INTERVAL_S), postgres_url(instance)


@app.command()
def search(
    query: str = typer.Argument(..., help="what to look for, in words or code"),
    k: int = typer.Option(5, "-k", "--top", help="number of hits"),
    mode: str = typer.Option("hybrid", "--mode", help="hybrid (vector + BM25, fused), vector or lexical"),
    path: str = typer.Option(None, "--path", help="only paths matching this glob (* crosses /): 'json/*'"),
    language: str = typer.Option(None, "--language", help="only this language: python, markdown, ..."),
    as_json: bool = typer.Option(False, "--json", help="print the hits as a JSON list"),
    collapse: bool = typer.Option(
        True,
        "--collapse/--no-collapse",
        help="one hit per place: adjacent slices of one function merged (default); --no-collapse: raw chunks",
    ),
    expand: bool = typer.Option(
        False,
        "--expand",
        help="add the callers and callees of the top 3 hits (the code graph), each saying why",
    ),
) -> None:
    """Search the index built by the rebuild job (same NOVA_HOME / NOVA_CHROMA_URL): hybrid by default."""
    from nova_pipeline.core.index.ranking import MODES
    from nova_pipeline.core.serving.search_api import hit_json
    from nova_pipeline.core.serving.search_api import search as run_search

    if mode not in MODES:
        raise typer.BadParameter(f"use one of {', '.join(MODES)}", param_hint="--mode")
    with console.status("searching…", spinner="dots") if not as_json else contextlib.nullcontext():
        hits = run_search(
            query, k, settings=settings_from_env(), mode=mode, path=path, language=language, collapse=collapse
        )
    added = _expanded(hits) if expand else []
    if as_json:
        found = [hit_json(h) for h in hits]
        print(json.dumps({"hits": found, "expanded": added} if expand else found, indent=1))
        return
    if hits and hits[0].store == "backup":
        console.print(
            f"[yellow]answered by the backup store: stale as of {hits[0].stale_as_of} "
            "(the primary is down or failed over)"
        )
    if not hits:
        console.print(
            "no hits"
            + (
                " (filters: "
                + ", ".join(
                    f
                    for f in (f"path {path}" if path else "", f"language {language}" if language else "")
                    if f
                )
                + ")"
                if path or language
                else ""
            )
        )
    for rank, h in enumerate(hits, 1):
        symbol = f"  [bold]{h.symbol}[/bold]" if h.symbol else ""
        console.print(
            f"{rank}. [cyan]{h.path}:{h.start_line}-{h.end_line}[/cyan]{symbol}  score {h.score:.4g}"
        )
        console.print(f"     [dim]{why(h)}", highlight=False)
        for line in h.snippet().splitlines():
            console.print(f"     {line}", markup=False, highlight=False)
    for a in added:
        console.print(
            f"+  [cyan]{a['path']}:{a['start_line']}-{a['end_line']}[/cyan]  [bold]{a['qualname']}[/bold]"
            f"  [dim]{a['reason']}",
            highlight=False,
        )


def _expanded(hits) -> list[dict]:
    from nova_pipeline.core.index import graph

    g = graph.load(settings_from_env().home)
    return graph.expand(g, [(h.path, h.start_line, h.end_line) for h in hits[:3]])


@app.command("graph")
def graph_query(
    kind: str = typer.Argument(..., help="callers, callees or imports"),
    name: str = typer.Argument(
        ..., help="a qualified name (json.decoder.JSONDecoder.decode) or a unique suffix"
    ),
    as_json: bool = typer.Option(False, "--json", help="print the sites as JSON"),
) -> None:
    """Who calls NAME, what NAME calls, or what module NAME imports and who imports it: from the code graph
    the rebuild job built (sites with path and line; an unresolved callee keeps its text)."""
    from nova_pipeline.core.index import graph

    qual, sites = graph.load(settings_from_env().home).query(kind, name)
    if as_json:
        print(json.dumps({"symbol": qual, "kind": kind, "sites": sites}, indent=1))
        return
    console.print(f"{kind} of [bold]{qual}[/bold]: {len(sites)}", highlight=False)
    for site in sites:
        other = site["source"] if kind == "callers" or site["kind"] == "IMPORTED_BY" else site["target"]
        shown = other or f"{site['target_text']} [dim](unresolved)[/dim]"
        console.print(f"  [cyan]{site['path']}:{site['line']}[/cyan]  {shown}", highlight=False)


@app.command()
def context(
    question: str = typer.Argument(..., help="what the LLM will be asked"),
    max_tokens: int = typer.Option(2000, "--max-tokens", min=1, help="the budget: never exceeded"),
    tokenizer: str = typer.Option(
        None,
        "--tokenizer",
        help="a tokenizer.json file, or a Hugging Face tokenizer name (online); "
        "default: the embedding model's word pieces",
    ),
    k: int = typer.Option(20, "-k", help="places the search offers to the packer"),
    path: str = typer.Option(None, "--path", help="only paths matching this glob"),
    language: str = typer.Option(None, "--language", help="only this language"),
    as_json: bool = typer.Option(False, "--json", help="JSON instead of Markdown"),
    expand: bool = typer.Option(
        False, "--expand", help="also offer the callers and callees of the top 3 hits (the code graph)"
    ),
) -> None:
    """Context for an LLM prompt: the best places for QUESTION, packed by score under --max-tokens, in file
    order, each with its path, lines and symbol (Markdown; --json for JSON). The tokens used go to stderr."""
    import sys

    from nova_pipeline.core.serving.search_api import context as build

    ctx = build(
        question,
        max_tokens,
        tokenizer,
        settings=settings_from_env(),
        k=k,
        path=path,
        language=language,
        expand=expand,
    )
    print(json.dumps(ctx.as_json(), indent=1) if as_json else ctx.markdown())
    print(
        f"{ctx.tokens_used} of {ctx.budget} tokens ({ctx.tokenizer}), {len(ctx.pieces)} of {ctx.considered} "
        f"places" + (f"; from the backup store, stale as of {ctx.stale_as_of}" if ctx.stale_as_of else ""),
        file=sys.stderr,
    )


def why(h) -> str:
    """Why a hit matched, in one line: its vector and lexical scores, the query terms it holds."""
    parts = []
    if h.exact:
        parts.append("exact symbol/path")
    parts.append("vector " + ("-" if h.vector_score is None else f"{h.vector_score:.3f}"))
    parts.append("bm25 " + ("-" if h.lexical_score is None else f"{h.lexical_score:.2f}"))
    if h.matched_terms:
        parts.append("terms " + " ".join(h.matched_terms[:8]))
    if h.merged:
        parts.append(f"{len(h.merged) + 1} chunks merged")
    return " · ".join(parts)


@app.command()
def plan(
    as_json: bool = typer.Option(False, "--json", help="print the plan as JSON"),
    allow_mass_delete: bool = typer.Option(
        False, "--allow-mass-delete", help="plan as a run with the mass-deletion override would"
    ),
) -> None:
    """Dry run of the rebuild job: what it would add, embed, delete and promote. Writes nothing.

    Files added, changed and deleted; chunks to embed; vectors to delete; whether a golden version would be
    promoted; whether the mass-deletion guard would refuse."""
    from dataclasses import asdict

    from nova_pipeline.core.protect.guard import DeletionGuard
    from nova_pipeline.core.serving.plan import make_plan, plan_table

    s = settings_from_env()
    if s.source_dir is None:
        raise NovaError("NOVA_SOURCE_DIR is not set: export NOVA_SOURCE_DIR=/path/to/the/tree/to/index")
    with console.status("planning…") if not as_json else contextlib.nullcontext():
        p = make_plan(s, DeletionGuard(allow=allow_mass_delete))
    if as_json:
        print(json.dumps(asdict(p), indent=1))
    else:
        table = Table(title=f"rebuild plan for {p.source_dir}")
        for col in ("what", "count", "e.g."):
            table.add_column(col)
        for row in plan_table(p).itertuples(index=False):
            table.add_row(str(row[0]), f"{row[1]:,}" if isinstance(row[1], int) else str(row[1]), str(row[2]))
        console.print(table)
        console.print(f"golden copy: {p.golden}")
        if p.ignored_dirs or p.ignored_files:
            ignored = Table(
                title=f"ignored: {len(p.ignored_dirs):,} dirs, {sum(p.ignored_files.values()):,} files",
                title_justify="left",
            )
            ignored.add_column("directory")
            ignored.add_column("rule")
            for path, rule in p.ignored_dirs.items():
                ignored.add_row(path, rule)
            for rule, n in p.ignored_files.items():
                ignored.add_row(f"{n:,} files", rule)
            console.print(ignored)
        for note in p.notes:
            console.print(f"[dim]{note}", highlight=False)
        for r in p.refusals:
            console.print(f"[red]refused:[/red] {r}", highlight=False)
    if p.refused:
        raise typer.Exit(1)
