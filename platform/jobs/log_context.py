"""Worker: the job a pool process is running, on every log line of its delivery.

Celery sends ``task_prerun`` and ``task_postrun`` around each delivery in the process
that runs it; between them ``switchyard.logs.job_context`` holds the job's id (the task
id), its task, lane and tier (from the routing key the platform published it with) and
its tenant: the ``tenant`` header when the platform sent the message, the sender's own
tenant when a tenant's broker user did (a header is only a claim), none otherwise.
"""
from __future__ import annotations

from celery import signals

from jobs.senders import delivery_sender
from routing import celery_config, topology
from switchyard.logs import job_context


def delivery_fields(task, request) -> dict[str, str]:
    """The job fields of the delivery ``request`` of ``task``, those that are known."""
    fields = {"job_id": str(request.id or ""), "task": task.name}
    try:
        lane, tier, _ = topology.parse_routing_key(
            (request.delivery_info or {}).get("routing_key") or "")
    except ValueError:
        lane, tier = getattr(task, "lane", None) or "", ""
    fields.update(lane=lane, tier=tier)
    try:
        sender = delivery_sender(request)
    except Exception:  # a log line's context must never fail a delivery
        return {k: v for k, v in fields.items() if v}
    if sender.platform:
        headers = getattr(request, "headers", None) or {}
        tenant = getattr(request, celery_config.TENANT_HEADER, None) or headers.get(
            celery_config.TENANT_HEADER)
        fields["tenant"] = str(tenant or "")
    elif sender.tenant is not None:
        fields["tenant"] = sender.tenant.name
    return {k: v for k, v in fields.items() if v}


@signals.task_prerun.connect(dispatch_uid="jobs.log_context.prerun")
def _job_on_log_lines(task_id=None, task=None, **_):
    if task is not None and getattr(task, "lane", None) is not None:
        job_context.set(delivery_fields(task, task.request))


@signals.task_postrun.connect(dispatch_uid="jobs.log_context.postrun")
def _no_job_on_log_lines(**_):
    job_context.set({})
