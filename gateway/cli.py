"""The ``roadcargo`` command (design section 12)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from gateway import consignments, db, parties
from gateway.config import Config, ConfigError, load_config
from gateway.context import AGENCY_SCOPES, ROLES, Actor, Gateway
from gateway.errors import GatewayError, catalogue_markdown

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

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    gw = _gateway(args, migrate=True)  # serve sets up or upgrades the database first
    app = create_app(gw)
    stop = threading.Event()
    fastapi_app: Any = app

    @asynccontextmanager
    async def lifespan(_app: Any) -> Any:
        worker = threading.Thread(
            target=_background, args=(gw, stop), name="roadcargo-background", daemon=True
        )
        worker.start()
        yield
        stop.set()
        worker.join(timeout=5)

    fastapi_app.router.lifespan_context = lifespan
    port = int(args.http_port or os.environ.get("ROADCARGO_HTTP_PORT") or 8080)
    print(
        f"Road Cargo Gateway on http://{args.host}:{port} (database {_safe(str(gw.engine.url))}); "
        "Ctrl-C or SIGTERM stops it",
        flush=True,
    )
    server = _uvicorn_server()(
        uvicorn.Config(app, host=args.host, port=port, log_level="info", access_log=True)
    )
    server.run()
    gw.engine.dispose()
    return 0 if server.started else 1


def _uvicorn_server() -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn re-raises SIGTERM/SIGINT after a graceful shutdown, so the process dies of the signal;
        a stop that was asked for and carried out cleanly should exit 0, as service managers expect."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            self._captured_signals.clear()

    return Server


def _background(gw: Gateway, stop: threading.Event, every: float = 60.0) -> None:
    """Periodic work of a single process: expiry of consignments not crossed in time."""
    while not stop.is_set():
        try:
            expired = consignments.expire_due(gw)
            if expired:
                log.info("expired %d consignments", expired)
        except Exception:  # the sweep retries next round; a failure must not stop the server
            log.exception("expiry sweep failed")
        stop.wait(every)


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    config = _config(args)
    engine = db.make_engine(_url(args, config))
    db.upgrade(engine)
    print(f"database {_safe(_url(args, config))} is at revision {db.current_revision(engine)}")
    return 0


def _print(data: Any, as_json: bool, text: Callable[[Any], str]) -> None:
    print(json.dumps(data, indent=None if as_json else 2) if as_json else text(data))


def cmd_party_add(args: argparse.Namespace) -> int:
    gw = _gateway(args)
    new = parties.add_party(
        gw,
        CLI_OFFICER,
        args.role,
        args.name,
        edi_ids=tuple(args.edi_id or ()),
        scope=args.scope,
        control_point=args.control_point,
    )
    if args.json:
        print(json.dumps(new.as_dict()))
    else:
        print(f"party_id: {new.party_id}")
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
    key = parties.add_key(gw, CLI_OFFICER, args.party)
    print(json.dumps(key) if args.json else f"key {key['key_id']}: {key['api_key']}\nShown this once.")
    return 0


def cmd_key_revoke(args: argparse.Namespace) -> int:
    gw = _gateway(args)
    parties.revoke_key(gw, CLI_OFFICER, args.party, args.key_id)
    print(f"key {args.key_id} of party {args.party} is revoked")
    return 0


def cmd_errors(args: argparse.Namespace) -> int:
    sys.stdout.write(catalogue_markdown())
    return 0


def cmd_expire(args: argparse.Namespace) -> int:
    print(f"expired {consignments.expire_due(_gateway(args))} consignments")
    return 0


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
    kadd.set_defaults(func=cmd_key_add)
    krev = key.add_parser("revoke", parents=[common], help="revoke a key by its id")
    krev.add_argument("party")
    krev.add_argument("key_id", type=int)
    krev.set_defaults(func=cmd_key_revoke)

    sub.add_parser("errors", help="print the error catalogue (Markdown)").set_defaults(func=cmd_errors)
    sub.add_parser("expire", parents=[common], help="expire consignments not crossed in time").set_defaults(
        func=cmd_expire
    )
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
