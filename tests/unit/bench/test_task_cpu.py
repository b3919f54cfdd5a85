"""bench.task_cpu's booking of CPU deltas to task instances and roles, fed with made-up looks at
the process table (the live sampler is tested in tests/integration/bench/test_task_cpu.py)."""

from __future__ import annotations

import pytest

from bench.task_cpu import Attribution, Proc, per_stage, role_of, task_id_of

TI_A = "0199a1b2-0000-7000-8000-00000000000a"
TI_B = "0199a1b2-0000-7000-8000-00000000000b"
BENCH, SCHEDULER, WORKER, BACKEND, CHECKPOINTER, SINK = 10, 20, 30, 50, 60, 70


def look(*procs: Proc) -> list[Proc]:
    return list(procs)


def p(pid: int, title: str, cpu: float, *, ppid: int = 1, children: float = 0.0) -> Proc:
    return Proc(pid=pid, ppid=ppid, title=title, cpu=cpu, children_cpu=children)


def base(**cpu: float) -> list[Proc]:
    return [
        p(BENCH, "python -m bench.run_benchmark", cpu.get("bench", 1.0)),
        p(SCHEDULER, "airflow scheduler", cpu.get("scheduler", 5.0)),
        p(WORKER, "airflow executor -- LocalExecutor trigger_emails.send", cpu.get("worker", 2.0),
          children=cpu.get("worker_children", 0.0)),
        p(CHECKPOINTER, "postgres: checkpointer", cpu.get("checkpointer", 0.5)),
        p(SINK, "python -m devstack.smtp_sink --port 2525", cpu.get("sink", 0.1)),
    ]


def test_the_first_look_is_the_baseline_and_later_deltas_go_to_their_roles() -> None:
    a = Attribution(own_pid=BENCH)
    a.observe(base())
    assert a.booked() == 0
    a.observe(base(bench=1.5, scheduler=6.0, checkpointer=0.75, sink=0.6))
    assert a.roles == {"benchmark": 0.5, "airflow": 1.0, "postgres (background)": 0.25, "smtp sink": 0.5}
    assert not a.tasks


def test_a_task_process_its_store_backend_and_its_supervisor_are_booked_to_its_task_instance() -> None:
    a = Attribution(own_pid=BENCH)
    a.observe(base())
    task = p(40, f"airflow worker -- {TI_A}", 0.8, ppid=WORKER)  # new since the last look: all of it counts
    a.backend_client[BACKEND] = 40
    a.observe([*base(worker=2.1), task, p(BACKEND, "postgres: postgres tf 127.0.0.1(50001) idle", 0.3)])
    a.observe([*base(worker=2.3), p(40, f"airflow worker -- {TI_A}", 1.8, ppid=WORKER),
               p(BACKEND, "postgres: postgres tf 127.0.0.1(50001) idle", 0.7)])
    cpu = a.tasks[TI_A]
    assert cpu.task == pytest.approx(1.8)
    assert cpu.store == pytest.approx(0.7)
    assert cpu.supervisor == pytest.approx(0.3)  # the worker's CPU while its child ran TI_A


def test_a_task_process_gone_between_looks_gets_its_exact_total_from_its_parents_children_time() -> None:
    a = Attribution(own_pid=BENCH)
    a.observe(base())
    a.observe([*base(), p(40, f"airflow worker -- {TI_A}", 1.0, ppid=WORKER)])
    # reaped: the worker's children CPU grew by the child's lifetime total (1.0 seen + 0.4 after)
    a.observe(base(worker_children=1.4))
    assert a.tasks[TI_A].task == pytest.approx(1.4)


def test_connections_of_other_clients_are_not_booked_to_a_task() -> None:
    a = Attribution(own_pid=BENCH)
    a.backend_client.update({51: SCHEDULER, 52: BENCH, 53: None})
    backends = [p(pid, "postgres: postgres airflow 127.0.0.1(5) idle", 1.0) for pid in (51, 52, 53)]
    a.observe([*base(), *backends])
    a.observe([*base(), *(p(b.pid, b.title, 2.0) for b in backends)])
    assert a.roles == {"postgres (other connections)": 2.0, "benchmark": 1.0}


def test_two_task_instances_and_the_report_per_stage() -> None:
    a = Attribution(own_pid=BENCH)
    a.observe(base())
    a.observe([*base(), p(40, f"airflow worker -- {TI_A}", 3.0, ppid=WORKER),
               p(41, f"airflow worker -- {TI_B}", 1.0, ppid=31), p(31, "airflow executor -- LocalExecutor x", 0.0)])
    report = per_stage(a, {TI_A: "send", TI_B: "reconcile"}, triggers=2000)
    assert report["stages"]["send"]["project_per_1000"] == pytest.approx(1.5)
    assert report["stages"]["reconcile"]["instances"] == 1
    assert report["booked_s"] == pytest.approx(4.0)
    # a task instance the API did not list (another DAG) is counted apart, not lost
    assert per_stage(a, {TI_A: "send"}, triggers=2000)["other_task_instances_s"] == pytest.approx(1.0)


@pytest.mark.parametrize(("title", "role"), [
    ("/usr/lib/postgresql/15/bin/postgres -D /var/lib/postgresql/15/main", "postgres (background)"),
    ("postgres: autovacuum launcher", "postgres (background)"),
    ("python -m devstack.adobe_emulator --port 1", "emulator"),
    ("/work/.venv/bin/python /work/.venv/bin/airflow api-server", "airflow"),
    ("bash", "other"),
])
def test_roles(title: str, role: str) -> None:
    assert role_of(p(99, title, 0), own_pid=BENCH) == role


def test_the_task_title_names_the_task_instance() -> None:
    assert task_id_of(f"airflow worker -- {TI_A}") == TI_A
    assert task_id_of("airflow worker -- not-a-uuid") is None


def test_backends_not_matched_to_a_client_are_connections_not_background() -> None:
    assert role_of(p(99, "postgres: postgres tf_soak 127.0.0.1(40112) INSERT", 0), own_pid=BENCH) == "postgres (other connections)"
    assert role_of(p(99, "postgres: 15/main: postgres af_meta [local] idle", 0), own_pid=BENCH) == "postgres (other connections)"
    assert role_of(p(99, "postgres: walwriter", 0), own_pid=BENCH) == "postgres (background)"


def test_a_backend_not_matched_yet_keeps_its_cpu_until_it_is() -> None:
    a = Attribution(own_pid=BENCH)
    a.observe(base())
    task = p(40, f"airflow worker -- {TI_A}", 0.5, ppid=WORKER)
    backend = "postgres: postgres tf 127.0.0.1(50001) SELECT"
    a.observe([*base(), task, p(BACKEND, backend, 0.3)])  # the sampler has not matched it yet
    assert a.booked() == pytest.approx(0.5)
    a.backend_client[BACKEND] = 40
    a.observe([*base(), task, p(BACKEND, backend, 0.9)])
    assert a.tasks[TI_A].store == pytest.approx(0.9)  # all of it, the first look's too


def test_a_backend_outliving_its_task_process_by_a_look_is_still_the_tasks() -> None:
    a = Attribution(own_pid=BENCH)
    a.backend_client[BACKEND] = 40
    backend = "postgres: postgres tf 127.0.0.1(50001) COMMIT"
    a.observe([*base(), p(40, f"airflow worker -- {TI_A}", 1.0, ppid=WORKER), p(BACKEND, backend, 0.2)])
    # the task process exited (reaped: 1.0 + 0.1); its backend did its last work meanwhile
    a.observe([*base(worker_children=1.1), p(BACKEND, backend, 0.5)])
    assert a.tasks[TI_A].store == pytest.approx(0.3)
    assert a.tasks[TI_A].task == pytest.approx(0.1)
    assert "postgres (other connections)" not in a.roles
