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

print("airflow client: OK")
sys.exit(0)
