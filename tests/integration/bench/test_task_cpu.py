"""bench.task_cpu's live sampler on this machine: a real process titled as the Task SDK titles a
task process burns CPU itself and makes a real PostgreSQL backend work; both are booked to its task
instance. PostgreSQL only (the store's server is where backends are matched to their clients)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid

import pytest

from bench.task_cpu import TaskCpuSampler

CHILD = textwrap.dedent("""
    import sys, time
    from setproctitle import setproctitle
    import psycopg2
    setproctitle("airflow worker -- " + sys.argv[1])
    conn = psycopg2.connect(sys.argv[2])
    time.sleep(1.0)  # let the sampler see the process and its backend before the work
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM generate_series(1, 4000000) g WHERE g % 7 = 3")
        cur.fetchone()
    end = time.process_time() + 0.6
    while time.process_time() < end:
        pass
    time.sleep(1.0)
""")


def test_a_task_process_and_its_backend_are_booked_to_its_task_instance(store_engine) -> None:
    if store_engine.dialect.name != "postgresql":
        pytest.skip("the sampler matches PostgreSQL backends to their clients (set TRIGGERFLOW_TEST_PG_URL)")
    url = store_engine.url.render_as_string(hide_password=False)
    dsn = store_engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    ti = str(uuid.uuid4())
    sampler = TaskCpuSampler(url, interval=0.2)
    sampler.start()
    try:
        subprocess.run([sys.executable, "-c", CHILD, ti, dsn], check=True, timeout=120)
    finally:
        attribution = sampler.stop()

    assert sampler.failed_looks == 0
    cpu = attribution.tasks[ti]
    assert cpu.task >= 0.5  # the 0.6 s busy loop (and the interpreter's start-up)
    assert cpu.store >= 0.1  # the backend counting 4 M rows
    assert attribution.booked() >= cpu.task + cpu.store
