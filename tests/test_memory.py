"""Memory per request and per job, measured as peak RSS of real processes.

The web pod has 768 MiB for gunicorn's two workers, the quick worker pod 1 GiB for
four pool processes, the slow one 2 GiB for two (deploy/k8s). Each test sends the
worst input for a bound and reads the process's high-water mark (``VmHWM`` in
``/proc/<pid>/status``, reset through ``clear_refs``, of a server or of a fresh
subprocess), then asserts the bound the settings promise (docs/security.md,
docs/media.md#memory).
"""
from __future__ import annotations

import http.client
import io
import json
import re
import subprocess
import sys
import tracemalloc
import uuid
import zlib
from pathlib import Path

import pytest
from django.conf import settings
from PIL import Image

from media import storage
from media.models import File
from tenants.services import tenant_create
from tests import media_support as img
from tests.processes import REPO, wait_until
from tests.test_platform import free_port

# What the tests below import from Switchyard is imported where it is used, so that the
# tests of real processes also run against code from before these bounds and fail there.

media_dirs = img.media_dirs  # the fixture

MIB = 1024 * 1024
#: What a gunicorn worker may take for one request: (768 MiB - 25 arbiter) / 2 - 90 at rest.
WEB_REQUEST_HEADROOM = 281 * MIB
#: What one pool process has for one image: (pod - 100 main process) / concurrency - 90.
QUICK_HEADROOM, SLOW_HEADROOM = 141 * MIB, 884 * MIB


def _status(pid: int, field: str) -> int:
    """``field`` of /proc/<pid>/status, in bytes."""
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1)) * 1024


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS


# JSON bodies ---------------------------------------------------------------------------------

@pytest.mark.parametrize("chunk", [1 << 20, 5, 2, 1])
def test_the_exact_count_skips_strings_and_escapes_across_chunks(monkeypatch, chunk):
    from switchyard import json_cost as json_cost_module
    from switchyard.json_cost import values_exact, values_upper_bound

    monkeypatch.setattr(json_cost_module, "_CHUNK", chunk)
    strings = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
    for body in [b"{}", b'[[],{"a":[1,2,{}]}]', b'{"a":"x,y:{[","b":["\\"[","\\\\"]}',
                 b'["a\\\\", "{,", "\\\\\\"[,:"]', b'{"k": "\\u00e9\\ud83d\\ude00,"}',
                 b"[" + b",".join([b'"a\\\\\\"b,{:["'] * 40) + b"]"]:
        json.loads(body)
        assert values_exact(body) == values_upper_bound(strings.sub(b'""', body)), body


SHAPES = {
    "empty objects": lambda n: b"[" + b",".join([b"{}"] * n) + b"]",
    "one-key objects": lambda n: b"[" + b",".join([b'{"a":"bc"}'] * n) + b"]",
    "nested arrays": lambda n: b"[" + b",".join([b"[[[[]]]]"] * n) + b"]",
    "short strings": lambda n: b"[" + b",".join([b'"ab"'] * n) + b"]",
    "unique keys": lambda n: b"{" + b",".join(b'"%d":{}' % i for i in range(n)) + b"}",
    "floats": lambda n: b"[" + b",".join([b"1.5"] * n) + b"]",
    "emoji text": lambda n: '["😀' .encode() + b"a" * n + b'"]',
    "escaped emoji": lambda n: b'["\\ud83d\\ude00' + b"a" * n + b'"]',
    "media items": lambda n: b'{"items":[' + b",".join(
        [b'{"file":"3f0c1234-5678-4abc-9def-0123456789ab","to_folder":"a","on_clash":"rename"}']
        * n) + b"]}",
}


class _Once:
    """A request stream whose body is made when it is read: the parser holds the only
    reference, as it does with gunicorn's."""

    def __init__(self, make) -> None:
        self.make = make

    def read(self) -> bytes:
        body, self.make = self.make(), None
        return body


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_the_estimate_covers_what_parsing_really_takes(shape):
    from switchyard.json_cost import json_cost
    from switchyard.parsers import JSONParser

    cost = json_cost(SHAPES[shape](100_000), budget=2**40)  # the cheap count
    tracemalloc.start()
    parsed = JSONParser().parse(_Once(lambda: SHAPES[shape](100_000)))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del parsed
    assert peak <= cost.peak, (shape, peak, cost)
    assert cost.peak < 3 * peak, "an estimate this loose would refuse too much"


def _tenant_key() -> str:
    _, key = tenant_create(name=f"mem-{uuid.uuid4().hex[:8]}", tier="premium")
    return key


def _post(port: int, key: str, path: str, body: bytes) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", path, body=body, headers={
        "Authorization": f"Token {key}", "Content-Type": "application/json",
        "Host": "localhost"})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, json.loads(data or b"{}")


def _items(n: int, item: bytes) -> bytes:
    return b",".join([item] * n)


#: The parse budget (SWITCHYARD_MAX_JSON_MEMORY_BYTES's default).
PARSE_BUDGET = 192 * MIB


def _costliest_accepted() -> bytes:
    """A 44 MiB string and as many values as the parse budget then leaves: parsed, then
    refused for its item count."""
    from switchyard.json_cost import json_cost

    def body(values: int) -> bytes:
        return (b'{"task":"demo.checksum","items":[{"data":"' + b"a" * (44 * MIB) + b'"},'
                + _items(values // 3, b'{"a":"bc"}') + b"]}")

    values = (PARSE_BUDGET - 2 * 48 * MIB) // 96
    while json_cost(body(values), budget=PARSE_BUDGET).peak > PARSE_BUDGET:
        values -= 30_000
    return body(values)


def _worst_bodies() -> list[tuple[str, str, bytes, str]]:
    """(what, path, body, field the 400 must name), the smallest first: on code that
    parses everything, the first one already takes far more than its bound."""
    big = settings.SWITCHYARD_MAX_BATCH_BODY_BYTES - 64
    return [
        ("16 MiB of {} items", "/api/v1/batches",
         b'{"task":"demo.checksum","items":[' + _items(16 * MIB // 3, b"{}") + b"]}", "body"),
        ("64 MiB of {} jobs", "/api/v1/jobs/bulk",
         b'{"jobs":[' + _items((big - 10) // 3, b"{}") + b"]}", "body"),
        ("64 MiB of nested arrays", "/api/v1/media/operations",
         b'{"operation":"trash","files":[' + _items((big - 40) // 9, b"[[[[]]]]") + b"]}",
         "body"),
        ("the costliest body the budget lets through", "/api/v1/batches",
         _costliest_accepted, "items"),
    ]


@pytest.mark.rabbitmq
def test_a_web_workers_peak_memory_stays_bounded_whatever_the_bodys_shape(start_role):
    # Given the web role as deployed but with one worker, warmed up by a first request
    key = _tenant_key()
    port = free_port()
    web = start_role("web", WEB_BIND=f"127.0.0.1:{port}", WEB_WORKERS="1", WEB_TIMEOUT="60",
                     DJANGO_ALLOWED_HOSTS="localhost,127.0.0.1")
    def answers() -> bool:
        try:
            return _post(port, key, "/api/v1/batches", b"{}")[0] == 400
        except OSError:
            return False

    wait_until(answers, 60, "the web to answer", interval=0.3, roles=[web])
    (worker,) = _children(web.proc.pid)
    # A fresh worker's first costliest body also pays the allocator's first growth (its
    # arenas and heap, whose layout shifts with what the process imported: measured +136 to
    # +229 MiB cold, +97 MiB warm, for the same Python-level peak): that one is held to the
    # worker's share of the pod; every body after it to the parse budget.
    rest = _status(worker, "VmRSS")
    _reset_peak(worker)
    status, answer = _post(port, key, "/api/v1/batches", _costliest_accepted())
    cold = _status(worker, "VmHWM") - rest
    print(f"the costliest body, on a fresh worker: peak +{cold / MIB:.0f} MiB")
    assert cold <= WEB_REQUEST_HEADROOM and status == 400, (cold, status)
    for what, path, body, field in _worst_bodies():
        body = body() if callable(body) else body
        # When the body is sent
        rest = _status(worker, "VmRSS")
        _reset_peak(worker)
        status, answer = _post(port, key, path, body)
        growth = _status(worker, "VmHWM") - rest
        print(f"{what}: {len(body) / MIB:.0f} MiB body, peak +{growth / MIB:.0f} MiB")
        # Then it is refused naming the field, and the worker's peak stays within the
        # parse budget (plus slack for gunicorn's reads), inside its share of the pod
        assert growth <= PARSE_BUDGET + 32 * MIB, (
            f"{what}: peak +{growth / MIB:.0f} MiB")
        assert growth <= WEB_REQUEST_HEADROOM
        assert status == 400 and field in answer["errors"], (what, status, answer)
    assert "limit is 192 MiB" in _post(port, key, "/api/v1/batches",
                                       _worst_bodies()[0][2])[1]["detail"]


# Images --------------------------------------------------------------------------------------

def field_report_png(width: int = 10_000, height: int = 8_800) -> bytes:
    """An RGB PNG of ``width`` x ``height`` (88 megapixels) in a few hundred KB, written
    row by row: never held decoded here."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (len(data).to_bytes(4, "big") + kind + data
                + (zlib.crc32(kind + data) & 0xFFFFFFFF).to_bytes(4, "big"))

    packer = zlib.compressobj(9)
    row = b"\x00" + bytes(range(256)) * (width * 3 // 256) + b"\x00" * (width * 3 % 256)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


def _largest_for(budget: int, image_format: str, mode: str) -> tuple[int, int]:
    from media.images import decode_cost

    pixels = budget // decode_cost(image_format, 1, mode)
    width = int((pixels * 4 / 3) ** 0.5)
    return width, pixels // width


def _image(size: tuple[int, int], image_format: str, mode: str, **options) -> bytes:
    small = img._picture(64, 48, seed=3).convert(mode)
    out = io.BytesIO()
    small.resize(size, Image.Resampling.BILINEAR).save(out, image_format, **options)
    return out.getvalue()


_PROBE = """
import re, sys, uuid
import django
django.setup()
from media import services

def high_water():  # ru_maxrss would start from the parent's: Linux keeps it across exec
    status = open("/proc/self/status").read()
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) * 1024

data = open(sys.argv[1], "rb").read()
lane = sys.argv[2]
before = high_water()
try:
    try:
        decoded = services._decode(data, thumbnails=True, lane_name=lane)
    except TypeError:  # code from before lanes had a decode budget
        decoded = services._decode(data, thumbnails=True)
    services._write_thumbnails(uuid.uuid4(), "probe", decoded, decoded.format,
                               original=("probe/original", len(data)))
    outcome = "thumbnails"
except services.Refused as exc:
    outcome = f"refused: {exc}"
print(high_water() - before)
print(outcome)
"""


def _probe(tmp_path: Path, data: bytes, lane_name: str) -> tuple[int, str]:
    """Check and thumbnail ``data`` as a pool process of ``lane_name`` does, in a fresh
    process: (its peak RSS growth in bytes, what happened)."""
    path = tmp_path / f"image-{uuid.uuid4().hex}"
    path.write_bytes(data)
    run = subprocess.run(
        [sys.executable, "-c", _PROBE, str(path), lane_name], cwd=REPO, capture_output=True,
        text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": "platform:.",
             "DJANGO_SETTINGS_MODULE": "switchyard.settings.base",
             "SWITCHYARD_VAR_DIR": str(tmp_path / "var"),
             "SWITCHYARD_MEDIA_ROOT": str(tmp_path / "media")})
    assert run.returncode == 0, run.stderr[-3000:]
    growth, outcome = run.stdout.strip().splitlines()[-2:]
    return int(growth), outcome


#: The lanes' decode budgets (SWITCHYARD_MEDIA_DECODE_BYTES's defaults).
QUICK_BUDGET, SLOW_BUDGET = 112 * MIB, 768 * MIB
QUICK_WORST = {
    "PNG with alpha": ("PNG", "RGBA", {}),
    "WebP": ("WEBP", "RGB", {"quality": 80}),
    "progressive CMYK JPEG": ("JPEG", "CMYK", {"progressive": True, "quality": 90}),
}


@pytest.mark.parametrize("kind", sorted(QUICK_WORST))
def test_the_costliest_image_the_quick_lane_takes_fits_a_quick_process(tmp_path, kind):
    from media.images import decode_cost
    from media.tasks import lane_for_costs

    # Given the largest image of its kind the quick lane's budget lets through
    image_format, mode, options = QUICK_WORST[kind]
    budget = QUICK_BUDGET
    size = _largest_for(budget, image_format, mode)
    data = _image(size, image_format, mode, **options)
    assert lane_for_costs([(len(data), decode_cost(image_format, size[0] * size[1], mode))]) \
        == "quick" or len(data) >= settings.SWITCHYARD_MEDIA_SLOW_LANE_BYTES
    # When a quick pool process checks and thumbnails it
    growth, outcome = _probe(tmp_path, data, "quick")
    print(f"{kind} {size[0]}x{size[1]}: peak +{growth / MIB:.0f} MiB")
    # Then it did, within the budget, inside a quick process's share of its pod
    assert outcome == "thumbnails"
    assert growth <= budget <= QUICK_HEADROOM, f"peak +{growth / MIB:.0f} MiB"


def test_the_field_reports_88_megapixel_png_goes_slow_and_fits_a_slow_process(tmp_path):
    # Given the field report's image: 88 megapixels in a few hundred KB
    data = field_report_png()
    assert len(data) < 1 * MIB
    # Then a quick process refuses it from its header without decoding it
    growth, outcome = _probe(tmp_path, data, "quick")
    print(f"88 MP PNG on quick: peak +{growth / MIB:.0f} MiB, {outcome[:60]}")
    assert outcome.startswith("refused: 10000x8800 PNG (88,000,000 pixels) needs about")
    assert "the quick lane decodes at most 112 MiB" in outcome
    assert growth < 16 * MIB, f"peak +{growth / MIB:.0f} MiB for a refusal"
    # And a slow process thumbnails it inside its share of its pod
    growth, outcome = _probe(tmp_path, data, "slow")
    print(f"88 MP PNG on slow: peak +{growth / MIB:.0f} MiB")
    assert outcome == "thumbnails"
    assert growth <= SLOW_BUDGET <= SLOW_HEADROOM, f"peak +{growth / MIB:.0f} MiB"


@pytest.mark.rabbitmq
@pytest.mark.workers
def test_a_quick_workers_pool_process_never_decodes_the_88_megapixel_png(
        transactional_db, start_role, management, tmp_path, media_dirs):
    # Given the field report's PNG stored as a file, and a quick worker as deployed
    from jobs.models import Job
    from jobs.submission import job_submit
    from tests.test_media_lanes import deployed_lane

    tenant, _ = tenant_create(name="bomb", tier="standard")
    data = field_report_png()
    file_id = uuid.uuid4()
    key = storage.original_key(tenant.name, file_id, "PNG")
    storage.write_bytes(key, data)
    File.objects.create(id=file_id, tenant=tenant, folder="", name="field-report.png",
                        size=len(data), content_type="image/png", width=10_000, height=8_800,
                        checksum="0" * 64, storage_key=key, thumbnails={})
    quick = deployed_lane(start_role, management, "quick", concurrency=1)
    slow = deployed_lane(start_role, management, "slow", concurrency=1)
    workers = {"quick": quick, "slow": slow}

    # When its thumbnails are asked for
    job, _ = job_submit(tenant=tenant, task="media.thumbnail",
                        params={"items": [{"file": str(file_id)}]})
    peaks: dict[str, int] = {}

    def done() -> bool:
        for lane, worker in workers.items():
            for child in _children(worker.proc.pid):
                try:
                    peaks[lane] = max(peaks.get(lane, 0), _status(child, "VmHWM"))
                except (FileNotFoundError, AttributeError):
                    pass
        return Job.objects.get(id=job.id).status in ("succeeded", "failed", "dead")

    wait_until(done, 60, "the thumbnail job", interval=0.02, roles=[quick, slow])
    job.refresh_from_db()
    print(f"lane {job.lane}: quick pool peak {peaks.get('quick', 0) / MIB:.0f} MiB, "
          f"slow pool peak {peaks.get('slow', 0) / MIB:.0f} MiB")
    # Then it ran in slow and succeeded; no quick pool process ever held it
    assert (job.lane, job.status) == ("slow", "succeeded"), (job.lane, job.status, job.error)
    assert peaks.get("quick", 0) <= 256 * MIB  # a quick process's share of its pod
    assert peaks["slow"] <= 1024 * MIB  # a slow process's share of its pod


@pytest.mark.rabbitmq
@pytest.mark.workers
def test_a_pool_process_over_its_memory_limit_is_replaced_and_the_lane_goes_on(
        transactional_db, start_role, management, witness_dir):
    # Given a quick worker of one pool process allowed 160 MiB, as deploy/bin/worker runs it
    from jobs.models import Job
    from jobs.submission import job_submit
    from tests import drills
    from tests.test_lanes import start_lane

    witness = witness_dir
    worker = start_lane(start_role, management, "quick", 1,
                        SWITCHYARD_QUICK_MAX_MEMORY_PER_CHILD=str(160 * 1024),
                        SWITCHYARD_WITNESS_DIR=str(witness))
    tenant, _ = tenant_create(name="leaky", tier="standard")

    def run(task: str, **params) -> str:
        job, _ = job_submit(tenant=tenant, task=task, params=params)
        wait_until(lambda: Job.objects.get(id=job.id).status == "succeeded", 60, task,
                   roles=[worker])
        return str(job.id)

    def pid_of(job_id: str) -> int:
        found = [int(log.stem.split("-")[1]) for log in witness.glob("witness-*.log")
                 if job_id in log.read_text().split()]
        assert len(found) == 1, found
        return found[0]

    before = run("demo.witness")
    # When one job takes 300 MiB and keeps it (a leak, a huge input)
    hog = run("demo.hog", mb=300)
    after = run("demo.witness")
    # Then its process ran it to the end and was replaced; the next job ran in a new one
    assert pid_of(before) == pid_of(hog)
    assert pid_of(after) != pid_of(hog)
    assert not Path(f"/proc/{pid_of(hog)}").exists()
    worker.assert_running()
    assert drills.all_finished([before, hog, after])
