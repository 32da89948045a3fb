"""The console's pages and actions (a Flask blueprint; :func:`router.console.app.create_app`).

Pages: ``/`` the instances table (filters: direction, state, name), ``/instances/<name>`` one
instance, ``/quarantine`` the quarantined messages, ``/quarantine/item`` one of them (headers
and reason). Actions (POST, CSRF-checked by :mod:`router.console.auth`, each written to the
audit log): poll now, Test Access, pause, resume, replay, drop and "show body".

Every action calls the function the CLI or a runtime calls: :func:`router.service.replay`,
:func:`router.quarantine.drop`, :func:`router.ledger.take_pause_lease`, and the jobs of
:mod:`router.console.jobs`. A message body appears only on the page the "show body" action
returns.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from urllib.parse import quote, urlencode

from flask import Blueprint, abort, flash, redirect, render_template, request
from flask.typing import ResponseReturnValue

from router import quarantine, service
from router.config import Deployment, ProviderConfiguration
from router.console.auth import current_user
from router.console.chart import per_minute_svg
from router.console.hub import ConsoleHub, hub
from router.console.jobs import Job, Outcome, check_access, poll_now
from router.console.model import (
    STATES,
    filter_rows,
    header_fields,
    instance_activity,
    instance_rows,
    masked_deployment,
    masked_settings,
)
from router.errors import ConfigError, RouterError
from router.ledger import OUTBOUND, OutboundLedger, release_pause_lease, take_pause_lease
from router.ledger.outgoing import claimant
from router.models import LedgerState
from router.report import format_report

#: How long an operator's pause lasts unless resumed (then the instance runs again by itself).
PAUSE_TTL = 7 * 86400.0
#: Seconds between automatic refreshes of the instances table.
REFRESH = 10
#: Largest part of a message source "show body" shows.
MAX_BODY = 512 * 1024

bp = Blueprint("console", __name__)


# -- instances ------------------------------------------------------------------------------------
@bp.get("/")
def instances() -> ResponseReturnValue:
    """The instances table, filtered by the query string; refreshes itself."""
    h = hub()
    ctx = h.context()
    rows = instance_rows(ctx.config, ctx.store, h.config_since)
    wanted = {k: request.args.get(k, "") for k in ("direction", "state", "name")}
    return render_template(
        "instances.html",
        rows=filter_rows(rows, **wanted),
        total=len(rows),
        wanted=wanted,
        states=STATES,
        refresh=REFRESH,
        now=time.time(),
    )


@bp.get("/instances/<name>")
def instance(name: str) -> ResponseReturnValue:
    """One instance: state, chart, recent messages, jobs, masked configuration, buttons."""
    h = hub()
    ctx = h.context()
    cfg = _configured(h, name)
    rows = instance_rows(ctx.config, ctx.store, h.config_since)
    row = next(r for r in rows if r.status.name == name)
    activity = instance_activity(ctx.store, cfg)
    dep = _deployment(h, cfg)
    jobs = h.jobs.recent(name)
    return render_template(
        "instance.html",
        row=row,
        cfg=cfg,
        settings=masked_settings(cfg),
        deployment=masked_deployment(dep) if dep else [],
        chart=per_minute_svg(activity.per_minute),
        recent=activity.recent,
        jobs=jobs,
        refresh=3 if any(j.ok is None for j in jobs) else 30,
        now=time.time(),
    )


@bp.post("/instances/<name>/poll")
def poll(name: str) -> ResponseReturnValue:
    """Run one cycle now, in the background, under the instance's normal lease."""
    h = hub()
    ctx, cfg = h.context(), _configured(h, name)
    _start(h, cfg, "poll now", lambda: poll_now(ctx, cfg))
    return redirect(f"/instances/{quote(name)}")


@bp.post("/instances/<name>/test-access")
def test_access(name: str) -> ResponseReturnValue:
    """Check the credentials of the instance's Deployment and mailbox (``test-access``)."""
    h = hub()
    cfg, path = _configured(h, name), h.config_path
    _start(h, cfg, "test access", lambda: check_access(path, cfg))
    return redirect(f"/instances/{quote(name)}")


def _start(
    h: ConsoleHub, cfg: ProviderConfiguration, kind: str, work: Callable[[], Outcome]
) -> None:
    user = current_user() or "?"

    def done(job: Job) -> None:
        outcome = "ok" if job.ok else "failed"
        h.audit.record(user, kind, outcome, instance=cfg.name, detail=job.output[:500])

    job = h.jobs.claim(cfg.name, kind, user)
    h.audit.record(user, kind, "started" if job else "refused: already running", instance=cfg.name)
    if job is None:
        flash(f"{kind} of {cfg.name} is still running")
    else:
        h.jobs.run(job, work, done)


@bp.post("/instances/<name>/pause")
def pause(name: str) -> ResponseReturnValue:
    """Hold the instance's lease so that no runtime starts a cycle of it."""
    h = hub()
    _configured(h, name)
    paused = take_pause_lease(h.store, name, PAUSE_TTL) is not None
    h.audit.record(current_user(), "pause", "ok" if paused else "refused: busy", instance=name)
    if not paused:
        flash(f"{name} is running a cycle (or is paused already): try again in a moment")
    return redirect(f"/instances/{quote(name)}")


@bp.post("/instances/<name>/resume")
def resume(name: str) -> ResponseReturnValue:
    """End an operator's pause: the next scheduled cycle runs."""
    h = hub()
    _configured(h, name)
    resumed = release_pause_lease(h.store, name)
    h.audit.record(current_user(), "resume", "ok" if resumed else "not paused", instance=name)
    if not resumed:
        flash(f"{name} was not paused by an operator")
    return redirect(f"/instances/{quote(name)}")


def _configured(h: ConsoleHub, name: str) -> ProviderConfiguration:
    try:
        return h.context().instance(name)
    except ConfigError:
        abort(404, f"no instance {name!r} in the configuration")


def _deployment(h: ConsoleHub, cfg: ProviderConfiguration) -> Deployment | None:
    try:
        return h.context().config.deployment(cfg.deployment) if cfg.deployment else None
    except KeyError:
        return None


# -- quarantine -----------------------------------------------------------------------------------
@bp.get("/quarantine")
def quarantine_list() -> ResponseReturnValue:
    """Every quarantined message (or one instance's), and the ambiguous outbound emails."""
    ctx = hub().context()
    only = request.args.get("instance") or None
    items = [i for i in quarantine.list_items(ctx, only) if i.entry.instance != OUTBOUND]
    ambiguous = [
        e
        for e in OutboundLedger(ctx.store).entries(LedgerState.QUARANTINED)
        if only is None or claimant(e) == only
    ]
    return render_template(
        "quarantine.html", items=items, ambiguous=ambiguous, only=only, claimant=claimant
    )


@bp.get("/quarantine/item")
def quarantine_item() -> ResponseReturnValue:
    """One quarantined message: where, why, its headers; never its body."""
    instance_name, key = _target(request.args)
    item = _item(instance_name, key)
    raw = hub().store.get_raw(instance_name, key) if item.has_raw else None
    return render_template("item.html", item=item, headers=header_fields(raw), body=None)


@bp.post("/quarantine/body")
def quarantine_body() -> ResponseReturnValue:
    """The message source, on explicit request only (written to the audit log)."""
    instance_name, key = _target(request.form)
    item = _item(instance_name, key)
    raw = hub().store.get_raw(instance_name, key) if item.has_raw else None
    hub().audit.record(current_user(), "show body", "ok", instance=instance_name, key=key)
    body = None if raw is None else raw[:MAX_BODY].decode("utf-8", "replace")
    return render_template("item.html", item=item, headers=header_fields(raw), body=body or "")


@bp.post("/quarantine/replay")
def quarantine_replay() -> ResponseReturnValue:
    """Process a quarantined message again (``email-router quarantine replay``)."""
    instance_name, key = _target(request.form)
    h = hub()
    try:
        text, outcome = format_report(service.replay(h.context(), instance_name, key)), "ok"
    except RouterError as exc:
        text, outcome = f"{instance_name}/{key}: {exc}", "failed"
    h.audit.record(current_user(), "replay", outcome, instance=instance_name, key=key)
    flash(text)
    return redirect(f"/quarantine?{urlencode({'instance': instance_name})}")


@bp.post("/quarantine/drop")
def quarantine_drop() -> ResponseReturnValue:
    """Forget a quarantined message for good (``email-router quarantine drop --yes``)."""
    instance_name, key = _target(request.form)
    h = hub()
    if request.form.get("confirm") != "yes":
        flash("tick the box to confirm: a dropped message cannot come back")
        return redirect(f"/quarantine/item?{urlencode({'instance': instance_name, 'key': key})}")
    try:
        quarantine.drop(h.context(), instance_name, key)
        text, outcome = f"dropped {instance_name}/{key}", "ok"
    except RouterError as exc:
        text, outcome = f"{instance_name}/{key}: {exc}", "failed"
    h.audit.record(current_user(), "drop", outcome, instance=instance_name, key=key)
    flash(text)
    return redirect(f"/quarantine?{urlencode({'instance': instance_name})}")


def _target(values: Mapping[str, str]) -> tuple[str, str]:
    instance_name, key = values.get("instance", ""), values.get("key", "")
    if not instance_name or not key or instance_name == OUTBOUND:
        abort(400, "name an instance and a ledger key")
    return instance_name, key


def _item(instance_name: str, key: str) -> quarantine.QuarantinedItem:
    try:
        return quarantine.get_item(hub().context(), instance_name, key)
    except ConfigError:
        abort(404, f"no quarantined message {key!r} in instance {instance_name!r}")
