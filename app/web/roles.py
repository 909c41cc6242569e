"""Who may tune the server (the operator) and who is asking (the caller key the batcher shares batches by).

Local use (loopback host, no share link, not on a Space): whoever opens the page is the operator, as before.
Shared (--share, a non-loopback --host, or SPACE_ID set): only the user logged in as --admin / TTS_ADMIN is the
operator, on a second page mounted at OPERATOR_PATH with its own Gradio login; everyone else is a visitor who may
speak but not tune. Gradio logs a user in per app, and an app with `auth` logs in everyone, so the operator gets
their own app (gr.mount_gradio_app onto the launched one, sharing the one service) and visitors keep a page with no
login, or with the --auth login when one is set.
"""
from __future__ import annotations

import functools
import inspect
import ipaddress
import os
from dataclasses import dataclass
from typing import Callable, Hashable, Mapping

import gradio as gr

from app.settings import ServeSettings

OPERATOR_PATH = "/operator"  # where the operator's page is mounted on a shared server
OPERATOR_ONLY = "only the operator can change server settings"
HOW_TO_ENABLE = ("start the server with --admin USER:PASSWORD, or set TTS_ADMIN=USER:PASSWORD in its environment "
                 "(on a Hugging Face Space: a secret named TTS_ADMIN), then log in at " + OPERATOR_PATH)


def is_loopback(host: str) -> bool:
    """Whether binding host keeps the server to this machine (a name other than localhost counts as reachable)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Access:
    """Who may change live settings and run comparisons on this server."""

    shared: bool = False  # others can reach the page: only the operator tunes; False: everyone is the operator
    operator: str | None = None  # the operator's login name on a shared server (--admin / TTS_ADMIN); None: nobody tunes

    @classmethod
    def of(cls, serve: ServeSettings, environ: Mapping[str, str] = os.environ) -> "Access":
        """Shared with --share, a non-loopback host, or on a Hugging Face Space (SPACE_ID)."""
        shared = serve.share or not is_loopback(serve.host) or bool(environ.get("SPACE_ID"))
        return cls(shared=shared, operator=serve.admin[0] if serve.admin else None)

    @property
    def operator_page(self) -> bool:
        """Whether the operator gets their own page at OPERATOR_PATH (shared, with an operator login)."""
        return self.shared and self.operator is not None

    def allows(self, request: gr.Request | None) -> bool:
        """Whether this caller may tune the server: anyone locally; on a shared server only the operator's login.

        No request (an in-process call, not through Gradio) is refused on a shared server: deny unless proven.
        """
        if not self.shared:
            return True
        return self.operator is not None and request is not None and getattr(request, "username", None) == self.operator

    def refusal(self) -> str:
        """The error a visitor gets, saying how the operator gets in."""
        if self.operator is None:
            return f"{OPERATOR_ONLY}, and this shared server has no operator login: {HOW_TO_ENABLE}"
        return f"{OPERATOR_ONLY}; the operator logs in at {OPERATOR_PATH}"

    def page_note(self, operator_page: bool) -> str | None:
        """What the settings and comparison panels say on this page (None locally: nothing to say)."""
        if not self.shared:
            return None
        if operator_page:
            return f"You are the operator (**{self.operator}**): changes apply to every user of this server."
        if self.operator is None:
            return (f"_Read-only: {OPERATOR_ONLY}, and this shared server has none. To enable the settings and the "
                    f"comparison, {HOW_TO_ENABLE.replace(OPERATOR_PATH, f'[{OPERATOR_PATH}](.{OPERATOR_PATH}/)')}._")
        return f"_Read-only: {OPERATOR_ONLY}. Operator: log in at [{OPERATOR_PATH}](.{OPERATOR_PATH}/)._"

    def page_tunes(self, operator_page: bool) -> bool:
        """Whether this page shows the settings and comparison controls enabled."""
        return not self.shared or (operator_page and self.operator is not None)


def operator_only(method: Callable) -> Callable:
    """Decorate a Handlers method that changes the server: it runs only for the operator, checked on the server.

    Anyone else (a gradio_client call, a control re-enabled in the browser's dev tools) gets a gr.Error saying
    "only the operator can change server settings" and nothing runs. The wrapper adds a `request: gr.Request`
    parameter after the method's own positional ones, which Gradio fills; the method does not see it. Wire every
    positional input (Gradio inserts its special arguments by position). Handlers must have an `access` (Access).
    """
    signature = inspect.signature(method)
    params = list(signature.parameters.values())
    at = next((i for i, p in enumerate(params) if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)), len(params))
    params.insert(at, inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=gr.Request))
    full = signature.replace(parameters=params)

    def checked(args: tuple, kwargs: dict) -> inspect.BoundArguments:
        bound = full.bind(*args, **kwargs)
        request = bound.arguments.pop("request", None)
        handlers = bound.arguments[params[0].name]
        if not handlers.access.allows(request):
            raise gr.Error(handlers.access.refusal())
        return bound

    if inspect.isgeneratorfunction(method):
        @functools.wraps(method)
        def wrapper(*args, **kwargs):
            bound = checked(args, kwargs)
            yield from method(*bound.args, **bound.kwargs)
    else:
        @functools.wraps(method)
        def wrapper(*args, **kwargs):
            bound = checked(args, kwargs)
            return method(*bound.args, **bound.kwargs)

    wrapper.__signature__ = full
    wrapper.__annotations__ = {**method.__annotations__, "request": gr.Request}
    return wrapper


def caller_key(request: gr.Request | None) -> Hashable:
    """Who is asking, for the batcher's fair share: the logged-in user, else the Gradio session (one per page load or
    gradio_client Client); None for in-process calls."""
    if request is None:
        return None
    if getattr(request, "username", None):
        return f"user:{request.username}"
    session = getattr(request, "session_hash", None)
    return f"session:{session}" if session else None
