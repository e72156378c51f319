"""The span stage: decides whether a stored call is shipped, and queues its records in the outbox.

A capture store stage (see :mod:`opik_cipx.capture.stages`): it runs wherever the
spool is written, in the capture worker process or on the gateway's spool thread,
inside the batch's transaction. It only writes the outbox; sending is the
:class:`~opik_cipx.ship.shipper.Shipper`'s job.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..attribute.analysis import Captured
from ..settings_view import CaptureSettings
from ..store.spool import Spool
from .enablement import Enablement, SessionInfoLike, SessionLookup
from .identity import IdentitySource, claude_json_path, render_project
from .outbox import DISABLED, NO_DESTINATION, SAMPLED_OUT, Outbox
from .privacy import LiveOptions, mask_key, sampled
from .records import record_call
from .span import CallFacts, SessionContext, call_facts

_SPAWN_LOG = "spawn.log"


def _valid_uuid(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return str(uuid.UUID(value.strip()))
    except ValueError:
        return None


class SpanStage:
    """Everything that decides what a call's spans say and whether they leave the machine."""

    def __init__(
        self,
        settings: CaptureSettings,
        *,
        sessions: Callable[[], SessionLookup | None] = lambda: None,
        enablement: Enablement | None = None,
        identity: IdentitySource | None = None,
        options: LiveOptions | None = None,
    ) -> None:
        self.settings = settings
        self._sessions = sessions
        home = Path(os.path.expanduser("~"))
        self.enablement = enablement or Enablement(home)
        self.identity = identity or IdentitySource(claude_json_path(home))
        self.options = options or LiveOptions(settings)
        self.errors = 0
        self._debug_log: logging.Logger | None = self._make_debug_log() if settings.opik_debug else None

    def outbox(self, spool: Spool) -> Outbox:
        return Outbox(spool.conn, max_bytes=self.settings.outbox_max_bytes)

    def _make_debug_log(self) -> logging.Logger:
        """logs/spawn.log at DEBUG: made at start with OPIK_CIPX_DEBUG, or on the first call a
        ``debug`` enablement marker covers (markers change while the gateway runs)."""
        logger = logging.getLogger("opik_cipx.shipper.debug")
        path = os.path.abspath(self.settings.logs_dir / _SPAWN_LOG)
        if not any(isinstance(h, logging.FileHandler) and h.baseFilename == path for h in logger.handlers):
            self.settings.logs_dir.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(path, encoding="utf-8")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            logger.addHandler(handler)
            logger.setLevel(logging.DEBUG)
        return logger

    def debug(self, message: str, *args: Any, force: bool = False) -> None:
        if self.settings.opik_debug or force:
            if self._debug_log is None:
                self._debug_log = self._make_debug_log()
            self._debug_log.debug(message, *args)

    def project_name(self, env: dict[str, str] | None = None, account_uuid: str | None = None) -> str:
        env = env or {}
        template = env.get("OPIK_CIPX_PROJECT") or env.get("OPIK_CC_PROJECT") or self.settings.opik_project
        return render_project(template, self.identity.get().with_request(account_uuid))

    def status(self) -> dict[str, Any]:
        """What ``opik-cipx status`` shows of the destination and the shipping decisions; no I/O."""
        opts = self.options.get()
        default = self.enablement.decide()
        destination = None
        if self.settings.opik_url is not None:
            destination = {
                "base_url": self.settings.opik_url,
                "workspace": self.settings.opik_workspace,
                "project": self.project_name(),
                "api_key_masked": mask_key(self.settings.opik_api_key),
            }
        return {
            "destination": destination,
            "enabled_default": default.enabled,
            "enabled_source": default.source,
            "capture_content": opts.capture_content,
            "sample_rate": opts.sample_rate,
            "config_error": self.options.error,
            "stage_errors": self.errors,
        }

    def record(self, spool: Spool, item: Captured) -> None:
        """Store stage, on the spool's thread inside the capture batch: queue the call's records."""
        try:
            self._record(spool, item)
        except Exception:
            self.errors += 1
            raise

    def _record(self, spool: Spool, item: Captured) -> None:
        ex = item.exchange
        if not ex.is_llm_call or item.attribution is None:
            return  # count_tokens, HEAD /, model listings: counted locally, never spans
        outbox = self.outbox(spool)
        if self.settings.opik_url is None:
            outbox.mark(ex.id, NO_DESTINATION)
            return
        sessions = self._sessions()
        info = sessions.get(ex.session_id) if sessions is not None and ex.session_id else None
        decision = self.enablement.for_session(sessions, ex.session_id)
        if not decision.enabled:
            self.debug("exchange %s: not shipped (%s)", ex.id, decision.source, force=decision.debug)
            outbox.mark(ex.id, DISABLED)
            return
        opts = self.options.get()
        if not sampled(ex.id, opts.sample_rate):
            outbox.mark(ex.id, SAMPLED_OUT)
            return
        facts = call_facts(ex, item.attribution, item.content)
        env = dict(getattr(info, "env", None) or {}) if info is not None else {}

        def resolve(own_trace_id: str) -> SessionContext:
            return self._context(facts, env, info, own_trace_id)

        result = record_call(outbox, facts, resolve, capture_content=opts.capture_content)
        self.debug(
            "exchange %s: %s (%d records, span %s, %s)", ex.id, result.state, result.records, result.span_id,
            decision.source, force=decision.debug,
        )

    def _context(
        self, facts: CallFacts, env: dict[str, str], info: SessionInfoLike | None, own_trace_id: str
    ) -> SessionContext:
        ex = facts.exchange
        identity = self.identity.get().with_request(facts.account_uuid)
        parent_trace = _valid_uuid(env.get("OPIK_CC_PARENT_TRACE_ID"))
        return SessionContext(
            session_id=ex.session_id or f"exchange:{ex.id}",
            trace_id=parent_trace or own_trace_id,
            project_name=self.project_name(env, facts.account_uuid),
            identity=identity,
            parent_span_id=_valid_uuid(env.get("OPIK_CC_ROOT_SPAN_ID")) if parent_trace else None,
            own_trace=parent_trace is None,
            cwd=getattr(info, "cwd", None),
            git_repo=getattr(info, "git_repo", None),
            git_branch=getattr(info, "git_branch", None),
            source=getattr(info, "source", None),
        )
