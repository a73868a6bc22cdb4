"""The cluster tests' check that an operator under its least-privilege role was never refused an
API call reads its log with ``operator_helpers.refused_calls``: every client's form of a 403, and
nothing else (a bare ``403`` in a timestamp failed such a check once)."""

from __future__ import annotations

import pytest

from operator_helpers import refused_calls

REFUSED = [
    'kubernetes.client.exceptions.ApiException: (403)\nReason: Forbidden',
    '{"message": "Request attempt #1/9 failed; will retry: GET https://127.0.0.1:6443/api/v1/namespaces/ns/pods'
    ' -> APIForbiddenError(\'pods is forbidden\', {\'kind\': \'Status\', \'code\': 403})", "severity": "error"}',
    'kopf._cogs.clients.errors.APIForbiddenError: (\'jobs.batch is forbidden\', ...)',
    '{"kind": "Status", "status": "Failure", "reason": "Forbidden", "code": 403}',
    "HTTP response body: {'code':403}",
]
ALLOWED = [
    '{"message": "Initial authentication has finished.", "timestamp": "2026-12-07T17:41:25.403008+00:00", "severity": "info"}',
    '{"message": "Created validation Job ns/deputy-validate-1", "object": {"uid": "15a08c44-0606-4403-a8c9-9f95c8fca822"}}',
    "reconciled in 0.403 s after 403 events",
]


@pytest.mark.parametrize("line", REFUSED)
def test_a_refused_call_is_found(line: str) -> None:
    assert refused_calls("ok\n" + line + "\nok") != []


@pytest.mark.parametrize("line", ALLOWED)
def test_a_403_that_is_not_a_refusal_is_not(line: str) -> None:
    assert refused_calls(line) == []
