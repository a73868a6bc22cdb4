"""ModelServe on the real node with the real CPU server image: it follows the demo's FineTuneJob
and serves its adapter (through the active Service: the right labels, and on every test row the
label the trainer predicted); then a second revision of the FineTuneJob trains, passes its gate
and rolls out blue/green while a bounded request loop runs through the switch — no request fails (also through
a second switch for a spec edit that is not a new adapter, maxModelLen, gated too), and once
the switch has happened every answer comes from the new adapter digest (each response names
its digest in ``X-Tuneforge-Adapter-Digest``).

The node has 2 GPU stand-ins and 2 cores: the serving color, the second revision's training and
then both colors fit, slowly. Requests open a new connection each (no keep-alive) so that each
is routed by the Service as it is at that moment.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import threading
import time
from collections import defaultdict
from typing import Any

import httpx2
import openai
import pytest
import yaml

from shared_demo import load_demo
from tuneforge.serve.gate import GateRow, run_gate
from tuneforge_localcluster.testing import Cluster, wait_for
from tuneforge_trainer.evaluate import match_label

pytestmark = pytest.mark.slow

HEADER = "x-tuneforge-adapter-digest"
LOOP_WORKERS = 2
LOOP_MAX_REQUESTS = 5000  # bounded, whatever happens
LOOP_PAUSE = 0.5


def manifest(demo: Any) -> dict[str, Any]:
    m = yaml.safe_load((demo.ROOT / "examples" / "modelserve-banking77.yaml").read_text())
    m["spec"]["rollout"].update(scaleDownDelaySeconds=30)
    m["spec"]["rollout"]["gate"].update(rows=40, concurrency=4)
    return m


def status(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    return dict(cluster.get("modelserve", name, ns).get("status") or {})


def healthy_on(cluster: Cluster, ns: str, name: str, digest: str) -> dict[str, Any] | None:
    st = status(cluster, ns, name)
    assert st.get("phase") != "Failed", st
    return st if st.get("phase") == "Healthy" and (st.get("active") or {}).get("digest") == digest else None


def api(base_url: str, key: str) -> openai.OpenAI:
    # A new connection per request: each one is routed by the Service's current endpoints.
    http = httpx2.Client(limits=httpx2.Limits(max_keepalive_connections=0), timeout=120)
    return openai.OpenAI(base_url=base_url, api_key=key, http_client=http, max_retries=2)


def ask(client: openai.OpenAI, model: str, row: dict[str, Any], max_tokens: int) -> tuple[str, str]:
    """(digest header, answer) for a scored row: a classifier's row (``text``) through vLLM's
    /classify (a label name back), an lm head's (``messages``) through chat completions."""
    if "text" in row:
        url = str(client.base_url).rstrip("/").removesuffix("/v1") + "/classify"
        with httpx2.Client(limits=httpx2.Limits(max_keepalive_connections=0), timeout=120) as http:
            resp = http.post(url, json={"model": model, "input": row["text"]}, headers={"Authorization": f"Bearer {client.api_key}"})
        resp.raise_for_status()
        return resp.headers.get(HEADER, ""), resp.json()["data"][0]["label"]
    raw = client.chat.completions.with_raw_response.create(model=model, messages=row["messages"], max_tokens=max_tokens, temperature=0)
    return raw.headers.get(HEADER, ""), raw.parse().choices[0].message.content or ""


def stratified(rows: list[dict[str, Any]], per_label: int) -> list[dict[str, Any]]:
    by_label: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_label[r["target"]].append(r)
    rng = random.Random(0)
    return [r for label in sorted(by_label) for r in rng.sample(by_label[label], min(per_label, len(by_label[label])))]


class RequestLoop:
    """Bounded request loop through the active Service: what each request got, and when."""

    def __init__(self, client: openai.OpenAI, model: str, rows: list[dict[str, Any]]) -> None:
        self.client, self.model, self.rows = client, model, rows
        self.results: list[dict[str, Any]] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._work, args=(i,), daemon=True) for i in range(LOOP_WORKERS)]

    def _work(self, worker: int) -> None:
        i = worker
        while not self.stop.is_set() and len(self.results) < LOOP_MAX_REQUESTS:
            row = self.rows[i % len(self.rows)]
            i += LOOP_WORKERS
            started = time.time()
            rec: dict[str, Any] = {"started": started}
            try:
                digest, answer = ask(self.client, self.model, row, 8)
                rec.update(ok=True, digest=digest, answer=answer)
            except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
                rec.update(ok=False, error=f"{type(exc).__name__}: {exc}")
            rec["ended"] = time.time()
            with self.lock:
                self.results.append(rec)
            self.stop.wait(LOOP_PAUSE)  # steady traffic that leaves the 2-core node room to start the new color

    def __enter__(self) -> RequestLoop:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(180)


@pytest.mark.timeout(5400)
def test_modelserve_follows_the_finetunejob_and_switches_with_zero_failed_requests(
        cluster: Cluster, demo_finetunejob: dict[str, Any], demo_operator: Any) -> None:
    demo = load_demo()
    ns, ftj_name = demo.NAMESPACE, demo_finetunejob["metadata"]["name"]
    ms = manifest(demo)
    name = ms["metadata"]["name"]
    # The node's two GPU stand-ins go to the ModelServe's colors and the second revision's training.
    cluster.kubectl("delete", "deployment", demo.SERVER, "-n", ns, "--ignore-not-found", "--wait=true", timeout=180)
    cluster.kubectl("create", "secret", "generic", "tuneforge-demo-api-key", "-n", ns, f"--from-literal=key={demo.API_KEY}", check=False)
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(demo.ROOT / "crds"))
    cluster.kubectl("delete", "modelserve", name, "-n", ns, "--ignore-not-found", "--wait=true", timeout=180)
    v1 = demo_finetunejob["status"]["adapter"]["digest"]
    rows = [json.loads(line) for line in demo.read_s3(cluster.settings, demo_finetunejob["status"]["artifacts"]["predictions"]).splitlines() if line.strip()]
    labels = sorted({r["target"] for r in rows})
    describe = lambda: cluster.describe("modelserve", name, ns)  # noqa: E731
    try:
        cluster.apply(ms, ns)
        st = wait_for("the ModelServe to serve revision 1", lambda: healthy_on(cluster, ns, name, v1), 1500, 5, describe)
        assert st["active"]["lineage"]["revision"] == 1 and st["gate"]["outcome"] == "Passed", st
        ip = cluster.get("service", name, ns)["spec"]["clusterIP"]
        client = api(f"http://{ip}:8000/v1", demo.API_KEY)

        # The right labels through the active Service, from the adapter it says it serves.
        sample = stratified(rows, per_label=3)
        right = 0
        for row in sample:
            digest, answer = ask(client, ftj_name, row, 16)
            assert digest == f"{ftj_name}={v1}"
            right += match_label(answer, labels) == row["target"]
        assert right / len(sample) >= 0.8, (right, len(sample))

        # Every test row of the demo set through the served adapter, asked as the gate asks
        # (/classify, one row per request): the label vLLM answers is the trainer's own prediction.
        answers = asyncio.run(run_gate(f"http://{ip}:8000/v1", ftj_name, [GateRow((), r["target"], r["text"]) for r in rows],
                                       api_key=demo.API_KEY, concurrency=4, timeout_s=120, warmup=0, head="classifier"))
        assert not [a.error for a in answers if a.error], [a.error for a in answers if a.error][:5]
        mismatches = [(r["row"], r["text"], r["prediction"], a.text) for r, a in zip(rows, answers) if a.text != r["prediction"]]
        print(f"served label == the trainer's prediction on {len(rows) - len(mismatches)}/{len(rows)} test rows; "
              f"mismatches: {mismatches}")
        assert not mismatches, mismatches

        # A second revision trains (a spec edit); once it passes its gate it rolls out, and a
        # request loop runs from then on, through the switch and the old color's scale-down.
        # Its baselines are dropped (revision 1 scored them; serving does not read them), which
        # keeps the edit's cost to training and scoring the adapter.
        cluster.kubectl("patch", "finetunejob", ftj_name, "-n", ns, "--type=merge", "-p", json.dumps({"spec": {
            "training": {"maxSteps": 110},
            "evaluation": {"baselines": [], "gate": {"mustBeatBaseline": None}}}}))

        def revision_2() -> dict[str, Any] | None:
            f = cluster.get("finetunejob", ftj_name, ns)
            return f if f["status"].get("revision") == 2 and f["status"].get("phase") in ("Succeeded", "Failed") else None

        ftj = wait_for("revision 2 to finish", revision_2, 2400, 3)
        assert ftj["status"]["phase"] == "Succeeded" and ftj["status"]["gate"]["outcome"] == "Passed", ftj["status"]
        v2 = ftj["status"]["adapter"]["digest"]
        assert v2 != v1
        with RequestLoop(client, ftj_name, sample) as loop:
            st = wait_for("the ModelServe to switch to revision 2", lambda: healthy_on(cluster, ns, name, v2), 1500, 2, describe)
            # Keep asking through the old color's scale-down (scaleDownDelaySeconds, then its drain).
            wait_for("the old color to scale down", lambda: not any(
                (d.get("status") or {}).get("replicas") for d in cluster.list("deployments", ns, f"tuneforge.dev/modelserve={name}")
                if (d["metadata"].get("labels") or {}).get("tuneforge.dev/color") != st["activeColor"]), 300, 2, describe)
            time.sleep(10)

        # A change that is not a new adapter (maxModelLen) is a new rollout identity (same digest,
        # another template hash): a candidate color, a gate attempt of its own, then the switch,
        # again with no failed request; the live color is never re-templated in place.
        shaped, attempt = st["active"]["templateHash"], st["gate"]["attempt"]
        cluster.kubectl("patch", "modelserve", name, "-n", ns, "--type=merge", "-p", json.dumps({"spec": {"maxModelLen": 768}}))

        def reshaped() -> dict[str, Any] | None:
            s = healthy_on(cluster, ns, name, v2)
            return s if s is not None and s["active"].get("templateHash") != shaped else None

        with RequestLoop(client, ftj_name, sample) as loop2:
            st2 = wait_for("the ModelServe to switch to maxModelLen 768", reshaped, 1500, 2, describe)
            time.sleep(10)
    finally:
        # Free the node's GPU stand-ins for the tests after this one (owner references take the colors).
        cluster.kubectl("delete", "modelserve", name, "-n", ns, "--ignore-not-found", "--wait=true", timeout=180, check=False)

    results = loop.results
    failed = [r for r in results if not r["ok"]]
    promoted = next(h for h in st["history"] if h["digest"] == v2 and h["outcome"] == "Promoted")
    switch = dt.datetime.fromisoformat(promoted["at"].replace("Z", "+00:00")).timestamp()
    before = [r for r in results if r["ok"] and r["ended"] < switch]
    # kube-proxy applies the new selector within seconds of the operator's write (on a busy node).
    after = [r for r in results if r["ok"] and r["started"] > switch + 10]
    print(f"{len(results)} requests through the switch, {len(failed)} failed; switch at {promoted['at']}; "
          f"{len(before)} answered by {v1[:19]} before, {len(after)} after (+10 s), digests after: "
          f"{sorted({r['digest'] for r in after})}")
    assert not failed, failed[:5]
    assert before and all(r["digest"] == f"{ftj_name}={v1}" for r in before)
    assert after and all(r["digest"] == f"{ftj_name}={v2}" for r in after), [r for r in after if r["digest"] != f"{ftj_name}={v2}"][:5]
    assert st["active"]["lineage"]["revision"] == 2

    failed2 = [r for r in loop2.results if not r["ok"]]
    print(f"{len(loop2.results)} requests through the maxModelLen switch, {len(failed2)} failed; gate {st2['gate']}")
    assert not failed2, failed2[:5]
    assert all(r["digest"] == f"{ftj_name}={v2}" for r in loop2.results if r["ok"])
    assert st2["gate"]["outcome"] == "Passed" and st2["gate"]["attempt"] > attempt, st2["gate"]
    assert st2["activeColor"] != st["activeColor"] and st2["history"][-1]["outcome"] == "Promoted"
