"""Drives `sluice standalone` with Apache Airflow's own generated Python client
(apache-airflow-client 3.x): list DAGs, unpause, trigger with conf, wait for the run,
read its task instances, a log and an XCom. Run by airflow_client.rs (named apart from the `airflow_client` package it imports); prints
"airflow client: OK" when everything held."""

import json
import os
import sys
import time
import urllib.request

import airflow_client.client as af
from airflow_client.client.api import dag_api, dag_run_api, task_instance_api, x_com_api, monitor_api

base = os.environ["SLUICE_API_URL"]
user = os.environ["SLUICE_API_USER"]
password = os.environ["SLUICE_API_PASSWORD"]

req = urllib.request.Request(
    f"{base}/auth/token",
    data=json.dumps({"username": user, "password": password}).encode(),
    headers={"Content-Type": "application/json"},
)
token = json.load(urllib.request.urlopen(req))["access_token"]

cfg = af.Configuration(host=base, access_token=token)
with af.ApiClient(cfg) as client:
    health = monitor_api.MonitorApi(client).get_health()
    assert health.metadatabase.status == "healthy", health

    dags = dag_api.DAGApi(client)
    deadline = time.time() + 30
    while True:
        listed = dags.get_dags(limit=10, tags=["client"])
        if any(d.dag_id == "client_demo" for d in listed.dags):
            break
        assert time.time() < deadline, f"DAG never listed: {listed}"
        time.sleep(0.2)
    assert listed.total_entries == 1, listed
    assert listed.dags[0].tags[0].name == "client"
    details = dags.get_dag_details("client_demo")
    assert details.catchup is False, details

    patched = dags.patch_dag("client_demo", af.DAGPatchBody(is_paused=False), update_mask=["is_paused"])
    assert patched.is_paused is False

    runs = dag_run_api.DagRunApi(client)
    run = runs.trigger_dag_run(
        "client_demo",
        af.TriggerDAGRunPostBody(dag_run_id="from_python", conf={"who": "python"}, logical_date=None),
    )
    assert run.dag_run_id == "from_python" and run.conf == {"who": "python"}, run
    deadline = time.time() + 60
    while run.state not in ("success", "failed"):
        assert time.time() < deadline, f"run did not finish: {run}"
        time.sleep(0.2)
        run = runs.get_dag_run("client_demo", "from_python")
    assert run.state == "success", run
    listed_runs = runs.get_dag_runs("client_demo", state=["success"], limit=5)
    assert [r.dag_run_id for r in listed_runs.dag_runs] == ["from_python"], listed_runs

    tis = task_instance_api.TaskInstanceApi(client)
    instances = tis.get_task_instances("client_demo", "from_python")
    states = {t.task_id: t.state for t in instances.task_instances}
    assert states == {"greet": "success", "after": "success"}, states
    greet = tis.get_task_instance("client_demo", "from_python", "greet")
    assert greet.try_number == 1 and greet.duration is not None, greet

    log = tis.get_log("client_demo", "from_python", "greet", 1)
    lines = log.content.actual_instance
    text = " ".join(getattr(l, "event", str(l)) for l in lines)
    assert "hello python" in text, text

    xcom = x_com_api.XComApi(client).get_xcom_entry("client_demo", "greet", "from_python", "return_value")  # task before run, as in the client
    value = xcom.actual_instance.value
    assert value == {"greeting": "hello python"}, value

    # More of the API through the client's own models (pydantic validates every field).
    tries = tis.get_task_instance_tries("client_demo", "from_python", "greet")
    assert tries.total_entries == 1 and tries.task_instances[0].state == "success", tries
    entries = x_com_api.XComApi(client).get_xcom_entries("client_demo", "from_python", "greet")
    assert [e.key for e in entries.xcom_entries] == ["return_value"], entries
    dry = tis.post_clear_task_instances(
        "client_demo",
        af.ClearTaskInstancesBody(dag_run_id="from_python", task_ids=[af.ClearTaskInstancesBodyTaskIdsInner("greet")], dry_run=True, only_failed=False),
    )
    assert [t.task_id for t in dry.task_instances] == ["greet"], dry
    marked = tis.patch_task_instance_dry_run(
        "client_demo", "from_python", "after", af.PatchTaskInstanceBody(new_state="failed")
    )
    assert [t.task_id for t in marked.task_instances] == ["after"], marked

    from airflow_client.client.api import variable_api, pool_api, import_error_api, backfill_api, version_api

    variables = variable_api.VariableApi(client)
    variables.post_variable(af.VariableBody(key="from_client", value="42", description="set by the client"))
    assert variables.get_variable("from_client").value == "42"
    assert variables.get_variables().total_entries == 1
    pools = pool_api.PoolApi(client)
    pools.post_pool(af.PoolBody(name="client_pool", slots=3))
    assert {p.name for p in pools.get_pools().pools} == {"client_pool", "default_pool"}
    assert import_error_api.ImportErrorApi(client).get_import_errors().total_entries == 0
    assert version_api.VersionApi(client).get_version().version
    backfill = backfill_api.BackfillApi(client).create_backfill(
        af.BackfillPostBody(dag_id="client_demo", from_date="2024-01-01T00:00:00Z", to_date="2024-01-02T00:00:00Z")
    )
    assert backfill.dag_id == "client_demo", backfill
    backfilled = runs.get_dag_runs("client_demo", run_type=["backfill"])
    assert backfilled.total_entries == 2, backfilled

print("airflow client: OK")
sys.exit(0)
