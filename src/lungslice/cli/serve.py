"""``lungslice serve``: predict on new CT studies of an Orthanc and store the findings back."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import typer

from lungslice.cli._app import app, console, fail, out
from lungslice.errors import ConfigError, LungsliceError

#: The worker's stages shown by --status (seconds; --format json has predict's own stages too).
STAGES = ("fetch", "predict", "store")

#: Where the service keeps its cursor and study records unless --state says otherwise.
DEFAULT_STATE = Path("lungslice-serve")


def _refuse_inline_password(argv: list[str]) -> None:
    for arg in argv:
        name = arg.split("=", 1)[0]
        if name in ("--password", "--user", "--username", "--token"):
            raise ConfigError(
                f"{name}: credentials on the command line are refused (they show in process "
                "listings and shell history). Fix: write 'username:password' into a file, "
                "chmod 600 it, and pass --credentials FILE."
            )


@app.command(
    "serve",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def serve_command(
    ctx: typer.Context,
    orthanc: str | None = typer.Option(
        None, "--orthanc", help="Base URL of the Orthanc to follow, e.g. http://127.0.0.1:8042."
    ),
    model: Path | None = typer.Option(
        None, "--model", "-m", help="Model bundle directory (written by `lungslice train`)."
    ),
    credentials: Path | None = typer.Option(
        None,
        "--credentials",
        help="File with 'username:password' (or JSON) for Orthanc's HTTP basic auth; "
        "credentials on the command line are refused.",
    ),
    workers: int = typer.Option(1, "--workers", help="Studies processed at once."),
    state: Path = typer.Option(
        DEFAULT_STATE, "--state", help="Folder of the change-feed cursor and study records."
    ),
    status: bool = typer.Option(
        False, "--status", help="List the processed, failed and pending studies, then exit."
    ),
    once: bool = typer.Option(
        False, "--once", help="Process the studies that are stable now, then exit."
    ),
    store: str = typer.Option(
        "stow", "--store", help="'stow' (DICOMweb STOW-RS) or 'rest' (Orthanc /instances)."
    ),
    fetch: str = typer.Option(
        "rest",
        "--fetch",
        help="How studies are read: 'rest' (Orthanc's /instances/{id}/file) or 'dicomweb' "
        "(QIDO-RS and WADO-RS under /dicom-web).",
    ),
    dicomweb_root: str = typer.Option(
        "/dicom-web",
        "--dicomweb-root",
        help='Path of Orthanc\'s DICOMweb plugin (its "DicomWeb"."Root") for STOW-RS, '
        "QIDO-RS and WADO-RS.",
    ),
    orthanc_wait: float = typer.Option(
        300.0,
        "--orthanc-wait",
        help="Seconds to wait for an Orthanc that does not answer (at start-up or mid-run) "
        "before stopping with an error.",
    ),
    orthanc_tries: int = typer.Option(
        50, "--orthanc-tries", help="Tries (backing off 1 s to 30 s) within --orthanc-wait."
    ),
    start_orthanc: bool = typer.Option(
        False,
        "--start-orthanc",
        help="Demo: start a private Orthanc on 127.0.0.1, upload the demo's phantom studies, "
        "process them and print the web interface's URL.",
    ),
    data: Path = typer.Option(
        Path("demo-output/data"),
        "--data",
        help="With --start-orthanc: folder of studies to upload (default: `make demo`'s).",
    ),
    fmt: str = typer.Option("table", "--format", help="--status output: 'table' or 'json'."),
) -> None:
    """Follow an Orthanc's new studies, predict on their CT series, store results in the study.

    Reads Orthanc's change feed (StableStudy) from a cursor kept in --state,
    stores predict's key images (KO), findings (SR) and summary (Secondary
    Capture) into the same study by STOW-RS, and records every study as
    processed, skipped or failed with its reason. Logs carry study UIDs only,
    never patient data. docs/pacs.md describes it.
    """
    _refuse_inline_password(list(ctx.args))
    if ctx.args:
        raise typer.BadParameter(f"unexpected arguments: {' '.join(ctx.args)}")
    try:
        from lungslice.serve.orthanc import Patience

        if status:
            _print_status(state, fmt)
            return
        if start_orthanc:
            _demo(model or Path("demo-output/model"), data, state, workers, once)
            return
        if orthanc is None or model is None:
            raise ConfigError(
                "serve needs --orthanc URL and --model MODEL (or --start-orthanc for the demo, "
                "or --status)."
            )
        patience = Patience(max_wait_s=orthanc_wait, max_tries=orthanc_tries)
        settings = {"workers": workers, "store": store, "fetch": fetch, "patience": patience}
        _serve(orthanc, model, credentials, state, once, settings, dicomweb_root)
    except LungsliceError as err:
        raise fail(err) from err


def _service(
    url: str,
    model: Path,
    credentials: Path | None,
    state: Path,
    settings: dict[str, Any],
    dicomweb_root: str,
) -> Any:
    from lungslice.serve.orthanc import OrthancClient, read_credentials
    from lungslice.serve.state import ServeState
    from lungslice.serve.worker import ServeConfig, Service

    creds = read_credentials(credentials) if credentials is not None else None
    if creds is None:
        console.print("[yellow]warning:[/] no --credentials: talking to Orthanc without auth")
    config = ServeConfig(model=model, **settings)
    client = OrthancClient(url, creds, dicomweb_root=dicomweb_root)
    return Service(client, ServeState(state), config)


def _install_signals(service: Any) -> None:
    def handler(signum: int, _frame: Any) -> None:
        console.print(f"signal {signum}: stopping after the current study")
        service.stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _serve(
    url: str,
    model: Path,
    credentials: Path | None,
    state: Path,
    once: bool,
    settings: dict[str, Any],
    dicomweb_root: str,
) -> None:
    from lungslice.features.runtime import tune_allocator

    tune_allocator()
    service = _service(url, model, credentials, state, settings, dicomweb_root)
    _install_signals(service)
    console.print(
        f"following {url} with model {service.model_id[:12]} ({settings['workers']} "
        f"worker(s), fetch {settings['fetch']}); state in {state}"
    )
    if once:
        service.run_once()
    else:
        service.run()
    counts = service.state.counts()
    console.print("studies: " + ", ".join(f"{n} {s}" for s, n in counts.items()))


def _print_status(state: Path, fmt: str) -> None:
    from lungslice.serve.state import ServeState

    if not (state / "serve.sqlite").exists():
        raise ConfigError(
            f"--state {state}: no service state here (serve.sqlite). Fix: pass the --state "
            "folder the service runs with."
        )
    st = ServeState(state)
    records = st.studies()
    if fmt == "json":
        out.print_json(
            json.dumps({"counts": st.counts(), "studies": [r.to_dict() for r in records]})
        )
        return
    out.print("studies: " + ", ".join(f"{n} {s}" for s, n in st.counts().items()))
    for r in records:
        took = f" {r.seconds:.1f} s" if r.seconds is not None else ""
        stages = [f"{k} {r.timings[k]:.1f}" for k in STAGES if k in r.timings]
        took += f" ({', '.join(stages)})" if stages else ""
        why = f" - {r.reason}" if r.reason else ""
        out.print(
            f"{r.status:9s} {r.study_uid or r.orthanc_id} (orthanc {r.orthanc_id[:17]}, "
            f"tries {r.attempts}){took}{why}",
            soft_wrap=True,
            markup=False,
            highlight=False,
        )


def _demo(model: Path, data: Path, state: Path, workers: int, once: bool) -> None:
    from lungslice.serve.demo import run_demo

    def interrupt(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt  # run_demo stops its Orthanc on the way out

    signal.signal(signal.SIGTERM, interrupt)
    run_demo(model, data, state, workers=workers, keep_running=not once, echo=console.print)
