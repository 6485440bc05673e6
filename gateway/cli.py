"""The ``roadcargo`` command (design section 12)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from gateway import consignments, db, heap, parties
from gateway.config import Config, ConfigError, load_config
from gateway.context import AGENCY_SCOPES, ROLES, Actor, Gateway
from gateway.errors import GatewayError, catalogue_markdown
from gateway.worker import Background

if TYPE_CHECKING:
    from adapters.immigration_client import ImmigrationClient

CLI_OFFICER = Actor(None, "system", "cli")
log = logging.getLogger("roadcargo")


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config or os.environ.get("ROADCARGO_CONFIG") or None)


def _url(args: argparse.Namespace, config: Config) -> str:
    return str(args.db or os.environ.get("ROADCARGO_DB") or db.default_url(config.server.data_dir))


def _gateway(args: argparse.Namespace, migrate: bool = False) -> Gateway:
    config = _config(args)
    engine = db.make_engine(_url(args, config))
    if migrate:
        db.upgrade(engine)
    elif not db.schema_is_current(engine):
        raise ConfigError(
            f"the database {_safe(_url(args, config))} is not set up or not current: "
            "run 'roadcargo db upgrade'"
        )
    return Gateway(engine, config)


def _safe(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.app import create_app

    _setup_logs(args)
    gw = _gateway(args, migrate=True)  # serve sets up or upgrades the database first
    immigration = gw.immigration = _immigration_client(gw)
    app = create_app(gw)
    fastapi_app: Any = app

    @asynccontextmanager
    async def lifespan(_app: Any) -> Any:
        heap.settle()  # before the first request: what is loaded now stays for the process's life
        # -- background work: in this process unless --no-background; else `roadcargo worker`
        background = None if args.no_background else Background(gw, immigration)
        if background is not None:
            background.start()  # its advance-notice job loads the Immigration WSDL first
        else:  # the kiosk still asks Immigration here: load the WSDL before the first request does
            threading.Thread(target=immigration.warm, name="roadcargo-warm", daemon=True).start()
        sftp = _start_sftp(args, gw, app)
        yield
        sftp.stop()
        if background is not None:
            background.stop(timeout=5)

    fastapi_app.router.lifespan_context = lifespan
    port = int(args.http_port or os.environ.get("ROADCARGO_HTTP_PORT") or 8080)
    print(
        f"Road Cargo Gateway on http://{args.host}:{port} (database {_safe(str(gw.engine.url))}); "
        "Ctrl-C or SIGTERM stops it",
        flush=True,
    )
    server = _uvicorn_server()(
        # Logging is set up by _setup_logs; the access lines are the gateway's own (with the request id).
        uvicorn.Config(app, host=args.host, port=port, log_level="info", access_log=False, log_config=None)
    )
    server.run()
    gw.engine.dispose()
    return 0 if server.started else 1


def _start_sftp(args: argparse.Namespace, gw: Gateway, app: Any) -> Any:
    """The SFTP channel: mailbox server, its worker and the [[sftp.pull]] pollers; in /metrics too."""
    from adapters.sftp_keys import fingerprint
    from adapters.sftp_service import DEFAULT_PORT, SftpService

    port = args.sftp_port if args.sftp_port is not None else os.environ.get("ROADCARGO_SFTP_PORT")
    # --no-background: the listener only; mailbox processing and polling run in 'roadcargo worker'.
    sftp = SftpService(
        gw,
        args.host,
        DEFAULT_PORT if port in (None, "") else int(port),  # 0: any free port
        background=not getattr(args, "no_background", False),
    )
    problem = sftp.start()
    app.state.metrics.registry.register(sftp.collector())
    if problem is None and sftp.server is not None:
        print(
            f"SFTP mailbox on {args.host}:{sftp.server.port} "
            f"(host key {fingerprint(sftp.server.host_key.asbytes())})",
            flush=True,
        )
    return sftp


def _uvicorn_server() -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn re-raises SIGTERM/SIGINT after a graceful shutdown, so the process dies of the signal;
        a stop that was asked for and carried out cleanly should exit 0, as service managers expect."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            self._captured_signals.clear()

    return Server


def _immigration_client(gw: Gateway) -> ImmigrationClient:
    from adapters.immigration_client import ImmigrationClient

    # The WSDL's objects live as long as the process: out of the garbage collector's way (gateway.heap).
    settings = gw.config.immigration
    return ImmigrationClient(settings.url, settings.timeout_ms, on_loaded=heap.settle)


# -- roadcargo worker -----------------------------------------------------------------------


def cmd_worker(args: argparse.Namespace) -> int:
    """The background work alone (expiry, advance notices, SFTP processing and polling, sweeps), for
    running beside ``roadcargo serve --no-background`` processes; any number may run at once."""
    from gateway.worker import run_worker

    _setup_logs(args)
    gw = _gateway(args)
    gw.immigration = immigration = _immigration_client(gw)
    print(f"worker on database {_safe(str(gw.engine.url))}", flush=True)
    try:
        return run_worker(gw, immigration, sftp=not args.no_sftp)
    finally:
        gw.engine.dispose()


def cmd_simulate_immigration(args: argparse.Namespace) -> int:
    from adapters import immigration_sim

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        watchlist = immigration_sim.load_watchlist(args.watchlist)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the watchlist {args.watchlist}: {exc}") from None
    return immigration_sim.run(args.host, args.port, watchlist, args.delay_ms, _uvicorn_server())


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    config = _config(args)
    engine = db.make_engine(_url(args, config))
    db.upgrade(engine)
    print(f"database {_safe(_url(args, config))} is at revision {db.current_revision(engine)}")
    return 0


def _print(data: Any, as_json: bool, text: Callable[[Any], str]) -> None:
    print(json.dumps(data, indent=None if as_json else 2) if as_json else text(data))


def _ssh_key_text(path: str) -> str:
    """A public key file's text, validated before anything is registered."""
    from adapters.sftp_keys import parse_public_key

    try:
        with open(path, encoding="utf-8", errors="replace") as key_file:
            text = key_file.read(65536)
    except OSError as exc:
        raise GatewayError.one(
            "INVALID_VALUE", f"cannot read the SSH key file {path}: {exc.strerror}", "ssh_key"
        ) from None
    parse_public_key(text)
    return text


def cmd_party_add(args: argparse.Namespace) -> int:
    gw = _gateway(args)
    ssh_key = _ssh_key_text(args.ssh_key) if args.ssh_key else None
    new = parties.add_party(
        gw,
        CLI_OFFICER,
        args.role,
        args.name,
        edi_ids=tuple(args.edi_id or ()),
        scope=args.scope,
        control_point=args.control_point,
    )
    registered = None
    if ssh_key is not None:
        from adapters.sftp_keys import register_ssh_key

        registered = register_ssh_key(gw, CLI_OFFICER, new.party_id, ssh_key)
    if args.json:
        print(json.dumps({**new.as_dict(), **({"ssh_key": registered["fingerprint"]} if registered else {})}))
    else:
        print(f"party_id: {new.party_id}")
        if registered:
            print(f"ssh_key:  {registered['fingerprint']} (SFTP user name: {new.party_id})")
        print(f"api_key:  {new.api_key}")
        if new.pin:
            print(f"pin:      {new.pin}")
        print("The key (and PIN) are shown this once and stored hashed: keep them safe now.")
    return 0


def cmd_party_show(args: argparse.Namespace) -> int:
    gw = _gateway(args)
    info = parties.get_party(gw, CLI_OFFICER, args.party)
    info["keys"] = parties.list_keys(gw, CLI_OFFICER, args.party)
    print(json.dumps(info, indent=2, ensure_ascii=False))
    return 0


def cmd_party_status(args: argparse.Namespace) -> int:
    gw = _gateway(args)
    change = parties.suspend if args.action == "suspend" else parties.reinstate
    info = change(gw, CLI_OFFICER, args.party)
    print(f"party {info['party_id']} is {info['status']}")
    return 0


def cmd_key_add(args: argparse.Namespace) -> int:
    gw = _gateway(args)
    key = parties.add_key(gw, CLI_OFFICER, args.party, args.expires_in_days)
    expiry = f" (expires {key['expires_at']})" if key["expires_at"] else ""
    print(
        json.dumps(key) if args.json else f"key {key['key_id']}{expiry}: {key['api_key']}\nShown this once."
    )
    return 0


def cmd_key_revoke(args: argparse.Namespace) -> int:
    gw = _gateway(args)
    parties.revoke_key(gw, CLI_OFFICER, args.party, args.key_id)
    print(f"key {args.key_id} of party {args.party} is revoked")
    return 0


def cmd_ssh_key_add(args: argparse.Namespace) -> int:
    from adapters.sftp_keys import register_ssh_key

    gw = _gateway(args)
    key = register_ssh_key(gw, CLI_OFFICER, args.party, _ssh_key_text(args.file))
    if args.json:
        print(json.dumps(key))
    else:
        note = "registered" if key["created"] else "was already registered"
        print(f"SSH key {key['fingerprint']} ({key['algorithm']}) {note} for party {args.party}")
    return 0


def cmd_ssh_key_list(args: argparse.Namespace) -> int:
    from adapters.sftp_keys import list_ssh_keys

    keys = list_ssh_keys(_gateway(args), CLI_OFFICER, args.party)
    if args.json:
        print(json.dumps(keys))
        return 0
    if not keys:
        print(f"party {args.party} has no SSH key: 'roadcargo party ssh-key add {args.party} FILE'")
    for key in keys:
        state = f"revoked {key['revoked_at']}" if key["revoked_at"] else "live"
        print(
            f"{key['key_id']:>5}  {key['fingerprint']}  {key['algorithm']}  {state}  "
            f"added {key['created_at']}  {key['comment'] or ''}".rstrip()
        )
    return 0


def cmd_ssh_key_revoke(args: argparse.Namespace) -> int:
    from adapters.sftp_keys import revoke_ssh_key

    key = revoke_ssh_key(_gateway(args), CLI_OFFICER, args.party, args.fingerprint)
    if args.json:
        print(json.dumps(key))
    elif key["revoked"]:
        print(f"SSH key {key['fingerprint']} of party {args.party} is revoked: it opens the mailbox no more")
    else:
        print(f"SSH key {key['fingerprint']} of party {args.party} was revoked already ({key['revoked_at']})")
    return 0


def cmd_sftp_status(args: argparse.Namespace) -> int:
    from adapters.sftp_service import status, status_text

    report = status(_gateway(args))
    print(json.dumps(report, indent=2, ensure_ascii=False) if args.json else status_text(report))
    return 0


def cmd_errors(args: argparse.Namespace) -> int:
    sys.stdout.write(catalogue_markdown())
    return 0


def cmd_expire(args: argparse.Namespace) -> int:
    print(f"expired {consignments.expire_due(_gateway(args))} consignments")
    return 0


def _ingest_actor(gw: Gateway, party_id: str) -> Actor:
    """The party a file is ingested as, from the parties table: unknown or suspended is refused."""
    from sqlalchemy import select

    from gateway import tables

    with gw.engine.connect() as conn:
        parties_table = tables.parties
        row = conn.execute(
            select(parties_table.c.role, parties_table.c.status).where(parties_table.c.party_id == party_id)
        ).first()
    if row is None:
        raise GatewayError.one("NOT_FOUND", f"no party {party_id}: register it with 'roadcargo party add'")
    if row.status != "ACTIVE":
        raise GatewayError.one("FORBIDDEN", f"party {party_id} is {row.status.lower()}: it may not file")
    return Actor(party_id, row.role, "cli", row.status)


def cmd_ingest(args: argparse.Namespace) -> int:
    """Process EDIFACT (and XML) files as a party; write the replies next to them or into --out."""
    from pathlib import Path

    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    from adapters import edifact_channel

    gw = _gateway(args)
    actor = _ingest_actor(gw, args.party)
    console = Console(stderr=True)
    failed = 0
    for name in args.files:
        path = Path(name)
        out_dir = Path(args.out) if args.out else path.parent
        try:
            data = path.read_bytes()
        except OSError as exc:
            print(f"roadcargo: {name}: cannot read: {exc.strerror}", file=sys.stderr)
            failed += 1
            continue
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            if data[:4096].lstrip()[:1] == b"<":  # XML; looked for in the head only, not a copy of it all
                try:
                    from adapters.xml_channel import ingest_xml
                except ImportError:
                    print(f"roadcargo: {name}: XML ingest is not available in this version", file=sys.stderr)
                    failed += 1
                    continue
                ack = ingest_xml(gw, dataclasses.replace(actor, channel="xml"), data)
                (out_dir / f"{path.name}.ack.xml").write_bytes(ack)
                print(f"{name}: acknowledgement {out_dir / (path.name + '.ack.xml')}")
                continue
            if len(data) >= 1_000_000:
                with Progress(
                    TextColumn("{task.description}"),
                    BarColumn(),
                    DownloadColumn(),
                    TimeRemainingColumn(),
                    console=console,
                ) as bar:
                    task = bar.add_task(path.name, total=len(data))
                    result = edifact_channel.ingest(
                        gw,
                        actor,
                        data,
                        edifact_channel.MEDIA_TYPE,
                        progress=lambda done, t=task: bar.update(t, completed=done),  # type: ignore[misc]
                    )
            else:
                result = edifact_channel.ingest(gw, actor, data, edifact_channel.MEDIA_TYPE)
        except GatewayError as exc:
            for problem in exc.problems:
                print(f"roadcargo: {name}: {problem.code}: {problem.message}", file=sys.stderr)
            failed += 1
            continue
        contrl = out_dir / f"{path.name}.contrl.edi"
        contrl.write_bytes(result.contrl)
        written = [str(contrl)]
        if result.cusres is not None:
            cusres = out_dir / f"{path.name}.cusres.edi"
            cusres.write_bytes(result.cusres)
            written.append(str(cusres))
        note = " (sent before: the stored replies)" if result.replayed else ""
        for problem in result.problems:
            print(f"roadcargo: {name}: {problem.code}: {problem.message}", file=sys.stderr)
        print(
            f"{name}: interchange {result.interchange_id}{note}: {result.messages} messages, "
            f"{result.consignments} consignments, {result.accepted} accepted, "
            f"{result.consignments - result.accepted} refused -> {', '.join(written)}"
        )
    return 1 if failed else 0


# -- operations: logs, audit export ---------------------------------------------------------


def _setup_logs(args: argparse.Namespace) -> None:
    """Text or JSON log lines (``--log-format``, else ``[server] log_format``), with request ids."""
    from gateway import logs

    chosen = getattr(args, "log_format", None)
    logs.setup(chosen or _config(args).server.log_format)


def cmd_audit_export(args: argparse.Namespace) -> int:
    from gateway import retention

    gw = _gateway(args)
    since, until = retention.parse_day(args.since, "--since"), retention.parse_day(args.until, "--until")
    written = retention.export_audit(gw, since, until, args.out)
    print(f"{written} audit rows written to {args.out}", file=sys.stderr)
    return 0


def cmd_retention_sweep(args: argparse.Namespace) -> int:
    from gateway import retention

    done = retention.sweep(_gateway(args))
    print(
        json.dumps(done)
        if args.json
        else f"{done['raw_messages']} raw messages emptied, {done['audit_rows']} audit rows deleted"
    )
    return 0


def _operations_parsers(sub: Any, common: argparse.ArgumentParser, *servers: argparse.ArgumentParser) -> None:
    for server in servers:
        server.add_argument(
            "--log-format", choices=("text", "json"), help="text or JSON log lines (default: [server])"
        )
    audit = sub.add_parser("audit", help="the audit trail").add_subparsers(
        dest="audit_command", required=True
    )
    export = audit.add_parser(
        "export", parents=[common], help="write the audit rows of a period as JSON lines"
    )
    export.add_argument(
        "--since", required=True, metavar="DATE", help="first day (YYYY-MM-DD, Hong Kong time)"
    )
    export.add_argument("--until", required=True, metavar="DATE", help="last day, included (YYYY-MM-DD)")
    export.add_argument("--out", required=True, metavar="FILE", help="output file ('-' for standard output)")
    export.set_defaults(func=cmd_audit_export)
    retention = sub.add_parser("retention", help="the [retention] settings").add_subparsers(
        dest="retention_command", required=True
    )
    sweep = retention.add_parser(
        "sweep", parents=[common], help="empty old raw messages and delete old audit rows now"
    )
    sweep.add_argument("--json", action="store_true")
    sweep.set_defaults(func=cmd_retention_sweep)


# -- declarations --------------------------------------------------------------------------


def _crossed_since(text: str) -> Any:
    """A date (the start of that day in Hong Kong) or a date-time with offset."""
    from datetime import date, datetime, time

    from gateway.clock import HONG_KONG

    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), time(0), HONG_KONG)
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise GatewayError.one(
            "INVALID_VALUE",
            f"{text!r} is not a date (2026-12-01) or a date-time with offset (2026-12-01T08:00+08:00)",
            "crossed_since",
        )
    return moment


def cmd_declarations_export(args: argparse.Namespace) -> int:
    """Write the prefilled declarations of a period for a declaration service provider's system: one
    file per consignment, named after its CCRN, in the chosen format."""
    from pathlib import Path

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from adapters.http_declarations import render
    from gateway import declarations

    gw = _gateway(args)
    actor = _ingest_actor(gw, args.party)
    since = _crossed_since(args.crossed_since)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = {"json": "json", "xml": "xml", "edifact": "edi"}[args.format]
    total = declarations.count_since(gw, actor, since, args.include_declared)
    written = 0
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    ) as bar:
        task = bar.add_task("declarations", total=total)
        for document in declarations.prefilled_since(gw, actor, since, args.include_declared):
            path = out / f"declaration-{document['ccrn']}.{suffix}"
            path.write_bytes(render(gw, actor, [document], args.format))
            written += 1
            bar.update(task, advance=1)
    print(f"{written} prefilled declarations of consignments crossed since {since.isoformat()} -> {out}")
    return 0


def _declarations_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    declarations = sub.add_parser("declarations", help="trade declarations prefilled from cargo records")
    commands = declarations.add_subparsers(dest="declarations_command", required=True)
    export = commands.add_parser(
        "export",
        parents=[common],
        help="write the prefilled declarations of consignments crossed since a date, one file each",
    )
    export.add_argument("--party", required=True, metavar="PARTY_ID", help="the filer or its granted agent")
    export.add_argument(
        "--crossed-since", required=True, metavar="DATE", help="YYYY-MM-DD (Hong Kong) or a date-time"
    )
    export.add_argument("--format", choices=("edifact", "xml", "json"), default="json")
    export.add_argument("--out", required=True, metavar="DIR", help="directory for the files")
    export.add_argument(
        "--include-declared", action="store_true", help="also consignments already fully declared"
    )
    export.set_defaults(func=cmd_declarations_export)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--db", help="database URL (default: SQLite under the data directory; env ROADCARGO_DB)"
    )
    common.add_argument("--config", help="configuration file, TOML (env ROADCARGO_CONFIG)")

    parser = argparse.ArgumentParser(prog="roadcargo", description="Road Cargo Gateway")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", parents=[common], help="run the gateway (HTTP API; sets up the database)")
    serve.add_argument("--http-port", type=int, help="HTTP port (default 8080; env ROADCARGO_HTTP_PORT)")
    serve.add_argument(
        "--sftp-port", type=int, help="SFTP mailbox port (default 2222; env ROADCARGO_SFTP_PORT)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.set_defaults(func=cmd_serve)
    # -- API-only serve processes, and the worker that does their background work
    serve.add_argument(
        "--no-background",
        action="store_true",
        help="HTTP and the SFTP listener only; background work is left to 'roadcargo worker' processes",
    )
    worker = sub.add_parser(
        "worker",
        parents=[common],
        help="run the background work alone (expiry, advance notices, SFTP processing, sweeps)",
    )
    worker.add_argument(
        "--no-sftp", action="store_true", help="leave SFTP processing and polling to other processes"
    )
    worker.set_defaults(func=cmd_worker)
    _operations_parsers(sub, common, serve, worker)  # --log-format, audit export, retention

    dbp = sub.add_parser("db", help="database maintenance").add_subparsers(dest="db_command", required=True)
    dbp.add_parser("upgrade", parents=[common], help="create or migrate the schema").set_defaults(
        func=cmd_db_upgrade
    )

    party = sub.add_parser("party", help="register and manage parties").add_subparsers(
        dest="party_command", required=True
    )
    add = party.add_parser("add", parents=[common], help="register a party; prints its id and API key once")
    add.add_argument("--role", required=True, choices=ROLES)
    add.add_argument("--name", required=True)
    add.add_argument("--edi-id", action="append", help="an EDIFACT sender identifier (UNB 0004); repeatable")
    add.add_argument("--scope", choices=AGENCY_SCOPES, help="an agency's scope")
    add.add_argument("--control-point", help="the control point a kiosk is bound to")
    add.add_argument("--ssh-key", metavar="FILE", help="an SSH public key (.pub) for the SFTP mailbox")
    add.add_argument("--json", action="store_true", help='print {"party_id", "api_key"} as JSON')
    add.set_defaults(func=cmd_party_add)
    show = party.add_parser("show", parents=[common], help="a party and its keys (hints only)")
    show.add_argument("party")
    show.set_defaults(func=cmd_party_show)
    for action in ("suspend", "reinstate"):
        p = party.add_parser(action, parents=[common], help=f"{action} a party")
        p.add_argument("party")
        p.set_defaults(func=cmd_party_status, action=action)
    key = party.add_parser("key", help="API keys: two live at once for rotation").add_subparsers(
        dest="key_command", required=True
    )
    kadd = key.add_parser("add", parents=[common], help="issue a second key; shown once")
    kadd.add_argument("party")
    kadd.add_argument("--json", action="store_true")
    kadd.add_argument(
        "--expires-in-days", type=int, metavar="N", help="the key stops working by itself after N days"
    )
    kadd.set_defaults(func=cmd_key_add)
    krev = key.add_parser("revoke", parents=[common], help="revoke a key by its id")
    krev.add_argument("party")
    krev.add_argument("key_id", type=int)
    krev.set_defaults(func=cmd_key_revoke)

    ssh = party.add_parser("ssh-key", help="SSH keys for the SFTP mailbox").add_subparsers(
        dest="ssh_key_command", required=True
    )
    sadd = ssh.add_parser("add", parents=[common], help="register an SSH public key (.pub) for a party")
    sadd.add_argument("party")
    sadd.add_argument("file", metavar="FILE")
    sadd.add_argument("--json", action="store_true")
    sadd.set_defaults(func=cmd_ssh_key_add)
    slist = ssh.add_parser("list", parents=[common], help="a party's SSH keys with their fingerprints")
    slist.add_argument("party")
    slist.add_argument("--json", action="store_true")
    slist.set_defaults(func=cmd_ssh_key_list)
    srev = ssh.add_parser(
        "revoke", parents=[common], help="revoke an SSH key: it no longer opens the party's mailbox"
    )
    srev.add_argument("party")
    srev.add_argument(
        "fingerprint", metavar="FINGERPRINT", help="SHA256:... as 'ssh-key list' shows it, or the key id"
    )
    srev.add_argument("--json", action="store_true")
    srev.set_defaults(func=cmd_ssh_key_revoke)
    sftp = sub.add_parser("sftp", help="the SFTP channel").add_subparsers(dest="sftp_command", required=True)
    sstatus = sftp.add_parser(
        "status", parents=[common], help="each mailbox and pull partner: waiting, last success, last error"
    )
    sstatus.add_argument("--json", action="store_true")
    sstatus.set_defaults(func=cmd_sftp_status)
    sub.add_parser("errors", help="print the error catalogue (Markdown)").set_defaults(func=cmd_errors)
    ingest = sub.add_parser(
        "ingest", parents=[common], help="process EDIFACT/XML files as a party; writes the replies"
    )
    ingest.add_argument("files", nargs="+", metavar="FILE")
    ingest.add_argument("--as", dest="party", required=True, metavar="PARTY_ID", help="the filing party")
    ingest.add_argument("--out", help="directory for the replies (default: next to each input)")
    ingest.set_defaults(func=cmd_ingest)
    sub.add_parser("expire", parents=[common], help="expire consignments not crossed in time").set_defaults(
        func=cmd_expire
    )
    simulate = sub.add_parser("simulate", help="simulators of partner systems, for tests and demos")
    sim = simulate.add_subparsers(dest="simulate_command", required=True).add_parser(
        "immigration", help="a SOAP service implementing schemas/immigration.wsdl at /immigration"
    )
    sim.add_argument("--port", type=int, default=8091, help="HTTP port (default 8091)")
    sim.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sim.add_argument("--watchlist", metavar="FILE", help="travel document numbers to refuse, one a line")
    sim.add_argument("--delay-ms", type=int, default=0, help="delay every answer by this many ms")
    sim.set_defaults(func=cmd_simulate_immigration)
    _declarations_parsers(sub, common)  # roadcargo declarations export
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"roadcargo: {exc}", file=sys.stderr)
        return 2
    except GatewayError as exc:
        for problem in exc.problems:
            where = f" ({problem.field})" if problem.field else ""
            print(f"roadcargo: {problem.code}{where}: {problem.message}", file=sys.stderr)
        return 1
    except OperationalError as exc:
        print(f"roadcargo: cannot reach the database: {exc.orig}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
