"""The ``imgindex`` command: parses arguments, calls the core, prints results.

Data goes to stdout (``--json`` on every read command), progress and logs to stderr. Errors a
user can fix are printed as one ``error: ...`` line with exit status 1 at a single boundary
(``_Boundary``); ``--verbose`` adds the traceback.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from imgindex import names
from imgindex.db import DatabaseError, OperationalError
from imgindex.db.location import shown as shown_database
from imgindex.errors import ImgIndexError
from imgindex.paths import resolve_data_dir

try:  # typer >= 0.16 vendors click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
except ImportError:  # pragma: no cover - older typer with click installed
    from click.exceptions import ClickException, NoArgsIsHelpError  # type: ignore[no-redef,assignment,unused-ignore]


class _Boundary(TyperGroup):
    """The one error boundary: a user's mistake is one ``error: ...`` line and exit status 1
    (2 for usage errors, as is customary); ``--verbose`` adds the traceback."""

    def invoke(self, ctx: Any) -> Any:  # a click Context
        try:
            return super().invoke(ctx)
        except BrokenPipeError:  # `imgindex ... | head`: the reader has all it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(141) from None
        except (ImgIndexError, OSError, DatabaseError) as exc:
            if (ctx.obj or {}).get("verbose"):
                traceback.print_exc()
            typer.echo(f"error: {names.printable(_message(exc))}", err=True)
            raise typer.Exit(1) from None

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except NoArgsIsHelpError as exc:
            typer.echo(exc.ctx.get_help() if exc.ctx else "imgindex --help")
            sys.exit(0)
        except ClickException as exc:
            typer.echo(f"error: {exc.format_message()} (see --help)", err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("error: interrupted", err=True)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


def _message(exc: BaseException) -> str:
    if isinstance(exc, OperationalError) and _unreachable(exc):
        first = str(exc.orig or exc).strip().splitlines()[0]
        return f"the library's database server cannot be reached: {first}"
    if isinstance(exc, DatabaseError):
        return f"the library's database cannot be used: {exc.orig or exc}"
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)


def _unreachable(exc: OperationalError) -> bool:
    """A server that could not be connected to (psycopg says "connection ... failed")."""
    return exc.connection_invalidated or "connection" in str(exc.orig).lower()


app = typer.Typer(
    cls=_Boundary,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Index photo folders by visual similarity: similar images and clusters.",
)
clusters_app = typer.Typer(
    cls=_Boundary,
    pretty_exceptions_enable=False,
    help="Show the clusters the library's images fall into.",
)
app.add_typer(clusters_app, name="clusters")
duplicates_app = typer.Typer(
    cls=_Boundary,
    pretty_exceptions_enable=False,
    help="Find duplicate images; set them aside and put them back.",
)
app.add_typer(duplicates_app, name="duplicates")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]


@app.callback()
def _main(
    ctx: typer.Context,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            envvar="IMGINDEX_DATA_DIR",
            show_envvar=True,
            help="Library folder [default: $STATE_DIRECTORY, else $XDG_DATA_HOME/imgindex].",
        ),
    ] = None,
    database: Annotated[
        str | None,
        typer.Option(
            "--database",
            envvar="IMGINDEX_DATABASE_URL",
            show_envvar=True,
            metavar="URL",
            help="A PostgreSQL library: postgresql://USER@HOST/DB, the password from "
            "~/.pgpass or PGPASSWORD (default: the URL the data dir records, else its SQLite "
            "file).",
        ),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log more; show tracebacks.")
    ] = False,
) -> None:
    ctx.obj = {"data_dir": resolve_data_dir(data_dir), "database": database, "verbose": verbose}
    if ctx.invoked_subcommand in ("daemon", "embed-server"):
        from imgindex import logs

        logs.setup(verbose)
        return
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not verbose:  # Pillow logs decoder complaints about files we record as failed anyway
        logging.getLogger("PIL").setLevel(logging.CRITICAL)


def _data_dir(ctx: typer.Context) -> Path:
    root = ctx.find_root()
    return root.obj["data_dir"]


def _database(ctx: typer.Context) -> str | None:
    """``--database`` (or ``IMGINDEX_DATABASE_URL``): a PostgreSQL library's URL."""
    return ctx.find_root().obj["database"]


def _open(ctx: typer.Context, *, write: bool = False, purpose: str = "imgindex"):
    from imgindex.library import Library

    return Library.open(_data_dir(ctx), write=write, purpose=purpose, database=_database(ctx))


def _require_writable(lib: Any) -> None:
    if lib.read_only:
        raise ImgIndexError(
            f"the library in {lib.paths.root} is read-only here; a user who can write it "
            "must make this change"
        )


def _echo_json(data: Any) -> None:
    typer.echo(names.dumps(data, indent=2))


def _existing_dir(path: Path) -> Path:
    if not path.is_dir():
        raise ImgIndexError(f"{path}: no such folder")
    return path.resolve()


def _parse_k(k: str | None) -> str | None:
    from imgindex.library import K_MAX

    if k is None or k == "auto":
        return k
    if not (k.isascii() and k.isdigit()) or not 1 <= int(k) <= K_MAX:
        raise ImgIndexError(
            f"--k {k}: expected a whole number of clusters from 1 to {K_MAX}, or 'auto'"
        )
    return str(int(k))


def _setting(name: str) -> Any:
    """A Typer callback: a daemon flag must be a valid value of the setting it overrides."""

    def check(value: Any) -> Any:
        from imgindex import settings

        try:
            return None if value is None else settings.check(name, value)
        except ImgIndexError as exc:
            raise typer.BadParameter(str(exc)) from None

    return check


@app.command()
def init(
    ctx: typer.Context,
    dirs: Annotated[list[Path], typer.Argument(help="Photo folders (roots) to index.")],
    k: Annotated[
        str | None, typer.Option("--k", help="Number of clusters, or 'auto' (by silhouette).")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Embedding model (see `imgindex models`).")
    ] = None,
) -> None:
    """Create a library with these roots (or add roots to the existing one)."""
    from imgindex.library import Library

    roots = [_existing_dir(d) for d in dirs]
    with Library.create(
        _data_dir(ctx), roots, k=_parse_k(k), model=model, database=_database(ctx)
    ) as lib:
        typer.echo(
            f"library {lib.location.shown()} (data dir {lib.paths.root}): model {lib.model}, "
            f"k {lib.k_setting}, "
            f"roots {', '.join(names.shown(str(r)) for r in lib.roots())}",
            err=True,
        )
        typer.echo("next: imgindex index", err=True)


def _run_pass(
    lib: Any,
    folders: list[Path] | None,
    batch_size: int,
    workers: int | None,
    max_pixels: int,
    weights: Path | None,
    embedder: Any = None,
) -> Any:
    from imgindex.ingest import Ingestor

    with _indexing_bar() as (start, progress):
        ingestor = Ingestor(
            lib,
            batch_size=batch_size,
            workers=workers,
            max_pixels=max_pixels,
            weights=weights,
            embedder=embedder,
            progress=progress,
        )
        return ingestor.run(folders, on_start=start)


@contextmanager
def _indexing_bar() -> Iterator[tuple[Callable[[int], None], Callable[[int], None]]]:
    """``(on_start, progress)`` for a pass: a progress bar on stderr, opened once the pass
    knows how many files need work, closed at the end."""
    bar: Any = None

    def start(total: int) -> None:
        nonlocal bar
        bar = typer.progressbar(length=max(total, 1), label="indexing", file=sys.stderr)
        bar.__enter__()

    try:
        yield start, lambda n: bar and bar.update(n)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)


def _summary(report: Any, as_json: bool) -> None:
    if as_json:
        _echo_json(asdict(report))
        return
    typer.echo(
        f"{report.seen} files: {report.embedded} embedded, {report.reused} reused, "
        f"{report.moved} moved, {report.unchanged} unchanged, {report.failed} failed, "
        f"{report.pending} to retry, {report.removed} removed ({report.seconds:.1f} s)",
        err=True,
    )
    for root in report.frozen:
        typer.echo(f"warning: {names.shown(root)} is unavailable; left untouched", err=True)
    if report.failed:
        typer.echo("see `imgindex status --failed` for the reasons", err=True)


BatchOpt = Annotated[int, typer.Option(min=1, max=4096, help="Images per model batch.")]
WorkersOpt = Annotated[
    int | None, typer.Option(min=1, max=256, help="Decode threads [default: cores, 2-8].")
]
PixelsOpt = Annotated[
    int, typer.Option(min=1, max=10**12, help="Refuse images with more pixels than this.")
]
ClusterId = Annotated[int, typer.Argument(metavar="ID", min=1, max=2**63 - 1, help="Cluster id.")]
WeightsOpt = Annotated[Path | None, typer.Option(help="Model weights file (no download).")]


@app.command()
def index(
    ctx: typer.Context,
    dirs: Annotated[
        list[Path] | None, typer.Argument(help="Only these folders (under roots).")
    ] = None,
    batch_size: BatchOpt = 16,
    workers: WorkersOpt = None,
    max_pixels: PixelsOpt = 300_000_000,
    weights: WeightsOpt = None,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="ADDRESS",
            help="Read, decode and embed on a Ray cluster: HOST:PORT, `auto` (the cluster this "
            "host belongs to) or `local` (a Ray started here for the run). Needs "
            "imgindex[ray] and the roots at the same path on every node.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """One pass over the roots: embed new and changed files, drop deleted ones. With DIRS and
    no library in the data dir yet, first create one with DIRS as its roots (k auto)."""
    folders = [_existing_dir(d) for d in dirs] if dirs else None
    if ray is not None:
        from imgindex.raypass import import_ray

        import_ray()  # not installed: say so before anything is created or opened
    if folders:
        _create_if_missing(ctx, folders)
    with _open(ctx, write=True, purpose="imgindex index") as lib:
        if ray is not None:
            report = _run_ray_pass(lib, folders, batch_size, max_pixels, weights, ray)
        else:
            embedder = _chosen_embedder(lib, weights)
            report = _run_pass(lib, folders, batch_size, workers, max_pixels, weights, embedder)
    _summary(report, as_json)


def _run_ray_pass(
    lib: Any,
    folders: list[Path] | None,
    batch_size: int,
    max_pixels: int,
    weights: Path | None,
    address: str,
) -> Any:
    """``index --ray``: the pass with its files prepared and embedded on a Ray cluster."""
    from imgindex.raypass import RayIngestor, connected

    with connected(address) as ray, _indexing_bar() as (start, progress):
        ingestor = RayIngestor(
            lib,
            ray,
            batch_size=batch_size,
            max_pixels=max_pixels,
            weights=weights,
            progress=progress,
        )
        report = ingestor.run(folders, on_start=start)
    typer.echo(
        f"ray: {report.ray['nodes']} nodes ({report.ray['nodes_used']} did work), "
        f"{report.ray['actors']} {report.ray['device']} embedding actors at most",
        err=True,
    )
    return report


def _chosen_embedder(lib: Any, weights: Path | None) -> Any:
    """The embedding service of ``embed_url`` with its fallback (asked once first: a service
    that refuses this library fails here), or None: the Ingestor loads the local model."""
    from imgindex import settings
    from imgindex.embedclient import choose
    from imgindex.models import get_spec, load_embedder

    s = settings.load(lib.engine)
    if not s.embed_url:
        return None
    chosen = choose(
        get_spec(lib.model),
        lambda: load_embedder(lib.model, weights=weights, cache_dir=lib.paths.weights),
        url=s.embed_url,
        token_file=s.embed_token_file,
        fallback=s.embed_fallback,
    )
    chosen.check()
    return chosen


def _create_if_missing(ctx: typer.Context, roots: list[Path]) -> None:
    """A library with these roots, k auto and the default model, when the data dir has no
    database at all (one that exists but is empty or damaged is refused by ``_open``, as
    always); one line on stderr says so."""
    from imgindex.library import Library

    data = _data_dir(ctx)
    if Library.exists(data, _database(ctx)):
        return
    with Library.create(data, roots, k="auto", database=_database(ctx)) as lib:
        typer.echo(
            f"no library in {names.shown(str(lib.paths.root))}: created one with model "
            f"{lib.model}, k auto, roots {', '.join(names.shown(str(r)) for r in lib.roots())} "
            "(`imgindex init` changes these)",
            err=True,
        )


@app.command()
def reindex(
    ctx: typer.Context,
    model: Annotated[str, typer.Option(help="The model to re-embed every image with.")],
    batch_size: BatchOpt = 16,
    workers: WorkersOpt = None,
    max_pixels: PixelsOpt = 300_000_000,
    weights: WeightsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Switch the library to another model and re-embed everything."""
    from imgindex.models import get_spec, load_embedder

    get_spec(model)  # unknown names fail before anything changes
    with _open(ctx, write=True, purpose="imgindex reindex") as lib:
        # weights that cannot be had fail here, while the old vectors are still intact
        embedder = load_embedder(model, weights=weights, cache_dir=lib.paths.weights)
        lib.switch_model(model)
        report = _run_pass(lib, None, batch_size, workers, max_pixels, weights, embedder)
    _summary(report, as_json)


@app.command()
def similar(
    ctx: typer.Context,
    photo: Annotated[Path, typer.Argument(help="A photo, in the library or not.")],
    k: Annotated[
        int, typer.Option("-k", "--top", min=1, max=10_000, help="How many neighbours.")
    ] = 10,
    weights: WeightsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The images most similar to PHOTO, best first, with cosine scores."""
    from imgindex.query import similar_to

    with _open(ctx) as lib:
        matches = similar_to(lib, photo, k=k, weights=weights)
    if as_json:
        _echo_json(
            [
                {"path": m.path, "score": round(m.score, 6), "cluster": m.cluster, "host": m.host}
                for m in matches
            ]
        )
        return
    for m in matches:
        typer.echo(f"{m.score:.4f}  {names.shown(m.path)}")


@duplicates_app.callback(invoke_without_command=True)
def duplicates(
    ctx: typer.Context,
    threshold: Annotated[
        float,
        typer.Option(
            help="Cosine of two images' embeddings at or above which they are near duplicates "
            "(the vector tier; catches crops and mirror images; lower finds look-alikes)."
        ),
    ] = 0.97,
    max_distance: Annotated[
        int,
        typer.Option(
            help="Perceptual-hash bits (0-16) within which two images are near duplicates "
            "(resized, recompressed, re-encoded, grey copies)."
        ),
    ] = 4,
    as_json: JsonOpt = False,
) -> None:
    """Groups of duplicate images: exact copies (same bytes) and near copies (perceptual hash
    within --max-distance bits, or embedding cosine >= --threshold), linked transitively. A
    group lists its largest picture first (kind 'first'), then the others, kind 'exact' (same
    bytes as the first) or 'near'; score: cosine of a member's embedding to the first one's
    (1.0 for exact copies); distance: its perceptual-hash bits from the first. Text: a header
    per group naming the tiers that linked it (exact, phash, vector), then score, distance,
    kind and path per member. Failed files are never grouped."""
    if ctx.invoked_subcommand is not None:
        return
    from imgindex.duplicates import find_duplicates

    with _open(ctx) as lib:
        groups = find_duplicates(lib, threshold=threshold, max_distance=max_distance)
    if as_json:
        _echo_json(
            [
                {
                    "reason": g.reason,
                    "members": [{**asdict(m), "score": round(m.score, 6)} for m in g.members],
                }
                for g in groups
            ]
        )
        return
    typer.echo(f"{len(groups)} groups, {sum(len(g.members) for g in groups)} images", err=True)
    for i, g in enumerate(groups):
        if i:
            typer.echo("")
        typer.echo(f"group {i + 1}: {len(g.members)} images ({', '.join(g.reason)})")
        for m in g.members:
            bits = "-" if m.distance is None else m.distance
            typer.echo(f"  {m.score:.4f}  {bits:>2}  {m.kind:<5}  {names.shown(m.path)}")


@duplicates_app.command("resolve")
def duplicates_resolve(
    ctx: typer.Context,
    keep: Annotated[
        str | None,
        typer.Option(
            "--keep",
            metavar="POLICY",
            help="Which member of each group stays: largest, oldest (date taken) or "
            "most-metadata (default: the library's `keep` setting, else largest).",
        ),
    ] = None,
    quarantine: Annotated[
        Path | None,
        typer.Option(
            "--quarantine",
            metavar="DIR",
            help="Folder (outside the roots) the others are moved into, keeping their paths "
            "relative to their root (default: the library's `quarantine` setting).",
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would move.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Set aside every duplicate group's others: one member stays (by --keep), the rest move
    into --quarantine, journaled; `imgindex duplicates undo` puts them back. Nothing is
    deleted."""
    from imgindex import settings
    from imgindex.quarantine import resolve

    with _open(ctx) as lib:
        s = settings.load(lib.engine)
        where = quarantine or (Path(s.quarantine) if s.quarantine else None)
        if where is None:
            raise ImgIndexError(
                "say where to set duplicates aside: --quarantine DIR "
                "(or `imgindex config quarantine DIR`)"
            )
        if not dry_run:
            _require_writable(lib)
        done = resolve(lib, where, keep or s.keep, dry_run=dry_run)
    _print_outcomes([done], as_json, "would move" if dry_run else "moved")


@duplicates_app.command("undo")
def duplicates_undo(
    ctx: typer.Context,
    every: Annotated[
        bool, typer.Option("--all", help="Undo every resolve not undone yet, not just the last.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Put the files the last `duplicates resolve` set aside back where they were."""
    from imgindex.quarantine import undo

    with _open(ctx) as lib:
        _require_writable(lib)
        done = undo(lib, every=every)
    _print_outcomes(done, as_json, "put back")


def _print_outcomes(done: list[Any], as_json: bool, verb: str) -> None:
    if as_json:
        _echo_json([d.as_dict() for d in done])
        return
    for d in done:
        for m in d.moved:
            typer.echo(f"{names.shown(m['src'])}\t{names.shown(m['dest'])}")
        for m in d.skipped:
            typer.echo(f"warning: {names.shown(m['src'])}: {m['why']}", err=True)
        typer.echo(f"{verb} {len(d.moved)} files (batch {d.batch})", err=True)


@clusters_app.callback(invoke_without_command=True)
def clusters(
    ctx: typer.Context,
    list_: Annotated[bool, typer.Option("--list", help="List the clusters (the default).")] = False,
    tree: Annotated[
        bool, typer.Option("--tree", help="Clusters nested in their groups (--json: nested too).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """List clusters with their sizes and representative images."""
    if ctx.invoked_subcommand is not None:
        return
    from imgindex.clusterstore import cluster_tree, display_name, list_clusters

    with _open(ctx) as lib:
        rows = (cluster_tree if tree else list_clusters)(lib.engine, lib.dim)
    if as_json:
        _echo_json(rows)
        return
    if not rows:
        typer.echo("no clusters yet: run `imgindex index`", err=True)

    def line(row: dict[str, Any], indent: str = "") -> str:
        title = display_name(row["id"], row)
        return f"{indent}{row['id']:>4}  {row['size']:>7}  {names.printable(title)}  " + "  ".join(
            map(names.shown, row["representatives"])
        )

    for row in rows:
        if not tree:
            typer.echo(line(row))
            continue
        title = "no group" if row["id"] is None else _group_title(row["id"], row)
        heading = "" if row["id"] is None else f"group {row['id']}: "
        typer.echo(f"{heading}{names.printable(title)} ({row['size']} images)")
        for c in row["clusters"]:
            typer.echo(line(c, "  "))


def _group_title(group_id: int, row: dict[str, Any]) -> str:
    return row.get("name") or row.get("label") or f"group {group_id}"


@clusters_app.command("show")
def clusters_show(
    ctx: typer.Context,
    cluster_id: ClusterId,
    group: Annotated[bool, typer.Option("--group", help="ID is a group of clusters.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Every member of cluster ID (or of each cluster of group ID), nearest to its centre
    first."""
    from imgindex.clusterstore import display_name, show_cluster, show_group

    with _open(ctx) as lib:
        data = (show_group if group else show_cluster)(lib.engine, cluster_id, lib.dim)
    if as_json:
        _echo_json(data)
        return
    if group:
        typer.echo(
            f"group {data['id']} ({names.printable(_group_title(data['id'], data))}): "
            f"{data['size']} images in {len(data['clusters'])} clusters",
            err=True,
        )
        for c in data["clusters"]:
            typer.echo(f"# cluster {c['id']} ({names.printable(display_name(c['id'], c))})")
            for m in c["members"]:
                typer.echo(names.shown(m["path"]))
        return

    typer.echo(
        f"cluster {data['id']} ({names.printable(display_name(data['id'], data))}): "
        f"{data['size']} images",
        err=True,
    )
    for m in data["members"]:
        typer.echo(names.shown(m["path"]))


@clusters_app.command("name")
def clusters_name(
    ctx: typer.Context,
    cluster_id: ClusterId,
    name: Annotated[str | None, typer.Argument(help="The name, e.g. 'Beach 2024'.")] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove the name.")] = False,
    group: Annotated[bool, typer.Option("--group", help="ID is a group of clusters.")] = False,
) -> None:
    """Give cluster (or group) ID a name of your own; it follows its photos through updates."""
    from imgindex.clusterstore import name_cluster, name_group

    if (name is None) == (not clear):
        raise ImgIndexError("give a NAME, or --clear to remove the cluster's name")
    with _open(ctx) as lib:
        _require_writable(lib)
        (name_group if group else name_cluster)(lib.engine, cluster_id, None if clear else name)


@clusters_app.command("export")
def clusters_export(
    ctx: typer.Context,
    directory: Annotated[
        Path, typer.Argument(metavar="DIR", help="The view's folder (created if missing).")
    ],
    copy: Annotated[
        bool, typer.Option("--copy/--symlink", help="Copy the photos instead of linking them.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """One folder per cluster in DIR with symlinks to (or copies of) its photos. Run it again
    to bring DIR up to date; photos are never changed, others' files in DIR are left alone."""
    from imgindex.views import export

    with _open(ctx) as lib:
        report = export(lib, directory, "copy" if copy else "symlink")
    if as_json:
        _echo_json(asdict(report))
        return
    typer.echo(
        f"exported {report.images} images into {report.folders} folders in {report.dir} "
        f"({report.added} added, {report.moved} moved, {report.removed} removed)",
        err=True,
    )
    if report.left or report.skipped:
        typer.echo(
            f"warning: {report.left} files changed by someone else were left alone, "
            f"{report.skipped} images skipped (original gone)",
            err=True,
        )


@app.command()
def status(
    ctx: typer.Context,
    failed: Annotated[
        bool, typer.Option("--failed", help="List files that failed, and why.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Roots, model, k and counts (or the failed files)."""
    with _open(ctx) as lib:
        data: Any = lib.failed() if failed else lib.status()
    if as_json:
        _echo_json(data)
    elif failed:
        for row in data:
            typer.echo(f"{names.shown(row['path'])}\t{row['status']}: {row['reason']}")
    else:
        for key, value in data.items():
            if key == "daemon":
                problem = value.get("problem")
                embedder = _embedding(value.get("embedder"))
                value = value["state"] + (f" (pid {value['pid']})" if value["pid"] else "")
                value += f"; {problem}" if problem else ""
                value += embedder
            if key == "database":
                value = shown_database(value)
            if key == "host" and not value:
                value = "this machine (a SQLite library's only host)"
            if key == "maintenance" and value is None:
                value = "nobody now (a writer takes it)"
            if key == "roots":
                value = ", ".join(names.shown(r["path"]) + _root_note(r) for r in value)
            typer.echo(f"{key:>14}: {value}")


def _embedding(info: dict[str, Any] | None) -> str:
    """``; embedding: ...`` for the daemon's line of ``status``: which embedder is in use, and
    how many images wait for the service."""
    if not info or "url" not in info:
        return ""
    url, using = info["url"], info.get("using")
    if using == "service":
        return f"; embedding: service {url}"
    why = f" ({info['problem']})" if info.get("problem") else ""
    if using == "waiting":
        return f"; embedding: waiting for {url}{why}, {info.get('waiting', 0)} images held"
    return f"; embedding: local, {url} unavailable{why}"


def _root_note(root: dict[str, Any]) -> str:
    """What ``status`` says after a root: whether it is there, or whose it is."""
    if root["available"] is None:  # another host's root: its disks are not looked at here
        return f" (host {root['host']!r})"
    return "" if root["available"] else " (unavailable)"


@app.command("check")
def check_cmd(
    ctx: typer.Context,
    repair: Annotated[
        bool, typer.Option("--repair", help="Fix what can be fixed (takes the write lock).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Verify the library: SQLite integrity, stored vectors (finite, unit length), the FAISS
    cache (this library's, unchanged, holding exactly the indexed vectors) and that nothing is
    stuck. Exits 1 while problems remain unrepaired."""
    from imgindex.check import check

    with _open(ctx, write=repair, purpose="imgindex check --repair") as lib:
        report = check(lib, repair=repair)
    if as_json:
        _echo_json(report.as_dict())
    else:
        for p in report.problems:
            state = "repaired" if p.repaired else "problem"
            line = f"{state}: {p.area}: {p.what}" + (f" ({p.action})" if p.action else "")
            typer.echo(names.printable(line))
        typer.echo(
            f"{report.indexed} indexed, cache {report.cache_file or 'none'}: "
            f"{len(report.problems)} problems, {len(report.problems) - len(report.unrepaired)} "
            f"repaired ({report.seconds:.1f} s)",
            err=True,
        )
    if report.unrepaired:
        raise typer.Exit(1)


@app.command()
def daemon(
    ctx: typer.Context,
    poll: Annotated[
        float | None,
        typer.Option(
            callback=_setting("poll"),
            help="Poll every root every SECONDS instead of inotify (network shares).",
        ),
    ] = None,
    debounce: Annotated[
        float | None,
        typer.Option(
            callback=_setting("debounce"), help="Quiet period after a file is closed, in seconds."
        ),
    ] = None,
    rescan_interval: Annotated[
        float | None,
        typer.Option(
            callback=_setting("rescan_interval"),
            help="Seconds between full rescans (default 3600, +-10 % jitter).",
        ),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(callback=_setting("batch_size"), help="Images per batch.")
    ] = None,
    batch_seconds: Annotated[
        float | None,
        typer.Option(
            callback=_setting("batch_seconds"), help="Wait at most this long to fill a batch."
        ),
    ] = None,
    workers: WorkersOpt = None,
    weights: WeightsOpt = None,
    http: Annotated[
        str | None,
        typer.Option(
            "--http",
            metavar="HOST:PORT",
            callback=_setting("http"),
            help="Also serve the web page here (the `http` setting; loopback unless a "
            "password is set).",
        ),
    ] = None,
    timing: Annotated[
        list[str] | None,
        typer.Option(
            "--timing",
            hidden=True,
            metavar="NAME=SECONDS",
            help="Shorten one of the daemon's own timings (for tests; see daemon.Timings).",
        ),
    ] = None,
) -> None:
    """Watch the roots and keep the library current (run it under systemd)."""
    from imgindex.daemon import Daemon, Timings

    d = Daemon(
        _data_dir(ctx),
        database=_database(ctx),
        workers=workers,
        weights=weights,
        timings=Timings.parse(timing or []),
        poll=poll,
        debounce=debounce,
        rescan_interval=rescan_interval,
        batch_size=batch_size,
        batch_seconds=batch_seconds,
        http=http,
    )
    raise typer.Exit(d.run())


@app.command("embed-server")
def embed_server(
    host: Annotated[
        str, typer.Option(help="Address to listen on; any but loopback needs a token.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port (0: any free one).")] = 8765,
    model: Annotated[
        str | None, typer.Option(help="The libraries' model [default: efficientnet_lite0].")
    ] = None,
    device: Annotated[str | None, typer.Option(help="cuda or cpu [default: cuda if any].")] = None,
    weights: WeightsOpt = None,
    token_file: Annotated[
        Path | None,
        typer.Option(help="File holding the shared token [default: $IMGINDEX_EMBED_TOKEN]."),
    ] = None,
    max_batch: Annotated[int, typer.Option(min=1, max=256, help="Images per request.")] = 256,
) -> None:
    """Embed for libraries on other machines (a NAS): serve this machine's model over HTTP.
    Clients set `imgindex config embed_url http://THIS-HOST:PORT`."""
    try:
        from imgindex import embedserver
    except ImportError as exc:
        raise ImgIndexError(
            f"the embedding service needs FastAPI and uvicorn ({exc.name} is missing): "
            "pip install 'imgindex[embed]'"
        ) from None
    from imgindex.embedclient import read_token
    from imgindex.models import DEFAULT_MODEL, get_spec, load_embedder

    token = read_token(token_file)
    embedserver.check_token(host, token)  # before minutes of loading a model
    spec = get_spec(model or DEFAULT_MODEL)
    embedder = load_embedder(spec.name, weights=weights, device=device)
    embedserver.serve(
        embedder,
        host,
        port,
        token=token,
        max_batch=max_batch,
        on_ready=lambda url: logging.getLogger("imgindex.embedserver").info(
            "embedding with %s on %s; listening on %s%s",
            spec.name,
            embedder.device,
            url,
            " (token required)" if token else "",
        ),
    )


HttpOpt = Annotated[
    str | None,
    typer.Option(
        "--http",
        metavar="HOST:PORT",
        help="Serve the web page here (default 127.0.0.1:8760; any address but loopback needs "
        "a password, `imgindex config http_password`, or --read-only --no-auth).",
    ),
]


def _web_missing(exc: ImportError) -> ImgIndexError:
    return ImgIndexError(
        f"the web page needs FastAPI and uvicorn ({exc.name} is missing): "
        "pip install 'imgindex[web]'"
    )


@app.command()
def serve(
    ctx: typer.Context,
    http: HttpOpt = None,
    read_only: Annotated[
        bool, typer.Option("--read-only", help="Refuse every change (renames, resolves).")
    ] = False,
    no_auth: Annotated[
        bool,
        typer.Option(
            "--no-auth", help="No password on a non-loopback address (needs --read-only)."
        ),
    ] = False,
) -> None:
    """Serve the library's web page and JSON API without a daemon (searches by photo ask a
    running daemon, else load the model here)."""
    from imgindex import settings

    try:
        from imgindex.web.server import serve as serve_web
    except ImportError as exc:
        raise _web_missing(exc) from None
    with _open(ctx) as lib:
        address = http or settings.load(lib.engine).http or DEFAULT_HTTP
    serve_web(
        _data_dir(ctx),
        address,
        database=_database(ctx),
        read_only=read_only,
        no_auth=no_auth,
        on_ready=lambda what: typer.echo(f"serving the {what}", err=True),
    )


DEFAULT_HTTP = "127.0.0.1:8760"


@app.command()
def config(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(help="Setting to show or change.")] = None,
    value: Annotated[str | None, typer.Argument(help="New value.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show or change the daemon's settings (a running daemon applies them at once)."""
    from imgindex import settings

    if name == "http_password":
        _set_http_password(ctx, value)
        return
    with _open(ctx) as lib:
        if value is not None:
            _require_writable(lib)
            settings.save(lib.engine, name or "", value)
        current = settings.as_dict(settings.load(lib.engine))
    if name is not None and value is None:
        if name not in current:
            raise ImgIndexError(f"unknown setting '{name}'; settings: {', '.join(current)}")
        current = {name: current[name]}
    if as_json:
        _echo_json(current)
        return
    for key, val in current.items():
        typer.echo(f"{key} = {','.join(val) if isinstance(val, list) else val}")


def _set_http_password(ctx: typer.Context, value: str | None) -> None:
    """``config http_password``: asked twice on a terminal (else one line of stdin); stored
    as a salted hash; ``config http_password --clear``-like: the value ``-`` removes it."""
    from imgindex.web.auth import set_password

    if value is None:
        if sys.stdin.isatty():
            value = typer.prompt("password for the web page", hide_input=True,
                                 confirmation_prompt=True)  # fmt: skip
        else:
            value = sys.stdin.readline().rstrip("\n")
    with _open(ctx) as lib:
        _require_writable(lib)
        set_password(lib.engine, None if value == "-" else value)
    typer.echo("web password " + ("removed" if value == "-" else "set"), err=True)


@app.command()
def models(as_json: JsonOpt = False) -> None:
    """The embedding models this imgindex knows."""
    from imgindex.models import DEFAULT_MODEL, available_models

    specs = available_models()
    if as_json:
        _echo_json(
            [
                {
                    "name": s.name,
                    "dim": s.dim,
                    "default": s.name == DEFAULT_MODEL,
                    "description": s.description,
                }
                for s in specs
            ]
        )
        return
    for s in specs:
        mark = "*" if s.name == DEFAULT_MODEL else " "
        typer.echo(f"{mark} {s.name:<20} {s.dim:>5}-d  {s.description}")


@app.command()
def migrate(
    ctx: typer.Context,
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            metavar="URL",
            help="Move a SQLite library into this empty PostgreSQL database "
            "(postgresql://USER@HOST/DB), verified before the switch.",
        ),
    ] = None,
) -> None:
    """Upgrade the library's database schema (also done on every open), or move the library
    to PostgreSQL (``--to``; stop the daemon first)."""
    from imgindex.db.migrate import SCHEMA_HEAD

    with _open(ctx, write=True, purpose="imgindex migrate") as lib:
        if to is None:
            typer.echo(f"schema at revision {SCHEMA_HEAD}", err=True)
            return
        result = lib.move_to(to, lambda table, n: _copy_progress(table, n))
        typer.echo(f"copied and verified: {result.summary()}", err=True)
        typer.echo(f"library {lib.paths.root} now uses {lib.location.shown()}", err=True)


def _copy_progress(table: str, rows: int) -> None:
    if rows == 0:
        typer.echo(f"copying {table}..." if table != "verifying" else "verifying...", err=True)


@app.command("export")
def export_rows(
    ctx: typer.Context,
    csv_file: Annotated[
        str | None, typer.Option("--csv", metavar="FILE", help="Write CSV here ('-': stdout).")
    ] = None,
    json_file: Annotated[
        str | None, typer.Option("--json", metavar="FILE", help="Write JSON here ('-': stdout).")
    ] = None,
) -> None:
    """One row per image (path, status, reason, cluster, map x/y) for spreadsheets and Tableau."""
    from imgindex import export

    if not (csv_file or json_file):
        raise ImgIndexError("say where to write: --csv FILE and/or --json FILE ('-': stdout)")
    if csv_file == json_file:
        raise ImgIndexError(f"--csv and --json cannot both write to {csv_file}")
    with _open(ctx) as lib:
        rows = export.rows(lib)
    for dest, writer in ((csv_file, export.write_csv), (json_file, export.write_json)):
        if dest:
            export.save(dest, writer, rows)
            if dest != "-":
                typer.echo(f"{dest}: {len(rows)} images", err=True)


@app.command()
def report(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", "-o", help="The HTML file to write.")] = Path(
        "report.html"
    ),
    thumbnails: Annotated[
        int, typer.Option(min=0, max=100_000, help="Embed at most this many thumbnails.")
    ] = 3000,
) -> None:
    """One self-contained HTML page: the map of the library, a contact sheet per cluster and
    the silhouette-versus-k plot. Opens offline in any browser."""
    from imgindex.report import human_size, write

    with _open(ctx) as lib:
        done = write(lib, out, thumbs_max=thumbnails)
    typer.echo(
        f"{names.shown(str(done.path.resolve()))} ({human_size(done.size)}): "
        f"{done.points} points, {done.clusters} clusters, {done.thumbnails} thumbnails, "
        f"{done.seconds:.1f} s",
        err=True,
    )


def main() -> None:
    """Console entry point."""
    app(prog_name="imgindex")
