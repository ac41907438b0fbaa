"""The workflow API (v1): submit a DAG of steps, follow it, cancel it as a whole.

Run by the web. A request's steps are checked one by one (``400`` naming
``steps.<i>.<field>``), then as a graph (``jobs.workflows.check_graph``: dangling
dependencies, cycles), then recorded in one transaction (``jobs.workflows``).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.db import IntegrityError, transaction
from django.urls import reverse
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from jobs.admission import Refused, signature_link
from jobs.api_support import (
    IDEMPOTENCY_HEADER,
    CursorPagination,
    StrictSerializer,
    idempotency_key,
    own_or_404,
    paginated,
    refusals,
    refuse_unknown_fields,
)
from jobs.models import OnFailure, Workflow
from jobs.options import fingerprint
from jobs.selectors import workflow_get, workflow_list, workflow_progress, workflow_steps
from jobs.serializers import known_task, parse_options
from jobs.submission import idempotent_replay
from jobs.workflow_submission import (
    StepSpec,
    check_graph,
    check_step_params,
    chord_register,
    workflow_submit,
)
from jobs.workflows import MAX_STEPS, workflow_cancel

STEP_FIELDS = ("id", "task", "params", "depends_on", "from", "on_failure", "options")
ON_COMPLETE_FIELDS = ("id", "task", "params", "from", "summary", "options")
#: The name of the on_complete step when the request gives it none.
ON_COMPLETE_NAME = "on_complete"


def _fail(field: str, message: str):
    raise ValidationError({field: [message]})


def parse(serializer_class, data) -> dict:
    body = serializer_class(data=data)
    body.is_valid(raise_exception=True)
    return body.validated_data


def parse_step(where: str, data: Any, *, on_complete: bool = False) -> StepSpec:
    """One step of a request (or an ``on_complete``, which depends on nothing and may
    name a ``summary`` parameter); ``400`` naming ``<where>.<field>``."""
    if not isinstance(data, Mapping):
        _fail(where, "must be an object {id, task, params, depends_on, from, on_failure, "
                     "options}")
    refuse_unknown_fields(data, ON_COMPLETE_FIELDS if on_complete else STEP_FIELDS,
                          prefix=f"{where}.")
    name = data.get("id", ON_COMPLETE_NAME if on_complete else None)
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        _fail(f"{where}.id", "a non-empty string of at most 200 characters is required")
    task = known_task(data.get("task"), field=f"{where}.task")
    params = data.get("params", {})
    if not isinstance(params, Mapping):
        _fail(f"{where}.params", "must be an object")
    depends_on = [] if on_complete else data.get("depends_on", [])
    if not isinstance(depends_on, list) or not all(isinstance(n, str) for n in depends_on):
        _fail(f"{where}.depends_on", "must be a list of step ids")
    if len(set(depends_on)) != len(depends_on):
        _fail(f"{where}.depends_on", "names a step twice")
    inputs = data.get("from", {})
    if not isinstance(inputs, Mapping):
        _fail(f"{where}.from", "must be an object: parameter -> step id, or list of step ids")
    for param, source in inputs.items():
        if not (isinstance(source, str) or (isinstance(source, list) and source
                                             and all(isinstance(n, str) for n in source))):
            _fail(f"{where}.from.{param}", "a step id, or a non-empty list of step ids")
    on_failure = data.get("on_failure", OnFailure.FAIL_WORKFLOW)
    if on_failure not in OnFailure.values:
        _fail(f"{where}.on_failure", f"one of {', '.join(OnFailure.values)}")
    summary = data.get("summary", "") if on_complete else ""
    if not isinstance(summary, str):
        _fail(f"{where}.summary", "the name of the parameter receiving the summary")
    raw_options = data.get("options", {})
    options = parse_options(raw_options, field=f"{where}.options")
    if options.link or options.link_error:
        _fail(f"{where}.options.{'link' if options.link else 'link_error'}",
              "not available in a workflow: make the linked task a step that depends on it")
    return StepSpec(name=name, task=task.name, params=dict(params), depends_on=depends_on,
                    inputs=dict(inputs), on_failure=on_failure, submit_options=options,
                    summary_param=summary, where=where)


def parse_workflow(data: Any, *, tenant) -> tuple[list[StepSpec], StepSpec | None]:
    """The steps and on_complete step of a ``POST /api/v1/workflows`` body, each checked
    (``400`` naming ``steps.<i>.<field>`` or ``on_complete.<field>``), then the graph."""
    refuse_unknown_fields(data, ["steps", "on_complete"])
    raw = data.get("steps") if isinstance(data, Mapping) else None
    if not isinstance(raw, list) or not raw:
        _fail("steps", "a non-empty list of steps")
    if len(raw) > MAX_STEPS:
        _fail("steps", f"{len(raw)} steps; at most {MAX_STEPS} in one workflow")
    steps = [parse_step(f"steps.{index}", item) for index, item in enumerate(raw)]
    on_complete = None
    if data.get("on_complete") is not None:
        on_complete = parse_step("on_complete", data["on_complete"], on_complete=True)
    with refusals():
        check_graph(steps, on_complete)
        for step in [*steps, *([on_complete] if on_complete else [])]:
            check_step_params(step, tenant=tenant)
    return steps, on_complete


def workflow_url(request, workflow: Workflow, name: str = "jobs:workflow-detail") -> str:
    return request.build_absolute_uri(reverse(name, kwargs={"workflow_id": workflow.id}))


def workflow_representation(request, workflow: Workflow, *, steps: bool = True) -> dict:
    """A workflow as the API shows it; with ``steps``, each step's job and status."""
    out = {
        "id": str(workflow.id),
        "kind": workflow.kind,
        "status": workflow.status,
        "reason": workflow.reason,
        "submitted_at": workflow.submitted_at,
        "finished_at": workflow.finished_at,
        "cancelled_at": workflow.cancelled_at,
        "progress": workflow_progress(workflow),
        "status_url": workflow_url(request, workflow),
        "cancel_url": workflow_url(request, workflow, "jobs:workflow-cancel"),
    }
    if steps:
        out["steps"] = [
            {"id": row["name"], "job": str(row["job_id"]), "task": row["job__task"],
             "status": row["job__status"], "depends_on": row["depends_on"],
             "on_complete": row["is_on_complete"],
             "job_url": request.build_absolute_uri(
                 reverse("jobs:job-detail", kwargs={"job_id": row["job_id"]}))}
            for row in workflow_steps(workflow)]
    return out


class StepInputSerializer(serializers.Serializer):
    """Documents one step of a request (``parse_step`` reads it)."""

    id = serializers.CharField(max_length=200, help_text="unique in the workflow")
    task = serializers.CharField(help_text="a task of /api/v1/tasks")
    params = serializers.DictField(required=False)
    depends_on = serializers.ListField(child=serializers.CharField(), required=False,
                                       help_text="ids of the steps it runs after")
    # "from" is a Python keyword: declared below.
    on_failure = serializers.ChoiceField(choices=OnFailure.choices, required=False,
                                         default=OnFailure.FAIL_WORKFLOW)
    options = serializers.DictField(required=False, help_text="as for POST /api/v1/jobs, "
                                    "without link and link_error")

    def get_fields(self):
        fields = super().get_fields()
        fields["from"] = serializers.DictField(required=False, help_text=(
            "parameter -> the id of a step it depends on (its result), or a list of ids "
            "(their results, in that order)"))
        return fields


class OnCompleteInputSerializer(serializers.Serializer):
    id = serializers.CharField(max_length=200, required=False, default=ON_COMPLETE_NAME)
    task = serializers.CharField()
    params = serializers.DictField(required=False)
    summary = serializers.CharField(required=False, help_text=(
        "the parameter receiving {workflow, steps, succeeded, failed, dead, expired, "
        "cancelled}"))
    options = serializers.DictField(required=False)

    def get_fields(self):
        fields = super().get_fields()
        fields["from"] = serializers.DictField(required=False,
                                               help_text="parameter -> any step's id")
        return fields


class WorkflowInputSerializer(serializers.Serializer):
    steps = StepInputSerializer(many=True)
    on_complete = OnCompleteInputSerializer(required=False)


class WorkflowOutputSerializer(serializers.Serializer):
    """Documents ``workflow_representation`` in the schema."""

    id = serializers.UUIDField()
    kind = serializers.ChoiceField(choices=Workflow.Kind.choices)
    status = serializers.ChoiceField(choices=Workflow.Status.choices)
    reason = serializers.CharField(help_text="why it failed or was cancelled")
    submitted_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
    cancelled_at = serializers.DateTimeField(allow_null=True)
    progress = serializers.DictField(help_text="steps, ended, and a count per job status")
    steps = serializers.ListField(child=serializers.DictField(), help_text=(
        "each {id, job, task, status, depends_on, on_complete, job_url}, in request order"))
    status_url = serializers.URLField()
    cancel_url = serializers.URLField()


class WorkflowSummarySerializer(serializers.ModelSerializer):
    """A workflow in a list: its counters, not its steps."""

    status_url = serializers.SerializerMethodField()

    class Meta:
        model = Workflow
        fields = ["id", "kind", "status", "reason", "step_count", "open_steps",
                  "submitted_at", "finished_at", "cancelled_at", "status_url"]

    def get_status_url(self, workflow: Workflow) -> str:
        return workflow_url(self.context["request"], workflow)


class WorkflowListSubmitApi(APIView):
    """``POST /api/v1/workflows`` submits; ``GET /api/v1/workflows`` lists the caller's."""

    pagination_class = CursorPagination

    class FilterSerializer(serializers.Serializer):
        status = serializers.ChoiceField(choices=Workflow.Status.choices, required=False)

    @extend_schema(
        request=WorkflowInputSerializer, responses={202: WorkflowOutputSerializer},
        parameters=[OpenApiParameter(IDEMPOTENCY_HEADER, str, OpenApiParameter.HEADER,
                                     required=False)],
        description=(
            "`steps`: each `{id, task, params, depends_on: [ids], from: {param: id or [ids]}, "
            "on_failure: fail_workflow | continue, options}`. A step runs once every step "
            "it depends on has ended; `from` fills a parameter with the result of a step it "
            "depends on (null if that step did not succeed), or a list of results. "
            f"At most {MAX_STEPS} steps. `on_complete`: `{{task, params, from, summary}}` "
            "runs once after every other step ended, whatever their outcome; `summary` "
            "names the parameter that receives the workflow's counts."),
        examples=[OpenApiExample("fan-out, fan-in", request_only=True, value={
            "steps": [
                {"id": "a", "task": "demo.quick_task", "params": {"x": 1}},
                {"id": "b", "task": "demo.quick_task", "depends_on": ["a"],
                 "from": {"x": "a"}},
                {"id": "c", "task": "demo.quick_task", "depends_on": ["a"],
                 "from": {"x": "a"}, "on_failure": "continue"},
                {"id": "d", "task": "demo.quick_task", "depends_on": ["b", "c"],
                 "from": {"x": ["b", "c"]}}],
            "on_complete": {"task": "demo.quick_task", "summary": "x"}})])
    def post(self, request):
        if not isinstance(request.data, Mapping):
            _fail("steps", "the body must be an object {steps, on_complete}")
        steps, on_complete = parse_workflow(request.data, tenant=request.auth)
        key = idempotency_key(request)
        request_print = fingerprint("workflow", request.data) if key else ""
        workflows = Workflow.objects.filter(tenant=request.auth)
        created = True
        with refusals():
            workflow = idempotent_replay(workflows, key, request_print)
            if workflow is None:
                try:
                    with transaction.atomic():
                        workflow = workflow_submit(tenant=request.auth, steps=steps,
                                                   on_complete=on_complete,
                                                   idempotency_key=key, fingerprint=request_print)
                except IntegrityError:  # the same key, accepted meanwhile
                    workflow = idempotent_replay(workflows, key, request_print)
                    if workflow is None:
                        raise
                    created = False
            else:
                created = False
        headers = {"Location": reverse("jobs:workflow-detail",
                                       kwargs={"workflow_id": workflow.id})}
        if not created:
            headers["Idempotent-Replayed"] = "true"
        return Response(workflow_representation(request, workflow), status=202,
                        headers=headers)

    @extend_schema(parameters=[FilterSerializer],
                   responses={200: WorkflowSummarySerializer(many=True)})
    def get(self, request):
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        return paginated(self, request,
                         workflow_list(tenant=request.auth, **filters.validated_data),
                         WorkflowSummarySerializer)


class WorkflowDetailApi(APIView):
    """``GET /api/v1/workflows/{id}``: status, progress and every step's job."""

    @extend_schema(responses={200: WorkflowOutputSerializer})
    def get(self, request, workflow_id):
        workflow = own_or_404(workflow_get(tenant=request.auth, workflow_id=workflow_id),
                              "workflow", workflow_id)
        return Response(workflow_representation(request, workflow))


class WorkflowCancelApi(APIView):
    """``POST /api/v1/workflows/{id}/cancel``: every step not yet started never runs;
    the answer names the steps already running, which finish."""

    class OutputSerializer(serializers.Serializer):
        cancelled = serializers.IntegerField(help_text="steps cancelled")
        running = serializers.ListField(child=serializers.CharField(),
                                        help_text="ids of the steps already running")
        workflow = WorkflowOutputSerializer()

    @extend_schema(request=None, responses={200: OutputSerializer})
    def post(self, request, workflow_id):
        workflow = own_or_404(workflow_get(tenant=request.auth, workflow_id=workflow_id),
                              "workflow", workflow_id)
        with refusals():
            outcome = workflow_cancel(workflow=workflow)
        workflow.refresh_from_db()
        return Response({"cancelled": outcome.cancelled, "running": outcome.running,
                         "workflow": workflow_representation(request, workflow)})



class ChordBodySerializer(serializers.Serializer):
    """A chord's callback, as Celery's signature has it."""

    task = serializers.CharField()
    args = serializers.ListField(required=False, default=list)
    kwargs = serializers.DictField(required=False, default=dict)
    immutable = serializers.BooleanField(required=False, default=False)
    task_id = serializers.UUIDField(help_text="the body's frozen task id")
    subtask_type = serializers.CharField(required=False, allow_null=True)


class ChordRegisterApi(APIView):
    """``POST /api/v1/workflows/chords``: a Celery chord, registered by
    ``switchyard_client``'s result backend before its header is published (Celery's
    ``apply_chord``). The body becomes a step that the last header to end releases, with
    every header's result in order; no ``celery.chord_unlock`` task polls for it."""

    class InputSerializer(StrictSerializer):
        group = serializers.UUIDField(help_text="the chord's group id")
        headers = serializers.ListField(child=serializers.UUIDField(), min_length=1,
                                        max_length=MAX_STEPS - 1,
                                        help_text="the header tasks' ids, in order")
        body = ChordBodySerializer(help_text="the callback's signature")

    @extend_schema(request=InputSerializer, responses={202: WorkflowOutputSerializer})
    def post(self, request):
        data = parse(self.InputSerializer, request.data)
        headers = [str(h) for h in data["headers"]]
        if len(set(headers)) != len(headers):
            _fail("headers", "names a task twice")
        body = data["body"]
        if body.get("subtask_type"):
            _fail("body.subtask_type", f"a chord body that is a {body['subtask_type']} does "
                  "not run on the Celery-native path; submit a workflow (POST "
                  "/api/v1/workflows)")
        known_task(body["task"], field="body.task")
        with refusals():
            try:
                link = signature_link({**body, "task_id": None}, what="body")
            except Refused as exc:
                raise ValidationError({"body": [str(exc)]}) from None
            inputs = {link["result_param"]: headers} if "result_param" in link else {}
            spec = StepSpec(name="body", task=link["task"], where="body", inputs=inputs,
                            params={k: v for k, v in link["params"].items()
                                    if k not in inputs},
                            depends_on=headers, job_id=body["task_id"])
            check_step_params(spec, tenant=request.auth)
            try:
                with transaction.atomic():
                    workflow, created = chord_register(tenant=request.auth,
                                                       group_id=data["group"],
                                                       header_ids=headers, body=spec)
            except IntegrityError:  # an id already used by another chord or job
                raise ValidationError({"headers": [
                    "a header's or the body's task id is already another job's or another "
                    "chord's"]}) from None
        answer = Response(workflow_representation(request, workflow), status=202,
                          headers={"Location": reverse("jobs:workflow-detail",
                                                       kwargs={"workflow_id": workflow.id})})
        if not created:
            answer["Idempotent-Replayed"] = "true"
        return answer
