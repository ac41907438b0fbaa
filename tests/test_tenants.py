"""Tenants and their tokens, as an operator creates them."""
from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from tenants.models import ApiToken, Tenant
from tenants.selectors import tenant_by_token

pytestmark = pytest.mark.django_db


def run_create(*args: str) -> str:
    out = io.StringIO()
    call_command("create_tenant", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_create_tenant_prints_the_token_alone_on_the_last_line():
    output = run_create("acme", "--tier", "premium")
    token = output.strip().splitlines()[-1]
    assert token.startswith("sy_") and " " not in token
    tenant = Tenant.objects.get(name="acme")
    assert tenant.tier == "premium"
    assert tenant_by_token(key=token) == tenant


def test_token_is_stored_only_as_a_hash():
    token = run_create("globex", "--tier", "standard").strip().splitlines()[-1]
    stored = ApiToken.objects.get(tenant__name="globex")
    assert token not in (stored.key_hash, stored.prefix)
    assert len(stored.key_hash) == 64


def test_wrong_or_revoked_token_or_inactive_tenant_finds_nobody():
    token = run_create("initech", "--tier", "standard").strip().splitlines()[-1]
    assert tenant_by_token(key=token + "x") is None
    Tenant.objects.filter(name="initech").update(is_active=False)
    assert tenant_by_token(key=token) is None


def test_duplicate_and_bad_names_are_refused_clearly():
    run_create("acme", "--tier", "premium")
    with pytest.raises(CommandError, match="name"):
        run_create("acme", "--tier", "standard")
    with pytest.raises(CommandError, match="name"):
        run_create("Bad Name!", "--tier", "standard")


def test_tier_must_be_known():
    with pytest.raises(CommandError, match="invalid choice"):
        run_create("acme", "--tier", "gold")


def test_an_operator_changes_weight_and_quotas_in_the_tenant_list(client):
    from django.contrib.auth.models import User

    # Given two tenants and a staff operator on the admin's tenant list
    acme = Tenant.objects.create(name="acme", tier="premium")
    globex = Tenant.objects.create(name="globex", tier="standard")
    User.objects.create_superuser("ops", password="pw")
    client.login(username="ops", password="pw")
    page = client.get("/admin/tenants/tenant/").content.decode()
    assert 'name="form-0-weight"' in page and 'name="form-0-max_queued_jobs"' in page

    # When they edit acme's weight and quotas in the list and save
    rows = {"form-TOTAL_FORMS": "2", "form-INITIAL_FORMS": "2", "_save": "Save"}
    for i, (tenant, weight, queued, rate) in enumerate(
            ((acme, 4, 500, 60), (globex, 1, 100_000, 6_000))):
        rows.update({f"form-{i}-id": str(tenant.id), f"form-{i}-weight": str(weight),
                     f"form-{i}-max_queued_jobs": str(queued),
                     f"form-{i}-submissions_per_minute": str(rate),
                     f"form-{i}-max_storage_bytes": str(tenant.max_storage_bytes // (i + 1))})
    resp = client.post("/admin/tenants/tenant/", rows)

    # Then the record changes at once (the dispatcher reads weights on each pass)
    assert resp.status_code == 302, resp.content.decode()[-2000:]
    acme.refresh_from_db()
    assert (acme.weight, acme.max_queued_jobs, acme.submissions_per_minute) == (4, 500, 60)
    globex.refresh_from_db()
    assert globex.max_storage_bytes == 50 * 1024**3 // 2
