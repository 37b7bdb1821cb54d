"""Glue between typed settings and the click CLI.

``@with_settings(SomeSettings)`` turns every field of a settings class into a CLI flag (``kafka_bootstrap`` becomes
``--kafka-bootstrap``, its help text is the field's description) and hands the command one validated settings
object as ``settings``. Values come from, in order of precedence: the flag, the ``RISKSTREAM_*`` environment
variable, the default. The settings object is built once, here, and passed down; nothing below reads the
environment again.

It also decides how a command fails. Errors meant for the user (``riskstream.errors``: a missing setting, Kafka
unreachable, a bad model bundle) and a database that refuses or fails become one line, ``Error: ...``, exit 2 for a
setting and 1 otherwise; the database's traceback is logged at DEBUG. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import SecretStr, ValidationError
from pydantic_settings import BaseSettings

from riskstream.errors import SettingsError, UserError
from riskstream.logs import configure_logging
from riskstream.settings import mask_url

F = TypeVar("F", bound=Callable[..., Any])
S = TypeVar("S", bound=BaseSettings)
log = logging.getLogger(__name__)


def _unwrap_optional(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _click_type(annotation: Any) -> tuple[Any, bool, bool]:
    """(click type, is_flag, is_json) for a settings field annotation."""
    ann = _unwrap_optional(annotation)
    if ann is bool:
        return None, True, False
    if ann is int:
        return click.INT, False, False
    if ann is float:
        return click.FLOAT, False, False
    if ann is Path:
        return click.Path(path_type=Path), False, False
    origin = typing.get_origin(ann)
    if origin in (list, dict, tuple, set) or ann in (list, dict):
        return click.STRING, False, True
    return click.STRING, False, False


def with_settings(settings_cls: type[S]) -> Callable[[F], F]:
    """Decorator: expose every field of ``settings_cls`` as a flag and pass ``settings=`` to the command."""

    def decorate(func: F) -> F:
        existing = {p.name for p in getattr(func, "__click_params__", [])}
        field_names: list[str] = []
        for name, field in settings_cls.model_fields.items():
            if name in existing or name == "settings":
                continue
            ctype, is_flag, is_json = _click_type(field.annotation)
            flag = "--" + name.replace("_", "-")
            env = f"RISKSTREAM_{name.upper()}"
            help_text = (field.description or "").rstrip(".") + f". [env: {env}]"
            if is_json:
                help_text += " (JSON)"
            if is_flag:
                option = click.option(f"{flag}/--no-{name.replace('_', '-')}", name, default=None, help=help_text)
            else:
                option = click.option(flag, name, type=ctype, default=None, help=help_text, show_default=False)
            func = option(func)
            field_names.append(name)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            overrides: dict[str, Any] = {}
            for name in field_names:
                value = kwargs.pop(name, None)
                if value is None:
                    continue
                ann = _unwrap_optional(settings_cls.model_fields[name].annotation)
                if _click_type(ann)[2] and isinstance(value, str):
                    value = json.loads(value)
                if ann is SecretStr:
                    value = SecretStr(value)
                overrides[name] = value
            try:
                settings = settings_cls(**overrides)
            except ValidationError as exc:
                raise click.UsageError(f"invalid configuration:\n{exc}") from exc
            configure_logging(
                getattr(settings, "log_level", "INFO"),
                json_lines=bool(getattr(settings, "log_json", False)),
                libraries=getattr(settings, "log_level_libraries", "WARNING"),
            )
            kwargs["settings"] = settings
            try:
                return func(*args, **kwargs)
            except SettingsError as exc:
                raise click.UsageError(str(exc)) from exc
            except UserError as exc:
                raise click.ClickException(str(exc)) from exc
            except Exception as exc:
                from sqlalchemy.exc import OperationalError

                if not isinstance(exc, OperationalError):
                    raise
                # the database refused or failed (unreachable, credentials, locked, disk full): an operator's fix
                log.debug("SQL store failure", exc_info=True)
                url = mask_url(getattr(settings, "db_url", ""))
                reason = str(exc.orig).strip() if exc.orig is not None else str(exc)
                raise click.ClickException(f"the SQL store at {url} failed: {reason}") from exc

        return typing.cast(F, wrapper)

    return decorate


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


_end_without_teardown = False


def end_without_teardown() -> None:
    """Ask the ``riskstream`` executable to end the process as soon as this command has returned successfully,
    without the interpreter's teardown.

    With torch imported, Python's finalisation (modules, then the native libraries' destructors; PyPI's torch is a
    CUDA build) took 0.19 s of a `riskstream score` run on a 2-core CPU, and 0.42 s after a bare ``import torch``:
    as much as the command's own margin on short files. Only for a command whose outputs are all closed when it
    returns and that leaves no client, thread or child process needing to flush at exit (``score``); the executable
    then flushes standard output, standard error and the logging handlers itself. In-process callers
    (``CliRunner``, tests) never end early: only :func:`riskstream.cli.run` reads the request."""
    global _end_without_teardown  # noqa: PLW0603 - one flag per process, read once at exit
    _end_without_teardown = True


def teardown_skip_requested() -> bool:
    return _end_without_teardown
