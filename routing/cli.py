"""``python -m routing``: the operator commands for Switchyard's RabbitMQ topology.

Parses arguments, runs one command, and turns the expected failures (broker
unreachable, declaration refused, drift found) into a message and an exit
code from ``exitcodes``, never a traceback: these run in deploy scripts and
CI, where the message is all anyone reads.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from pika.exceptions import AMQPChannelError, AMQPConnectionError, ChannelClosedByBroker

from . import access, definitions, exitcodes, table, topology
from .apply import apply_topology, format_arguments
from .broker import BrokerUnreachable, connect, describe, redact
from .commands import routing_command
from .management import Management, ManagementError, broker_url, vhost_of
from .recreate import RecreateRefused, recreate_queue, spec_for
from .verify import differences

EPILOG = """\
exit codes: 0 done / in sync; 1 drift found, a declaration refused, or the command
refused to act; 2 RabbitMQ or its management API unreachable (or a usage error).
The broker URL is --url, else CELERY_BROKER_URL, else amqp://guest:guest@127.0.0.1:5672//.
The management API is RABBITMQ_MANAGEMENT_URL, else the broker's host on port 15672.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m routing",
        description="Show, declare, check and export Switchyard's RabbitMQ topology:\n"
        "exchanges, lane queues, dead-letter queues, bindings, priority tiers.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    show = commands.add_parser(
        "show", help="print the topology: queues, bindings, arguments, time limits, tiers",
        description="Print exchanges, queues with their binding keys and arguments, lane "
        "time limits and the tiers' priority bands (a HIGHER number is served first).",
    )
    show.add_argument("--markdown", action="store_true",
                      help="print Markdown tables (for docs/architecture.md)")

    url_help = "AMQP URL of the broker and vhost (default: CELERY_BROKER_URL, else local guest)"
    apply = commands.add_parser(
        "apply", help="declare the topology on the broker (idempotent)",
        description="Declare both exchanges, every queue with its exact arguments, and its\n"
        "binding. Safe to run again. A queue that exists with other arguments is\n"
        "reported (exit 1); re-create it with --recreate QUEUE.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    apply.add_argument("--url", help=url_help)
    apply.add_argument(
        "--recreate", metavar="QUEUE",
        help="re-declare QUEUE (a lane or .dead queue) with the topology's arguments without "
        "losing messages: they are moved to QUEUE.recreate and back. Stop the lane's workers "
        "first; refused while the queue has consumers",
    )

    verify = commands.add_parser(
        "verify", help="compare the live broker with the topology (exit 1 on any difference)",
        description="Read the broker through the management API and list every difference\n"
        "from the topology, one per line, each with the command that fixes it.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verify.add_argument("--url", help=url_help + "; the vhost checked is the URL's")

    ping = commands.add_parser(
        "ping", help="check that RabbitMQ answers (exit 2 with how to start it if not)",
        description="Open and close one AMQP connection to the broker.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ping.add_argument("--url", help=url_help)

    defs = commands.add_parser(
        "definitions", help="print RabbitMQ definitions JSON for the topology",
        description="Print the topology as definitions JSON (rabbitmqctl import_definitions, "
        f"load_definitions). The committed copy is {definitions.COMMITTED_PATH}: "
        f"python -m routing definitions > {definitions.COMMITTED_PATH}",
    )
    defs.add_argument("--vhost", default="/", help="vhost of every object (default: /)")
    defs.add_argument(
        "--passwords-from-env", action="store_true",
        help="hash each role's password from SWITCHYARD_RABBITMQ_PASSWORD_<ROLE> (exit 1 "
        "naming any unset, placeholder or short one); without it every password_hash is "
        "empty: the users exist but cannot log in",
    )
    return parser


def _show(args: argparse.Namespace, out: TextIO) -> int:
    out.write(table.markdown() if args.markdown else table.text())
    return exitcodes.OK


def _definitions(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    passwords = None
    if args.passwords_from_env:
        try:
            passwords = access.passwords_from_env()
        except access.MissingPasswords as exc:
            print(f"refused: {exc}. Set them (in .env for docker compose) and run again.",
                  file=err)
            return exitcodes.FAILED
    out.write(definitions.render(args.vhost, passwords))
    return exitcodes.OK


def _apply(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    url = args.url or broker_url()
    if args.recreate:
        spec = spec_for(args.recreate)  # refuse unknown names before touching the broker
        connection = connect(url)
        try:
            print(f"Re-creating queue {spec.name} on {describe(url)}", file=out)
            result = recreate_queue(connection, spec.name, out)
        finally:
            if connection.is_open:
                connection.close()
        print(f"OK: re-created {spec.name} [{format_arguments(spec.arguments)}]; it holds "
              f"{result.messages} message(s) (moved out {result.moved_out}, "
              f"back {result.moved_back})", file=out)
        return exitcodes.OK

    connection = connect(url)
    try:
        print(f"Applying the topology to {describe(url)}", file=out)
        result = apply_topology(connection, out, url=args.url)
    finally:
        if connection.is_open:
            connection.close()
    if result.ok:
        specs = topology.queue_specs()
        print(f"OK: {len(topology.EXCHANGES)} exchanges, {len(specs)} queues and {len(specs)} "
              f"bindings declared on {describe(url)}", file=out)
        return exitcodes.OK
    print(f"FAILED: the broker refused {len(result.refused)} declaration(s):", file=err)
    for refusal in result.refused:
        print(f"  {refusal.what}: {refusal.reason}\n    fix: {refusal.fix}", file=err)
    return exitcodes.FAILED


def _verify(args: argparse.Namespace, out: TextIO) -> int:
    url = args.url or broker_url()
    vhost = vhost_of(url)
    found = differences(Management.for_broker(url), vhost, url=args.url)
    if not found:
        specs = topology.queue_specs()
        print(f"OK: vhost {vhost!r} matches the topology ({len(topology.EXCHANGES)} exchanges, "
              f"{len(specs)} queues, {len(specs)} bindings)", file=out)
        return exitcodes.OK
    print(f"DRIFT: {len(found)} difference(s) between vhost {vhost!r} and the topology:",
          file=out)
    for difference in found:
        print(str(difference), file=out)
    if args.url and "***" in redact(args.url):
        print("(put the password back in place of *** in --url)", file=out)
    return exitcodes.FAILED


def _ping(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    url = args.url or broker_url()
    try:
        connect(url).close()
    except BrokerUnreachable as exc:
        print(f"error: {exc}\nStart RabbitMQ first (on this machine: `rabbitmq-server "
              "-detached`; with Docker: `docker compose up -d rabbitmq`), or point "
              "CELERY_BROKER_URL at a running broker. Nothing was started.", file=err)
        return exitcodes.UNREACHABLE
    print(f"OK: RabbitMQ answers at {describe(url)}", file=out)
    return exitcodes.OK


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.command == "ping":
        return _ping(args, out, err)
    if args.command == "show":
        return _show(args, out)
    if args.command == "definitions":
        return _definitions(args, out, err)
    if args.command == "apply":
        return _apply(args, out, err)
    return _verify(args, out)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m routing`` with ``argv`` (default: the process's); return the exit code."""
    out, err = sys.stdout, sys.stderr
    args = build_parser().parse_args(argv)
    # pika logs every failed connection attempt itself; the error below says it once.
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    check = routing_command("verify", url=getattr(args, "url", None))
    try:
        return run(args, out, err)
    except BrokerUnreachable as exc:
        print(f"error: {exc}", file=err)
        return exitcodes.UNREACHABLE
    except ManagementError as exc:
        print(f"error: cannot read the broker through the management API: {exc}", file=err)
        return exitcodes.UNREACHABLE
    except RecreateRefused as exc:
        print(f"refused: {exc}", file=err)
        return exitcodes.FAILED
    except AMQPConnectionError as exc:
        print(f"error: lost the connection to RabbitMQ: {exc!r}. Nothing is lost: check with "
              f"`{check}` and run the same command again.", file=err)
        return exitcodes.UNREACHABLE
    except (ChannelClosedByBroker, AMQPChannelError) as exc:
        print(f"error: the broker refused an operation: {exc}. Check with `{check}`; "
              "messages being moved stay in their queue.", file=err)
        return exitcodes.FAILED
    except BrokenPipeError:  # `python -m routing show | head`: the reader had enough
        # Point stdout at devnull so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return exitcodes.OK
